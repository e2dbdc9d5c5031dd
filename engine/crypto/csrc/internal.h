/* Shared by the data-path C files; never read by cffi. */
#ifndef FLATNET_INTERNAL_H
#define FLATNET_INTERNAL_H
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/udp.h>

#define REJECT_AFTER_MESSAGES ((uint64_t)1 << 60)
#define REPLAY_BITS (FN_REPLAY_WORDS * 64)
#define REPLAY_WINDOW (REPLAY_BITS - 64)
#define ROUTE_ENTRIES (1 << 16)
#define ROUTE_PENDING (-2)            /* reported to Python as unknown; not reported again */
#define TYPE_DATA 3
#define TYPE_CONTROL 4
#define TYPE_RELAYED 5
#define TYPE_COOKIE 6                 /* cookie reply (cookie.c) */
#define RELAY_HEADER 8
#define NOT_RELAYED 0xffffffffu

#define VNET_HDR_LEN 10          /* struct virtio_net_hdr, little endian */
#define VNET_F_NEEDS_CSUM 1
#define VNET_F_DATA_VALID 2
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_ECN 0x80
#define MAX_SUPER 65535          /* largest packet the TUN hands over with TSO on */
#define OUT_ARENA (1 << 20)      /* sealed datagrams waiting for one sendmmsg */
#define MAX_MSGS 64
#define GSO_MAX_BYTES 65000      /* one UDP GSO send stays under 64 KiB */
#define GSO_MAX_SEGS 64
#define GRO_SLOT 65536           /* one receive buffer with UDP GRO on */
#define GRO_SLOTS 16

typedef struct {
    int active;
    uint32_t subnet, mask;                 /* allowed inner sources (cryptokey routing) */
    struct sockaddr_storage endpoint;
    socklen_t endpoint_len;
    int tx_valid;
    uint8_t tx_key[FN_KEY];
    uint32_t tx_remote_index;
    uint64_t tx_counter;
    int tx_cipher;                         /* FN_CIPHER_* of tx_key */
    void *tx_aes;                          /* AES-256-GCM: its keyed context (aead_aes.c) */
    /* A responder's new send key waits here until the initiator shows it has the keys
     * (a packet arrives on next_rx_index): sent at once, data could reach the initiator
     * before it has processed the response, and be dropped there (unknown index). */
    int next_valid;                        /* tx_lock */
    uint8_t next_key[FN_KEY];
    uint32_t next_remote_index, next_rx_index;
    int next_cipher;
    void *next_aes;                        /* keyed when staged: promotion allocates nothing */
    int next_confirmed;                    /* set by the outside thread (atomic) */
    int want_handshake;
    int relay;                             /* 1: send through `endpoint` (a relay) as type 5 */
    uint32_t relay_id;                     /* the peer's id at the relay (its lease block) */
    uint64_t tx_packets, tx_bytes;         /* written by the inside thread only */
    uint64_t rx_packets, rx_bytes, rx_dropped; /* written by the outside thread only */
    uint64_t roam_batch;                   /* outside: last batch a roam was reported in */
    uint64_t groups;                       /* bit per certificate group (firewall) */
    int64_t last_tx_ns, last_rx_ns;
    int in_senders;                        /* senders.c: its endpoint is in the table */
    uint32_t member;                       /* relay.c: its relay id (lease block) + 1; 0: not a member */
} peer_t;

/* senders.c: one entry of the table of peers by direct endpoint; slot -1: empty */
typedef struct {
    int32_t slot;
    uint32_t hash;                         /* of the endpoint: where the entry belongs */
} sender_entry;

#define GRO_ITEMS 8
#define RL_BUCKETS 1024           /* handshake rate limit: buckets by source address */
#define RL_PER_SOURCE 20          /* initiations per second from one address ... */
#define RL_BURST 20               /* ... with this burst */
#define RL_GLOBAL 2000            /* and from everyone together; when these run out the
                                   * engine is under load and wants mac2 (cookie.c) */
/* a node relay forwards at most this many packets a second for one sender (about
 * 220 Mbit/s of 1,400-byte packets), after a burst: forwarding runs in Python, and a
 * certified sender must not take the CPU the relay's own traffic needs */
#define RELAY_PER_SENDER 20000
#define RELAY_BURST 2000
/* a packet a lighthouse forwards in C (relay.c, ~1 us of CPU) costs a twentieth of that:
 * up to 400,000 a second for one sender (about 4.6 Gbit/s), after a burst of 40,000;
 * one bucket for both kinds */
#define RELAY_C_COST 50
#define RELAY_BLOCKS 65536              /* relay ids: /24 blocks of an overlay of /8 or longer */
#define RELAY_QUEUE 1024                /* datagrams forwarded in one receive pass, at most, before a send */

typedef struct {
    uint8_t *data;                    /* in a receive buffer */
    uint32_t len;
    int32_t target;                   /* its peer slot */
} relay_fwd;
#define RL_COOKIE 20000           /* cookie replies per second, all together */
#define COOKIE_Q 64               /* cookie replies queued for the end of a receive pass */
#define COOKIE_SECRET_NS (120LL * 1000000000LL)

typedef struct {
    uint32_t ip;                      /* cookie.c source_key */
    int64_t milli_tokens, last_ns;
} rate_bucket;

typedef struct {
    struct sockaddr_storage to;
    socklen_t tolen;
    uint32_t len;
    uint8_t data[RELAY_HEADER + FN_COOKIE_REPLY];
} cookie_out;

#define HOLD_SLOTS 16                 /* packets kept while a peer is found or its keys made */
#define HOLD_PER_ROUTE 4
#define HOLD_NS (3LL * 1000000000LL)

typedef struct {
    int used;
    int route;                        /* route index of the destination */
    int vnet;                         /* buf starts with a virtio_net_hdr */
    uint32_t len;
    int64_t since;
    uint8_t *buf;
} held_t;

#define CT_ENTRIES (1 << 16)          /* connection tracking for the inbound firewall */
#define CT_TIMEOUT_NS (600LL * 1000000000LL)

typedef struct {
    uint64_t key_a, key_b;            /* proto|ports and addresses of the outbound flow */
    int64_t expires_ns;
} ct_entry;

typedef struct {
    uint8_t proto;                    /* 0 any, else IP protocol */
    uint16_t port_lo, port_hi;        /* local (destination) port range; 0-65535 any */
    uint64_t groups;                  /* the peer must have one of these; 0 any */
    uint32_t net, mask;               /* source address range */
} fw_rule;
#define FN_PENDING 64              /* control items the spinning inside thread holds for Python */
#define SPIN_MAX_READS 4          /* batches this small are answered soon: spin for the answer */
#define SPIN_NS 400000            /* how long the inside thread waits, awake, for an answer */
#define SPIN_BACKOFF_NS 10000000  /* after a spin that caught nothing, no spinning for this long */
#define MODERATE_MIN 16           /* a pass that moved this many packets is load: pause (idle.c) */

typedef struct {
    int used, closed, psh, udp;
    uint32_t ihl, thl, len, seg, count, next_seq;
    uint8_t *buf;                          /* vnet header + coalesced packet */
} gro_item;

typedef struct {
    uint32_t index;                        /* full local index; 0 = free slot */
    int peer;
    uint8_t key[FN_KEY];
    int cipher;                            /* FN_CIPHER_* */
    void *aes;                             /* AES-256-GCM: its keyed context (aead_aes.c) */
    fn_replay replay;
} rx_t;

struct fn_ctx {
    pthread_mutex_t tx_lock, rx_lock;
    volatile int stop;
    uint32_t overlay_net, overlay_mask;
    uint32_t local_net, local_mask;        /* this host's lease: where decrypted packets may go */
    int local_valid;                       /* 0 until fn_set_local: every packet is dropped */
    uint32_t mtu, stride;
    int vnet, udp_gso, udp_gro;            /* offloads in use (fn_set_offloads) */
    int spin;                              /* fn_set_spin */
    int64_t moderation_ns;                 /* fn_set_moderation: pause after a loaded pass */
    int tun_uso;                           /* the TUN takes UDP GSO writes (USO) */
    int relay_mode;                        /* FN_RELAY_*: which type-5 packets go up to be forwarded */
    int32_t route[ROUTE_ENTRIES];          /* (dst >> 8) & 0xffff -> peer slot, -1 none */
    peer_t *peers;                         /* max_peers of them (fn_new_sized) */
    int max_peers;
    /* a relay (FN_RELAY_ALL, FN_RELAY_OTHERS): peer slots by direct endpoint (senders.c),
     * so a type 5 from an address no peer sends from is dropped in C, not handed to
     * Python. Changed one entry at a time under tx_lock and rx_lock. */
    sender_entry *senders;
    uint32_t senders_mask;
    rate_bucket *forward_rl;               /* per peer slot: what a relay forwards for it */
    int32_t *member_slot;                  /* relay.c: block -> member's peer slot, -1 (rx_lock) */
    relay_fwd fwd[RELAY_QUEUE];            /* relay.c: forwarded in this receive pass */
    int nfwd;
    int fwd_fd;                            /* the socket they leave by: the pass's */
    rx_t *rx;                              /* rx_mask + 1 of them, a power of two */
    uint32_t rx_mask;
    uint64_t drops_in[FN_NDROPS], drops_out[FN_NDROPS];
    uint64_t io[FN_NIO];                   /* syscall and unit counters (fn_io_stats) */
    uint64_t batch_id;
    uint8_t *stage;                        /* inside: one TUN read */
    uint8_t *out_arena;                    /* inside: sealed datagrams */
    uint8_t *in_arena;                     /* outside: receive buffers */
    gro_item gro[GRO_ITEMS];               /* outside: TCP segments being coalesced */
    held_t held[HOLD_SLOTS];               /* inside thread (tx_lock) */
    int fw_active, fw_default_allow;       /* inbound firewall (rx_lock) */
    int fw_nrules;
    fw_rule fw_rules[FN_FW_MAX_RULES];
    ct_entry *ct;                          /* written by inside, read by outside (no lock:
                                            * a torn read can only miss an entry) */
    rate_bucket rl[RL_BUCKETS];            /* outside thread only */
    rate_bucket rl_global;
    uint8_t rl_key[16];                    /* cookie.c source_key: hashes IPv6 /64s (outside thread) */
    int rl_keyed;
    int64_t rl_global_rate;                /* fn_set_handshake_limit; RL_GLOBAL */
    int under_load;                        /* cookie.c: mac2 wanted */
    rate_bucket rl_cookie;
    /* cookie.c (rx_lock): mac1 and cookie keys from our static public key */
    int have_identity;
    uint8_t mac1_key[32], cookie_key[32];
    uint8_t cookie_secret[32];
    int64_t cookie_secret_born;
    uint8_t cookie_nonce[16];              /* random prefix of cookie reply nonces ... */
    uint64_t cookie_nonce_counter;         /* ... and the counter after it */
    cookie_out cookie_q[COOKIE_Q];
    int ncookie;
    fn_ctrl pending[FN_PENDING];           /* control items received by a spin (rx_lock) */
    int npending;
    int64_t spin_backoff_until;            /* whoever spins (tx_lock side) */
    pthread_mutex_t idle_lock;             /* idle.c: who waits on what */
    int st[2];                             /* ST_* of ROLE_IN, ROLE_OUT */
    int efd[2];                            /* eventfds that wake each thread */
    int32_t ev_pending[FN_PENDING];        /* inside events found by the outside thread (tx_lock) */
    int nev_pending;
};

static inline uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_le64(const uint8_t *p) {
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}
static inline uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void put_le32(uint8_t *p, uint32_t v) {
    p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24;
}
static inline void put_le64(uint8_t *p, uint64_t v) {
    put_le32(p, (uint32_t)v); put_le32(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint16_t get_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
/* move up to `max` items from the front of a queue kept by another thread into `dst` */
static inline int take_queued(void *dst, void *queue, int *queued, int max, size_t size) {
    int take = *queued < max ? *queued : max;
    if (take) {
        memcpy(dst, queue, size * take);
        memmove(queue, (uint8_t *)queue + size * take, size * (*queued - take));
        *queued -= take;
    }
    return take;
}
static inline void make_nonce(uint8_t nonce[12], uint64_t counter) {
    memset(nonce, 0, 4);
    put_le64(nonce + 4, counter);
}

/* aead_small.c: the compact code for payloads shorter than AEAD_SMALL_MAX (see there
 * why), libsodium for longer ones */
#define AEAD_SMALL_MAX FN_AEAD_SMALL_MAX
/* aead_large.c: OpenSSL's libcrypto for payloads of AEAD_LARGE_MIN bytes and more */
#define AEAD_LARGE_MIN FN_AEAD_LARGE_MIN
void aead_large_init(void);
int aead_large_seal(uint8_t *buf, uint32_t len, const uint8_t *ad, uint32_t adlen, const uint8_t nonce[12],
                    const uint8_t key[32]);
int aead_large_open(uint8_t *buf, uint32_t len, const uint8_t *ad, uint32_t adlen, const uint8_t nonce[12],
                    const uint8_t key[32]);
/* aead_aes.c: AES-256-GCM with a context per session key, keyed once (NULL: no
 * memory, or not available); aes_free cleanses it. seal/open: same layout as below,
 * but seal takes its plaintext from `src`: pkt + FN_HEADER, or a buffer apart. */
void *aes_new(const uint8_t key[32], int enc);
void aes_free(void *x);
int aes_seal(void *x, uint8_t *pkt, const uint8_t *src, uint32_t ptlen, const uint8_t nonce[12]);
int aes_open(void *x, uint8_t *pkt, uint32_t len, const uint8_t nonce[12]);
/* aes_gcm_vaes.c: AES-256-GCM with VAES and VPCLMULQDQ (96-bit nonces); vgcm_new and
 * the rest only where vgcm_cpu_ok(). open: 1, or 0 on a bad tag (`out` zeroed). */
int vgcm_cpu_ok(void);
void *vgcm_new(const uint8_t key[32]);
void vgcm_free(void *x);
void vgcm_seal(const void *x, const uint8_t nonce[12], const uint8_t *ad, size_t adlen, const uint8_t *in,
               uint8_t *out, size_t len, uint8_t tag[16]);
int vgcm_open(const void *x, const uint8_t nonce[12], const uint8_t *ad, size_t adlen, const uint8_t *in,
              uint8_t *out, size_t len, const uint8_t tag[16]);
/* seal the `ptlen` bytes after the FN_HEADER-byte header at `pkt` in place, the tag
 * after them; the header is the associated data */
void aead_seal(uint8_t *pkt, uint32_t ptlen, const uint8_t nonce[12], const uint8_t key[32]);
/* open the `len` bytes (ciphertext and tag) after the header at `pkt` in place: 0, or
 * -1 when the tag does not match */
int aead_open(uint8_t *pkt, uint32_t len, const uint8_t nonce[12], const uint8_t key[32]);
/* byte 0 the type, byte 1 the wire version, bytes 2-3 reserved (zero) */
static inline void put_type(uint8_t *p, uint8_t type) {
    p[0] = type; p[1] = FN_WIRE_VERSION; p[2] = p[3] = 0;
}

/* A datagram from `a` comes from the peer's direct endpoint (not through a relay) */
static inline int same_addr(const struct sockaddr_storage *a, socklen_t alen, const peer_t *p) {
    if (p->relay) return 0;
    if (alen != p->endpoint_len) return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)&p->endpoint;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    return memcmp(a, &p->endpoint, alen) == 0;
}

/* senders.c: the table of peers by direct endpoint (a relay's sender check) */
int senders_init(fn_ctx *ctx);
void senders_remove(fn_ctx *ctx, int slot);
void senders_add(fn_ctx *ctx, int slot);
int sender_slot(fn_ctx *ctx, const struct sockaddr_storage *from, socklen_t fromlen);
void senders_each_at(fn_ctx *ctx, const struct sockaddr_storage *at, socklen_t atlen, int keep,
                     void (*fn)(fn_ctx *, int));

/* fastpath.c */
int route_index(fn_ctx *ctx, uint32_t ip);
/* seal `ptlen` bytes from `src` (pkt + FN_HEADER, or a buffer apart) into pkt */
int seal_locked(peer_t *p, uint8_t type, uint8_t *pkt, const uint8_t *src, uint32_t ptlen);
void tx_promote(peer_t *p);
int replay_check(const fn_replay *r, uint64_t c);
void replay_update(fn_replay *r, uint64_t c);

/* offload.c */
typedef struct {
    uint8_t flags, gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset;
} vnet_hdr_t;
void vnet_parse(const uint8_t *raw, vnet_hdr_t *h);
/* A GSO super-packet (TCPv4 or UDPv4) being cut into segments: its layout, and its
 * headers kept apart as the template of every segment's. The inside thread builds each
 * segment where its payload already lies, in the TUN read buffer: the headers go just
 * before the payload, over bytes of the segments before it (sealed by then) and seals
 * from there, so no segment is copied before it is sealed. Segments in order 0, 1, ... */
typedef struct {
    int proto;                             /* IPPROTO_TCP or IPPROTO_UDP */
    uint32_t ihl, hl, mss, payload, count; /* hl: IP + TCP/UDP header bytes */
    uint8_t hdr[120];                      /* hl bytes: at most 60 + 60 */
} gso_t;
/* 0, or -1 when the headers are malformed (not TCPv4/UDPv4 GSO, gso_size 0, short) */
int gso_begin(const uint8_t *pkt, uint32_t len, const vnet_hdr_t *h, gso_t *g);
/* payload bytes of segment i (< g->count) */
uint32_t gso_payload(const gso_t *g, uint32_t i);
/* segment i with its headers at `seg` and its payload at seg + g->hl: checksums done,
 * returns its length */
uint32_t gso_segment(const gso_t *g, uint32_t i, uint8_t *seg);
int csum_complete(uint8_t *pkt, uint32_t len, const vnet_hdr_t *h);

/* inside.c */
int help_inside(fn_ctx *ctx, int tun_fd, int udp_fd);

/* outside.c */
int help_outside(fn_ctx *ctx, int udp_fd, int tun_fd);
int outside_buffer(fn_ctx *ctx, int tun_fd, uint8_t *base, uint32_t total, uint32_t seg,
                   const struct sockaddr_storage *from, socklen_t fromlen, int64_t now, fn_ctrl *ctrl, int room);
void spin_for_answer(fn_ctx *ctx, int role, int udp_fd, int tun_fd);

/* idle.c */
void idle_moderate(fn_ctx *ctx, int packets);

#define ROLE_IN 0
#define ROLE_OUT 1
enum { ST_ACTIVE, ST_POLL_OWN, ST_POLL_BOTH, ST_PARKED, ST_AWAY };
#define IDLE_RING 1                        /* idle_wait: woken by the eventfd (or EINTR) */
#define IDLE_OWN 2                         /* its own fd is readable */
#define IDLE_OTHER 4                       /* the other thread's fd is readable */
void idle_ring(fn_ctx *ctx, int role);
void idle_kick(fn_ctx *ctx, int role);
void idle_yield(fn_ctx *ctx);
int idle_parked(fn_ctx *ctx, int role);
void idle_enter(fn_ctx *ctx, int role);
int idle_leave(fn_ctx *ctx, int role, int ret);
int idle_wait(fn_ctx *ctx, int role, int own_fd, int other_fd, int timeout_ms);

/* cookie.c */
int source_allowed(fn_ctx *ctx, const struct sockaddr_storage *from, int64_t now);
int forward_allowed(fn_ctx *ctx, const struct sockaddr_storage *from, int64_t now);
int forward_budget(fn_ctx *ctx, int slot, int64_t now, int64_t cost_milli);
int mac1_for_us(fn_ctx *ctx, const uint8_t *msg, uint32_t len);
int handshake_gate(fn_ctx *ctx, const uint8_t *msg, uint32_t len, const struct sockaddr_storage *from,
                   socklen_t fromlen, uint32_t relayed_from, int64_t now);
void cookie_flush(fn_ctx *ctx, int udp_fd);

/* relay.c */
void relay_member_clear(fn_ctx *ctx, int slot);
int relay_target(fn_ctx *ctx, int sender, const uint8_t *pkt, const struct sockaddr_storage *from,
                 socklen_t fromlen);
void relay_queue(fn_ctx *ctx, uint8_t *pkt, uint32_t len, int sender, int target);
int relay_gso_run(fn_ctx *ctx, int first, uint32_t *bytes);
void relay_flush(fn_ctx *ctx);

/* firewall.c */
void fw_track_outbound(fn_ctx *ctx, const uint8_t *ip, uint32_t len, int64_t now);
int fw_allow_inbound(fn_ctx *ctx, const peer_t *p, const uint8_t *ip, uint32_t len, int64_t now);

/* gro.c */
void gro_receive(fn_ctx *ctx, int tun_fd, uint8_t *ip, uint32_t len);
void gro_flush(fn_ctx *ctx, int tun_fd);
/* ---- one message of a sendmmsg batch: a datagram, or (seg > 0) a UDP GSO train of
 * `seg`-byte segments, the last one possibly shorter (inside.c, relay.c) */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

typedef union { char buf[CMSG_SPACE(sizeof(uint16_t))]; struct cmsghdr align; } gso_cmsg;

static inline void udp_msg(struct mmsghdr *mm, struct iovec *iov, gso_cmsg *cb, void *base, size_t len,
                           const void *addr, socklen_t addrlen, uint16_t seg) {
    iov->iov_base = base;
    iov->iov_len = len;
    memset(&mm->msg_hdr, 0, sizeof(mm->msg_hdr));
    mm->msg_hdr.msg_iov = iov;
    mm->msg_hdr.msg_iovlen = 1;
    mm->msg_hdr.msg_name = (void *)addr;
    mm->msg_hdr.msg_namelen = addrlen;
    if (seg) {
        mm->msg_hdr.msg_control = cb->buf;
        mm->msg_hdr.msg_controllen = sizeof(cb->buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mm->msg_hdr);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &seg, sizeof(seg));
    }
}

/* An error after which a socket or TUN call can never succeed (the descriptor is gone
 * or is not what the data path was given): the thread returns it to Python, and the
 * daemon stops (datapath.exit_on_failure). Anything else (EAGAIN, EINTR, a queued ICMP
 * error, a short memory shortage) ends the pass and the next one tries again: a
 * transient error must not end a daemon, and one an attacker can cause even less. */
static inline int fd_unusable(int err) {
    return err == EBADF || err == ENOTSOCK || err == EINVAL || err == EFAULT || err == EOPNOTSUPP;
}

/* After a sendmmsg failed with `err`: 1 to try the same message again, once the socket
 * has room (up to 10 ms), 0 to drop it. EAGAIN means the send buffer is full and poll()
 * tells when it has room. ENOBUFS (no memory for the packet) is not something poll()
 * waits for: it reports the socket writable at once, so an unbounded retry would spin
 * for as long as the memory shortage lasts. `*waits` counts the waits of one flush;
 * after SEND_WAITS the message is dropped. */
#define SEND_WAITS 4
static inline int send_may_wait(int err, int waits) {
    return (err == EAGAIN || err == ENOBUFS) && waits < SEND_WAITS;
}
static inline int wait_for_room(int fd, int err, int *waits) {
    if (!send_may_wait(err, *waits)) return 0;
    ++*waits;
    struct pollfd w = {.fd = fd, .events = POLLOUT};
    return poll(&w, 1, 10) > 0;
}

#endif
