/* inside: TUN -> UDP.
 *
 *   poll(TUN) -> read a packet (with TSO on: a virtio_net_hdr and up to 64 KiB)
 *   -> IPv4 destination -> peer (route table by /24)
 *   -> per segment (TSO super-packets are cut at gso_size, checksums completed, each
 *      segment's headers written in the read buffer just before its payload):
 *      header added in the out arena, sealed from the read buffer into the arena
 *      (AES-256-GCM; ChaCha20-Poly1305 copies the segment there and seals in place)
 *   -> datagrams of one peer and one size are grouped into UDP GSO messages
 *   -> one sendmmsg for everything read in this round.
 */
#include "internal.h"

#include <errno.h>
#include <netinet/udp.h>
#include <poll.h>
#include <unistd.h>

typedef struct {
    int peer;
    uint8_t *base;
    uint32_t len, seg, count;
    int closed;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} out_msg;

typedef struct {
    out_msg msg[MAX_MSGS];
    int n;
    uint32_t pos;
    int role;    /* ROLE_IN: the inside thread's own pass (fn_inside); -1: a helper's, or Python's */
} out_batch;

static void flush(fn_ctx *ctx, int udp_fd, out_batch *b) {
    struct mmsghdr mm[MAX_MSGS];
    struct iovec iov[MAX_MSGS];
    gso_cmsg cbuf[MAX_MSGS];
    for (int i = 0; i < b->n; i++) {
        out_msg *m = &b->msg[i];
        udp_msg(&mm[i], &iov[i], &cbuf[i], m->base, m->len, &m->addr, m->addrlen,
                m->count > 1 ? (uint16_t)m->seg : 0);
    }
    int sent = 0, waits = 0, away = 0;
    while (sent < b->n) {
        int r = sendmmsg(udp_fd, mm + sent, b->n - sent, 0);
        ctx->io[FN_IO_UDP_SENDS]++;
        if (r < 0) {
            int err = errno;
            if (err == EINTR) continue;
            /* The socket is full: we may wait for room (up to SEND_WAITS x 10 ms), and a
             * waiting thread tries no fd. The outside thread, parked while we were at
             * work, would leave the socket unread all that time (what arrived waited 8 ms
             * in the median, test_engine_stall.py): we go AWAY, which rings it, and it
             * polls its own fd until we are back (0.2 ms). */
            if (b->role >= 0 && !away && send_may_wait(err, waits)) {
                idle_leave(ctx, b->role, 0);
                away = 1;
            }
            if (wait_for_room(udp_fd, err, &waits)) continue;
            ctx->drops_in[FN_DROP_SEND] += b->msg[sent].count;  /* skip what the kernel refused */
            sent++;
            continue;
        }
        for (int i = sent; i < sent + r; i++) ctx->io[FN_IO_UDP_DGRAMS_OUT] += b->msg[i].count;
        sent += r;
    }
    if (away) idle_enter(ctx, b->role);
    b->n = 0;
    b->pos = 0;
}

/* append one sealed datagram (already at arena + b->pos) to the batch */
static void append(fn_ctx *ctx, out_batch *b, int slot, const peer_t *p, uint32_t dlen) {
    uint8_t *at = ctx->out_arena + b->pos;
    out_msg *m = b->n ? &b->msg[b->n - 1] : NULL;
    if (m && ctx->udp_gso && m->peer == slot && !m->closed && dlen <= m->seg && m->count < GSO_MAX_SEGS &&
        m->len + dlen <= GSO_MAX_BYTES) {
        m->len += dlen;
        m->count++;
        if (dlen < m->seg) m->closed = 1;  /* only the last datagram of a GSO message may be shorter */
    } else {
        m = &b->msg[b->n++];
        m->peer = slot;
        m->base = at;
        m->len = m->seg = dlen;
        m->count = 1;
        m->closed = 0;
        memcpy(&m->addr, &p->endpoint, p->endpoint_len);
        m->addrlen = p->endpoint_len;
    }
    b->pos += dlen;
}

/* room for one more datagram of up to `need` bytes; sends what is pending if not */
static void reserve(fn_ctx *ctx, int udp_fd, out_batch *b, uint32_t need) {
    if (b->pos + need > OUT_ARENA || b->n == MAX_MSGS) flush(ctx, udp_fd, b);
}

/* Keep a packet that cannot go yet (its peer is being found, or its keys made) for up to
 * HOLD_NS, instead of dropping it: the first packets of a connection arrive. */
static int hold(fn_ctx *ctx, int route, const uint8_t *pkt, uint32_t len, const vnet_hdr_t *h, int64_t now) {
    int same = 0, free_slot = -1;
    for (int i = 0; i < HOLD_SLOTS; i++) {
        if (!ctx->held[i].used) { if (free_slot < 0) free_slot = i; }
        else if (ctx->held[i].route == route) same++;
    }
    if (free_slot < 0 || same >= HOLD_PER_ROUTE) return 0;
    held_t *e = &ctx->held[free_slot];
    uint32_t pre = h ? VNET_HDR_LEN : 0;
    memcpy(e->buf, pkt - pre, pre + len);
    e->used = 1; e->route = route; e->vnet = h != NULL; e->len = pre + len; e->since = now;
    ctx->io[FN_IO_HELD]++;
    return 1;
}

static int forward(fn_ctx *ctx, int udp_fd, out_batch *b, uint8_t *pkt, uint32_t len, const vnet_hdr_t *h,
                   int64_t now, int32_t *events, int *nevents, int max_events);

/* held packets whose peer is ready go now; those held too long are dropped */
static void release_held(fn_ctx *ctx, int udp_fd, out_batch *b, int64_t now) {
    for (int i = 0; i < HOLD_SLOTS; i++) {
        held_t *e = &ctx->held[i];
        if (!e->used) continue;
        int slot = ctx->route[e->route];
        peer_t *p = slot >= 0 ? &ctx->peers[slot] : NULL;
        if (p) tx_promote(p);
        int ready = p && p->tx_valid && p->endpoint_len && p->tx_counter < REJECT_AFTER_MESSAGES;
        if (ready) {
            e->used = 0;  /* before forward(): it must not find its own slot taken */
            vnet_hdr_t h;
            if (e->vnet) vnet_parse(e->buf, &h);
            int none = 0;
            forward(ctx, udp_fd, b, e->buf + (e->vnet ? VNET_HDR_LEN : 0), e->len - (e->vnet ? VNET_HDR_LEN : 0),
                    e->vnet ? &h : NULL, now, NULL, &none, 0);
        } else if (now - e->since > HOLD_NS) {
            e->used = 0;
            ctx->drops_in[slot >= 0 ? FN_DROP_NOSESSION : FN_DROP_NOROUTE]++;
        }
    }
}

/* one packet read from the TUN: route, segment, seal, queue */
static int forward(fn_ctx *ctx, int udp_fd, out_batch *b, uint8_t *pkt, uint32_t len, const vnet_hdr_t *h,
                   int64_t now, int32_t *events, int *nevents, int max_events) {
    if (len < 20 || (pkt[0] >> 4) != 4) { ctx->drops_in[FN_DROP_NOTIPV4]++; return 0; }
    int idx = route_index(ctx, get_be32(pkt + 16));
    int slot = idx < 0 ? -1 : ctx->route[idx];
    if (slot < 0) {
        /* an overlay /24 nobody owns yet: ask Python (once) to find its owner */
        if (idx >= 0 && slot == -1 && *nevents < max_events) {
            ctx->route[idx] = ROUTE_PENDING;
            events[(*nevents)++] = -(idx + 1);
        }
        if (idx < 0 || ctx->route[idx] != ROUTE_PENDING || !hold(ctx, idx, pkt, len, h, now))
            ctx->drops_in[FN_DROP_NOROUTE]++;
        return 0;
    }
    peer_t *p = &ctx->peers[slot];
    tx_promote(p);
    if (!p->tx_valid || p->tx_counter >= REJECT_AFTER_MESSAGES || !p->endpoint_len) {
        if (!p->want_handshake && *nevents < max_events) {
            p->want_handshake = 1;
            events[(*nevents)++] = slot;
        }
        if (p->tx_valid || !hold(ctx, idx, pkt, len, h, now))
            ctx->drops_in[p->tx_valid ? FN_DROP_KEY_EXHAUSTED : FN_DROP_NOSESSION]++;
        return 0;
    }
    uint32_t count = 1;
    gso_t g;
    int gso = h && h->gso_type != VNET_GSO_NONE;
    if (gso) {
        if (gso_begin(pkt, len, h, &g) < 0) { ctx->drops_in[FN_DROP_NOTIPV4]++; return 0; }
        count = g.count;
        ctx->io[FN_IO_TSO_SUPER]++;
    }
    fw_track_outbound(ctx, pkt, len, now);        /* replies to this flow may come in */
    uint32_t wrap = p->relay ? RELAY_HEADER : 0;  /* through a relay: type 5 header first */
    for (uint32_t i = 0; i < count; i++) {
        reserve(ctx, udp_fd, b, wrap + FN_HEADER + ctx->mtu + FN_TAG);
        uint8_t *dgram = ctx->out_arena + b->pos, *inner = dgram + wrap;
        const uint8_t *src = pkt;  /* sealed from the read buffer into the arena */
        uint32_t seglen;
        if (gso) {
            uint32_t n = gso_payload(&g, i);
            if (g.hl + n > ctx->mtu) { ctx->drops_in[FN_DROP_TOO_BIG]++; continue; }
            src = pkt + i * g.mss;  /* its headers go just before its payload */
            seglen = gso_segment(&g, i, pkt + i * g.mss);
        } else {
            if (len > ctx->mtu) { ctx->drops_in[FN_DROP_TOO_BIG]++; return 0; }
            if (h && csum_complete(pkt, len, h) < 0) { ctx->drops_in[FN_DROP_NOTIPV4]++; return 0; }
            seglen = len;
        }
        if (wrap) {
            put_type(dgram, TYPE_RELAYED);
            put_le32(dgram + 4, p->relay_id);
        }
        if (seal_locked(p, TYPE_DATA, inner, src, seglen)) { ctx->drops_in[FN_DROP_SEND]++; continue; }
        append(ctx, b, slot, p, wrap + FN_HEADER + seglen + FN_TAG);
        p->tx_packets++;
        p->tx_bytes += seglen;
    }
    p->last_tx_ns = now;
    return 0;
}

/* read and forward whatever the TUN holds (up to FN_BATCH packets); tx_lock held.
 * role: ROLE_IN when the inside thread runs it (fn_inside), -1 when the outside thread
 * helps (help_inside; the inside thread, were it rung, would only wait for tx_lock) */
static int inside_pass(fn_ctx *ctx, int tun_fd, int udp_fd, int32_t *events, int *nevents, int max_events,
                       int role) {
    out_batch b = {.n = 0, .pos = 0, .role = role};
    uint32_t readlen = ctx->vnet ? VNET_HDR_LEN + MAX_SUPER : ctx->mtu;
    int64_t now = fn_now_ns();
    int reads = 0;
    release_held(ctx, udp_fd, &b, now);
    while (reads < FN_BATCH) {
        ssize_t r = read(tun_fd, ctx->stage, readlen);
        if (r <= 0) break;
        reads++;
        ctx->io[FN_IO_TUN_READS]++;
        if (ctx->vnet) {
            if (r < VNET_HDR_LEN) { ctx->drops_in[FN_DROP_SHORT]++; continue; }
            vnet_hdr_t h;
            vnet_parse(ctx->stage, &h);
            forward(ctx, udp_fd, &b, ctx->stage + VNET_HDR_LEN, (uint32_t)r - VNET_HDR_LEN, &h, now, events,
                    nevents, max_events);
        } else {
            forward(ctx, udp_fd, &b, ctx->stage, (uint32_t)r, NULL, now, events, nevents, max_events);
        }
        /* the first read goes out at once: a lone packet (a ping, a request) must not wait
         * for the read that finds the TUN empty; under load this is one more send a pass */
        if (reads == 1 && b.n) flush(ctx, udp_fd, &b);
    }
    /* send under the lock: Python changes keys rarely, and the batch is short */
    if (b.n) flush(ctx, udp_fd, &b);
    return reads;
}

/* The TUN pass run by a thread that does not own it: the outside thread right after it
 * wrote to the TUN (a reply from the local stack, a ping answer or a TCP ACK, is often
 * queued before write() returns), or while the inside thread is parked (idle.c).
 * Packets that need the control plane are queued for the inside thread, which is rung
 * to take them up to Python; so is it when a pass finds load. Returns packets read. */
int help_inside(fn_ctx *ctx, int tun_fd, int udp_fd) {
    if (tun_fd < 0 || pthread_mutex_trylock(&ctx->tx_lock) != 0) return 0;  /* the inside thread is at work */
    int before = ctx->nev_pending;
    int reads = inside_pass(ctx, tun_fd, udp_fd, ctx->ev_pending, &ctx->nev_pending, FN_PENDING, -1);
    int events = ctx->nev_pending != before;
    pthread_mutex_unlock(&ctx->tx_lock);
    if (events) idle_ring(ctx, ROLE_IN);
    else if (reads > SPIN_MAX_READS) idle_kick(ctx, ROLE_IN);
    return reads;
}

int fn_inside(fn_ctx *ctx, int tun_fd, int udp_fd, int timeout_ms, int32_t *events, int max_events) {
    int nevents = 0;
    idle_enter(ctx, ROLE_IN);
    while (!ctx->stop && nevents == 0) {
        pthread_mutex_lock(&ctx->tx_lock);
        /* what another thread found for the control plane goes up first */
        nevents = take_queued(events, ctx->ev_pending, &ctx->nev_pending, max_events, sizeof(int32_t));
        uint64_t sent = ctx->io[FN_IO_UDP_DGRAMS_OUT];
        int reads = inside_pass(ctx, tun_fd, udp_fd, events, &nevents, max_events, ROLE_IN);
        sent = ctx->io[FN_IO_UDP_DGRAMS_OUT] - sent;
        pthread_mutex_unlock(&ctx->tx_lock);
        /* a small batch waits awake for its answer; a few TSO super-packets are not a
         * small batch (each is up to 45 datagrams of a bulk transfer) */
        if (reads > 0 && reads <= SPIN_MAX_READS && sent <= SPIN_MAX_READS)
            spin_for_answer(ctx, ROLE_IN, udp_fd, tun_fd);
        idle_moderate(ctx, reads);
        int helped = idle_parked(ctx, ROLE_OUT) ? help_outside(ctx, udp_fd, tun_fd) : 0;
        if (helped > 0 && helped <= SPIN_MAX_READS) idle_yield(ctx);
        if (reads > 0 || helped > 0 || nevents > 0) continue;
        ctx->io[FN_IO_WAKEUPS_IN]++;
        int w = idle_wait(ctx, ROLE_IN, tun_fd, udp_fd, timeout_ms);
        if (w < 0) return idle_leave(ctx, ROLE_IN, w);
        if (w == 0) return idle_leave(ctx, ROLE_IN, nevents);  /* timeout: back to Python */
        if (w & IDLE_OTHER) {
            int got = help_outside(ctx, udp_fd, tun_fd);
            if (got > 0 && got <= SPIN_MAX_READS) idle_yield(ctx);
        }
    }
    return idle_leave(ctx, ROLE_IN, nevents);
}

/* Control messages from Python (a lighthouse's answers), sealed under each peer's
 * send key into the out arena and sent by the same batch as the data path's packets
 * (append/flush: one sendmmsg for the lot) instead of a seal call and a sendto each.
 * payloads: the n messages back to back, lens[i] bytes each. results[i]: 0 sent (or
 * counted as send_failed by flush), -ENOKEY no send key, -EKEYEXPIRED counter used up,
 * -EDESTADDRREQ no endpoint, -EXDEV the peer is relayed (the caller wraps those),
 * -EINVAL bad slot, -EMSGSIZE too long. Returns the number sent, or -EINVAL. */
int fn_send_control(fn_ctx *ctx, int udp_fd, const int32_t *slots, const uint8_t *payloads, const uint32_t *lens,
                    int n, int32_t *results) {
    if (n < 0 || udp_fd < 0) return -EINVAL;
    out_batch b = {.n = 0, .pos = 0, .role = -1};  /* Python's thread: it covers no fd */
    int sent = 0;
    size_t off = 0;
    pthread_mutex_lock(&ctx->tx_lock);
    int64_t now = fn_now_ns();
    for (int i = 0; i < n; i++) {
        const uint8_t *pt = payloads + off;
        uint32_t ptlen = lens[i];
        off += ptlen;
        int slot = slots[i];
        if (slot < 0 || slot >= ctx->max_peers) { results[i] = -EINVAL; continue; }
        if (ptlen > FN_CTRL_MAX) { results[i] = -EMSGSIZE; continue; }
        peer_t *p = &ctx->peers[slot];
        tx_promote(p);
        if (!p->tx_valid) { results[i] = -ENOKEY; continue; }
        if (p->tx_counter >= REJECT_AFTER_MESSAGES) { results[i] = -EKEYEXPIRED; continue; }
        if (p->relay) { results[i] = -EXDEV; continue; }
        if (!p->endpoint_len) { results[i] = -EDESTADDRREQ; continue; }
        uint32_t dlen = FN_HEADER + ptlen + FN_TAG;
        reserve(ctx, udp_fd, &b, dlen);
        uint8_t *pkt = ctx->out_arena + b.pos;
        memcpy(pkt + FN_HEADER, pt, ptlen);
        if (seal_locked(p, ptlen ? TYPE_CONTROL : TYPE_DATA, pkt, pkt + FN_HEADER, ptlen)) {
            ctx->drops_in[FN_DROP_SEND]++;
            results[i] = -EIO;
            continue;
        }
        p->last_tx_ns = now;
        append(ctx, &b, slot, p, dlen);
        results[i] = 0;
        sent++;
    }
    if (b.n) flush(ctx, udp_fd, &b);
    pthread_mutex_unlock(&ctx->tx_lock);
    return sent;
}
