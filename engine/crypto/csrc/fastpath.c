/* Flatnet data path: context, peers, keys, replay window, control sealing.
 *
 * The pipelines are one file each (Nebula's naming): inside.c (TUN -> UDP) and
 * outside.c (UDP -> TUN); offload.c holds TSO segmentation and checksums.
 * Nothing here allocates per packet; nothing here calls back into Python.
 */
#include "internal.h"

#include <errno.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

int fn_init(void) {
    aead_large_init();  /* without it every length goes to libsodium */
    return sodium_init();
}
int fn_version(void) { return FN_VERSION; }

int64_t fn_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint32_t prefix_mask(uint32_t prefix) {
    return prefix == 0 ? 0 : 0xffffffffu << (32 - prefix);
}

/* ---- replay window (RFC 6479): a ring of bit words; check before, update after auth */
int replay_check(const fn_replay *r, uint64_t c) {
    if (c >= REJECT_AFTER_MESSAGES) return 0;
    if (c > r->top) return 1;
    if (r->top - c > REPLAY_WINDOW) return 0;
    return !(r->bitmap[(c >> 6) & (FN_REPLAY_WORDS - 1)] & ((uint64_t)1 << (c & 63)));
}
void replay_update(fn_replay *r, uint64_t c) {
    if (c > r->top) {
        uint64_t current = r->top >> 6, index = c >> 6, diff = index - current;
        if (diff > FN_REPLAY_WORDS) diff = FN_REPLAY_WORDS;
        for (uint64_t i = 1; i <= diff; i++) r->bitmap[(current + i) & (FN_REPLAY_WORDS - 1)] = 0;
        r->top = c;
    }
    r->bitmap[(c >> 6) & (FN_REPLAY_WORDS - 1)] |= (uint64_t)1 << (c & 63);
}
int fn_replay_accept(fn_replay *r, uint64_t c) {
    if (!replay_check(r, c)) return 0;
    replay_update(r, c);
    return 1;
}

/* ---- context */
/* aligned_alloc wants a size that is a multiple of the alignment (C11; ASan refuses
 * others, glibc happens to accept them) */
static void *alloc64(size_t n) { return aligned_alloc(64, (n + 63) & ~(size_t)63); }

fn_ctx *fn_new(uint32_t overlay_net, uint32_t overlay_prefix, uint32_t mtu) {
    return fn_new_sized(overlay_net, overlay_prefix, mtu, FN_MAX_PEERS, FN_RX_SLOTS);
}

/* A lighthouse holds one session per node: its tables are sized for the network
 * (max_peers sessions, rx_slots receive indexes, a power of two), an engine's are not. */
fn_ctx *fn_new_sized(uint32_t overlay_net, uint32_t overlay_prefix, uint32_t mtu, int max_peers,
                     uint32_t rx_slots) {
    if (overlay_prefix < 8 || overlay_prefix > 24 || mtu < 576 || mtu > 9000) return NULL;
    if (max_peers < 2 || max_peers > FN_MAX_PEERS_LIMIT || rx_slots < 2 || rx_slots > FN_MAX_PEERS_LIMIT * 4
        || (rx_slots & (rx_slots - 1))) return NULL;
    fn_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) return NULL;
    ctx->efd[0] = ctx->efd[1] = -1;
    ctx->fwd_fd = -1;
    /* calloc: pages are touched only when a slot is used, so a large table costs
     * address space, not resident memory, until sessions fill it */
    ctx->peers = calloc((size_t)max_peers, sizeof(peer_t));
    ctx->rx = calloc(rx_slots, sizeof(rx_t));
    ctx->max_peers = max_peers;
    ctx->rx_mask = rx_slots - 1;
    ctx->forward_rl = calloc((size_t)max_peers, sizeof(rate_bucket));  /* zero: a full bucket */
    if (!ctx->peers || !ctx->rx || !ctx->forward_rl || senders_init(ctx) != 0) { fn_free(ctx); return NULL; }
    pthread_mutex_init(&ctx->tx_lock, NULL);
    pthread_mutex_init(&ctx->rx_lock, NULL);
    pthread_mutex_init(&ctx->idle_lock, NULL);
    ctx->st[ROLE_IN] = ctx->st[ROLE_OUT] = ST_AWAY;  /* no thread in C yet (idle.c) */
    ctx->efd[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    ctx->efd[1] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ctx->efd[0] < 0 || ctx->efd[1] < 0) { fn_free(ctx); return NULL; }
    ctx->overlay_mask = prefix_mask(overlay_prefix);
    ctx->overlay_net = overlay_net & ctx->overlay_mask;
    ctx->mtu = mtu;
    ctx->rl_global_rate = RL_GLOBAL;
    /* a receive slot without UDP GRO: a full-size packet may come wrapped in a relay header */
    ctx->stride = (RELAY_HEADER + FN_HEADER + mtu + FN_TAG + 63) & ~63u;
    for (int i = 0; i < ROUTE_ENTRIES; i++) ctx->route[i] = -1;
    ctx->stage = alloc64(VNET_HDR_LEN + MAX_SUPER + 64);
    ctx->out_arena = alloc64(OUT_ARENA);
    ctx->in_arena = alloc64((size_t)GRO_SLOT * GRO_SLOTS);
    if (!ctx->stage || !ctx->out_arena || !ctx->in_arena) { fn_free(ctx); return NULL; }
    for (int i = 0; i < GRO_ITEMS; i++) {
        ctx->gro[i].buf = alloc64(VNET_HDR_LEN + MAX_SUPER + 64);
        if (!ctx->gro[i].buf) { fn_free(ctx); return NULL; }
    }
    for (int i = 0; i < HOLD_SLOTS; i++) {
        ctx->held[i].buf = malloc(VNET_HDR_LEN + MAX_SUPER);
        if (!ctx->held[i].buf) { fn_free(ctx); return NULL; }
    }
    return ctx;
}

/* an rx slot or a peer's keys gone: their AES contexts freed (cleansed) first */
static void rx_wipe(rx_t *rx) {
    aes_free(rx->aes);
    sodium_memzero(rx, sizeof(*rx));
}

static void tx_wipe_keys(peer_t *p) {
    aes_free(p->tx_aes);
    aes_free(p->next_aes);
    p->tx_aes = p->next_aes = NULL;
    p->tx_cipher = p->next_cipher = FN_CIPHER_CHACHA;
    sodium_memzero(p->tx_key, FN_KEY);
    sodium_memzero(p->next_key, FN_KEY);
}

void fn_free(fn_ctx *ctx) {
    if (!ctx) return;
    if (ctx->peers)
        for (int i = 0; i < ctx->max_peers; i++) tx_wipe_keys(&ctx->peers[i]);
    if (ctx->rx)
        for (uint32_t i = 0; i <= ctx->rx_mask; i++) aes_free(ctx->rx[i].aes);
    if (ctx->peers) sodium_memzero(ctx->peers, (size_t)ctx->max_peers * sizeof(peer_t));
    if (ctx->rx) sodium_memzero(ctx->rx, ((size_t)ctx->rx_mask + 1) * sizeof(rx_t));
    free(ctx->peers);
    free(ctx->rx);
    free(ctx->senders);
    free(ctx->forward_rl);
    free(ctx->member_slot);
    sodium_memzero(ctx->cookie_secret, sizeof(ctx->cookie_secret));
    free(ctx->stage);
    free(ctx->out_arena);
    free(ctx->in_arena);
    free(ctx->ct);
    for (int i = 0; i < GRO_ITEMS; i++) free(ctx->gro[i].buf);
    for (int i = 0; i < HOLD_SLOTS; i++) free(ctx->held[i].buf);
    for (int i = 0; i < 2; i++)
        if (ctx->efd[i] >= 0) close(ctx->efd[i]);  /* set right after calloc: a valid fd or -1 */
    free(ctx);
}

void fn_stop(fn_ctx *ctx) {
    ctx->stop = 1;
    idle_ring(ctx, ROLE_IN);
    idle_ring(ctx, ROLE_OUT);
}

void fn_set_offloads(fn_ctx *ctx, int vnet, int udp_gso, int udp_gro) {
    ctx->vnet = vnet;
    ctx->udp_gso = udp_gso;
    ctx->udp_gro = udp_gro;
}

void fn_set_spin(fn_ctx *ctx, int on) { ctx->spin = on; }
/* set while the data path runs (SIGHUP): one aligned word, read once per pass */
void fn_set_moderation(fn_ctx *ctx, uint32_t usec) {
    __atomic_store_n(&ctx->moderation_ns, (int64_t)usec * 1000, __ATOMIC_RELAXED);
}

int fn_route_unpend(fn_ctx *ctx, int route) {
    if (route < 0 || route >= ROUTE_ENTRIES) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    if (ctx->route[route] == ROUTE_PENDING) ctx->route[route] = -1;
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}
void fn_set_tun_uso(fn_ctx *ctx, int on) { ctx->tun_uso = on; }
void fn_set_relay_mode(fn_ctx *ctx, int mode) {
    ctx->relay_mode = mode == FN_RELAY_ALL || mode == FN_RELAY_OTHERS ? mode : FN_RELAY_OFF;
}
void fn_set_handshake_limit(fn_ctx *ctx, uint32_t per_second) {
    pthread_mutex_lock(&ctx->rx_lock);
    ctx->rl_global_rate = per_second;
    ctx->rl_global.last_ns = 0;  /* refilled to the new burst at the next message */
    pthread_mutex_unlock(&ctx->rx_lock);
}

/* This host's lease: a decrypted packet goes to the TUN only when its destination lies
 * inside it. A peer may otherwise reach whatever this host routes (its LAN, other
 * bridges, 169.254.169.254). Until it is set, every decrypted packet is dropped. */
int fn_set_local(fn_ctx *ctx, uint32_t subnet, uint32_t prefix) {
    if (prefix > 24 || route_index(ctx, subnet) < 0) return -EINVAL;
    pthread_mutex_lock(&ctx->rx_lock);
    ctx->local_mask = prefix_mask(prefix);
    ctx->local_net = subnet & ctx->local_mask;
    ctx->local_valid = 1;
    pthread_mutex_unlock(&ctx->rx_lock);
    return 0;
}

void fn_io_stats(fn_ctx *ctx, uint64_t *out) {
    for (int i = 0; i < FN_NIO; i++) out[i] = ctx->io[i];
}

int route_index(fn_ctx *ctx, uint32_t ip) {
    if ((ip & ctx->overlay_mask) != ctx->overlay_net) return -1;
    return (ip >> 8) & 0xffff;
}

static void route_fill(fn_ctx *ctx, uint32_t subnet, uint32_t mask, int32_t value) {
    /* a lease is a /24 or larger block inside the overlay: mark each /24 in it */
    uint32_t first = subnet & mask, count = mask == 0 ? 0 : ((~mask) >> 8) + 1;
    for (uint32_t i = 0; i < count; i++) {
        int idx = route_index(ctx, first + (i << 8));
        if (idx >= 0) ctx->route[idx] = value;
    }
}

int fn_peer_set(fn_ctx *ctx, int slot, uint32_t subnet, uint32_t prefix) {
    /* prefix FN_NO_SUBNET: a peer that owns no overlay addresses (a lighthouse, a relay) */
    if (slot < 0 || slot >= ctx->max_peers || (prefix > 24 && prefix != FN_NO_SUBNET)) return -EINVAL;
    if (prefix != FN_NO_SUBNET && route_index(ctx, subnet) < 0) return -ERANGE;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);
    peer_t *p = &ctx->peers[slot];
    if (p->active && p->mask != 0xffffffffu) route_fill(ctx, p->subnet, p->mask, -1);
    p->active = 1;
    if (prefix == FN_NO_SUBNET) {
        p->mask = 0xffffffffu;
        p->subnet = 0;  /* no inner source address matches: data from it is dropped */
    } else {
        p->mask = prefix_mask(prefix);
        p->subnet = subnet & p->mask;
        route_fill(ctx, p->subnet, p->mask, slot);
    }
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_remove(fn_ctx *ctx, int slot) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);
    peer_t *p = &ctx->peers[slot];
    if (p->active && p->mask != 0xffffffffu) route_fill(ctx, p->subnet, p->mask, -1);
    for (uint32_t i = 0; i <= ctx->rx_mask; i++)
        if (ctx->rx[i].index && ctx->rx[i].peer == slot) rx_wipe(&ctx->rx[i]);
    senders_remove(ctx, slot);
    relay_member_clear(ctx, slot);
    tx_wipe_keys(p);
    sodium_memzero(p, sizeof(*p));
    memset(&ctx->forward_rl[slot], 0, sizeof(rate_bucket));
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_endpoint(fn_ctx *ctx, int slot, const uint8_t *sa, uint32_t len) {
    if (slot < 0 || slot >= ctx->max_peers || len > sizeof(struct sockaddr_storage)) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);  /* the receive side reads the endpoint and the sender table */
    struct sockaddr_storage to;
    memset(&to, 0, sizeof(to));
    memcpy(&to, sa, len);
    /* a relay member (relay.c) only at the address it registered from */
    if (!same_addr(&to, (socklen_t)len, &ctx->peers[slot])) relay_member_clear(ctx, slot);
    senders_remove(ctx, slot);
    memcpy(&ctx->peers[slot].endpoint, sa, len);
    ctx->peers[slot].endpoint_len = len;
    senders_add(ctx, slot);
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

/* a context for `key` when `cipher` wants one: 0, -ENOTSUP, -ENOMEM, -EINVAL */
static int cipher_ctx(int cipher, const uint8_t *key, int enc, void **out) {
    *out = NULL;
    if (cipher == FN_CIPHER_CHACHA) return 0;
    if (cipher != FN_CIPHER_AES256GCM) return -EINVAL;
    if (!fn_aes_gcm_available()) return -ENOTSUP;
    *out = aes_new(key, enc);
    return *out ? 0 : -ENOMEM;
}

/* tx_lock held: `key` becomes the send key, with a fresh counter; the peer takes `aes` */
static void tx_install(peer_t *p, const uint8_t *key, uint32_t remote_index, int cipher, void *aes) {
    aes_free(p->tx_aes);
    p->tx_aes = aes;
    p->tx_cipher = cipher;
    memcpy(p->tx_key, key, FN_KEY);
    p->tx_remote_index = remote_index;
    p->tx_counter = 0;
    p->tx_valid = 1;
    p->want_handshake = 0;
}

int fn_peer_tx_key(fn_ctx *ctx, int slot, const uint8_t *key, uint32_t remote_index, int cipher) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    void *aes;
    int rc = cipher_ctx(cipher, key, 1, &aes);  /* made outside the lock: the data path keeps going */
    if (rc) return rc;
    pthread_mutex_lock(&ctx->tx_lock);
    peer_t *p = &ctx->peers[slot];
    tx_install(p, key, remote_index, cipher, aes);
    p->next_valid = 0;  /* an initiator's keys win over a responder key not yet confirmed */
    aes_free(p->next_aes);
    p->next_aes = NULL;
    sodium_memzero(p->next_key, FN_KEY);
    int held = 0;       /* packets held for this peer (the held table is under tx_lock) */
    for (int i = 0; i < HOLD_SLOTS && !held; i++)
        held = ctx->held[i].used && ctx->route[ctx->held[i].route] == slot;
    pthread_mutex_unlock(&ctx->tx_lock);
    /* they may go now: without the ring a parked inside thread sent them on its next
     * pass, up to 200 ms later (seen as a 214 ms first reply); no ring otherwise. A
     * ring, not a kick: a thread still marked ACTIVE may be past its last look at the
     * held table and about to sleep (idlereview); once per handshake costs nothing. */
    if (held) idle_ring(ctx, ROLE_IN);
    return 0;
}

/* A responder's keys: sending waits for the initiator's first packet on local_index
 * (tx_promote); until then the previous send key, if any, stays in use. */
int fn_peer_tx_key_staged(fn_ctx *ctx, int slot, const uint8_t *key, uint32_t remote_index, uint32_t local_index,
                          int cipher) {
    if (slot < 0 || slot >= ctx->max_peers || !local_index) return -EINVAL;
    void *aes;
    int rc = cipher_ctx(cipher, key, 1, &aes);
    if (rc) return rc;
    pthread_mutex_lock(&ctx->tx_lock);
    peer_t *p = &ctx->peers[slot];
    aes_free(p->next_aes);
    p->next_aes = aes;
    p->next_cipher = cipher;
    memcpy(p->next_key, key, FN_KEY);
    p->next_remote_index = remote_index;
    __atomic_store_n(&p->next_confirmed, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->next_rx_index, local_index, __ATOMIC_RELAXED);
    __atomic_store_n(&p->next_valid, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

/* tx_lock held: a staged key the initiator has confirmed becomes the send key */
void tx_promote(peer_t *p) {
    if (!p->next_valid || !__atomic_load_n(&p->next_confirmed, __ATOMIC_ACQUIRE)) return;
    tx_install(p, p->next_key, p->next_remote_index, p->next_cipher, p->next_aes);
    p->next_aes = NULL;
    sodium_memzero(p->next_key, FN_KEY);
    __atomic_store_n(&p->next_valid, 0, __ATOMIC_RELAXED);
}

int fn_peer_tx_clear(fn_ctx *ctx, int slot) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    tx_wipe_keys(&ctx->peers[slot]);
    ctx->peers[slot].tx_valid = 0;
    ctx->peers[slot].next_valid = 0;
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_relay(fn_ctx *ctx, int slot, int on, uint32_t relay_id) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);
    senders_remove(ctx, slot);
    if (on) relay_member_clear(ctx, slot);
    ctx->peers[slot].relay = on;
    ctx->peers[slot].relay_id = relay_id;
    senders_add(ctx, slot);
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_clear_want(fn_ctx *ctx, int slot) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    ctx->peers[slot].want_handshake = 0;
    return 0;
}

int fn_peer_stats_get(fn_ctx *ctx, int slot, fn_peer_stats *out) {
    if (slot < 0 || slot >= ctx->max_peers) return -EINVAL;
    peer_t *p = &ctx->peers[slot];
    out->tx_packets = p->tx_packets; out->tx_bytes = p->tx_bytes;
    out->rx_packets = p->rx_packets; out->rx_bytes = p->rx_bytes; out->rx_dropped = p->rx_dropped;
    out->last_tx_ns = p->last_tx_ns; out->last_rx_ns = p->last_rx_ns;
    out->tx_counter = p->tx_counter; out->tx_valid = p->tx_valid;
    out->want_handshake = p->want_handshake;
    return 0;
}

int fn_rx_add(fn_ctx *ctx, uint32_t local_index, int peer, const uint8_t *key, int cipher) {
    if (!local_index || peer < 0 || peer >= ctx->max_peers) return -EINVAL;
    void *aes;
    int rc = cipher_ctx(cipher, key, 0, &aes);
    if (rc) return rc;
    rx_t *rx = &ctx->rx[local_index & ctx->rx_mask];
    pthread_mutex_lock(&ctx->rx_lock);
    int busy = rx->index != 0 && rx->index != local_index;
    if (!busy) {
        rx_wipe(rx);
        rx->index = local_index;
        rx->peer = peer;
        memcpy(rx->key, key, FN_KEY);
        rx->cipher = cipher;
        rx->aes = aes;
        aes = NULL;
    }
    pthread_mutex_unlock(&ctx->rx_lock);
    aes_free(aes);
    return busy ? -EBUSY : 0;
}

int fn_rx_remove(fn_ctx *ctx, uint32_t local_index) {
    rx_t *rx = &ctx->rx[local_index & ctx->rx_mask];
    pthread_mutex_lock(&ctx->rx_lock);
    if (rx->index == local_index) rx_wipe(rx);
    pthread_mutex_unlock(&ctx->rx_lock);
    return 0;
}

void fn_drops(fn_ctx *ctx, uint64_t *out) {
    for (int i = 0; i < FN_NDROPS; i++) out[i] = ctx->drops_in[i] + ctx->drops_out[i];
}

/* ---- sealing: header (type, version, reserved, receiver index, counter), the
 * associated data, then ciphertext+tag. 0, or -1: OpenSSL refused to seal (only an
 * OpenSSL fault after its start-up self-test does this); the bytes are wiped and the
 * caller must not send them (it counts send_failed), the counter stays used. */
int seal_locked(peer_t *p, uint8_t type, uint8_t *pkt, const uint8_t *src, uint32_t ptlen) {
    uint8_t nonce[12];
    uint64_t counter = p->tx_counter++;
    put_type(pkt, type);
    put_le32(pkt + 4, p->tx_remote_index);
    put_le64(pkt + 8, counter);
    make_nonce(nonce, counter);
    if (p->tx_cipher == FN_CIPHER_AES256GCM) {
        return aes_seal(p->tx_aes, pkt, src, ptlen, nonce);  /* out of place: no copy first */
    }
    /* ChaCha20-Poly1305 seals in place (the compact code can do nothing else) */
    if (src != pkt + FN_HEADER) memcpy(pkt + FN_HEADER, src, ptlen);
    aead_seal(pkt, ptlen, nonce, p->tx_key);
    return 0;
}

int fn_seal_control(fn_ctx *ctx, int slot, const uint8_t *pt, uint32_t ptlen, uint8_t *out,
                    uint32_t outlen) {
    if (slot < 0 || slot >= ctx->max_peers || outlen < ptlen + FN_HEADER + FN_TAG) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    peer_t *p = &ctx->peers[slot];
    int rc;
    tx_promote(p);
    if (!p->tx_valid) rc = -ENOKEY;
    else if (p->tx_counter >= REJECT_AFTER_MESSAGES) rc = -EKEYEXPIRED;
    else {
        memmove(out + FN_HEADER, pt, ptlen);
        if (seal_locked(p, ptlen ? TYPE_CONTROL : TYPE_DATA, out, out + FN_HEADER, ptlen)) {
            rc = -EIO;
        } else {
            p->last_tx_ns = fn_now_ns();
            rc = (int)(ptlen + FN_HEADER + FN_TAG);
        }
    }
    pthread_mutex_unlock(&ctx->tx_lock);
    return rc;
}

/* ---- batch primitives (benchmarks and tests): slots of `stride` bytes, payload at
 * offset FN_HEADER, FN_TAG bytes of tailroom after it. */
int fn_seal_batch(const uint8_t *key, uint64_t counter0, uint8_t *buf, uint32_t stride,
                  const uint32_t *lens, int n, int cipher) {
    uint8_t nonce[12];
    void *aes;  /* one context for the batch, as the data path keeps one per session key */
    int rc = cipher_ctx(cipher, key, 1, &aes);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        uint8_t *pkt = buf + (size_t)i * stride;
        put_type(pkt, TYPE_DATA);
        put_le32(pkt + 4, 0);
        put_le64(pkt + 8, counter0 + i);
        make_nonce(nonce, counter0 + i);
        if (aes) aes_seal(aes, pkt, pkt + FN_HEADER, lens[i], nonce);
        else aead_seal(pkt, lens[i], nonce, key);
    }
    aes_free(aes);
    return n;
}

int fn_open_batch(const uint8_t *key, uint8_t *buf, uint32_t stride, uint32_t *lens, int n, int cipher) {
    uint8_t nonce[12];
    int ok = 0;
    void *aes;
    int rc = cipher_ctx(cipher, key, 0, &aes);
    if (rc) return rc;
    for (int i = 0; i < n; i++) {
        uint8_t *pkt = buf + (size_t)i * stride;
        make_nonce(nonce, get_le64(pkt + 8));
        if ((aes ? aes_open(aes, pkt, lens[i], nonce) : aead_open(pkt, lens[i], nonce, key)) == 0) {
            lens[i] -= FN_TAG;
            ok++;
        } else {
            lens[i] = 0;
        }
    }
    aes_free(aes);
    return ok;
}
