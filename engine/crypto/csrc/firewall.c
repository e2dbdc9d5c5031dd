/* The inbound firewall (like Nebula's): traffic from peers into this host is checked
 * against rules by protocol, local port, the peer's certificate groups and source
 * range; replies to connections this host opened are let in by connection tracking.
 * Outbound traffic is not filtered. Inactive unless rules are set (no cost then). */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17

/* (proto, this side's port, the other side's port) and (this address, the other's) of
 * a flow as seen from this host; for ICMP echo the port is the echo id */
static int flow_of(const uint8_t *ip, uint32_t len, int outbound, uint64_t *a, uint64_t *b) {
    uint32_t ihl = (ip[0] & 15) * 4u;
    if (ihl < 20 || len < ihl) return -1;
    uint8_t proto = ip[9];
    uint16_t sport = 0, dport = 0;
    int first_fragment = (get_be16(ip + 6) & 0x1fff) == 0;
    if ((proto == PROTO_TCP || proto == PROTO_UDP) && first_fragment && len >= ihl + 4) {
        sport = get_be16(ip + ihl);
        dport = get_be16(ip + ihl + 2);
    } else if (proto == PROTO_ICMP && len >= ihl + 8) {
        uint8_t type = ip[ihl];
        if (type != 8 && type != 0) return -1;  /* echo request / reply only */
        sport = dport = get_be16(ip + ihl + 4);
    }
    uint32_t src = get_be32(ip + 12), dst = get_be32(ip + 16);
    uint16_t mine = outbound ? sport : dport, theirs = outbound ? dport : sport;
    uint32_t me = outbound ? src : dst, them = outbound ? dst : src;
    *a = (uint64_t)proto << 32 | (uint64_t)mine << 16 | theirs;
    *b = (uint64_t)me << 32 | them;
    return 0;
}

static uint32_t ct_slot(uint64_t a, uint64_t b) {
    uint64_t h = (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full);
    return (uint32_t)(h >> 48) & (CT_ENTRIES - 1);
}

void fw_track_outbound(fn_ctx *ctx, const uint8_t *ip, uint32_t len, int64_t now) {
    uint64_t a, b;
    if (!ctx->fw_active || flow_of(ip, len, 1, &a, &b) < 0) return;
    ct_entry *e = &ctx->ct[ct_slot(a, b)];
    __atomic_store_n(&e->key_a, a, __ATOMIC_RELAXED);
    __atomic_store_n(&e->key_b, b, __ATOMIC_RELAXED);
    __atomic_store_n(&e->expires_ns, now + CT_TIMEOUT_NS, __ATOMIC_RELEASE);
}

int fw_allow_inbound(fn_ctx *ctx, const peer_t *p, const uint8_t *ip, uint32_t len, int64_t now) {
    if (!ctx->fw_active) return 1;
    uint64_t a, b;
    int has_flow = flow_of(ip, len, 0, &a, &b) == 0;
    if (has_flow) {
        const ct_entry *e = &ctx->ct[ct_slot(a, b)];
        if (__atomic_load_n(&e->expires_ns, __ATOMIC_ACQUIRE) > now &&
            __atomic_load_n(&e->key_a, __ATOMIC_RELAXED) == a && __atomic_load_n(&e->key_b, __ATOMIC_RELAXED) == b)
            return 1;  /* a reply to a flow this host opened */
    }
    uint8_t proto = ip[9];
    uint16_t port = has_flow ? (uint16_t)(a >> 16) : 0;
    uint32_t src = get_be32(ip + 12);
    for (int i = 0; i < ctx->fw_nrules; i++) {
        const fw_rule *r = &ctx->fw_rules[i];
        if (r->proto && r->proto != proto) continue;
        if (proto != PROTO_ICMP && (port < r->port_lo || port > r->port_hi)) continue;
        if (r->groups && !(r->groups & p->groups)) continue;
        if ((src & r->mask) != r->net) continue;
        return 1;
    }
    return ctx->fw_default_allow;
}

int fn_firewall_set(fn_ctx *ctx, int default_allow, const uint8_t *protos, const uint16_t *port_lo,
                    const uint16_t *port_hi, const uint64_t *groups, const uint32_t *nets, const uint32_t *masks,
                    int n) {
    if (n < 0 || n > FN_FW_MAX_RULES) return -EINVAL;
    if (!ctx->ct) {
        ctx->ct = calloc(CT_ENTRIES, sizeof(ct_entry));
        if (!ctx->ct) return -ENOMEM;
    }
    pthread_mutex_lock(&ctx->rx_lock);
    for (int i = 0; i < n; i++) {
        ctx->fw_rules[i] = (fw_rule){.proto = protos[i], .port_lo = port_lo[i], .port_hi = port_hi[i],
                                     .groups = groups[i], .net = nets[i] & masks[i], .mask = masks[i]};
    }
    ctx->fw_nrules = n;
    ctx->fw_default_allow = default_allow;
    ctx->fw_active = !(default_allow && n == 0);
    pthread_mutex_unlock(&ctx->rx_lock);
    return 0;
}

/* Under rx_lock, which every receive pass holds: a pass judges all its packets by one
 * value, and the control plane sets a new session's groups before its receive key
 * (fn_rx_add, same lock), so no packet under the new key meets the old groups. */
int fn_peer_groups(fn_ctx *ctx, int slot, uint64_t groups) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    pthread_mutex_lock(&ctx->rx_lock);
    ctx->peers[slot].groups = groups;
    pthread_mutex_unlock(&ctx->rx_lock);
    return 0;
}
