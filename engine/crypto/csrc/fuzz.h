/* The fuzz harness (fuzz.c): built only into the sanitizer module
 * (`python3 engine/crypto/_build.py --fuzz`, engine.crypto._fastpath_fuzz), never into
 * the engine's. The part between the markers is added to fastpath.h's for cffi. */
#ifndef FLATNET_FUZZ_H
#define FLATNET_FUZZ_H
#include <stdint.h>

/* CDEF-BEGIN */
#define FN_FUZZ_DROPS 32

typedef struct fn_fuzz_stats {
    uint64_t outside_inputs;      /* receive buffers (one or more datagrams each) */
    uint64_t outside_datagrams;
    uint64_t inside_inputs;       /* packets written to the fake TUN */
    uint64_t delivered;           /* writes that reached the fake TUN */
    uint64_t sealed;              /* datagrams the inside path sealed */
    uint64_t handed_up;           /* control items for Python */
    uint64_t forwarded;           /* type-5 datagrams relay.c forwarded (a lighthouse) */
    uint64_t gso_runs;            /* of them, UDP GSO sends of 2 and more (relay_gso_run) */
    uint64_t aead_cases;          /* differential cases, compact cipher against libsodium */
    uint64_t aead_mismatches;
    uint64_t aes_cases;           /* of them, also AES-256-GCM as the data path runs it, against EVP */
    uint64_t invariant_failures;  /* a delivered packet outside the lease or from a wrong source */
    uint64_t drops[FN_FUZZ_DROPS];
} fn_fuzz_stats;

/* `n` generated inputs, about half for each direction, from `seed`; 0, or -1 when the
 * setup failed. Failures are counted in `st` and the first few printed on stderr. */
int fn_fuzz_packets(uint64_t seed, uint64_t n, fn_fuzz_stats *st);
/* `n` random cases (payload 0-300 bytes, associated data 0-70): the compact cipher's
 * output must be libsodium's byte for byte, each opens the other's, a one-bit forgery
 * is refused by both and leaves the buffer as it came. Where AES-256-GCM is offered,
 * each case also seals and opens one payload (0-65535 bytes, in exact-size heap
 * buffers) with the data path's AES code against OpenSSL's EVP, and a forgery. */
int fn_fuzz_aead(uint64_t seed, uint64_t n, fn_fuzz_stats *st);
/* CDEF-END */

#endif
