/* Flatnet data path: batched TUN<->UDP forwarding with ChaCha20-Poly1305 or, where a
 * session negotiated it, AES-256-GCM (aead_aes.c).
 *
 * Only the part between CDEF-BEGIN and CDEF-END is read by cffi (engine/crypto/_build.py);
 * keep it free of preprocessor logic other than integer #defines.
 *
 * Threads: fn_inside (TUN->UDP) and fn_outside (UDP->TUN) each run in their own
 * thread with the GIL released; Python changes peers and keys from a third thread.
 * tx state is guarded by tx_lock, rx state by rx_lock, so the two directions never
 * wait for each other.
 */
#ifndef FLATNET_FASTPATH_H
#define FLATNET_FASTPATH_H
#include <stdint.h>

/* CDEF-BEGIN */
#define FN_VERSION 25
#define FN_WIRE_VERSION 2         /* byte 1 of every datagram (docs/protocol-wire.md) */
#define FN_NO_SUBNET 255
#define FN_HEADER 16
#define FN_TAG 16
#define FN_KEY 32
#define FN_AEAD_SMALL_MAX 256     /* shorter payloads: the compact cipher (aead_small.c) */
#define FN_AEAD_LARGE_MIN 576     /* longer payloads: OpenSSL's libcrypto (aead_large.c) */
#define FN_CIPHER_CHACHA 0        /* a session key's transport cipher: ChaCha20-Poly1305 */
#define FN_CIPHER_AES256GCM 1     /* AES-256-GCM (aead_aes.c), where fn_aes_gcm_available() */
#define FN_MAX_PEERS 4096
#define FN_RX_SLOTS 4096
#define FN_MAX_PEERS_LIMIT 262144    /* fn_new_sized: a lighthouse of a large network */
#define FN_BATCH 64
#define FN_REPLAY_WORDS 64
#define FN_CTRL_MAX 1500
#define FN_NDROPS 23

#define FN_DROP_SHORT 0
#define FN_DROP_TYPE 1
#define FN_DROP_INDEX 2
#define FN_DROP_AUTH 3
#define FN_DROP_REPLAY 4
#define FN_DROP_SOURCE 5
#define FN_DROP_NOROUTE 6
#define FN_DROP_NOSESSION 7
#define FN_DROP_SEND 8
#define FN_DROP_TUNWRITE 9
#define FN_DROP_NOTIPV4 10
#define FN_DROP_KEY_EXHAUSTED 11
#define FN_DROP_CTRL_FULL 12
#define FN_DROP_TOO_BIG 13
#define FN_DROP_RATE_LIMITED 14
#define FN_DROP_FIREWALL 15
#define FN_DROP_VERSION 16          /* byte 1 is another protocol version */
#define FN_DROP_RESERVED 17         /* bytes 2-3 not zero */
#define FN_DROP_MAC1 18             /* a handshake message without our mac1 */
#define FN_DROP_COOKIE 19           /* under load, no valid mac2: answered with a cookie */
#define FN_DROP_DESTINATION 20      /* decrypted, but not for this host's lease */
#define FN_DROP_RELAY_SENDER 21     /* relay: a type 5 to forward from no peer's direct endpoint */
#define FN_DROP_RELAY_RATE 22       /* relay: over one sender's forwarding budget */
#define FN_FW_MAX_RULES 64

#define FN_NIO 15
#define FN_IO_TUN_READS 0
#define FN_IO_TSO_SUPER 1
#define FN_IO_UDP_SENDS 2
#define FN_IO_UDP_DGRAMS_OUT 3
#define FN_IO_UDP_RECVS 4
#define FN_IO_UDP_DGRAMS_IN 5
#define FN_IO_TUN_WRITES 6
#define FN_IO_WAKEUPS_IN 7
#define FN_IO_WAKEUPS_OUT 8
#define FN_IO_SPINS 9
#define FN_IO_SPIN_HITS 10
#define FN_IO_HELD 11
#define FN_IO_MODERATED 12
#define FN_IO_RELAYED 13            /* type-5 packets a lighthouse forwarded in C (relay.c) */
#define FN_IO_RELAYED_BYTES 14

#define FN_CTRL_RAW 0
#define FN_CTRL_DECRYPTED 1
#define FN_CTRL_ROAM 2
#define FN_CTRL_VERSION 3           /* a handshake of another protocol version: data = its first 4 bytes */
#define FN_CTRL_FORWARD 4           /* relay mode: a type-5 packet for another node, to forward (whole) */
#define FN_RELAY_OFF 0              /* fn_set_relay_mode: type 5 is unwrapped and received */
#define FN_RELAY_ALL 1              /* every type 5 is forwarded (a lighthouse) */
#define FN_RELAY_OTHERS 2           /* type 5 not addressed to this node is forwarded (a node relay) */
#define FN_MAC 16
#define FN_COOKIE_REPLY 64

typedef struct fn_ctx fn_ctx;

typedef struct fn_replay {
    uint64_t top;
    uint64_t bitmap[64];
} fn_replay;

typedef struct fn_peer_stats {
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes, rx_dropped;
    int64_t last_tx_ns, last_rx_ns;
    uint64_t tx_counter;
    int32_t tx_valid;
    int32_t want_handshake;
} fn_peer_stats;

typedef struct fn_ctrl {
    int32_t kind;
    int32_t peer;
    uint32_t len;
    uint32_t addrlen;
    uint8_t addr[28];
    uint8_t data[1500];
} fn_ctrl;

int fn_init(void);
int fn_version(void);
int64_t fn_now_ns(void);

fn_ctx *fn_new(uint32_t overlay_net, uint32_t overlay_prefix, uint32_t mtu);
fn_ctx *fn_new_sized(uint32_t overlay_net, uint32_t overlay_prefix, uint32_t mtu, int max_peers,
                     uint32_t rx_slots);
void fn_free(fn_ctx *ctx);
void fn_stop(fn_ctx *ctx);
void fn_set_offloads(fn_ctx *ctx, int vnet, int udp_gso, int udp_gro);
void fn_set_spin(fn_ctx *ctx, int on);
void fn_set_moderation(fn_ctx *ctx, uint32_t usec);
void fn_set_tun_uso(fn_ctx *ctx, int on);
void fn_set_relay_mode(fn_ctx *ctx, int mode);
void fn_set_identity(fn_ctx *ctx, const uint8_t *static_public);
void fn_set_handshake_limit(fn_ctx *ctx, uint32_t per_second);
int fn_set_local(fn_ctx *ctx, uint32_t subnet, uint32_t prefix);
void fn_set_compact_cipher(int on);
int fn_compact_cipher(void);
/* OpenSSL for long payloads (aead_large.c): 1 when it is found and on */
void fn_set_large_cipher(int on);
int fn_large_cipher(void);
int fn_route_unpend(fn_ctx *ctx, int route);
int fn_firewall_set(fn_ctx *ctx, int default_allow, const uint8_t *protos, const uint16_t *port_lo,
                    const uint16_t *port_hi, const uint64_t *groups, const uint32_t *nets, const uint32_t *masks,
                    int n);
int fn_peer_groups(fn_ctx *ctx, int slot, uint64_t groups);
void fn_io_stats(fn_ctx *ctx, uint64_t *out);
int fn_tso_segment(const uint8_t *vnet_pkt, uint32_t len, uint8_t *out, uint32_t stride,
                   uint32_t *lens, int max);

int fn_peer_set(fn_ctx *ctx, int slot, uint32_t subnet, uint32_t prefix);
int fn_peer_remove(fn_ctx *ctx, int slot);
int fn_peer_endpoint(fn_ctx *ctx, int slot, const uint8_t *sockaddr, uint32_t len);
/* cipher FN_CIPHER_*: -ENOTSUP when it is not available here, -ENOMEM (nothing changed) */
int fn_peer_tx_key(fn_ctx *ctx, int slot, const uint8_t *key, uint32_t remote_index, int cipher);
int fn_peer_tx_clear(fn_ctx *ctx, int slot);
int fn_peer_tx_key_staged(fn_ctx *ctx, int slot, const uint8_t *key, uint32_t remote_index, uint32_t local_index,
                          int cipher);
int fn_peer_clear_want(fn_ctx *ctx, int slot);
int fn_peer_relay(fn_ctx *ctx, int slot, int on, uint32_t relay_id);
/* a lighthouse (relay.c): the session in `slot` is a node registered from sockaddr as relay id
 * `block` (0-65535), whose type-5 packets C forwards; block -1: no longer. -EADDRNOTAVAIL:
 * the session is not at that address (Python forwards for it) */
int fn_relay_member(fn_ctx *ctx, int slot, int32_t block, const uint8_t *sockaddr, uint32_t len);
int fn_peer_stats_get(fn_ctx *ctx, int slot, fn_peer_stats *out);
int fn_rx_add(fn_ctx *ctx, uint32_t local_index, int peer, const uint8_t *key, int cipher);
int fn_rx_remove(fn_ctx *ctx, uint32_t local_index);
void fn_drops(fn_ctx *ctx, uint64_t *out);

int fn_seal_control(fn_ctx *ctx, int slot, const uint8_t *pt, uint32_t ptlen,
                    uint8_t *out, uint32_t outlen);
/* n control messages sealed and sent in one sendmmsg (inside.c): results[i] 0 or -errno */
int fn_send_control(fn_ctx *ctx, int udp_fd, const int32_t *slots, const uint8_t *payloads, const uint32_t *lens,
                    int n, int32_t *results);

int fn_inside(fn_ctx *ctx, int tun_fd, int udp_fd, int timeout_ms, int32_t *events, int max_events);
int fn_outside(fn_ctx *ctx, int udp_fd, int tun_fd, int timeout_ms, fn_ctrl *ctrl, int max_ctrl);

int fn_replay_accept(fn_replay *r, uint64_t counter);
/* benchmarks and tests: n packets of one session key under cipher FN_CIPHER_*; -ENOTSUP */
int fn_seal_batch(const uint8_t *key, uint64_t counter0, uint8_t *buf, uint32_t stride,
                  const uint32_t *lens, int n, int cipher);
int fn_open_batch(const uint8_t *key, uint8_t *buf, uint32_t stride, uint32_t *lens, int n, int cipher);
/* the compact ChaCha20-Poly1305 used for short packets (aead_small.c), for tests:
 * in place, tag after the ciphertext; return the output length, -1 on a bad tag */
int fn_aead_small_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                       uint32_t len);
int fn_aead_small_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                       uint32_t len);
/* AES-256-GCM (aead_aes.c): 1 when this CPU has AES-NI and PCLMULQDQ and OpenSSL has it */
int fn_aes_gcm_available(void);
/* which code runs it: FN_AES_IMPL_NONE (not available), _OPENSSL (its provider
 * functions), _VAES (aes_gcm_vaes.c, where the CPU has VAES and VPCLMULQDQ, unless
 * FLATNET_AES_IMPL=openssl) */
#define FN_AES_IMPL_NONE 0
#define FN_AES_IMPL_OPENSSL 1
#define FN_AES_IMPL_VAES 2
int fn_aes_gcm_impl(void);
/* for tests, like fn_aead_small_*: the output length, -1 on a bad tag or when unavailable */
int fn_aes_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                uint32_t len);
int fn_aes_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                uint32_t len);
/* a token bucket's milli-tokens after `now - last_ns` ns at `rate` tokens a second,
 * capped at `burst` tokens (cookie.c; for tests) */
int64_t fn_rate_refill(int64_t milli_tokens, int64_t last_ns, int64_t now, int64_t rate, int64_t burst);
/* the same from `in` to `out` (enc: `len` bytes in, len + 16 out; open: len in, len - 16 out) */
int fn_aes_crypt(int enc, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen,
                 const uint8_t *in, uint8_t *out, uint32_t len);
/* CDEF-END */

#endif
