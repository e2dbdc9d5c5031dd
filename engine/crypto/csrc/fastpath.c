/* Flatnet data path. Flow of the two pipelines (Nebula's inside/outside naming):
 *
 *   fn_inside:  poll(TUN) -> read up to FN_BATCH packets into arena slots at offset
 *               FN_HEADER (headroom) -> per packet: IPv4 dst -> peer (route table by
 *               /24) -> header + seal in place -> one sendmmsg for the batch
 *   fn_outside: poll(UDP) -> recvmmsg up to FN_BATCH datagrams -> per datagram: type
 *               -> receiver index -> replay pre-check -> open in place -> replay
 *               update -> inner source must lie in the peer's subnet -> write(TUN);
 *               handshakes, control and relayed packets are copied out to Python.
 *
 * Nothing here allocates per packet; nothing here calls back into Python.
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#define REJECT_AFTER_MESSAGES ((uint64_t)1 << 60)
#define REPLAY_BITS (FN_REPLAY_WORDS * 64)
#define REPLAY_WINDOW (REPLAY_BITS - 64)
#define ROUTE_ENTRIES (1 << 16)
#define TYPE_DATA 3
#define TYPE_CONTROL 4

typedef struct {
    int active;
    uint32_t subnet, mask;                 /* allowed inner sources (cryptokey routing) */
    struct sockaddr_storage endpoint;
    socklen_t endpoint_len;
    int tx_valid;
    uint8_t tx_key[FN_KEY];
    uint32_t tx_remote_index;
    uint64_t tx_counter;
    int want_handshake;
    uint64_t tx_packets, tx_bytes;         /* written by the inside thread only */
    uint64_t rx_packets, rx_bytes, rx_dropped; /* written by the outside thread only */
    int64_t last_tx_ns, last_rx_ns;
} peer_t;

typedef struct {
    uint32_t index;                        /* full local index; 0 = free slot */
    int peer;
    uint8_t key[FN_KEY];
    fn_replay replay;
} rx_t;

struct fn_ctx {
    pthread_mutex_t tx_lock, rx_lock;
    volatile int stop;
    uint32_t overlay_net, overlay_mask;
    uint32_t mtu, stride;
    int32_t route[ROUTE_ENTRIES];          /* (dst >> 8) & 0xffff -> peer slot, -1 none */
    peer_t peers[FN_MAX_PEERS];
    rx_t rx[FN_RX_SLOTS];
    uint64_t drops_in[FN_NDROPS], drops_out[FN_NDROPS];
    uint8_t *arena_in, *arena_out;         /* FN_BATCH slots of `stride` bytes each */
};

int fn_init(void) { return sodium_init(); }
int fn_version(void) { return FN_VERSION; }

int64_t fn_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_le64(const uint8_t *p) {
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}
static inline void put_le32(uint8_t *p, uint32_t v) {
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}
static inline void put_le64(uint8_t *p, uint64_t v) {
    put_le32(p, (uint32_t)v); put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void make_nonce(uint8_t nonce[12], uint64_t counter) {
    memset(nonce, 0, 4);
    put_le64(nonce + 4, counter);
}
static inline uint32_t prefix_mask(uint32_t prefix) {
    return prefix == 0 ? 0 : 0xffffffffu << (32 - prefix);
}

/* ---- replay window (RFC 6479): a ring of bit words; check before, update after auth */
static int replay_check(const fn_replay *r, uint64_t c) {
    if (c >= REJECT_AFTER_MESSAGES) return 0;
    if (c > r->top) return 1;
    if (r->top - c > REPLAY_WINDOW) return 0;
    return !(r->bitmap[(c >> 6) & (FN_REPLAY_WORDS - 1)] & ((uint64_t)1 << (c & 63)));
}
static void replay_update(fn_replay *r, uint64_t c) {
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
fn_ctx *fn_new(uint32_t overlay_net, uint32_t overlay_prefix, uint32_t mtu) {
    if (overlay_prefix < 8 || overlay_prefix > 24 || mtu < 576 || mtu > 9000) return NULL;
    fn_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) return NULL;
    pthread_mutex_init(&ctx->tx_lock, NULL);
    pthread_mutex_init(&ctx->rx_lock, NULL);
    ctx->overlay_mask = prefix_mask(overlay_prefix);
    ctx->overlay_net = overlay_net & ctx->overlay_mask;
    ctx->mtu = mtu;
    ctx->stride = (FN_HEADER + mtu + FN_TAG + 63) & ~63u;
    for (int i = 0; i < ROUTE_ENTRIES; i++) ctx->route[i] = -1;
    ctx->arena_in = aligned_alloc(64, (size_t)ctx->stride * FN_BATCH);
    ctx->arena_out = aligned_alloc(64, (size_t)ctx->stride * FN_BATCH);
    if (!ctx->arena_in || !ctx->arena_out) { fn_free(ctx); return NULL; }
    return ctx;
}

void fn_free(fn_ctx *ctx) {
    if (!ctx) return;
    sodium_memzero(ctx->peers, sizeof(ctx->peers));
    sodium_memzero(ctx->rx, sizeof(ctx->rx));
    free(ctx->arena_in);
    free(ctx->arena_out);
    free(ctx);
}

void fn_stop(fn_ctx *ctx) { ctx->stop = 1; }

static int route_index(fn_ctx *ctx, uint32_t ip) {
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
    if (slot < 0 || slot >= FN_MAX_PEERS || prefix > 24) return -EINVAL;
    if (route_index(ctx, subnet) < 0) return -ERANGE;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);
    peer_t *p = &ctx->peers[slot];
    if (p->active) route_fill(ctx, p->subnet, p->mask, -1);
    p->active = 1;
    p->mask = prefix_mask(prefix);
    p->subnet = subnet & p->mask;
    route_fill(ctx, p->subnet, p->mask, slot);
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_remove(fn_ctx *ctx, int slot) {
    if (slot < 0 || slot >= FN_MAX_PEERS) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);
    peer_t *p = &ctx->peers[slot];
    if (p->active) route_fill(ctx, p->subnet, p->mask, -1);
    for (int i = 0; i < FN_RX_SLOTS; i++)
        if (ctx->rx[i].index && ctx->rx[i].peer == slot) sodium_memzero(&ctx->rx[i], sizeof(rx_t));
    sodium_memzero(p, sizeof(*p));
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_endpoint(fn_ctx *ctx, int slot, const uint8_t *sa, uint32_t len) {
    if (slot < 0 || slot >= FN_MAX_PEERS || len > sizeof(struct sockaddr_storage)) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    memcpy(&ctx->peers[slot].endpoint, sa, len);
    ctx->peers[slot].endpoint_len = len;
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_tx_key(fn_ctx *ctx, int slot, const uint8_t *key, uint32_t remote_index) {
    if (slot < 0 || slot >= FN_MAX_PEERS) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    peer_t *p = &ctx->peers[slot];
    memcpy(p->tx_key, key, FN_KEY);
    p->tx_remote_index = remote_index;
    p->tx_counter = 0;
    p->tx_valid = 1;
    p->want_handshake = 0;
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_tx_clear(fn_ctx *ctx, int slot) {
    if (slot < 0 || slot >= FN_MAX_PEERS) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    sodium_memzero(ctx->peers[slot].tx_key, FN_KEY);
    ctx->peers[slot].tx_valid = 0;
    pthread_mutex_unlock(&ctx->tx_lock);
    return 0;
}

int fn_peer_clear_want(fn_ctx *ctx, int slot) {
    if (slot < 0 || slot >= FN_MAX_PEERS) return -EINVAL;
    ctx->peers[slot].want_handshake = 0;
    return 0;
}

int fn_peer_stats_get(fn_ctx *ctx, int slot, fn_peer_stats *out) {
    if (slot < 0 || slot >= FN_MAX_PEERS) return -EINVAL;
    peer_t *p = &ctx->peers[slot];
    out->tx_packets = p->tx_packets; out->tx_bytes = p->tx_bytes;
    out->rx_packets = p->rx_packets; out->rx_bytes = p->rx_bytes; out->rx_dropped = p->rx_dropped;
    out->last_tx_ns = p->last_tx_ns; out->last_rx_ns = p->last_rx_ns;
    out->tx_counter = p->tx_counter; out->tx_valid = p->tx_valid;
    out->want_handshake = p->want_handshake;
    return 0;
}

int fn_rx_add(fn_ctx *ctx, uint32_t local_index, int peer, const uint8_t *key) {
    if (!local_index || peer < 0 || peer >= FN_MAX_PEERS) return -EINVAL;
    rx_t *rx = &ctx->rx[local_index & (FN_RX_SLOTS - 1)];
    pthread_mutex_lock(&ctx->rx_lock);
    int busy = rx->index != 0 && rx->index != local_index;
    if (!busy) {
        memset(rx, 0, sizeof(*rx));
        rx->index = local_index;
        rx->peer = peer;
        memcpy(rx->key, key, FN_KEY);
    }
    pthread_mutex_unlock(&ctx->rx_lock);
    return busy ? -EBUSY : 0;
}

int fn_rx_remove(fn_ctx *ctx, uint32_t local_index) {
    rx_t *rx = &ctx->rx[local_index & (FN_RX_SLOTS - 1)];
    pthread_mutex_lock(&ctx->rx_lock);
    if (rx->index == local_index) sodium_memzero(rx, sizeof(*rx));
    pthread_mutex_unlock(&ctx->rx_lock);
    return 0;
}

void fn_drops(fn_ctx *ctx, uint64_t *out) {
    for (int i = 0; i < FN_NDROPS; i++) out[i] = ctx->drops_in[i] + ctx->drops_out[i];
}

/* ---- sealing: header (type, reserved, receiver index, counter) then ciphertext+tag */
static void seal_locked(peer_t *p, uint8_t type, uint8_t *pkt, uint32_t ptlen) {
    uint8_t nonce[12];
    uint64_t counter = p->tx_counter++;
    pkt[0] = type; pkt[1] = pkt[2] = pkt[3] = 0;
    put_le32(pkt + 4, p->tx_remote_index);
    put_le64(pkt + 8, counter);
    make_nonce(nonce, counter);
    crypto_aead_chacha20poly1305_ietf_encrypt(pkt + FN_HEADER, NULL, pkt + FN_HEADER, ptlen,
                                              NULL, 0, NULL, nonce, p->tx_key);
}

int fn_seal_control(fn_ctx *ctx, int slot, const uint8_t *pt, uint32_t ptlen, uint8_t *out,
                    uint32_t outlen) {
    if (slot < 0 || slot >= FN_MAX_PEERS || outlen < ptlen + FN_HEADER + FN_TAG) return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    peer_t *p = &ctx->peers[slot];
    int rc;
    if (!p->tx_valid) rc = -ENOKEY;
    else if (p->tx_counter >= REJECT_AFTER_MESSAGES) rc = -EKEYEXPIRED;
    else {
        memmove(out + FN_HEADER, pt, ptlen);
        seal_locked(p, ptlen ? TYPE_CONTROL : TYPE_DATA, out, ptlen);
        p->last_tx_ns = fn_now_ns();
        rc = (int)(ptlen + FN_HEADER + FN_TAG);
    }
    pthread_mutex_unlock(&ctx->tx_lock);
    return rc;
}

/* ---- inside: TUN -> UDP */
int fn_inside(fn_ctx *ctx, int tun_fd, int udp_fd, int timeout_ms, int32_t *events, int max_events) {
    struct mmsghdr msgs[FN_BATCH];
    struct iovec iov[FN_BATCH];
    uint32_t lens[FN_BATCH];
    int nevents = 0;
    struct pollfd pfd = {.fd = tun_fd, .events = POLLIN};

    while (!ctx->stop && nevents == 0) {
        int n = 0;
        while (n < FN_BATCH) {
            ssize_t r = read(tun_fd, ctx->arena_in + (size_t)n * ctx->stride + FN_HEADER, ctx->mtu);
            if (r <= 0) break;
            lens[n++] = (uint32_t)r;
        }
        if (n == 0) {
            int pr = poll(&pfd, 1, timeout_ms);
            if (pr <= 0) return pr < 0 && errno != EINTR ? -errno : 0;
            continue;
        }
        int m = 0;
        int64_t now = fn_now_ns();
        pthread_mutex_lock(&ctx->tx_lock);
        for (int i = 0; i < n; i++) {
            uint8_t *pkt = ctx->arena_in + (size_t)i * ctx->stride;
            uint8_t *ip = pkt + FN_HEADER;
            if (lens[i] < 20 || (ip[0] >> 4) != 4) { ctx->drops_in[FN_DROP_NOTIPV4]++; continue; }
            int idx = route_index(ctx, get_be32(ip + 16));
            int slot = idx < 0 ? -1 : ctx->route[idx];
            if (slot < 0) { ctx->drops_in[FN_DROP_NOROUTE]++; continue; }
            peer_t *p = &ctx->peers[slot];
            if (!p->tx_valid || p->tx_counter >= REJECT_AFTER_MESSAGES || !p->endpoint_len) {
                ctx->drops_in[p->tx_valid ? FN_DROP_KEY_EXHAUSTED : FN_DROP_NOSESSION]++;
                if (!p->want_handshake && nevents < max_events) {
                    p->want_handshake = 1;
                    events[nevents++] = slot;
                }
                continue;
            }
            seal_locked(p, TYPE_DATA, pkt, lens[i]);
            iov[m].iov_base = pkt;
            iov[m].iov_len = FN_HEADER + lens[i] + FN_TAG;
            memset(&msgs[m].msg_hdr, 0, sizeof(msgs[m].msg_hdr));
            msgs[m].msg_hdr.msg_iov = &iov[m];
            msgs[m].msg_hdr.msg_iovlen = 1;
            msgs[m].msg_hdr.msg_name = &p->endpoint;
            msgs[m].msg_hdr.msg_namelen = p->endpoint_len;
            p->tx_packets++;
            p->tx_bytes += lens[i];
            p->last_tx_ns = now;
            m++;
        }
        /* send under the lock: msg_name points into the peer table */
        int sent = 0;
        while (sent < m) {
            int r = sendmmsg(udp_fd, msgs + sent, m - sent, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN) {
                    struct pollfd w = {.fd = udp_fd, .events = POLLOUT};
                    if (poll(&w, 1, 10) > 0) continue;
                }
                ctx->drops_in[FN_DROP_SEND]++;  /* skip the datagram the kernel refused */
                sent++;
                continue;
            }
            sent += r;
        }
        pthread_mutex_unlock(&ctx->tx_lock);
    }
    return nevents;
}

/* ---- outside: UDP -> TUN */
static int copy_ctrl(fn_ctx *ctx, fn_ctrl *c, int kind, int peer, const uint8_t *data, uint32_t len,
                     const struct sockaddr_storage *from, socklen_t fromlen) {
    if (len > FN_CTRL_MAX) { ctx->drops_out[FN_DROP_TOO_BIG]++; return 0; }
    c->kind = kind; c->peer = peer; c->len = len;
    c->addrlen = fromlen > sizeof(c->addr) ? sizeof(c->addr) : fromlen;
    memcpy(c->addr, from, c->addrlen);
    if (len) memcpy(c->data, data, len);
    return 1;
}

static int same_addr(const struct sockaddr_storage *a, socklen_t alen, const peer_t *p) {
    if (alen != p->endpoint_len) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)&p->endpoint;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    return memcmp(a, &p->endpoint, alen) == 0;
}

int fn_outside(fn_ctx *ctx, int udp_fd, int tun_fd, int timeout_ms, fn_ctrl *ctrl, int max_ctrl) {
    struct mmsghdr msgs[FN_BATCH];
    struct iovec iov[FN_BATCH];
    struct sockaddr_storage from[FN_BATCH];
    struct pollfd pfd = {.fd = udp_fd, .events = POLLIN};
    int nctrl = 0;
    uint8_t nonce[12];

    while (!ctx->stop && nctrl == 0) {
        for (int i = 0; i < FN_BATCH; i++) {
            iov[i].iov_base = ctx->arena_out + (size_t)i * ctx->stride;
            iov[i].iov_len = ctx->stride;
            memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(from[i]);
        }
        /* leave room for roam events: at most one per datagram plus the datagram itself */
        int want = (max_ctrl - nctrl) / 2;
        if (want > FN_BATCH) want = FN_BATCH;
        if (want <= 0) break;
        int n = recvmmsg(udp_fd, msgs, want, MSG_DONTWAIT, NULL);
        if (n <= 0) {
            if (n < 0 && errno != EAGAIN && errno != EINTR) return -errno;
            int pr = poll(&pfd, 1, timeout_ms);
            if (pr <= 0) return pr < 0 && errno != EINTR ? -errno : 0;
            continue;
        }
        int64_t now = fn_now_ns();
        pthread_mutex_lock(&ctx->rx_lock);
        for (int i = 0; i < n; i++) {
            uint8_t *pkt = iov[i].iov_base;
            uint32_t len = msgs[i].msg_len;
            socklen_t fromlen = msgs[i].msg_hdr.msg_namelen;
            if (len < 1) { ctx->drops_out[FN_DROP_SHORT]++; continue; }
            uint8_t type = pkt[0];
            if (type != TYPE_DATA && type != TYPE_CONTROL) {
                if (type == 1 || type == 2 || type == 5)
                    nctrl += copy_ctrl(ctx, &ctrl[nctrl], FN_CTRL_RAW, -1, pkt, len, &from[i], fromlen);
                else
                    ctx->drops_out[FN_DROP_TYPE]++;
                continue;
            }
            if (len < FN_HEADER + FN_TAG) { ctx->drops_out[FN_DROP_SHORT]++; continue; }
            uint32_t index = get_le32(pkt + 4);
            rx_t *rx = &ctx->rx[index & (FN_RX_SLOTS - 1)];
            if (!index || rx->index != index) { ctx->drops_out[FN_DROP_INDEX]++; continue; }
            uint64_t counter = get_le64(pkt + 8);
            if (!replay_check(&rx->replay, counter)) {
                ctx->drops_out[FN_DROP_REPLAY]++;
                ctx->peers[rx->peer].rx_dropped++;
                continue;
            }
            make_nonce(nonce, counter);
            uint32_t ptlen = len - FN_HEADER - FN_TAG;
            if (crypto_aead_chacha20poly1305_ietf_decrypt(pkt + FN_HEADER, NULL, NULL, pkt + FN_HEADER,
                                                          len - FN_HEADER, NULL, 0, nonce, rx->key) != 0) {
                ctx->drops_out[FN_DROP_AUTH]++;
                ctx->peers[rx->peer].rx_dropped++;
                continue;
            }
            replay_update(&rx->replay, counter);
            peer_t *p = &ctx->peers[rx->peer];
            p->last_rx_ns = now;
            if (!same_addr(&from[i], fromlen, p))
                nctrl += copy_ctrl(ctx, &ctrl[nctrl], FN_CTRL_ROAM, rx->peer, NULL, 0, &from[i], fromlen);
            uint8_t *ip = pkt + FN_HEADER;
            if (type == TYPE_CONTROL) {
                nctrl += copy_ctrl(ctx, &ctrl[nctrl], FN_CTRL_DECRYPTED, rx->peer, ip, ptlen, &from[i], fromlen);
                continue;
            }
            if (ptlen == 0) continue;  /* keepalive */
            if (ptlen < 20 || (ip[0] >> 4) != 4) { ctx->drops_out[FN_DROP_NOTIPV4]++; continue; }
            if ((get_be32(ip + 12) & p->mask) != p->subnet) {
                ctx->drops_out[FN_DROP_SOURCE]++;
                p->rx_dropped++;
                continue;
            }
            p->rx_packets++;
            p->rx_bytes += ptlen;
            if (write(tun_fd, ip, ptlen) < 0) ctx->drops_out[FN_DROP_TUNWRITE]++;
        }
        pthread_mutex_unlock(&ctx->rx_lock);
    }
    return nctrl;
}

/* ---- batch primitives (benchmarks and tests): slots of `stride` bytes, payload at
 * offset FN_HEADER, FN_TAG bytes of tailroom after it. */
int fn_seal_batch(const uint8_t *key, uint64_t counter0, uint8_t *buf, uint32_t stride,
                  const uint32_t *lens, int n) {
    uint8_t nonce[12];
    for (int i = 0; i < n; i++) {
        uint8_t *pkt = buf + (size_t)i * stride;
        pkt[0] = TYPE_DATA; pkt[1] = pkt[2] = pkt[3] = 0;
        put_le32(pkt + 4, 0);
        put_le64(pkt + 8, counter0 + i);
        make_nonce(nonce, counter0 + i);
        crypto_aead_chacha20poly1305_ietf_encrypt(pkt + FN_HEADER, NULL, pkt + FN_HEADER, lens[i],
                                                  NULL, 0, NULL, nonce, key);
    }
    return n;
}

int fn_open_batch(const uint8_t *key, uint8_t *buf, uint32_t stride, uint32_t *lens, int n) {
    uint8_t nonce[12];
    int ok = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *pkt = buf + (size_t)i * stride;
        make_nonce(nonce, get_le64(pkt + 8));
        if (crypto_aead_chacha20poly1305_ietf_decrypt(pkt + FN_HEADER, NULL, NULL, pkt + FN_HEADER,
                                                      lens[i], NULL, 0, nonce, key) == 0) {
            lens[i] -= FN_TAG;
            ok++;
        } else {
            lens[i] = 0;
        }
    }
    return ok;
}
