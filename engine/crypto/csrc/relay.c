/* relay: a lighthouse forwards type-5 packets in C, without going up to Python.
 *
 * Before, every relayed packet went up to Python (a control item, the registry's
 * look-ups, one sendto each): ~35 us of lighthouse CPU per packet, and a relayed TCP
 * stream got 130-220 Mbit/s. Now Python (the lighthouse's registry) tells the data
 * path which sessions are registered nodes and under which relay id (lease block):
 * fn_relay_member(slot, block, address it registered from). outside.c then forwards
 * a type 5 here when
 *   - its sender is the session at `from` (senders.c) and that session is a member
 *     registered from this very address (what engine/proto/relay.py `sender` asks:
 *     "a node registered here, sending from its observed address"), and
 *   - the block in its header is another member's, at another address (`target`);
 * it rewrites the id to the sender's block, as engine/proto/relay.py does, and sends
 * it on blind: nothing is opened. Anything else goes up to Python as before
 * (FN_CTRL_FORWARD), which forwards or refuses and counts (relay_refused,
 * relay_unknown_target), so C never forwards what Python would refuse. A membership
 * holds only while the session stays at the registered address: a new endpoint, a
 * relay or the removal of the peer ends it (fastpath.c), and Python sets it again at
 * the node's next register.
 *
 * Forwarded datagrams stay in the receive buffers (only the 4-byte id is rewritten) and
 * leave in one sendmmsg at the end of the receive pass; with UDP GSO, a run of
 * same-size datagrams that one UDP GRO buffer brought for one target leaves as one
 * GSO send: the kernel cuts it up again. Everything here runs under rx_lock.
 */
#include "internal.h"

#include <errno.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdlib.h>

/* the member slot of each block: allocated at the first member (an engine never has one) */
static int members_init(fn_ctx *ctx) {
    if (ctx->member_slot) return 0;
    int32_t *t = malloc(RELAY_BLOCKS * sizeof(int32_t));
    if (!t) return -ENOMEM;
    for (int i = 0; i < RELAY_BLOCKS; i++) t[i] = -1;
    ctx->member_slot = t;
    return 0;
}

/* tx_lock and rx_lock held: the peer in `slot` is no longer a member */
void relay_member_clear(fn_ctx *ctx, int slot) {
    peer_t *p = &ctx->peers[slot];
    if (!p->member) return;
    uint32_t block = p->member - 1;
    if (ctx->member_slot && ctx->member_slot[block] == slot) ctx->member_slot[block] = -1;
    p->member = 0;
}

int fn_relay_member(fn_ctx *ctx, int slot, int32_t block, const uint8_t *sa, uint32_t len) {
    if (slot < 0 || slot >= ctx->max_peers || block >= RELAY_BLOCKS || len > sizeof(struct sockaddr_storage))
        return -EINVAL;
    pthread_mutex_lock(&ctx->tx_lock);
    pthread_mutex_lock(&ctx->rx_lock);
    int rc = 0;
    peer_t *p = &ctx->peers[slot];
    relay_member_clear(ctx, slot);
    if (block < 0) goto out;
    struct sockaddr_storage at;
    memset(&at, 0, sizeof(at));
    memcpy(&at, sa, len);
    /* registered from where its session is, on a direct path: else Python forwards */
    if (!p->active || !p->in_senders || !same_addr(&at, (socklen_t)len, p)) { rc = -EADDRNOTAVAIL; goto out; }
    if ((rc = members_init(ctx)) != 0) goto out;
    int old = ctx->member_slot[block];
    if (old >= 0) relay_member_clear(ctx, old);  /* one node per block: the newest register wins */
    /* and one per address: another session there (a NAT gave a departed node's address
     * to this one) is no longer the registry's sender there. sender_slot finds the
     * first session at an address, maybe the older one: its packets must not leave
     * under the older node's id (now they go up to Python, which knows the newest) */
    senders_each_at(ctx, &at, (socklen_t)len, slot, relay_member_clear);
    ctx->member_slot[block] = slot;
    p->member = (uint32_t)block + 1;
out:
    pthread_mutex_unlock(&ctx->rx_lock);
    pthread_mutex_unlock(&ctx->tx_lock);
    return rc;
}

/* The member slot a type 5 from member `sender` at `from` goes to, or -1 (Python
 * decides). No side effects. */
int relay_target(fn_ctx *ctx, int sender, const uint8_t *pkt, const struct sockaddr_storage *from,
                 socklen_t fromlen) {
    if (!ctx->member_slot || !ctx->peers[sender].member) return -1;
    uint32_t block = get_le32(pkt + 4);
    if (block >= RELAY_BLOCKS) return -1;
    int t = ctx->member_slot[block];
    if (t < 0 || t == sender || ctx->peers[t].member != block + 1) return -1;
    if (same_addr(from, fromlen, &ctx->peers[t])) return -1;  /* never back to where it came from */
    return t;
}

/* one forwarded datagram (in a receive buffer) for the end of the pass */
void relay_queue(fn_ctx *ctx, uint8_t *pkt, uint32_t len, int sender, int target) {
    if (ctx->nfwd == RELAY_QUEUE) relay_flush(ctx);
    put_le32(pkt + 4, ctx->peers[sender].member - 1);  /* the target answers to the sender's block */
    relay_fwd *f = &ctx->fwd[ctx->nfwd++];
    f->data = pkt;
    f->len = len;
    f->target = target;
    ctx->io[FN_IO_RELAYED]++;
    ctx->io[FN_IO_RELAYED_BYTES] += len;
}

/* A run of queued datagrams that can leave as one GSO send from `first`: one target,
 * back to back in memory, one size (the last may be shorter). Returns its length. */
int relay_gso_run(fn_ctx *ctx, int first, uint32_t *bytes) {
    const relay_fwd *f = ctx->fwd;
    uint32_t seg = f[first].len, total = seg;
    int n = 1;
    if (ctx->udp_gso)
        while (first + n < ctx->nfwd && n < GSO_MAX_SEGS) {
            const relay_fwd *g = &f[first + n];
            if (g->target != f[first].target || g->data != f[first].data + total || g->len > seg ||
                total + g->len > GSO_MAX_BYTES || f[first + n - 1].len < seg)
                break;
            total += g->len;
            n++;
        }
    *bytes = total;
    return n;
}

/* the datagrams of one refused GSO message (`bytes` from `data`, queued from entry
 * `first` on), sent one by one to the same address */
static void send_each(fn_ctx *ctx, uint8_t *data, uint32_t bytes, int first, const struct msghdr *to) {
    for (uint32_t off = 0; off < bytes; first++) {
        uint32_t len = ctx->fwd[first].len;
        ssize_t r = sendto(ctx->fwd_fd, data + off, len, 0, to->msg_name, to->msg_namelen);
        ctx->io[FN_IO_UDP_SENDS]++;
        if (r < 0) ctx->drops_out[FN_DROP_SEND]++;
        else ctx->io[FN_IO_UDP_DGRAMS_OUT]++;
        off += len;
    }
}

/* everything queued leaves: sendmmsg of up to MAX_MSGS messages at a time */
void relay_flush(fn_ctx *ctx) {
    int i = 0;
    while (i < ctx->nfwd) {
        struct mmsghdr mm[MAX_MSGS];
        struct iovec iov[MAX_MSGS];
        gso_cmsg cbuf[MAX_MSGS];
        int count[MAX_MSGS], first[MAX_MSGS], m = 0;
        while (i < ctx->nfwd && m < MAX_MSGS) {
            uint32_t bytes;
            int n = relay_gso_run(ctx, i, &bytes);
            const peer_t *t = &ctx->peers[ctx->fwd[i].target];
            udp_msg(&mm[m], &iov[m], &cbuf[m], ctx->fwd[i].data, bytes, &t->endpoint, t->endpoint_len,
                    n > 1 ? (uint16_t)ctx->fwd[i].len : 0);
            first[m] = i;
            count[m++] = n;
            i += n;
        }
        int sent = 0, waits = 0;
        while (sent < m) {
            int r = sendmmsg(ctx->fwd_fd, mm + sent, m - sent, 0);
            ctx->io[FN_IO_UDP_SENDS]++;
            if (r < 0) {
                if (errno == EINTR) continue;
                if (wait_for_room(ctx->fwd_fd, errno, &waits)) continue;
                if (count[sent] > 1) {
                    /* a GSO send the kernel refused (e.g. the segment size does not fit
                     * the path to the target without fragments): one at a time instead */
                    send_each(ctx, (uint8_t *)iov[sent].iov_base, (uint32_t)iov[sent].iov_len,
                              first[sent], &mm[sent].msg_hdr);
                } else {
                    ctx->drops_out[FN_DROP_SEND]++;  /* skip what the kernel refused */
                }
                sent++;
                continue;
            }
            for (int k = sent; k < sent + r; k++) ctx->io[FN_IO_UDP_DGRAMS_OUT] += count[k];
            sent += r;
        }
    }
    ctx->nfwd = 0;
}
