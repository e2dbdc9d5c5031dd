/* Receive-side coalescing (GRO) of TCPv4 segments and UDPv4 datagrams before they are
 * written to the TUN.
 *
 * Consecutive segments of one flow that arrive in one receive batch are joined into a
 * single super-packet and written once, with a virtio_net_hdr asking the kernel to treat
 * it as a TSO packet (gso_size = the segment size). One write and one trip through the
 * kernel's stack replace dozens, and the receiving TCP sends fewer ACKs.
 *
 * A segment joins an item when: same addresses, ports, IP TOS/TTL/DF, same TCP header
 * (options included) but sequence number; its sequence number continues the item; only
 * ACK (and PSH, which then ends the item) is set; the ACK number and window match; its
 * payload is the item's segment size (a shorter one may come last); the total stays
 * under 64 KiB. Anything else is written as it is, after the flow's pending item, so
 * order within a flow is kept.
 *
 * UDP datagrams of one flow and one payload size (a shorter one may come last) are
 * joined the same way and written as one UDP GSO (USO) packet; the kernel hands them
 * to the socket one by one again.
 */
#include "internal.h"

#include <unistd.h>

#define VNET_GSO_UDP_L4 5
#define UDP_MAX_SEGS 64
#define TCP_ACK 0x10
#define TCP_PSH 0x08

static void write_tun(fn_ctx *ctx, int tun_fd, uint8_t *buf, uint32_t len) {
    ctx->io[FN_IO_TUN_WRITES]++;
    if (write(tun_fd, buf, len) < 0) ctx->drops_out[FN_DROP_TUNWRITE]++;
}

static uint16_t fold16(uint64_t acc) {
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)acc;
}

static void gro_write_item(fn_ctx *ctx, int tun_fd, gro_item *it) {
    uint8_t *v = it->buf, *ip = v + VNET_HDR_LEN, *tcp = ip + it->ihl;
    uint32_t total = it->len;
    memset(v, 0, VNET_HDR_LEN);
    if (it->count == 1) {
        /* a segment as it came: its checksums are intact. The TUN ignores DATA_VALID
         * (virtio_net_hdr_to_skb reads only NEEDS_CSUM), so the kernel checks them again
         * (CHECKSUM_NONE; docs/performance.md, "The kernel's share") */
        v[0] = VNET_F_DATA_VALID;
    } else if (it->udp) {
        put_be16(ip + 2, (uint16_t)total);
        ip[10] = ip[11] = 0;
        uint64_t acc = 0;
        for (uint32_t i = 0; i < it->ihl; i += 2) acc += get_be16(ip + i);
        put_be16(ip + 10, (uint16_t)~fold16(acc));
        uint8_t *udp = ip + it->ihl;
        uint32_t udplen = total - it->ihl;
        put_be16(udp + 4, (uint16_t)udplen);
        acc = (uint64_t)get_be16(ip + 12) + get_be16(ip + 14) + get_be16(ip + 16) + get_be16(ip + 18) +
              IPPROTO_UDP + udplen;
        put_be16(udp + 6, fold16(acc));
        v[0] = VNET_F_NEEDS_CSUM;
        v[1] = VNET_GSO_UDP_L4;
        uint16_t hl = (uint16_t)(it->ihl + 8), gso = (uint16_t)it->seg, cs = (uint16_t)it->ihl, co = 6;
        v[2] = hl; v[3] = hl >> 8; v[4] = gso; v[5] = gso >> 8; v[6] = cs; v[7] = cs >> 8; v[8] = co; v[9] = co >> 8;
    } else {
        put_be16(ip + 2, (uint16_t)total);
        ip[10] = ip[11] = 0;
        uint64_t acc = 0;
        for (uint32_t i = 0; i < it->ihl; i += 2) acc += get_be16(ip + i);
        put_be16(ip + 10, (uint16_t)~fold16(acc));
        tcp[13] |= it->psh ? TCP_PSH : 0;
        /* CHECKSUM_PARTIAL: the TCP checksum field holds the pseudo-header sum */
        uint32_t tcplen = total - it->ihl;
        acc = (uint64_t)get_be16(ip + 12) + get_be16(ip + 14) + get_be16(ip + 16) + get_be16(ip + 18) +
              IPPROTO_TCP + tcplen;
        put_be16(tcp + 16, fold16(acc));
        v[0] = VNET_F_NEEDS_CSUM;
        v[1] = VNET_GSO_TCPV4;
        uint16_t hl = (uint16_t)(it->ihl + it->thl), gso = (uint16_t)it->seg, cs = (uint16_t)it->ihl, co = 16;
        v[2] = hl; v[3] = hl >> 8; v[4] = gso; v[5] = gso >> 8; v[6] = cs; v[7] = cs >> 8; v[8] = co; v[9] = co >> 8;
    }
    write_tun(ctx, tun_fd, v, VNET_HDR_LEN + total);
    it->used = 0;
}

void gro_flush(fn_ctx *ctx, int tun_fd) {
    for (int i = 0; i < GRO_ITEMS; i++)
        if (ctx->gro[i].used) gro_write_item(ctx, tun_fd, &ctx->gro[i]);
}

static int same_flow(const gro_item *it, const uint8_t *ip, uint32_t ihl, uint32_t thl) {
    const uint8_t *a = it->buf + VNET_HDR_LEN;
    if (it->ihl != ihl || it->thl != thl || a[9] != ip[9]) return 0;
    if (memcmp(a + 12, ip + 12, 8) != 0) return 0;                  /* addresses */
    if (memcmp(a + ihl, ip + ihl, 4) != 0) return 0;                /* ports */
    return 1;
}

static int can_join(const gro_item *it, const uint8_t *ip, uint32_t ihl, uint32_t thl, uint32_t plen) {
    const uint8_t *a = it->buf + VNET_HDR_LEN, *ta = a + ihl, *tb = ip + ihl;
    if (it->closed || plen == 0 || plen > it->seg || it->len + plen > MAX_SUPER - 1) return 0;
    if (a[1] != ip[1] || a[8] != ip[8] || (a[6] & 0x40) != (ip[6] & 0x40)) return 0;  /* TOS, TTL, DF */
    if (it->udp) return it->count < UDP_MAX_SEGS;
    if (get_be32(tb + 4) != it->next_seq) return 0;
    if (memcmp(ta + 8, tb + 8, 4) != 0 || memcmp(ta + 14, tb + 14, 2) != 0) return 0; /* ack, window */
    if (thl > 20 && memcmp(ta + 20, tb + 20, thl - 20) != 0) return 0;                /* options */
    return 1;
}

void gro_receive(fn_ctx *ctx, int tun_fd, uint8_t *ip, uint32_t len) {
    uint32_t ihl = (ip[0] & 15) * 4u, thl = 0, plen;
    uint8_t flags = 0;
    int eligible = ctx->vnet && len >= 40 && ip[9] == IPPROTO_TCP && ihl >= 20 && ihl + 20 <= len &&
                   (get_be16(ip + 6) & 0x3fff) == 0;  /* not a fragment */
    int udp = 0;
    if (eligible) {
        thl = (ip[ihl + 12] >> 4) * 4u;
        flags = ip[ihl + 13];
        eligible = thl >= 20 && ihl + thl <= len && (flags & ~(TCP_ACK | TCP_PSH)) == 0 && (flags & TCP_ACK) &&
                   get_be16(ip + 2) == len;
    } else if (ctx->vnet && ctx->tun_uso && len >= 28 && ip[9] == IPPROTO_UDP && ihl >= 20 && ihl + 8 <= len &&
               (get_be16(ip + 6) & 0x3fff) == 0 && get_be16(ip + 2) == len && get_be16(ip + ihl + 4) == len - ihl &&
               len > ihl + 8) {
        eligible = udp = 1;
        thl = 8;
    }
    gro_item *slot = NULL, *free_slot = NULL;
    for (int i = 0; i < GRO_ITEMS; i++) {
        gro_item *it = &ctx->gro[i];
        if (!it->used) { if (!free_slot) free_slot = it; continue; }
        if (eligible ? same_flow(it, ip, ihl, thl) : (len >= ihl + 4 && it->ihl == ihl &&
            memcmp(it->buf + VNET_HDR_LEN + 12, ip + 12, 8) == 0)) { slot = it; break; }
    }
    if (!eligible) {
        if (slot) gro_write_item(ctx, tun_fd, slot);  /* keep order within the flow */
        uint8_t *v = ip - VNET_HDR_LEN;  /* the datagram's header area is free: room for the vnet header */
        if (ctx->vnet) {
            memset(v, 0, VNET_HDR_LEN);
            v[0] = VNET_F_DATA_VALID;
            write_tun(ctx, tun_fd, v, VNET_HDR_LEN + len);
        } else {
            write_tun(ctx, tun_fd, ip, len);
        }
        return;
    }
    plen = len - ihl - thl;
    if (slot && can_join(slot, ip, ihl, thl, plen)) {
        memcpy(slot->buf + VNET_HDR_LEN + slot->len, ip + ihl + thl, plen);
        slot->len += plen;
        slot->next_seq += plen;
        slot->count++;
        if (plen < slot->seg) slot->closed = 1;
        if (!udp && (flags & TCP_PSH)) { slot->psh = 1; slot->closed = 1; }
        return;
    }
    if (slot) { gro_write_item(ctx, tun_fd, slot); free_slot = slot; }
    if (!free_slot) { gro_write_item(ctx, tun_fd, &ctx->gro[0]); free_slot = &ctx->gro[0]; }
    gro_item *it = free_slot;
    memcpy(it->buf + VNET_HDR_LEN, ip, len);
    it->used = 1;
    it->ihl = ihl;
    it->thl = thl;
    it->len = len;
    it->seg = plen ? plen : 1;
    it->udp = udp;
    it->next_seq = udp ? 0 : get_be32(ip + ihl + 4) + plen;
    it->count = 1;
    it->psh = 0;
    it->closed = plen == 0 || (!udp && (flags & TCP_PSH));
    /* the first segment's PSH stays in its own header copy */
}
