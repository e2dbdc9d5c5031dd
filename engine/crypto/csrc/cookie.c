/* cookie: what a handshake message must show before Python spends two X25519
 * operations on it (WireGuard's cookie mechanism, docs/protocol-wire.md).
 *
 *   handshake message (type 1 or 2, direct or inside type 5)
 *     -> mac1: BLAKE2b-128 keyed by BLAKE2b-256("mac1----" || our static public key)
 *        over the message up to mac1; wrong = dropped (FN_DROP_MAC1). Costs ~1 us and
 *        proves the sender knows whom it talks to, nothing more.
 *     -> not under load (the global token bucket has a token): it takes a token from
 *        its source's bucket (none left: dropped, FN_DROP_RATE_LIMITED) and one from
 *        the global bucket, then goes up to Python.
 *     -> under load (from the moment the global bucket is empty until it is full
 *        again; messages without mac2 keep draining it): only a message whose mac2 is keyed by the cookie of its source
 *        address goes up (per-source bucket still applies); the others are answered
 *        with a cookie reply (type 6) and dropped (FN_DROP_COOKIE). A sender that
 *        cannot receive at its address never gets a cookie, so spoofed floods stop here.
 *   cookie = BLAKE2b-128 keyed by a random secret (new every 120 s) over the source
 *   (IPv4 or IPv6 address, port; and the sender's relay id when it came through a relay).
 *   cookie reply = type 6 header · receiver index · 24-byte nonce ·
 *   XChaCha20-Poly1305(key BLAKE2b-256("cookie--" || our static public key),
 *   AD = the mac1 it answers, plaintext = cookie).
 * Everything here runs under rx_lock (the thread doing a receive pass).
 */
#include "internal.h"

#include <errno.h>
#include <sodium.h>

#define MACS (2 * FN_MAC)
#define HS_MIN (8 + MACS)          /* header and both macs; the Noise part is checked in Python */

int64_t fn_rate_refill(int64_t milli_tokens, int64_t last_ns, int64_t now, int64_t rate, int64_t burst) {
    int64_t full = burst * 1000, quiet = now - last_ns;
    if (quiet <= 0 || rate <= 0) return milli_tokens > full ? full : milli_tokens;
    /* Quiet long enough to fill: full, decided before the multiply below, which would
     * overflow after INT64_MAX / rate ns (5.3 days at a relay's 20,000 a second) and
     * leave a long-quiet sender with an empty or negative bucket. */
    if (quiet / 1000000 >= full / rate + 1) return full;
    int64_t gained = quiet * rate / 1000000;  /* milli-tokens since last time */
    return milli_tokens + gained > full ? full : milli_tokens + gained;
}

static void refill(rate_bucket *b, int64_t now, int64_t rate, int64_t burst) {
    b->milli_tokens = fn_rate_refill(b->milli_tokens, b->last_ns, now, rate, burst);
    b->last_ns = now;
}

static int take_token(rate_bucket *b, int64_t now, int64_t rate, int64_t burst) {
    refill(b, now, rate, burst);
    if (b->milli_tokens < 1000) return 0;
    b->milli_tokens -= 1000;
    return 1;
}

static void bucket_start(rate_bucket *b, int64_t now, int64_t burst) {
    if (b->last_ns == 0) {
        b->milli_tokens = burst * 1000;
        b->last_ns = now;
    }
}

/* the bucket key of a source: its IPv4 address (also when a dual-stack socket reports
 * it as ::ffff:a.b.c.d), or for IPv6 a keyed hash of its /64 (one site usually holds a
 * whole /64: counting its addresses apart would give it 2^64 buckets). The hash key is
 * random, so nobody can pick a /64 that shares a bucket with a given source. */
static uint32_t source_key(fn_ctx *ctx, const struct sockaddr_storage *from) {
    if (from->ss_family == AF_INET) return ((const struct sockaddr_in *)from)->sin_addr.s_addr;
    if (from->ss_family != AF_INET6) return 0;
    const uint8_t *a = ((const struct sockaddr_in6 *)from)->sin6_addr.s6_addr;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint32_t ip;
    if (memcmp(a, mapped, 12) == 0) {
        memcpy(&ip, a + 12, 4);
        return ip;
    }
    if (!ctx->rl_keyed) {
        randombytes_buf(ctx->rl_key, sizeof(ctx->rl_key));
        ctx->rl_keyed = 1;
    }
    uint8_t h[crypto_shorthash_BYTES];
    crypto_shorthash(h, a, 8, ctx->rl_key);
    memcpy(&ip, h, 4);
    return ip;
}

/* one token from the bucket of `key` */
static int key_allowed(fn_ctx *ctx, uint32_t ip, int64_t now) {
    rate_bucket *b = &ctx->rl[(ip * 2654435761u) >> 22 & (RL_BUCKETS - 1)];
    if (b->ip != ip || b->last_ns == 0) {
        b->ip = ip;
        b->milli_tokens = RL_BURST * 1000;
        b->last_ns = now;
    }
    return take_token(b, now, RL_PER_SOURCE, RL_BURST);
}

/* one token from the source address's bucket */
int source_allowed(fn_ctx *ctx, const struct sockaddr_storage *from, int64_t now) {
    return key_allowed(ctx, source_key(ctx, from), now);
}

/* A handshake a relay forwards (its mac1 is for another node, so junk passes too):
 * a bucket per source address apart from the handshakes addressed to us, so that
 * junk under a peer's (spoofed) address cannot block that peer's own handshakes. */
int forward_allowed(fn_ctx *ctx, const struct sockaddr_storage *from, int64_t now) {
    return key_allowed(ctx, source_key(ctx, from) ^ 0x5bd1e995u, now);
}

/* one packet from the forwarding budget of the peer in `slot` (a relay): 1000
 * milli-tokens when Python forwards it, RELAY_C_COST when relay.c does */
int forward_budget(fn_ctx *ctx, int slot, int64_t now, int64_t cost_milli) {
    rate_bucket *b = &ctx->forward_rl[slot];
    bucket_start(b, now, RELAY_BURST);  /* zeroed (a new peer): full */
    refill(b, now, RELAY_PER_SENDER, RELAY_BURST);
    if (b->milli_tokens < cost_milli) return 0;
    b->milli_tokens -= cost_milli;
    return 1;
}

/* A handshake's sender: its address, and behind a relay also its relay id. Every
 * relayed handshake comes from the relay's address: one bucket for all would let one
 * node behind a relay use up the handshakes of every other node relayed through it. */
static int sender_allowed(fn_ctx *ctx, const struct sockaddr_storage *from, uint32_t relayed_from, int64_t now) {
    uint32_t key = source_key(ctx, from);
    if (relayed_from != NOT_RELAYED) key ^= (relayed_from + 1) * 0x9e3779b1u;
    return key_allowed(ctx, key, now);
}

void fn_set_identity(fn_ctx *ctx, const uint8_t *static_public) {
    uint8_t in[8 + 32];
    pthread_mutex_lock(&ctx->rx_lock);
    memcpy(in + 8, static_public, 32);
    memcpy(in, "mac1----", 8);
    crypto_generichash(ctx->mac1_key, 32, in, sizeof(in), NULL, 0);
    memcpy(in, "cookie--", 8);
    crypto_generichash(ctx->cookie_key, 32, in, sizeof(in), NULL, 0);
    randombytes_buf(ctx->cookie_nonce, sizeof(ctx->cookie_nonce));
    ctx->have_identity = 1;
    pthread_mutex_unlock(&ctx->rx_lock);
}

/* the cookie a sender at `from` (via relay id `relayed_from`, or NOT_RELAYED) gets now */
static void cookie_of(fn_ctx *ctx, const struct sockaddr_storage *from, uint32_t relayed_from, int64_t now,
                      uint8_t cookie[FN_MAC]) {
    if (ctx->cookie_secret_born == 0 || now - ctx->cookie_secret_born >= COOKIE_SECRET_NS) {
        randombytes_buf(ctx->cookie_secret, sizeof(ctx->cookie_secret));
        ctx->cookie_secret_born = now;
    }
    uint8_t src[16 + 2 + 4];
    size_t n = 0;
    if (from->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)from;
        memcpy(src, &a->sin_addr, 4);
        memcpy(src + 4, &a->sin_port, 2);
        n = 6;
    } else if (from->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)from;
        memcpy(src, &a->sin6_addr, 16);
        memcpy(src + 16, &a->sin6_port, 2);
        n = 18;
    }
    if (relayed_from != NOT_RELAYED) { put_le32(src + n, relayed_from); n += 4; }
    crypto_generichash(cookie, FN_MAC, src, n, ctx->cookie_secret, sizeof(ctx->cookie_secret));
}

static int mac_ok(const uint8_t *key, size_t keylen, const uint8_t *msg, size_t len, const uint8_t *mac) {
    uint8_t want[FN_MAC];
    crypto_generichash(want, FN_MAC, msg, len, key, keylen);
    return crypto_verify_16(want, mac) == 0;
}

/* queue a cookie reply to `msg` for the end of the pass (cookie_flush) */
static void cookie_reply(fn_ctx *ctx, const uint8_t *msg, uint32_t len, const struct sockaddr_storage *from,
                         socklen_t fromlen, uint32_t relayed_from, int64_t now) {
    bucket_start(&ctx->rl_cookie, now, RL_COOKIE);
    if (ctx->ncookie >= COOKIE_Q || !take_token(&ctx->rl_cookie, now, RL_COOKIE, RL_COOKIE)) return;
    cookie_out *o = &ctx->cookie_q[ctx->ncookie++];
    uint8_t *r = o->data, cookie[FN_MAC];
    if (relayed_from != NOT_RELAYED) {  /* back through the relay, to the sender's id there */
        put_type(r, TYPE_RELAYED);
        put_le32(r + 4, relayed_from);
        r += RELAY_HEADER;
    }
    put_type(r, TYPE_COOKIE);
    memcpy(r + 4, msg + 4, 4);  /* the message's sender index */
    /* a nonce must never repeat under cookie_key: a random prefix drawn at
     * fn_set_identity and a counter (a getrandom call per reply cost more than the
     * rest of the reply) */
    memcpy(r + 8, ctx->cookie_nonce, 16);
    put_le64(r + 24, ctx->cookie_nonce_counter++);
    cookie_of(ctx, from, relayed_from, now, cookie);
    crypto_aead_xchacha20poly1305_ietf_encrypt(r + 32, NULL, cookie, FN_MAC, msg + len - MACS, FN_MAC, NULL,
                                               r + 8, ctx->cookie_key);
    sodium_memzero(cookie, sizeof(cookie));
    o->len = (uint32_t)(r - o->data) + FN_COOKIE_REPLY;
    memcpy(&o->to, from, fromlen);
    o->tolen = fromlen;
}

/* 1 when a handshake message (type 1 or 2) carries the mac1 of this node's static
 * key: it is addressed to us. A node relay tells its own relayed handshakes from
 * those it forwards this way (outside.c). */
int mac1_for_us(fn_ctx *ctx, const uint8_t *msg, uint32_t len) {
    return len >= HS_MIN && ctx->have_identity && mac_ok(ctx->mac1_key, 32, msg, len - MACS, msg + len - MACS);
}

/* A handshake message (type 1, 2 or 6; header already checked): 1 = hand it to
 * Python, 0 = dropped and counted. */
int handshake_gate(fn_ctx *ctx, const uint8_t *msg, uint32_t len, const struct sockaddr_storage *from,
                   socklen_t fromlen, uint32_t relayed_from, int64_t now) {
    bucket_start(&ctx->rl_global, now, ctx->rl_global_rate);
    if (msg[0] == TYPE_COOKIE) {  /* cheap for Python, but still not unlimited */
        if (len != FN_COOKIE_REPLY) { ctx->drops_out[FN_DROP_SHORT]++; return 0; }
        if (!sender_allowed(ctx, from, relayed_from, now)) { ctx->drops_out[FN_DROP_RATE_LIMITED]++; return 0; }
        return 1;
    }
    if (len < HS_MIN) { ctx->drops_out[FN_DROP_SHORT]++; return 0; }
    if (!ctx->have_identity || !mac_ok(ctx->mac1_key, 32, msg, len - MACS, msg + len - MACS)) {
        ctx->drops_out[FN_DROP_MAC1]++;
        return 0;
    }
    /* Under load: entered when the global bucket is empty, left when it is full
     * again. Meanwhile messages without a valid mac2 still drain it (and go no
     * further), so a flood keeps the engine in this state and no junk reaches
     * Python; a quiet second ends it. */
    int64_t rate = ctx->rl_global_rate;
    rate_bucket *g = &ctx->rl_global;
    refill(g, now, rate, rate);
    if (ctx->under_load && g->milli_tokens >= rate * 1000) ctx->under_load = 0;
    if (!ctx->under_load) {
        if (g->milli_tokens >= 1000) {
            if (!sender_allowed(ctx, from, relayed_from, now)) { ctx->drops_out[FN_DROP_RATE_LIMITED]++; return 0; }
            g->milli_tokens -= 1000;
            return 1;
        }
        ctx->under_load = 1;
    }
    static const uint8_t zero[FN_MAC];
    int proven = 0;
    if (sodium_memcmp(msg + len - FN_MAC, zero, FN_MAC) != 0) {  /* no mac2: no need to look */
        uint8_t cookie[FN_MAC];
        cookie_of(ctx, from, relayed_from, now, cookie);
        proven = mac_ok(cookie, FN_MAC, msg, len - FN_MAC, msg + len - FN_MAC);
        sodium_memzero(cookie, sizeof(cookie));
    }
    if (proven) {
        if (sender_allowed(ctx, from, relayed_from, now)) return 1;
        ctx->drops_out[FN_DROP_RATE_LIMITED]++;
        return 0;
    }
    if (g->milli_tokens >= 1000) g->milli_tokens -= 1000;
    cookie_reply(ctx, msg, len, from, fromlen, relayed_from, now);
    ctx->drops_out[FN_DROP_COOKIE]++;
    return 0;
}

/* send the cookie replies queued during a receive pass */
void cookie_flush(fn_ctx *ctx, int udp_fd) {
    if (!ctx->ncookie) return;
    struct mmsghdr mm[COOKIE_Q];
    struct iovec iov[COOKIE_Q];
    for (int i = 0; i < ctx->ncookie; i++) {
        iov[i].iov_base = ctx->cookie_q[i].data;
        iov[i].iov_len = ctx->cookie_q[i].len;
        memset(&mm[i].msg_hdr, 0, sizeof(mm[i].msg_hdr));
        mm[i].msg_hdr.msg_iov = &iov[i];
        mm[i].msg_hdr.msg_iovlen = 1;
        /* an unnamed source (a socketpair in tests) is answered on the connection */
        if (ctx->cookie_q[i].tolen > sizeof(sa_family_t)) {
            mm[i].msg_hdr.msg_name = &ctx->cookie_q[i].to;
            mm[i].msg_hdr.msg_namelen = ctx->cookie_q[i].tolen;
        }
    }
    int sent = sendmmsg(udp_fd, mm, ctx->ncookie, MSG_DONTWAIT);
    if (sent < ctx->ncookie) ctx->drops_out[FN_DROP_SEND] += ctx->ncookie - (sent > 0 ? sent : 0);
    ctx->ncookie = 0;
}
