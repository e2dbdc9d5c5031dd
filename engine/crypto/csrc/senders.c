/* senders: peer slots by direct endpoint, for a relay's sender check (outside.c).
 *
 * A relay (a lighthouse, FN_RELAY_ALL, or a node relay, FN_RELAY_OTHERS) forwards a
 * type 5 only from the direct endpoint of one of its peers; junk from any other
 * (spoofed) address is dropped in C, never handed to Python. A lighthouse holds a
 * session per node (10,000 and more) and endpoints change often (NAT rebinding,
 * roaming, TCP relay connections), so the table is changed one entry at a time when
 * one peer's endpoint or relay changes, never rebuilt.
 *
 * Open addressing with linear probing over 2 x max_peers entries (a power of two): a
 * peer slot is in it at most once, so it is at most half full and every probe ends at
 * an empty entry. Deletion shifts the entries after it back (no tombstones), so
 * lookups stay as short as the live entries make them. Each entry keeps its hash: a
 * lookup of an address nobody has (the flood case) touches no peer.
 *
 * Changes run under tx_lock and rx_lock (fastpath.c); lookups under rx_lock, which
 * every receive pass holds: a lookup never sees a half-made change.
 */
#include "internal.h"

#include <stdlib.h>

static uint32_t addr_hash(const struct sockaddr_storage *a) {
    uint32_t h = 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a;
        h = x->sin_addr.s_addr ^ ((uint32_t)x->sin_port << 16);
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a;
        for (int i = 0; i < 16; i += 4) h = (h ^ get_le32(x->sin6_addr.s6_addr + i)) * 0x9e3779b1u;
        h ^= x->sin6_port;
    }
    return (h * 0x9e3779b1u) ^ (h >> 15);
}

int senders_init(fn_ctx *ctx) {
    uint32_t n = 2;
    while (n < (uint32_t)ctx->max_peers * 2) n <<= 1;
    ctx->senders = malloc((size_t)n * sizeof(sender_entry));
    if (!ctx->senders) return -1;
    ctx->senders_mask = n - 1;
    for (uint32_t i = 0; i < n; i++) ctx->senders[i].slot = -1;
    return 0;
}

/* the peer in `slot` leaves the table (before its endpoint or relay changes) */
void senders_remove(fn_ctx *ctx, int slot) {
    peer_t *p = &ctx->peers[slot];
    if (!p->in_senders) return;
    p->in_senders = 0;
    sender_entry *t = ctx->senders;
    uint32_t m = ctx->senders_mask, i = addr_hash(&p->endpoint) & m;
    while (t[i].slot != slot) {
        if (t[i].slot < 0) return;  /* cannot happen: in_senders says it is in the chain */
        i = (i + 1) & m;
    }
    /* backward shift: an entry after the hole moves into it unless its home lies
     * (cyclically) after the hole, up to the entry itself */
    for (uint32_t j = i;;) {
        j = (j + 1) & m;
        if (t[j].slot < 0) break;
        uint32_t home = t[j].hash & m;
        if (((j - home) & m) >= ((j - i) & m)) {
            t[i] = t[j];
            i = j;
        }
    }
    t[i].slot = -1;
}

/* the peer in `slot` enters the table if it is reached directly at a known endpoint */
void senders_add(fn_ctx *ctx, int slot) {
    peer_t *p = &ctx->peers[slot];
    if (p->in_senders || p->relay || p->endpoint_len == 0) return;
    sender_entry *t = ctx->senders;
    uint32_t m = ctx->senders_mask, h = addr_hash(&p->endpoint), i = h & m;
    while (t[i].slot >= 0) i = (i + 1) & m;  /* at most half full: an empty entry comes */
    t[i].slot = slot;
    t[i].hash = h;
    p->in_senders = 1;
}

/* The slot of the peer whose direct endpoint is `from`, or -1. Under rx_lock. */
int sender_slot(fn_ctx *ctx, const struct sockaddr_storage *from, socklen_t fromlen) {
    const sender_entry *t = ctx->senders;
    uint32_t m = ctx->senders_mask, h = addr_hash(from);
    for (uint32_t i = h & m; t[i].slot >= 0; i = (i + 1) & m)
        if (t[i].hash == h && same_addr(from, fromlen, &ctx->peers[t[i].slot])) return t[i].slot;
    return -1;
}

/* fn(ctx, slot) for every peer but `keep` whose direct endpoint is `at` (relay.c: the
 * node that registered last from an address is its only member, as in the registry).
 * fn must not change the table. Under tx_lock and rx_lock. */
void senders_each_at(fn_ctx *ctx, const struct sockaddr_storage *at, socklen_t atlen, int keep,
                     void (*fn)(fn_ctx *, int)) {
    const sender_entry *t = ctx->senders;
    uint32_t m = ctx->senders_mask, h = addr_hash(at);
    for (uint32_t i = h & m; t[i].slot >= 0; i = (i + 1) & m)
        if (t[i].slot != keep && t[i].hash == h && same_addr(at, atlen, &ctx->peers[t[i].slot])) fn(ctx, t[i].slot);
}
