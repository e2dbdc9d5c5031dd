/* outside: UDP -> TUN.
 *
 *   poll(UDP) -> recvmmsg (with UDP GRO on, each buffer may hold many datagrams of one
 *   size, cut at the size the kernel reports) -> per datagram: type -> receiver index
 *   -> replay pre-check -> open in place -> replay update -> the inner source must lie
 *   in the peer's subnet (cryptokey routing), the destination in this host's lease,
 *   the inbound firewall (firewall.c) lets it in -> gro.c joins TCP segments of a flow
 *   into super-packets -> write(TUN).
 *   Every datagram starts type · version · reserved (zero): another version or
 *   reserved bits are counted drops. Handshakes (also inside type 5) pass the
 *   mac1 / rate limit / cookie gate (cookie.c) before they are copied out to Python;
 *   so do control and relayed packets.
 */
#include "internal.h"

#include <errno.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sodium.h>
#include <unistd.h>

#ifndef UDP_GRO
#define UDP_GRO 104
#endif

static int copy_ctrl(fn_ctx *ctx, fn_ctrl *c, int kind, int peer, const uint8_t *data, uint32_t len,
                     const struct sockaddr_storage *from, socklen_t fromlen) {
    if (len > FN_CTRL_MAX) { ctx->drops_out[FN_DROP_TOO_BIG]++; return 0; }
    c->kind = kind; c->peer = peer; c->len = len;
    c->addrlen = fromlen > sizeof(c->addr) ? sizeof(c->addr) : fromlen;
    memcpy(c->addr, from, c->addrlen);
    if (len) memcpy(c->data, data, len);
    return 1;
}

/* A node relay (FN_RELAY_OTHERS) receives what is addressed to it and forwards the
 * rest: a data or control packet under one of our receive indexes, or a handshake
 * message with our mac1. A cookie reply goes up to be forwarded; Python keeps it when
 * it answers one of our handshakes (its index is in Python's table, not in rx). */
static int addressed_to_us(fn_ctx *ctx, const uint8_t *pkt, uint32_t len) {
    if (len < 4) return 0;
    if (pkt[0] == 1 || pkt[0] == 2) return mac1_for_us(ctx, pkt, len);
    if ((pkt[0] == TYPE_DATA || pkt[0] == TYPE_CONTROL) && len >= FN_HEADER + FN_TAG) {
        uint32_t index = get_le32(pkt + 4);
        return index != 0 && ctx->rx[index & ctx->rx_mask].index == index;
    }
    return 0;
}

/* one datagram; returns how many control items it produced. relayed_from: the sender's
 * id at the relay when the datagram came wrapped in type 5, else NOT_RELAYED */
static int receive(fn_ctx *ctx, int tun_fd, uint8_t *pkt, uint32_t len, const struct sockaddr_storage *from,
                   socklen_t fromlen, int64_t now, fn_ctrl *ctrl, int room, uint32_t relayed_from) {
    uint8_t nonce[12];
    int made = 0;
    if (len < 4) { ctx->drops_out[FN_DROP_SHORT]++; return 0; }
    uint8_t type = pkt[0];
    if (pkt[1] != FN_WIRE_VERSION) {
        /* another protocol version: Python logs it once per address; a peer that
         * only sends data never handshook with us, so handshakes are enough */
        ctx->drops_out[FN_DROP_VERSION]++;
        if ((type == 1 || type == 2 || type == TYPE_RELAYED) && relayed_from == NOT_RELAYED && room > 0 &&
            source_allowed(ctx, from, now))
            return copy_ctrl(ctx, ctrl, FN_CTRL_VERSION, -1, pkt, 4, from, fromlen);
        return 0;
    }
    if (pkt[2] | pkt[3]) { ctx->drops_out[FN_DROP_RESERVED]++; return 0; }
    if (type == TYPE_RELAYED && relayed_from == NOT_RELAYED) {
        if (len <= RELAY_HEADER) { ctx->drops_out[FN_DROP_SHORT]++; return 0; }
        uint8_t *inner = pkt + RELAY_HEADER;
        if (ctx->relay_mode == FN_RELAY_OFF ||
            (ctx->relay_mode == FN_RELAY_OTHERS && addressed_to_us(ctx, inner, len - RELAY_HEADER))) {
            /* through a relay, to us: the inner message is checked like a direct one
             * (data opened here, handshakes gated by inner type) */
            return receive(ctx, tun_fd, inner, len - RELAY_HEADER, from, fromlen, now, ctrl, room, get_le32(pkt + 4));
        }
        /* for another node: a lighthouse forwards it here between registered nodes
         * (relay.c), else a relay (a lighthouse or a node relay) forwards in Python;
         * handshakes it carries count against the sender. It forwards only for peers
         * at their direct endpoint (senders.c): a flood from other (spoofed) addresses
         * stops here, in C, and one sender gets a bounded share. */
        int sender = sender_slot(ctx, from, fromlen);
        if (sender < 0) { ctx->drops_out[FN_DROP_RELAY_SENDER]++; return 0; }
        int target = relay_target(ctx, sender, pkt, from, fromlen);
        if (!forward_budget(ctx, sender, now, target >= 0 ? RELAY_C_COST : 1000)) {
            ctx->drops_out[FN_DROP_RELAY_RATE]++;
            return 0;
        }
        if (target < 0 && room < 1) { ctx->drops_out[FN_DROP_CTRL_FULL]++; return 0; }
        if ((inner[0] == 1 || inner[0] == 2 || inner[0] == TYPE_COOKIE) && !forward_allowed(ctx, from, now)) {
            ctx->drops_out[FN_DROP_RATE_LIMITED]++;
            return 0;
        }
        if (target >= 0) {
            relay_queue(ctx, pkt, len, sender, target);
            return 0;
        }
        return copy_ctrl(ctx, ctrl, FN_CTRL_FORWARD, -1, pkt, len, from, fromlen);
    }
    if (type == 1 || type == 2 || type == TYPE_COOKIE) {
        if (room < 1) { ctx->drops_out[FN_DROP_CTRL_FULL]++; return 0; }
        if (!handshake_gate(ctx, pkt, len, from, fromlen, relayed_from, now)) return 0;
        /* a relayed one goes up whole, relay header included: pkt - RELAY_HEADER is it */
        uint32_t wrap = relayed_from == NOT_RELAYED ? 0 : RELAY_HEADER;
        return copy_ctrl(ctx, ctrl, FN_CTRL_RAW, -1, pkt - wrap, len + wrap, from, fromlen);
    }
    if (type != TYPE_DATA && type != TYPE_CONTROL) { ctx->drops_out[FN_DROP_TYPE]++; return 0; }
    if (len < FN_HEADER + FN_TAG) { ctx->drops_out[FN_DROP_SHORT]++; return 0; }
    uint32_t index = get_le32(pkt + 4);
    rx_t *rx = &ctx->rx[index & ctx->rx_mask];
    if (!index || rx->index != index) { ctx->drops_out[FN_DROP_INDEX]++; return 0; }
    uint64_t counter = get_le64(pkt + 8);
    peer_t *p = &ctx->peers[rx->peer];
    if (!replay_check(&rx->replay, counter)) {
        ctx->drops_out[FN_DROP_REPLAY]++;
        p->rx_dropped++;
        return 0;
    }
    make_nonce(nonce, counter);
    uint32_t ptlen = len - FN_HEADER - FN_TAG;
    int bad = rx->cipher == FN_CIPHER_AES256GCM ? aes_open(rx->aes, pkt, len - FN_HEADER, nonce)
                                                : aead_open(pkt, len - FN_HEADER, nonce, rx->key);
    if (bad) {
        ctx->drops_out[FN_DROP_AUTH]++;
        p->rx_dropped++;
        return 0;
    }
    replay_update(&rx->replay, counter);
    p->last_rx_ns = now;
    if (__atomic_load_n(&p->next_valid, __ATOMIC_ACQUIRE) && __atomic_load_n(&p->next_rx_index, __ATOMIC_RELAXED) == index &&
        !__atomic_load_n(&p->next_confirmed, __ATOMIC_RELAXED)) {
        /* the initiator has our keys: the staged send key may go into use; packets
         * held for this peer wait for the inside thread's next pass (a ring, not a
         * kick, as after fn_peer_tx_key: once per handshake) */
        __atomic_store_n(&p->next_confirmed, 1, __ATOMIC_RELEASE);
        idle_ring(ctx, ROLE_IN);
    }
    int moved = relayed_from == NOT_RELAYED ? !same_addr(from, fromlen, p) : (!p->relay || p->relay_id != relayed_from);
    if (moved && p->roam_batch != ctx->batch_id && room > made) {
        /* one note per peer per batch; a relayed one carries the sender's relay id */
        uint8_t rid[4];
        put_le32(rid, relayed_from);
        p->roam_batch = ctx->batch_id;
        made += copy_ctrl(ctx, ctrl + made, FN_CTRL_ROAM, rx->peer, rid, relayed_from == NOT_RELAYED ? 0 : 4, from,
                          fromlen);
    }
    uint8_t *ip = pkt + FN_HEADER;
    if (type == TYPE_CONTROL) {
        if (room <= made) { ctx->drops_out[FN_DROP_CTRL_FULL]++; return made; }
        return made + copy_ctrl(ctx, ctrl + made, FN_CTRL_DECRYPTED, rx->peer, ip, ptlen, from, fromlen);
    }
    if (ptlen == 0) return made;  /* keepalive */
    if (ptlen < 20 || (ip[0] >> 4) != 4) { ctx->drops_out[FN_DROP_NOTIPV4]++; return made; }
    /* a peer without a subnet (mask /32, subnet 0) owns no address, not even 0.0.0.0 */
    if (p->mask == 0xffffffffu || (get_be32(ip + 12) & p->mask) != p->subnet) {
        ctx->drops_out[FN_DROP_SOURCE]++;
        p->rx_dropped++;
        return made;
    }
    if (!ctx->local_valid || (get_be32(ip + 16) & ctx->local_mask) != ctx->local_net) {
        ctx->drops_out[FN_DROP_DESTINATION]++;
        p->rx_dropped++;
        return made;
    }
    if (!fw_allow_inbound(ctx, p, ip, ptlen, now)) {
        ctx->drops_out[FN_DROP_FIREWALL]++;
        p->rx_dropped++;
        return made;
    }
    p->rx_packets++;
    p->rx_bytes += ptlen;
    gro_receive(ctx, tun_fd, ip, ptlen);
    return made;
}

/* One receive buffer: with UDP GRO, datagrams of `seg` bytes back to back (the last may
 * be shorter). Returns how many control items it produced. */
int outside_buffer(fn_ctx *ctx, int tun_fd, uint8_t *base, uint32_t total, uint32_t seg,
                   const struct sockaddr_storage *from, socklen_t fromlen, int64_t now, fn_ctrl *ctrl, int room) {
    int made = 0;
    if (total == 0) { ctx->drops_out[FN_DROP_SHORT]++; return 0; }
    if (seg == 0) seg = total;
    for (uint32_t off = 0; off < total; off += seg) {
        uint32_t len = total - off < seg ? total - off : seg;
        ctx->io[FN_IO_UDP_DGRAMS_IN]++;
        made += receive(ctx, tun_fd, base + off, len, from, fromlen, now, ctrl + made, room - made, NOT_RELAYED);
    }
    return made;
}

/* one recvmmsg and the processing of what it brought; rx_lock held by the caller.
 * Returns the number of messages received, 0 when there was nothing, or -errno. */
static int outside_pass(fn_ctx *ctx, int udp_fd, int tun_fd, fn_ctrl *ctrl, int *nctrl, int max_ctrl) {
    struct mmsghdr msgs[FN_BATCH];
    struct iovec iov[FN_BATCH];
    struct sockaddr_storage from[FN_BATCH];
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } cbuf[FN_BATCH];
    uint32_t slot = ctx->udp_gro ? GRO_SLOT : ctx->stride;
    int slots = ctx->udp_gro ? GRO_SLOTS : FN_BATCH;
    /* keep room for control items: at most two per datagram */
    int want = (max_ctrl - *nctrl) / 2;
    if (want > slots) want = slots;
    if (want <= 0) return 0;
    for (int i = 0; i < want; i++) {
        iov[i].iov_base = ctx->in_arena + (size_t)i * slot;
        iov[i].iov_len = slot;
        memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        msgs[i].msg_hdr.msg_control = cbuf[i].buf;
        msgs[i].msg_hdr.msg_controllen = sizeof(cbuf[i].buf);
    }
    int n = recvmmsg(udp_fd, msgs, want, MSG_DONTWAIT, NULL);
    ctx->fwd_fd = udp_fd;  /* what relay.c forwards leaves by this socket */
    if (n <= 0) return n < 0 && fd_unusable(errno) ? -errno : 0;
    ctx->io[FN_IO_UDP_RECVS]++;
    int64_t now = fn_now_ns();
    ctx->batch_id++;
    for (int i = 0; i < n; i++) {
        uint32_t total = msgs[i].msg_len, seg = total;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int g;
                memcpy(&g, CMSG_DATA(c), sizeof(g));
                if (g > 0) seg = (uint32_t)g;
            }
        }
        /* longer than the slot: cut by the kernel, it cannot authenticate */
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) { ctx->drops_out[FN_DROP_TOO_BIG]++; continue; }
        *nctrl += outside_buffer(ctx, tun_fd, iov[i].iov_base, total, seg, &from[i], msgs[i].msg_hdr.msg_namelen,
                                 now, ctrl + *nctrl, max_ctrl - *nctrl);
    }
    gro_flush(ctx, tun_fd);  /* nothing waits past the end of a receive batch */
    relay_flush(ctx);        /* before the buffers are received into again */
    cookie_flush(ctx, udp_fd);
    return n;
}

/* The socket pass run by a thread that does not own it: the inside thread waiting,
 * awake, for the answer to what it just sent, or covering for the parked outside
 * thread (idle.c). Control items are kept for the outside thread, which is rung to
 * take them up to Python; so is it when a pass finds load. Returns datagrams read. */
int help_outside(fn_ctx *ctx, int udp_fd, int tun_fd) {
    if (udp_fd < 0 || pthread_mutex_trylock(&ctx->rx_lock) != 0) return 0;  /* the outside thread has it */
    uint64_t writes_before = ctx->io[FN_IO_TUN_WRITES], dgrams_before = ctx->io[FN_IO_UDP_DGRAMS_IN];
    int before = ctx->npending;
    int n = outside_pass(ctx, udp_fd, tun_fd, ctx->pending, &ctx->npending, FN_PENDING);
    int items = ctx->npending != before;
    int dgrams = (int)(ctx->io[FN_IO_UDP_DGRAMS_IN] - dgrams_before);
    pthread_mutex_unlock(&ctx->rx_lock);
    if (n <= 0) return 0;
    if (items) idle_ring(ctx, ROLE_OUT);
    else if (dgrams > SPIN_MAX_READS) idle_kick(ctx, ROLE_OUT);
    if (ctx->io[FN_IO_TUN_WRITES] != writes_before) help_inside(ctx, tun_fd, udp_fd);
    return dgrams;
}

/* After a small batch went out (a ping, a request): its answer usually comes back
 * within a round trip. Waiting for it awake, up to SPIN_NS, saves a wake-up on the
 * latency path; after a wait that caught nothing (one-way traffic), no waiting for
 * SPIN_BACKOFF_NS. `role`: the caller's. The inside thread does not wait while the
 * outside thread is at work: that one takes the answer itself, and the spin would only
 * burn a CPU the applications need (the TCP receiver's inside thread, sending ACKs, spent
 * ~2% of the engines' CPU so in one stream). */
void spin_for_answer(fn_ctx *ctx, int role, int udp_fd, int tun_fd) {
    int64_t now = fn_now_ns();
    if (!ctx->spin || udp_fd < 0 || now < ctx->spin_backoff_until) return;
    if (role == ROLE_IN && __atomic_load_n(&ctx->st[ROLE_OUT], __ATOMIC_RELAXED) == ST_ACTIVE) return;
    ctx->io[FN_IO_SPINS]++;
    int64_t until = now + SPIN_NS;
    while (!ctx->stop && fn_now_ns() < until) {
        if (help_outside(ctx, udp_fd, tun_fd) > 0) {
            idle_yield(ctx);
            ctx->io[FN_IO_SPIN_HITS]++;
            return;
        }
        __builtin_ia32_pause();
    }
    ctx->spin_backoff_until = fn_now_ns() + SPIN_BACKOFF_NS;
}

int fn_outside(fn_ctx *ctx, int udp_fd, int tun_fd, int timeout_ms, fn_ctrl *ctrl, int max_ctrl) {
    int nctrl = 0;
    idle_enter(ctx, ROLE_OUT);
    while (!ctx->stop && nctrl == 0) {
        pthread_mutex_lock(&ctx->rx_lock);
        /* what another thread received for Python goes up first */
        nctrl = take_queued(ctrl, ctx->pending, &ctx->npending, max_ctrl, sizeof(fn_ctrl));
        uint64_t writes_before = ctx->io[FN_IO_TUN_WRITES], dgrams_before = ctx->io[FN_IO_UDP_DGRAMS_IN];
        int n = outside_pass(ctx, udp_fd, tun_fd, ctrl, &nctrl, max_ctrl);
        int dgrams = (int)(ctx->io[FN_IO_UDP_DGRAMS_IN] - dgrams_before);
        pthread_mutex_unlock(&ctx->rx_lock);
        if (n < 0) return idle_leave(ctx, ROLE_OUT, n);
        /* replies the write produced, or the TUN of a parked inside thread; before the
         * moderation pause, as the inside thread would take them at once */
        int helped = ctx->io[FN_IO_TUN_WRITES] != writes_before || idle_parked(ctx, ROLE_IN)
                         ? help_inside(ctx, tun_fd, udp_fd) : 0;
        idle_moderate(ctx, dgrams);
        if ((n > 0 && n <= SPIN_MAX_READS) || (helped > 0 && helped <= SPIN_MAX_READS)) idle_yield(ctx);
        if (n > 0 || nctrl > 0 || helped > 0) continue;
        ctx->io[FN_IO_WAKEUPS_OUT]++;
        int w = idle_wait(ctx, ROLE_OUT, udp_fd, tun_fd, timeout_ms);
        if (w < 0) return idle_leave(ctx, ROLE_OUT, w);
        if (w == 0) return idle_leave(ctx, ROLE_OUT, nctrl);  /* timeout: back to Python */
        if (w & IDLE_OTHER) {  /* a local request: wait for its answer as the inside thread would */
            int reads = help_inside(ctx, tun_fd, udp_fd);
            if (reads > 0 && reads <= SPIN_MAX_READS) spin_for_answer(ctx, ROLE_OUT, udp_fd, tun_fd);
        }
    }
    return idle_leave(ctx, ROLE_OUT, nctrl);
}
