/* The fuzz harness: generated input through the real parsing code of both pipelines,
 * without the network, in the sanitizer build only (fuzz.h).
 *
 *   outside: receive buffers (one datagram, or a UDP GRO train of them cut at `seg`)
 *     -> outside_buffer(): outer header, relay header (type 5), index, replay, open,
 *        IPv4 header, source and destination checks, firewall, GRO/USO coalescing
 *     -> the fake TUN (a socketpair), where every packet that arrived is checked:
 *        destination inside the lease, source inside a sender's subnet
 *     (at a lighthouse, half the GRO trains are type-5 trains for relay.c: every
 *     datagram it queues must come from the member at the source address, go to
 *     another member at another address, and its UDP GSO sends must be one target,
 *     back to back, one size but a shorter last; never two members at one address)
 *   inside: packets (a virtio_net_hdr first, or not) written to a socketpair that
 *     stands for the TUN -> help_inside(): vnet header, TSO/USO segmentation,
 *     checksums, routing, holding, sealing -> sendmmsg on /dev/null (send_failed)
 *
 * Most inputs are valid packets, mutated before sealing (so they authenticate and
 * reach the IP, GRO and firewall code) or after (the header and AEAD checks), sealed
 * by the data path's own seal_locked() with keys the harness installed; the rest are
 * junk. Where this CPU can offer AES-256-GCM, half the receive keys (which half: by
 * seed) and a random half of the send keys are AES-256-GCM sessions (aead_aes.c). Each input gets a buffer of exactly its size, so ASan sees a read past the end.
 * The generator is seeded: the same seed gives the same inputs.
 */
#include "internal.h"
#include "fuzz.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/common_interface_defs.h>
#endif
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define NET 0x0A570000u        /* 10.87.0.0/16 */
#define LEASE 0x0A570100u      /* 10.87.1.0/24: this host */
#define P1_NET 0x0A570200u     /* peer 1: 10.87.2.0/24, direct */
#define P3_NET 0x0A570400u     /* peer 3: 10.87.4.0/22, through a relay */
#define P4_NET 0x0A570800u     /* peer 4: 10.87.8.0/24, keys come and go */
#define UNOWNED 0x0A576400u    /* 10.87.100.0/24 - 103: nobody's yet */
#define RELAY_ID 0x0A570400u
#define SCRATCH (2 * 65536)
#define NCTRL 64
#define NRX 4

typedef struct {
    uint32_t index;
    int slot;
    uint8_t key[FN_KEY];
    uint64_t counter;
    int cipher;                 /* FN_CIPHER_* of the receive key */
    void *aes;                  /* AES-256-GCM: a sealing context for the key */
} fuzz_rx;

typedef struct {
    fn_ctx *ctx;
    uint64_t rng;
    int tun_w, tun_r;           /* outside writes the fake TUN, the harness reads it */
    int in_w, in_r;             /* the harness writes packets, the inside pass reads them */
    int devnull;                /* the "UDP socket" of the inside pass */
    fuzz_rx rx[NRX];
    uint8_t *buf, *rbuf;
    fn_ctrl *ctrl;
    fn_fuzz_stats *st;
    int reported;
} fuzz_t;

/* what the sanitizer's death callback prints: where to start again */
static volatile uint64_t cur_seed, cur_input;
static volatile int cur_dir;
#ifdef __SANITIZE_ADDRESS__
static void on_death(void) {
    fprintf(stderr, "fuzz: died at input %llu (%s) of seed %llu\n", (unsigned long long)cur_input,
            cur_dir ? "inside" : "outside", (unsigned long long)cur_seed);
}
#endif

static uint64_t rnd(fuzz_t *f) {  /* splitmix64 */
    uint64_t z = (f->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint32_t below(fuzz_t *f, uint32_t n) { return n ? (uint32_t)(rnd(f) % n) : 0; }
static void fill(fuzz_t *f, uint8_t *p, size_t n) {
    for (; n >= 8; p += 8, n -= 8) { uint64_t v = rnd(f); memcpy(p, &v, 8); }
    if (n) { uint64_t v = rnd(f); memcpy(p, &v, n); }
}
static void fail(fuzz_t *f, const char *what, uint32_t a, uint32_t b) {
    f->st->invariant_failures++;
    if (f->reported++ < 5) fprintf(stderr, "fuzz: INVARIANT %s (%08x %08x) at input %llu seed %llu\n", what, a, b,
                                   (unsigned long long)cur_input, (unsigned long long)cur_seed);
}

static uint16_t ip_csum(const uint8_t *p, uint32_t len) {
    uint32_t acc = 0;
    for (uint32_t i = 0; i + 1 < len; i += 2) acc += get_be16(p + i);
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return (uint16_t)~acc;
}

/* ---- packets: mostly well formed, sometimes not (each field on its own) */
typedef struct {
    uint32_t src, dst;
    uint8_t proto, flags;
    uint16_t sport, dport;
    uint32_t seq, ack;
    uint32_t payload;
    uint32_t ipopt, tcpopt;     /* option bytes */
} shape_t;

/* an IPv4 packet of `s` at `out` (room bytes); returns its length */
static uint32_t build(fuzz_t *f, const shape_t *s, uint8_t *out, uint32_t room) {
    if (room < 20) return 0;
    uint32_t ihl = 20 + s->ipopt, l4 = s->proto == IPPROTO_TCP ? 20 + s->tcpopt : s->proto == IPPROTO_UDP ? 8 : 8;
    uint32_t len = ihl + l4 + s->payload;
    if (len > room) len = room;
    if (len < 20) len = 20;
    memset(out, 0, len < ihl + l4 ? len : ihl + l4);
    out[0] = (uint8_t)(0x40 | (ihl / 4));
    put_be16(out + 2, (uint16_t)len);
    put_be16(out + 4, (uint16_t)rnd(f));
    put_be16(out + 6, 0x4000);
    out[8] = 64;
    out[9] = s->proto;
    put_be32(out + 12, s->src);
    put_be32(out + 16, s->dst);
    if (s->ipopt && len >= ihl) fill(f, out + 20, s->ipopt);
    if (len >= ihl + l4) {
        uint8_t *t = out + ihl;
        put_be16(t, s->sport);
        put_be16(t + 2, s->dport);
        if (s->proto == IPPROTO_TCP) {
            put_be32(t + 4, s->seq);
            put_be32(t + 8, s->ack);
            t[12] = (uint8_t)(((20 + s->tcpopt) / 4) << 4);
            t[13] = s->flags;
            put_be16(t + 14, 65535);
            if (s->tcpopt) memset(t + 20, 1, s->tcpopt);  /* NOPs */
        } else if (s->proto == IPPROTO_UDP) {
            put_be16(t + 4, (uint16_t)(len - ihl));
        } else {
            t[0] = below(f, 2) ? 8 : 0;  /* ICMP echo request / reply, id in the "ports" */
        }
        if (len > ihl + l4) fill(f, t + l4, len - ihl - l4);
    }
    put_be16(out + 10, ip_csum(out, ihl <= len ? ihl : len));
    return len;
}

/* flip bytes of a packet's headers or cut it: reaches every check of the parsers */
static uint32_t mutate(fuzz_t *f, uint8_t *p, uint32_t len) {
    switch (below(f, 6)) {
    case 0: if (len) p[below(f, len < 64 ? len : 64)] ^= (uint8_t)(1 + below(f, 255)); break;
    case 1: if (len) p[below(f, len)] = (uint8_t)rnd(f); break;
    case 2: return below(f, len + 1);
    case 3: if (len > 0) p[0] = (uint8_t)rnd(f); break;                       /* version, ihl */
    case 4: if (len > 3) put_be16(p + 2, (uint16_t)rnd(f)); break;            /* total length */
    default: if (len > 33) { p[32] = (uint8_t)rnd(f); p[33] = (uint8_t)rnd(f); } break;  /* tcp offset, flags */
    }
    return len;
}

static uint32_t pick_addr(fuzz_t *f, uint32_t usual_net, uint32_t usual_mask) {
    switch (below(f, 12)) {
    case 0: return (uint32_t)rnd(f);
    case 1: return 0;                          /* 0.0.0.0 */
    case 2: return 0xA9FEA9FEu;                /* 169.254.169.254 */
    case 3: return NET | (uint32_t)below(f, 65536);
    default: return usual_net | ((uint32_t)rnd(f) & ~usual_mask);
    }
}

static void random_shape(fuzz_t *f, shape_t *s, uint32_t src, uint32_t dst, uint32_t max_payload) {
    static const uint8_t protos[] = {IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDP, IPPROTO_ICMP, 47};
    memset(s, 0, sizeof(*s));
    s->src = src;
    s->dst = dst;
    s->proto = protos[below(f, sizeof(protos))];
    s->flags = below(f, 4) ? 0x10 | (below(f, 3) ? 0 : 0x08) : (uint8_t)rnd(f);
    s->sport = (uint16_t)(1000 + below(f, 4));  /* few flows: GRO and conntrack find matches */
    s->dport = below(f, 2) ? 80 : (uint16_t)rnd(f);
    s->seq = (uint32_t)rnd(f);
    s->ack = (uint32_t)below(f, 4);
    s->ipopt = below(f, 8) ? 0 : 4 * below(f, 11);
    s->tcpopt = below(f, 6) ? 0 : 4 * below(f, 11);
    uint32_t choice = below(f, 10);
    s->payload = choice < 5 ? below(f, 200) : choice < 9 ? below(f, 1500) : below(f, max_payload + 1);
    if (s->payload > max_payload) s->payload = max_payload;
}

/* ---- outside */
static void seal_as(fuzz_t *f, int k, uint8_t type, uint8_t *pkt, uint32_t ptlen) {
    peer_t p;
    memset(&p, 0, sizeof(p));
    memcpy(p.tx_key, f->rx[k].key, FN_KEY);
    p.tx_cipher = f->rx[k].cipher;
    p.tx_aes = f->rx[k].aes;
    p.tx_remote_index = f->rx[k].index;
    uint64_t *c = &f->rx[k].counter;
    switch (below(f, 24)) {
    case 0: p.tx_counter = *c > 5 ? *c - 1 - below(f, 5) : 0; break;         /* a replay */
    case 1: p.tx_counter = *c + 2000 + below(f, 10000); *c = p.tx_counter + 1; break;
    case 2: p.tx_counter = REJECT_AFTER_MESSAGES + below(f, 3); break;
    default: p.tx_counter = (*c)++;
    }
    (void)seal_locked(&p, type, pkt, pkt + FN_HEADER, ptlen);
}

static uint32_t sender_net(int k, uint32_t *mask) {
    *mask = k == 3 ? 0xfffffc00u : 0xffffff00u;
    return k == 3 ? P3_NET : k == 2 ? 0 : P1_NET;
}

/* one datagram at `d`, at most `room` bytes (room >= 64) */
static uint32_t one_datagram(fuzz_t *f, uint8_t *d, uint32_t room) {
    int k = (int)below(f, NRX);
    /* a relay (a lighthouse, a node relay) gets type 5 often: half of what it receives */
    uint32_t wrap = (k == 3 || below(f, f->ctx->relay_mode == FN_RELAY_OFF ? 8 : 2) == 0) ? RELAY_HEADER : 0;
    uint8_t *pkt = d + wrap;
    uint32_t max_pt = room - wrap - FN_HEADER - FN_TAG, ptlen;
    uint8_t type = below(f, 10) ? TYPE_DATA : TYPE_CONTROL;
    if (type == TYPE_CONTROL) {
        ptlen = below(f, 1600 < max_pt ? 1600 : max_pt);
        fill(f, pkt + FN_HEADER, ptlen);
    } else if (below(f, 16) == 0) {
        ptlen = 0;  /* keepalive */
    } else {
        uint32_t mask, net = sender_net(k, &mask);
        shape_t s;
        random_shape(f, &s, pick_addr(f, net, mask), pick_addr(f, LEASE, 0xffffff00u), max_pt - 100);
        ptlen = build(f, &s, pkt + FN_HEADER, max_pt);
        if (below(f, 3) == 0) ptlen = mutate(f, pkt + FN_HEADER, ptlen);
    }
    seal_as(f, k, type, pkt, ptlen);
    uint32_t len = FN_HEADER + ptlen + FN_TAG;
    if (below(f, 12) == 0) len = mutate(f, pkt, len);  /* after sealing: header, index, tag */
    if (wrap) {
        d[0] = TYPE_RELAYED;
        d[1] = below(f, 16) ? FN_WIRE_VERSION : 0;  /* now and then another version */
        d[2] = d[3] = 0;
        /* mostly a relay id the data path knows: peer 3's, or a relay member's block (relay.c) */
        uint32_t pick = below(f, 8);
        put_le32(d + 4, pick < 4 ? RELAY_ID : pick < 7 ? 1 + below(f, 4) : (uint32_t)rnd(f));
    }
    return wrap + len;
}

/* datagrams of one flow and one size, back to back as UDP GRO hands them over */
static uint32_t gro_train(fuzz_t *f, uint8_t *d, uint32_t room, uint32_t *seg) {
    shape_t s;
    random_shape(f, &s, P1_NET | 5, LEASE | 9, 1400);
    s.proto = below(f, 3) ? IPPROTO_TCP : IPPROTO_UDP;
    s.flags = 0x10;
    s.ipopt = 0;
    s.tcpopt = below(f, 4) ? 0 : 12;
    s.payload = 1 + below(f, 1400);
    uint32_t n = 2 + below(f, 40), total = 0;
    int k = 0;  /* peer 1 */
    *seg = FN_HEADER + 20 + (s.proto == IPPROTO_TCP ? 20 + s.tcpopt : 8) + s.payload + FN_TAG;
    for (uint32_t i = 0; i < n && total + *seg <= room; i++) {
        shape_t t = s;
        if (i + 1 == n && below(f, 2)) { t.payload = below(f, s.payload); if (below(f, 2)) t.flags |= 0x08; }
        uint8_t *pkt = d + total;
        uint32_t ptlen = build(f, &t, pkt + FN_HEADER, room - total - FN_HEADER - FN_TAG);
        if (below(f, 8) == 0) ptlen = mutate(f, pkt + FN_HEADER, ptlen);
        seal_as(f, k, TYPE_DATA, pkt, ptlen);
        total += FN_HEADER + ptlen + FN_TAG;
        s.seq += s.payload;
    }
    return total;
}

/* a UDP GRO train of type-5 datagrams for a lighthouse's relay (relay.c): one size
 * (`seg`, 9 bytes to 9,000), the last maybe shorter, mostly for one member's block,
 * now and then one that relay.c must not forward (another block, version, type,
 * reserved bits, a handshake inside) so that runs of GSO sends break anywhere */
static uint32_t relay_train(fuzz_t *f, uint8_t *d, uint32_t room, uint32_t *seg, int sender) {
    uint32_t size = RELAY_HEADER + 1 + (below(f, 4) ? below(f, 1500) : below(f, 9000));
    uint32_t n = 2 + below(f, below(f, 4) ? 64 : 200), total = 0, block = 1 + below(f, 4);
    /* mostly another member's block: a target (the sender's own, now and then) */
    for (int s = 1 + (int)below(f, 4), k = 0; k < 4 && below(f, 8); k++, s = s % 4 + 1)
        if (f->ctx->peers[s].member && s != sender) {
            block = f->ctx->peers[s].member - 1;
            break;
        }
    *seg = size;
    for (uint32_t i = 0; i < n && total + size <= room; i++) {
        uint32_t len = i + 1 == n && below(f, 2) ? 1 + below(f, size) : size;
        uint8_t *p = d + total;
        fill(f, p, len);
        if (len >= RELAY_HEADER) {
            p[0] = TYPE_RELAYED;
            p[1] = FN_WIRE_VERSION;
            p[2] = p[3] = 0;
            put_le32(p + 4, block);
            if (len > RELAY_HEADER) p[RELAY_HEADER] = below(f, 16) ? TYPE_CONTROL : (uint8_t)(1 + below(f, 3));
            if (below(f, 16) == 0) p[below(f, RELAY_HEADER)] ^= (uint8_t)(1 + below(f, 255));
        }
        total += len;
        if (len < size) break;
    }
    return total;
}

/* every packet the outside path wrote to the fake TUN: inside the lease, from a sender */
static void drain_tun(fuzz_t *f) {
    uint32_t pre = f->ctx->vnet ? VNET_HDR_LEN : 0;
    for (;;) {
        ssize_t n = recv(f->tun_r, f->rbuf, SCRATCH, MSG_DONTWAIT);
        if (n < 0) break;
        f->st->delivered++;
        if ((uint32_t)n < pre + 20) { fail(f, "short packet on the TUN", (uint32_t)n, 0); continue; }
        const uint8_t *ip = f->rbuf + pre;
        uint32_t src = get_be32(ip + 12), dst = get_be32(ip + 16);
        if ((dst & 0xffffff00u) != LEASE) fail(f, "destination outside the lease", src, dst);
        if ((src & 0xffffff00u) != P1_NET && (src & 0xfffffc00u) != P3_NET) fail(f, "source of no sender", src, dst);
    }
}

/* one of a few sender addresses (12 IPv4, 2 IPv6); returns its length */
static socklen_t pick_sender(fuzz_t *f, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    if (below(f, 16)) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)(4000 + below(f, 4)));
        a->sin_addr.s_addr = htonl(0x7f000001u + below(f, 3));
        return sizeof(*a);
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(4000);
    a->sin6_addr.s6_addr[15] = (uint8_t)(1 + below(f, 2));
    return sizeof(*a);
}

/* what relay.c queued to forward: whole type-5 datagrams inside the input, each for a
 * relay member at another address, its id rewritten to the block of the member at the
 * input's source address (the one sender_slot finds: the registry's sender there);
 * at most one member per address; and the UDP GSO messages relay_flush will build:
 * one target, back to back, one size but a shorter last, within the kernel's limits */
static void check_forwarded(fuzz_t *f, const uint8_t *in, uint32_t total, const struct sockaddr_storage *from,
                            socklen_t fromlen) {
    fn_ctx *ctx = f->ctx;
    for (int s = 1; s <= 4; s++)
        for (int t = s + 1; t <= 4; t++)
            if (ctx->peers[s].member && ctx->peers[t].member && ctx->peers[t].endpoint_len &&
                same_addr(&ctx->peers[t].endpoint, ctx->peers[t].endpoint_len, &ctx->peers[s]))
                fail(f, "two relay members at one address", (uint32_t)s, (uint32_t)t);
    int sender = ctx->nfwd ? sender_slot(ctx, from, fromlen) : -1;
    for (int i = 0; i < ctx->nfwd; i++) {
        const relay_fwd *w = &ctx->fwd[i];
        f->st->forwarded++;
        if (w->data < in || w->len <= RELAY_HEADER || w->data + w->len > in + total) {
            fail(f, "forwarded bytes outside the datagram", w->len, total);
            continue;
        }
        if (w->data[0] != TYPE_RELAYED) fail(f, "forwarded a datagram that is not type 5", w->data[0], 0);
        if (w->target < 1 || w->target > 4 || !ctx->peers[w->target].member)
            fail(f, "forwarded to no relay member", (uint32_t)w->target, 0);
        else if (same_addr(from, fromlen, &ctx->peers[w->target]))
            fail(f, "forwarded back to where it came from", (uint32_t)w->target, 0);
        uint32_t id = get_le32(w->data + 4);
        if (sender < 0 || sender == w->target || ctx->peers[sender].member != id + 1)
            fail(f, "forwarded under an id that is not the sender's block", id, (uint32_t)sender);
    }
    for (int i = 0; i < ctx->nfwd;) {
        uint32_t bytes = 0, sum = 0;
        int n = relay_gso_run(ctx, i, &bytes);
        const relay_fwd *w = &ctx->fwd[i];
        if (n < 1 || i + n > ctx->nfwd || n > GSO_MAX_SEGS || (n > 1 && (!ctx->udp_gso || bytes > GSO_MAX_BYTES))) {
            fail(f, "a GSO send out of bounds", (uint32_t)n, bytes);
            break;
        }
        for (int k = 0; k < n; k++) {
            if (w[k].target != w[0].target || w[k].data != w[0].data + sum ||
                (k < n - 1 ? w[k].len != w[0].len : w[k].len > w[0].len))
                fail(f, "a GSO send of datagrams that cannot be one", (uint32_t)k, w[k].len);
            sum += w[k].len;
        }
        if (sum != bytes) fail(f, "a GSO send of another length", sum, bytes);
        f->st->gso_runs += n > 1;
        i += n;
    }
}

static void outside_input(fuzz_t *f) {
    uint8_t *b = f->buf;
    uint32_t total = 0, seg = 0;
    uint32_t shape = below(f, 16);
    /* a lighthouse receives many relayed trains: half its trains are, mostly from a
     * peer's address (a member's, when one is) */
    int relay = shape >= 12 && shape <= 14 && f->ctx->relay_mode == FN_RELAY_ALL && below(f, 2);
    int at = relay && below(f, 8) ? (int)(1 + below(f, 4)) : (int)below(f, 8);
    for (int s = 1; relay && s <= 4 && !f->ctx->peers[at].member; s++)  /* at is 1-4 here */
        if (f->ctx->peers[s].member && below(f, 2)) at = s;
    if (shape == 0) {                                  /* junk */
        total = below(f, 300);
        fill(f, b, total);
        if (total && below(f, 2)) b[0] = (uint8_t)below(f, 7);
    } else if (shape == 1) {                           /* handshake-like, raw to Python */
        total = 1 + below(f, 300);
        fill(f, b, total);
        b[0] = (uint8_t)(1 + below(f, 2));
    } else if (shape <= 11) {
        uint32_t room = below(f, 64) ? 1600 : below(f, 8) ? 9100 : 65536;
        total = one_datagram(f, b, room);
    } else if (shape <= 14) {
        total = relay ? relay_train(f, b, 65536, &seg, at) : gro_train(f, b, 65536, &seg);
    } else {                                           /* several, cut at any size */
        while (total < 4000) total += one_datagram(f, b + total, 1600);
        seg = 1 + below(f, total);
    }
    uint8_t *exact = malloc(total ? total : 1);
    if (!exact) return;
    memcpy(exact, b, total);
    /* a few senders, now and then over IPv6: a peer seen from a new address roams */
    struct sockaddr_storage ss;
    socklen_t sslen = pick_sender(f, &ss);
    /* half the time a peer's endpoint (`at`): relay senders and roams meet */
    if (at >= 1 && at <= 4 && f->ctx->peers[at].endpoint_len) {
        ss = f->ctx->peers[at].endpoint;
        sslen = f->ctx->peers[at].endpoint_len;
    }
    f->ctx->batch_id++;  /* one receive buffer: one batch, as outside_pass counts them */
    uint64_t before = f->ctx->io[FN_IO_UDP_DGRAMS_IN];
    f->ctx->fwd_fd = f->devnull;  /* what relay.c forwards: the send fails, counted (FN_DROP_SEND) */
    int made = outside_buffer(f->ctx, f->tun_w, exact, total, seg, &ss, sslen, fn_now_ns(), f->ctrl, NCTRL);
    check_forwarded(f, exact, total, &ss, sslen);
    relay_flush(f->ctx);  /* as outside_pass does, before the buffer goes */
    free(exact);
    f->st->outside_datagrams += f->ctx->io[FN_IO_UDP_DGRAMS_IN] - before;
    f->st->handed_up += (uint64_t)made;
    if (below(f, 4) == 0) gro_flush(f->ctx, f->tun_w);  /* else GRO items wait, as within a batch */
    drain_tun(f);
}

/* ---- inside */
static uint32_t inside_packet(fuzz_t *f, uint8_t *out, uint32_t room) {
    uint32_t pre = f->ctx->vnet ? VNET_HDR_LEN : 0, mtu = f->ctx->mtu;
    uint32_t dsts[] = {P1_NET, P1_NET, P3_NET, P4_NET, UNOWNED + (below(f, 4) << 8)};
    shape_t s;
    uint32_t dst_net = dsts[below(f, 5)];
    random_shape(f, &s, pick_addr(f, LEASE, 0xffffff00u), pick_addr(f, dst_net, 0xffffff00u), 1500);
    if (!pre) {
        uint32_t len = build(f, &s, out, mtu + 100 < room ? mtu + 100 : room);
        return below(f, 4) ? len : mutate(f, out, len);
    }
    uint8_t *v = out;
    static const uint8_t types[] = {0, 0, 1, 1, 1, 5, 5, 0x81};
    uint8_t gso = below(f, 16) ? types[below(f, sizeof(types))] : (uint8_t)rnd(f);
    uint32_t g;
    switch (below(f, 8)) {
    case 0: g = below(f, 3); break;
    case 1: g = below(f, 100); break;
    case 2: g = mtu - 40; break;
    case 3: g = mtu - 28 + below(f, 3); break;
    case 4: g = below(f, 65536); break;
    default: g = 500 + below(f, 1000);
    }
    if (gso == 1 || gso == 0x81) s.proto = IPPROTO_TCP;
    if (gso == 5) s.proto = IPPROTO_UDP;
    uint32_t hl = 20 + s.ipopt + (s.proto == IPPROTO_TCP ? 20 + s.tcpopt : 8);
    if (gso) {  /* at most about 64 segments, now and then anything */
        uint32_t cap = g ? g * 64 : 1000;
        s.payload = below(f, 32) ? below(f, cap < 65000 ? cap : 65000) : below(f, 65536);
        if (hl + s.payload > 65535) s.payload = 65535 - hl;
    }
    uint32_t len = build(f, &s, out + pre, room - pre);
    if (below(f, 6) == 0) len = mutate(f, out + pre, len);
    uint16_t cs = (uint16_t)(20 + s.ipopt), co = s.proto == IPPROTO_TCP ? 16 : 6;
    if (below(f, 5) == 0) { cs = (uint16_t)below(f, below(f, 2) ? 100 : 65536); co = (uint16_t)below(f, 100); }
    v[0] = below(f, 3) ? VNET_F_NEEDS_CSUM : (uint8_t)below(f, 4);
    v[1] = gso;
    uint16_t hdr = below(f, 8) ? (uint16_t)hl : (uint16_t)rnd(f);
    v[2] = (uint8_t)hdr; v[3] = (uint8_t)(hdr >> 8);
    v[4] = (uint8_t)g; v[5] = (uint8_t)(g >> 8);
    v[6] = (uint8_t)cs; v[7] = (uint8_t)(cs >> 8);
    v[8] = (uint8_t)co; v[9] = (uint8_t)(co >> 8);
    return pre + len;
}

/* Full-size super-packets that leave the out arena all but full, then one whose
 * segments (gso_size from its vnet header) are longer than the MTU: a segment written
 * before its length is checked would run past the arena's end. */
static void super_packet(fuzz_t *f, uint32_t segs, uint16_t gso) {
    shape_t s;
    random_shape(f, &s, LEASE | 2, P1_NET | 2, 0);
    s.proto = IPPROTO_TCP; s.flags = 0x10; s.ipopt = 0; s.tcpopt = 0;
    s.payload = segs * gso;
    uint32_t len = build(f, &s, f->buf + VNET_HDR_LEN, SCRATCH - VNET_HDR_LEN);
    uint8_t v[VNET_HDR_LEN] = {0, VNET_GSO_TCPV4, 40, 0, (uint8_t)gso, (uint8_t)(gso >> 8), 0, 0, 0, 0};
    memcpy(f->buf, v, VNET_HDR_LEN);
    if (send(f->in_w, f->buf, VNET_HDR_LEN + len, MSG_DONTWAIT) > 0) f->st->inside_inputs++;
}

static void fill_arena(fuzz_t *f) {
    uint32_t mtu = f->ctx->mtu, dlen = FN_HEADER + mtu + FN_TAG;
    uint32_t want = (OUT_ARENA - dlen) / dlen - below(f, 8), per = 65000 / mtu < 40 ? 65000 / mtu : 40;
    super_packet(f, 1, (uint16_t)(mtu - 40));  /* the first read of a pass goes out at once */
    for (uint32_t done = 0; done < want; done += per < want - done ? per : want - done)
        super_packet(f, per < want - done ? per : want - done, (uint16_t)(mtu - 40));
    super_packet(f, 2, (uint16_t)(mtu - 40 + 1 + below(f, 30000)));
}

/* the same packet through fn_tso_segment (tests and benchmarks): slots of any size,
 * in a buffer of exactly stride * max bytes */
static void tso_entry(fuzz_t *f, uint32_t len) {
    uint32_t stride = 1 + below(f, 2000), max = 1 + below(f, 64);
    uint8_t *out = malloc((size_t)stride * max);
    uint32_t lens[64];
    if (!out) return;
    int n = fn_tso_segment(f->buf, len, out, stride, lens, (int)max);
    for (int i = 0; i < n; i++)
        if (lens[i] > stride) fail(f, "fn_tso_segment length", lens[i], stride);
    free(out);
}

static void inside_input(fuzz_t *f) {
    int n = below(f, 8) ? 1 : 1 + (int)below(f, 8), sent = 0;
    uint64_t sealed_before = 0, sealed_after = 0;
    for (int s = 1; s <= 4; s++) sealed_before += f->ctx->peers[s].tx_packets;
    if (f->ctx->vnet && below(f, 256) == 0) {
        int save = f->ctx->udp_gso;
        f->ctx->udp_gso = 1;
        fill_arena(f);
        help_inside(f->ctx, f->in_r, f->devnull);
        f->ctx->udp_gso = save;
    } else {
        for (int i = 0; i < n; i++) {
            uint32_t len = inside_packet(f, f->buf, SCRATCH);
            if (send(f->in_w, f->buf, len, MSG_DONTWAIT) > 0) sent++;
            if (f->ctx->vnet && below(f, 8) == 0) tso_entry(f, len);
        }
        help_inside(f->ctx, f->in_r, f->devnull);
    }
    for (int s = 1; s <= 4; s++) sealed_after += f->ctx->peers[s].tx_packets;
    f->st->inside_inputs += (uint64_t)sent;
    f->st->sealed += sealed_after - sealed_before;
    while (recv(f->in_r, f->rbuf, SCRATCH, MSG_DONTWAIT) > 0) { /* what a pass left (FN_BATCH reads) */ }
}

/* ---- setup and the loop */
static int sockpair(int *a, int *b) {
    int sv[2], big = 8 << 20;
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return -1;
    for (int i = 0; i < 2; i++) {
        if (setsockopt(sv[i], SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big)) < 0)
            setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
        if (setsockopt(sv[i], SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big)) < 0)
            setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    }
    *a = sv[0];
    *b = sv[1];
    return 0;
}

static void set_keys(fuzz_t *f, int slot, int on) {
    uint8_t key[FN_KEY];
    if (on) {
        randombytes_buf(key, sizeof(key));
        int aes = fn_aes_gcm_available() && below(f, 2);
        fn_peer_tx_key(f->ctx, slot, key, 0x1000u + (uint32_t)slot, aes ? FN_CIPHER_AES256GCM : FN_CIPHER_CHACHA);
    } else {
        fn_peer_tx_clear(f->ctx, slot);
    }
}

static int setup(fuzz_t *f, uint64_t seed) {
    memset(f, 0, sizeof(*f));
    f->rng = seed;
    f->tun_w = f->tun_r = f->in_w = f->in_r = f->devnull = -1;
    f->ctx = fn_new(NET, 16, (seed & 1) ? 576 : 1420);
    f->buf = malloc(SCRATCH);
    f->rbuf = malloc(SCRATCH);
    f->ctrl = calloc(NCTRL, sizeof(fn_ctrl));
    if (!f->ctx || !f->buf || !f->rbuf || !f->ctrl) return -1;
    if (sockpair(&f->tun_w, &f->tun_r) < 0 || sockpair(&f->in_r, &f->in_w) < 0) return -1;
    f->devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (f->devnull < 0) return -1;
    fn_ctx *ctx = f->ctx;
    fn_set_local(ctx, LEASE, 24);
    fn_peer_set(ctx, 1, P1_NET, 24);
    fn_peer_set(ctx, 2, 0, FN_NO_SUBNET);  /* a lighthouse */
    fn_peer_set(ctx, 3, P3_NET, 22);
    fn_peer_set(ctx, 4, P4_NET, 24);
    struct sockaddr_in ep = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr.s_addr = htonl(0x7f000001u)};
    for (int s = 1; s <= 4; s++) fn_peer_endpoint(ctx, s, (const uint8_t *)&ep, sizeof(ep));
    fn_peer_relay(ctx, 3, 1, RELAY_ID);
    set_keys(f, 1, 1);
    set_keys(f, 3, 1);
    /* receive: peer 1 twice (a current and a staged session), the lighthouse, peer 3 */
    static const int slots[NRX] = {1, 1, 2, 3};
    for (int k = 0; k < NRX; k++) {
        f->rx[k].index = 0x00ABC001u + (uint32_t)k * 0x10001u;
        f->rx[k].slot = slots[k];
        randombytes_buf(f->rx[k].key, FN_KEY);
        f->rx[k].cipher = fn_aes_gcm_available() && ((k + (seed >> 1)) & 1) ? FN_CIPHER_AES256GCM : FN_CIPHER_CHACHA;
        if (f->rx[k].cipher == FN_CIPHER_AES256GCM && !(f->rx[k].aes = aes_new(f->rx[k].key, 1))) return -1;
        fn_rx_add(ctx, f->rx[k].index, slots[k], f->rx[k].key, f->rx[k].cipher);
    }
    uint8_t staged[FN_KEY];
    randombytes_buf(staged, sizeof(staged));
    fn_peer_tx_key_staged(ctx, 1, staged, 0x2001u, f->rx[1].index, f->rx[1].cipher);
    /* the firewall: deny by default, some rules (switched on and off below) */
    uint8_t protos[3] = {6, 17, 1};
    uint16_t lo[3] = {80, 1000, 0}, hi[3] = {80, 2000, 65535};
    uint64_t groups[3] = {0, 1, 0};
    uint32_t nets[3] = {P1_NET, NET, P3_NET}, masks[3] = {0xffffff00u, 0xffff0000u, 0xfffffc00u};
    fn_firewall_set(ctx, 0, protos, lo, hi, groups, nets, masks, 3);
    fn_peer_groups(ctx, 1, 1);
    return 0;
}

static void teardown(fuzz_t *f) {
    if (f->ctx) {
        uint64_t d[FN_NDROPS];
        fn_drops(f->ctx, d);
        for (int i = 0; i < FN_NDROPS && i < FN_FUZZ_DROPS; i++) f->st->drops[i] += d[i];
        fn_free(f->ctx);
    }
    for (int k = 0; k < NRX; k++) aes_free(f->rx[k].aes);
    int fds[] = {f->tun_w, f->tun_r, f->in_w, f->in_r, f->devnull};
    for (unsigned i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
        if (fds[i] >= 0) close(fds[i]);
    free(f->buf);
    free(f->rbuf);
    free(f->ctrl);
}

/* between "batches": the settings a running engine may have, changed as Python would */
static void vary(fuzz_t *f) {
    fn_ctx *ctx = f->ctx;
    gro_flush(ctx, f->tun_w);  /* items were made under the old settings */
    drain_tun(f);
    ctx->vnet = below(f, 4) != 0;
    ctx->tun_uso = below(f, 2);
    ctx->udp_gso = below(f, 2);
    uint32_t mode = below(f, 8);  /* mostly off; a lighthouse or a node relay now and then */
    ctx->relay_mode = mode <= 1 ? FN_RELAY_ALL : mode == 2 ? FN_RELAY_OTHERS : FN_RELAY_OFF;
    ctx->fw_active = below(f, 2);
    /* peers move between the senders' addresses (a relay forwards for a peer only at
     * its direct endpoint: senders.c changes its table one entry at a time) */
    for (int s = 1; s <= 4; s++) {
        if (below(f, 2)) continue;
        struct sockaddr_storage ss;
        socklen_t len = pick_sender(f, &ss);
        fn_peer_endpoint(ctx, s, (const uint8_t *)&ss, len);
    }
    if (!below(f, 8)) fn_peer_relay(ctx, 3, 1, RELAY_ID);  /* again: out of the table and back */
    /* a lighthouse's registry makes peers relay members (relay.c), at their address or
     * (refused) at another; blocks 1-4 so that senders and targets meet */
    for (int s = 1; s <= 4; s++) {
        uint32_t what = below(f, 8);
        if (what < 2) continue;
        if (what == 2) { fn_relay_member(ctx, s, -1, NULL, 0); continue; }
        struct sockaddr_storage ss = ctx->peers[s].endpoint;
        socklen_t len = ctx->peers[s].endpoint_len;
        if (what == 7) len = pick_sender(f, &ss);
        fn_relay_member(ctx, s, (int32_t)(1 + below(f, 4)), (const uint8_t *)&ss, len);
    }
    fn_set_compact_cipher(below(f, 4) != 0);
    fn_set_large_cipher(below(f, 4) != 0);
    set_keys(f, 4, below(f, 2));                      /* held packets go, or wait and expire */
    ctx->nev_pending = 0;                             /* Python took the events */
    for (uint32_t i = 0; i < 4; i++) fn_route_unpend(ctx, (int)(((UNOWNED >> 8) + i) & 0xffff));
    ctx->npending = 0;
}

int fn_fuzz_packets(uint64_t seed, uint64_t n, fn_fuzz_stats *st) {
    fuzz_t f;
    int rc = setup(&f, seed);
    f.st = st;
    cur_seed = seed;
#ifdef __SANITIZE_ADDRESS__
    __sanitizer_set_death_callback(on_death);
#endif
    for (uint64_t i = 0; rc == 0 && i < n; i++) {
        cur_input = i;
        if (i % 64 == 0) vary(&f);
        cur_dir = (int)below(&f, 2);
        if (cur_dir) inside_input(&f);
        else { outside_input(&f); st->outside_inputs++; }
    }
    if (rc == 0) { gro_flush(f.ctx, f.tun_w); drain_tun(&f); }
    fn_set_compact_cipher(1);
    fn_set_large_cipher(1);
    teardown(&f);
    return rc;
}

#define LARGE_CASE_MAX 2048

/* aead_large.c against libsodium: one random length from AEAD_LARGE_MIN up, both ways,
 * and one bit flipped (rejected, and the buffer wiped). Returns 1 on a mismatch. */
static int large_case(fuzz_t *f, uint8_t *a, uint8_t *b) {
    uint8_t key[32], nonce[12], ad[FN_HEADER];
    uint32_t len = AEAD_LARGE_MIN + below(f, LARGE_CASE_MAX - AEAD_LARGE_MIN + 1);
    unsigned long long blen, olen;
    fill(f, key, sizeof(key));
    fill(f, nonce, sizeof(nonce));
    fill(f, ad, sizeof(ad));
    fill(f, a, len);
    crypto_aead_chacha20poly1305_ietf_encrypt(b, &blen, a, len, ad, sizeof(ad), NULL, nonce, key);
    if (aead_large_seal(a, len, ad, sizeof(ad), nonce, key) != 0 || blen != len + FN_TAG || memcmp(a, b, blen))
        return 1;
    if (crypto_aead_chacha20poly1305_ietf_decrypt(b, &olen, NULL, a, blen, ad, sizeof(ad), nonce, key) != 0 ||
        olen != len || aead_large_open(a, (uint32_t)blen, ad, sizeof(ad), nonce, key) != 0 || memcmp(a, b, len))
        return 1;
    /* a is the plaintext again: seal it, flip one bit, expect a rejection and zeros */
    if (aead_large_seal(a, len, ad, sizeof(ad), nonce, key) != 0) return 1;
    uint32_t where = below(f, len + FN_TAG);
    a[where] ^= (uint8_t)(1u << below(f, 8));
    if (aead_large_open(a, (uint32_t)blen, ad, sizeof(ad), nonce, key) != -1) return 1;
    for (uint32_t i = 0; i < len; i++)
        if (a[i]) return 1;
    return 0;
}

/* AES-256-GCM as the data path runs it (aead_aes.c: aes_gcm_vaes.c where the CPU has
 * VAES, else OpenSSL's provider functions) against OpenSSL's EVP interface: a random
 * length (most to 600 bytes, some to 9100, a few to 65535), associated data of 16 bytes
 * (the header) or 0..300, in place or apart. Every buffer is a heap block of exactly its
 * size (input, output, associated data), so ASan sees a byte read or written past one.
 * Then one bit flipped in the ciphertext, the tag or the associated data: refused, the
 * output zeroed. Returns 1 on a mismatch. */
static int evp_gcm(int enc, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen,
                   const uint8_t *in, uint8_t *out, uint32_t len, uint8_t *tag) {
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    int n, ok = x && EVP_CipherInit_ex(x, EVP_aes_256_gcm(), NULL, key, nonce, enc) &&
                (!adlen || EVP_CipherUpdate(x, NULL, &n, ad, (int)adlen)) &&
                (!len || EVP_CipherUpdate(x, out, &n, in, (int)len)) &&
                (enc || EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_SET_TAG, FN_TAG, tag)) &&
                EVP_CipherFinal_ex(x, out + len, &n) &&
                (!enc || EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_GCM_GET_TAG, FN_TAG, tag));
    EVP_CIPHER_CTX_free(x);
    return ok;
}

static int aes_case(fuzz_t *f) {
    uint8_t key[32], nonce[12];
    uint32_t kind = below(f, 20);
    uint32_t len = kind == 0 ? below(f, 65536) : kind < 6 ? below(f, 9101) : below(f, 601);
    uint32_t adlen = below(f, 2) ? FN_HEADER : below(f, 301);
    int in_place = (int)below(f, 2), bad = 0;
    fill(f, key, sizeof(key));
    fill(f, nonce, sizeof(nonce));
    /* apart: the input exactly len bytes (nothing after it to read), the output len + 16,
     * the opened plaintext exactly len; in place: one buffer of len + 16 for all */
    size_t sealed = (size_t)len + FN_TAG;
    uint8_t *ad = malloc(adlen ? adlen : 1), *pt = malloc(len ? len : 1), *ref = malloc(sealed),
            *in = malloc(in_place ? sealed : (len ? len : 1)), *out = in_place ? in : malloc(sealed),
            *back = in_place ? in : malloc(len ? len : 1);
    if (!ad || !pt || !ref || !in || !out || !back) { bad = 1; goto done; }
    fill(f, ad, adlen);
    fill(f, pt, len);
    if (!evp_gcm(1, key, nonce, ad, adlen, pt, ref, len, ref + len)) { bad = 1; goto done; }
    memcpy(in, pt, len);
    if (fn_aes_crypt(1, key, nonce, ad, adlen, in, out, len) != (int)sealed || memcmp(out, ref, sealed)) {
        bad = 1;
        goto done;
    }
    if (fn_aes_crypt(0, key, nonce, ad, adlen, out, back, (uint32_t)sealed) != (int)len || memcmp(back, pt, len)) {
        bad = 1;
        goto done;
    }
    /* a forgery: one bit of the sealed bytes or of the associated data */
    memcpy(out, ref, sealed);
    uint32_t where = below(f, (uint32_t)sealed + adlen);
    uint8_t bit = (uint8_t)(1u << below(f, 8));
    if (where < sealed) out[where] ^= bit; else ad[where - sealed] ^= bit;
    if (fn_aes_crypt(0, key, nonce, ad, adlen, out, back, (uint32_t)sealed) != -1) bad = 1;
    for (uint32_t i = 0; i < len && !bad; i++) bad = back[i] != 0;
done:
    free(ad);
    free(pt);
    free(ref);
    if (!in_place) {
        free(out);
        free(back);
    }
    free(in);
    if (bad && f->reported++ < 5)
        fprintf(stderr, "fuzz: AEAD MISMATCH AES-256-GCM (impl %d) len %u ad %u %s\n", fn_aes_gcm_impl(), len, adlen,
                in_place ? "in place" : "apart");
    return bad;
}

/* ---- the compact cipher (and OpenSSL's, large_case) against libsodium */
int fn_fuzz_aead(uint64_t seed, uint64_t n, fn_fuzz_stats *st) {
    fuzz_t f;
    memset(&f, 0, sizeof(f));
    f.rng = seed;
    f.st = st;
    uint8_t key[32], nonce[12], ad[70], pt[300], a[300 + FN_TAG], b[300 + FN_TAG], keep[300 + FN_TAG];
    static uint8_t big_a[LARGE_CASE_MAX + FN_TAG], big_b[LARGE_CASE_MAX + FN_TAG];
    unsigned long long blen;
    for (uint64_t i = 0; i < n; i++) {
        uint32_t len = below(&f, 301), adlen = below(&f, 71);
        fill(&f, key, sizeof(key));
        fill(&f, nonce, sizeof(nonce));
        fill(&f, ad, adlen);
        fill(&f, pt, len);
        memcpy(a, pt, len);
        int alen = fn_aead_small_seal(key, nonce, ad, adlen, a, len);
        crypto_aead_chacha20poly1305_ietf_encrypt(b, &blen, pt, len, ad, adlen, NULL, nonce, key);
        int bad = alen != (int)blen || memcmp(a, b, blen) != 0;
        /* each opens the other's */
        if (!bad) bad = fn_aead_small_open(key, nonce, ad, adlen, b, (uint32_t)blen) != (int)len || memcmp(b, pt, len);
        unsigned long long olen;
        if (!bad) bad = crypto_aead_chacha20poly1305_ietf_decrypt(b, &olen, NULL, a, (unsigned long long)alen, ad,
                                                                   adlen, nonce, key) != 0 || olen != len ||
                        memcmp(b, pt, len) != 0;
        /* one bit flipped in the ciphertext, the tag or the associated data */
        if (!bad) {
            uint32_t where = below(&f, (uint32_t)alen + adlen);
            uint8_t bit = (uint8_t)(1u << below(&f, 8));
            if (where < (uint32_t)alen) a[where] ^= bit; else ad[where - alen] ^= bit;
            memcpy(keep, a, (size_t)alen);
            bad = fn_aead_small_open(key, nonce, ad, adlen, a, (uint32_t)alen) != -1 || memcmp(keep, a, (size_t)alen) ||
                  crypto_aead_chacha20poly1305_ietf_decrypt(b, &olen, NULL, a, (unsigned long long)alen, ad, adlen,
                                                           nonce, key) == 0;
        }
        /* and OpenSSL's code for long payloads (aead_large.c), a second case each round */
        if (!bad && fn_large_cipher()) bad = large_case(&f, big_a, big_b);
        /* and AES-256-GCM where this CPU offers it, a third case each round */
        if (!bad && fn_aes_gcm_available()) {
            bad = aes_case(&f);
            st->aes_cases++;
        }
        st->aead_cases++;
        if (bad) {
            st->aead_mismatches++;
            if (f.reported++ < 5)
                fprintf(stderr, "fuzz: AEAD MISMATCH case %llu seed %llu (len %u, ad %u)\n", (unsigned long long)i,
                        (unsigned long long)seed, len, adlen);
        }
    }
    return 0;
}
