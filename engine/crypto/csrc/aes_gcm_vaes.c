/* AES-256-GCM (NIST SP 800-38D) with VAES and VPCLMULQDQ on 256-bit registers: two
 * blocks per instruction. aead_aes.c uses it instead of OpenSSL's functions where the
 * CPU has AVX2, VAES and VPCLMULQDQ (Zen 3 and later, Ice Lake and later); OpenSSL 3.0
 * has no such code and runs one block per instruction (docs/performance.md, step 14).
 * ymm, not zmm: it runs on Zen 3 too, and AVX-512 lowers some Intel cores' clock.
 *
 * Only 96-bit nonces (the data path's): the first counter block is nonce || 1, the
 * data's start at nonce || 2. Lengths below 2^32 bytes, so the 32-bit counter never
 * wraps (GCM's inc32 and our 32-bit add then agree).
 *
 * Constant time: AES rounds are instructions (no tables), GHASH is carry-less
 * multiplication (no tables), no branch or address depends on the key, the data or
 * the tag; only on lengths, which are public. The tag check XORs the two tags and
 * tests the whole result at once; the only branch after it is on the verdict.
 *
 * GHASH. GCM's field GF(2^128) mod G = x^128 + x^7 + x^2 + x + 1 keeps the
 * coefficient of x^0 in the top bit of byte 0 ("reflected"). We reverse the bytes of
 * each block (vpshufb): the 128-bit integer then holds the coefficient of x^(127-i)
 * in bit i. Read as a plain polynomial that is phi(a) = x^127 a(1/x), an element of
 * GF(2)[x] mod G' = x^128 + x^127 + x^126 + x^121 + 1 (G reversed), and
 * phi(a) phi(b) = x^127 phi(ab) there. mont(A, B) = A B x^-128 mod G' is cheap with
 * carry-less multiplication (two folds of 64 bits, below). With the hash key kept as
 * x phi(H) ("twisted", made once per key), mont(phi(a), x phi(H)) = phi(aH): one
 * GHASH step, no bit shifts per block. Powers of H in the same form satisfy
 * mont(x phi(H^i), x phi(H^j)) = x phi(H^(i+j)).
 * This is the representation of the Linux kernel's aes-gcm-avx10-x86_64.S and of
 * OpenSSL's ghash-x86_64 (the constant 0xc2000000000000000000000000000001).
 *
 * Aggregation: n blocks X1..Xn hashed into Y as (Y+X1)H^n + X2 H^(n-1) + ... + Xn H;
 * the unreduced 256-bit products are summed and reduced once per 16 blocks (the
 * powers H^1..H^16 are made per key). Each product is Karatsuba (three
 * multiplications of 64 bits: lo, hi, and (a0+a1)(b0+b1), whose b0+b1 is made per
 * key). CTR runs on the same 16 blocks, in 8 registers: eight independent AES chains
 * keep both AES units busy (4 cycles of latency, 2 instructions a cycle on Zen 4);
 * with 8 blocks a round GHASH and CTR each waited on their latency (docs/performance.md,
 * step 14).
 *
 * Everything between the pragmas is compiled for AVX2+VAES+VPCLMULQDQ, so the module
 * still loads on CPUs without them; only vgcm_cpu_ok (outside, plain code) may be
 * called before the CPU was checked.
 */
#include "internal.h"

#include <immintrin.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

int vgcm_cpu_ok(void) {
    /* GCC sets the AVX features only when the OS saves the ymm state (XGETBV) */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
           __builtin_cpu_supports("vaes") && __builtin_cpu_supports("vpclmulqdq");
}

#pragma GCC push_options
#pragma GCC target("avx2,aes,pclmul,vaes,vpclmulqdq")

#define CHUNK 16      /* blocks per round of the main loop: 8 registers of 2 */

struct vgcm {
    __m256i rk[15];          /* AES-256 round keys, each in both 128-bit lanes */
    __m128i pw[CHUNK + 1];   /* pw[j] = x phi(H^(16-j)) for j < 16: H^16 .. H^1; pw[16] zero (it
                              * meets only the zero half of an odd last pair) */
    __m128i kw[CHUNK + 1];   /* kw[j]: both halves of pw[j] XORed, in both halves (Karatsuba) */
};

#define INLINE static inline __attribute__((always_inline))
/* the loops over registers and rounds unrolled, so their arrays stay in registers */
#define UNROLL _Pragma("GCC unroll 16")

/* Key material stays in the context, not on the stack: in a loop whose stores can not
 * alias the context (a stack buffer, or nothing), the compiler hoists the loads of the
 * round keys or the hash key powers out of the loop, has more of them than the 16 ymm
 * registers, and spills some to the stack, where they outlive the call (GCC 12 -O2
 * left round key 13 of every AES session there: review vaesreview). This barrier at
 * the top of such a loop makes it load them again each time, as memory operands. */
#define NO_SPILL() __asm__ volatile("" ::: "memory")

/* reverse the 16 bytes of each lane: GCM's byte order <-> the integer order above */
INLINE __m256i bswap256(__m256i v) {
    return _mm256_shuffle_epi8(v, _mm256_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3,
                                                  4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

INLINE __m128i bswap128(__m128i v) {
    return _mm_shuffle_epi8(v, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* A B x^-128 mod G' from the product's three parts: lo + mi x^64 + hi x^128.
 * G' = 1 mod x^64, so adding L0 G' (L0 the low 64 bits) clears the low 64 bits; the
 * rest of L0 G' is L0 (x^63 + x^62 + x^57) x^64 + L0 x^128. Divided by x^64 that
 * folds lo into mi (L0 times 0xc2 << 56, plus lo's halves swapped); the same step
 * folds mi into hi. The result has degree < 128: no further reduction. */
INLINE __m128i reduce(__m128i lo, __m128i mi, __m128i hi) {
    const __m128i poly = _mm_set_epi64x((long long)0xc200000000000000ULL, 1);
    mi = _mm_xor_si128(mi, _mm_xor_si128(_mm_clmulepi64_si128(lo, poly, 0x10), _mm_shuffle_epi32(lo, 0x4e)));
    return _mm_xor_si128(hi, _mm_xor_si128(_mm_clmulepi64_si128(mi, poly, 0x10), _mm_shuffle_epi32(mi, 0x4e)));
}

/* mont(a, b), schoolbook (per key, and the length block) */
static __m128i gf_mul(__m128i a, __m128i b) {
    __m128i mi = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
    return reduce(_mm_clmulepi64_si128(a, b, 0x00), mi, _mm_clmulepi64_si128(a, b, 0x11));
}

INLINE __m128i fold_lanes(__m256i v) {
    return _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

/* a pair of blocks (raw GCM-order bytes) times the pair of powers at pw[j], pw[j+1],
 * added to the unreduced sums */
INLINE void mul_pair(const struct vgcm *c, __m256i a, __m128i y, unsigned j, __m256i *lo, __m256i *mi,
                     __m256i *hi) {
    a = _mm256_xor_si256(bswap256(a), _mm256_zextsi128_si256(y));
    __m256i h = _mm256_loadu_si256((const __m256i *)&c->pw[j]);
    __m256i k = _mm256_loadu_si256((const __m256i *)&c->kw[j]);
    *lo = _mm256_xor_si256(*lo, _mm256_clmulepi64_epi128(a, h, 0x00));
    *hi = _mm256_xor_si256(*hi, _mm256_clmulepi64_epi128(a, h, 0x11));
    /* Karatsuba: (a0 + a1)(h0 + h1), a's halves XORed in its low half; kw's low half */
    *mi = _mm256_xor_si256(*mi, _mm256_clmulepi64_epi128(_mm256_xor_si256(a, _mm256_shuffle_epi32(a, 0x4e)), k, 0x00));
}

/* Hash the n blocks (1..16) at p into y: the aggregation above. Block i is multiplied
 * by H^(n-i), i.e. pw[16-n+i]; a pair of blocks takes pw[16-n+i] and pw[17-n+i] with
 * one 32-byte load, and the odd last block of an odd n pairs with a zero block (and
 * pw[16], zero), loaded with 16 bytes only. The pairs without y are summed first and
 * the pair with y last: y's path to the result (the chain from one call to the next)
 * is then one multiplication, the lane fold and the reduction. */
INLINE __m128i ghash_n(const struct vgcm *c, __m128i y, const uint8_t *p, unsigned n) {
    const __m128i none = _mm_setzero_si128();
    __m256i lo = _mm256_setzero_si256(), mi = lo, hi = lo, a;
    UNROLL for (unsigned i = 2; i < n; i += 2) {
        if (i + 1 < n) a = _mm256_loadu_si256((const __m256i *)(p + 16 * i));
        else a = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(p + 16 * i)));
        mul_pair(c, a, none, CHUNK - n + i, &lo, &mi, &hi);
    }
    if (n > 1) a = _mm256_loadu_si256((const __m256i *)p);
    else a = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)p));
    mul_pair(c, a, y, CHUNK - n, &lo, &mi, &hi);
    __m128i l = fold_lanes(lo), h = fold_lanes(hi);
    /* Karatsuba: the middle is (a0+a1)(b0+b1) - lo - hi, summed the same way */
    return reduce(l, _mm_xor_si128(fold_lanes(mi), _mm_xor_si128(l, h)), h);
}

/* Hash `len` bytes at p, the last partial block padded with zeros (GCM's padding of
 * the associated data). */
static __m128i ghash_bytes(const struct vgcm *c, __m128i y, const uint8_t *p, size_t len) {
    for (; len >= 16 * CHUNK; p += 16 * CHUNK, len -= 16 * CHUNK) {
        NO_SPILL();
        y = ghash_n(c, y, p, CHUNK);
    }
    if (len >= 16) y = ghash_n(c, y, p, (unsigned)len / 16);
    if (len % 16) {
        uint8_t last[16] = {0};
        memcpy(last, p + len / 16 * 16, len % 16);
        y = ghash_n(c, y, last, 1);
    }
    return y;
}

/* The keystream for 16 blocks XORed into `in`, written to `out`. `ctr` holds the next
 * two counter blocks, byte-reversed (the 32-bit counter in the low dword of each
 * lane, so a 32-bit add steps it); it is advanced by 16. */
INLINE void ctr16(const struct vgcm *c, __m256i *ctr, const uint8_t *in, uint8_t *out) {
    const __m256i two = _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 2);
    __m256i b[CHUNK / 2];
    UNROLL for (int k = 0; k < CHUNK / 2; k++) {
        b[k] = _mm256_xor_si256(bswap256(*ctr), c->rk[0]);
        *ctr = _mm256_add_epi32(*ctr, two);
    }
    UNROLL for (int r = 1; r < 14; r++) {
        UNROLL for (int k = 0; k < CHUNK / 2; k++) b[k] = _mm256_aesenc_epi128(b[k], c->rk[r]);
    }
    UNROLL for (int k = 0; k < CHUNK / 2; k++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(in + 32 * k));
        _mm256_storeu_si256((__m256i *)(out + 32 * k), _mm256_xor_si256(v, _mm256_aesenclast_epi128(b[k], c->rk[14])));
    }
}

static __m128i aes_block(const struct vgcm *c, __m128i b) {
    b = _mm_xor_si128(b, _mm256_castsi256_si128(c->rk[0]));
    for (int r = 1; r < 14; r++) b = _mm_aesenc_si128(b, _mm256_castsi256_si128(c->rk[r]));
    return _mm_aesenclast_si128(b, _mm256_castsi256_si128(c->rk[14]));
}

/* AES-256 key expansion (FIPS 197 5.2) with AESKEYGENASSIST: each new round key is the
 * one two places back with its words chained (w ^= w << 32, three times), plus
 * SubWord(RotWord(last word)) ^ rcon (even keys) or SubWord(last word) (odd keys). */
INLINE __m128i chain(__m128i k, __m128i t) {
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
    return _mm_xor_si128(k, t);
}
#define EVEN_KEY(i, rcon) \
    rk[i] = chain(rk[(i) - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[(i) - 1], rcon), 0xff))
#define ODD_KEY(i) rk[i] = chain(rk[(i) - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[(i) - 1], 0), 0xaa))

static void expand_key(struct vgcm *c, const uint8_t key[32]) {
    __m128i rk[15];
    rk[0] = _mm_loadu_si128((const __m128i *)key);
    rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
    EVEN_KEY(2, 0x01); ODD_KEY(3); EVEN_KEY(4, 0x02); ODD_KEY(5); EVEN_KEY(6, 0x04); ODD_KEY(7);
    EVEN_KEY(8, 0x08); ODD_KEY(9); EVEN_KEY(10, 0x10); ODD_KEY(11); EVEN_KEY(12, 0x20); ODD_KEY(13);
    EVEN_KEY(14, 0x40);
    for (int i = 0; i < 15; i++) c->rk[i] = _mm256_broadcastsi128_si256(rk[i]);
    sodium_memzero(rk, sizeof(rk));
}

/* H = AES_K(0); x phi(H): phi(H) shifted left one bit across 128 bits, and G' - x^128
 * (0xc2..01) added when a bit falls out (by mask, not by branch); then H^2..H^16. */
static void hash_key(struct vgcm *c) {
    __m128i h = bswap128(aes_block(c, _mm_setzero_si128()));
    __m128i carry = _mm_slli_si128(_mm_srli_epi64(h, 63), 8);          /* bit 63 -> bit 64 */
    __m128i out = _mm_srai_epi32(_mm_shuffle_epi32(h, 0xff), 31);      /* bit 127 set: all ones */
    h = _mm_xor_si128(_mm_or_si128(_mm_slli_epi64(h, 1), carry),
                      _mm_and_si128(out, _mm_set_epi64x((long long)0xc200000000000000ULL, 1)));
    __m128i p = h;
    c->pw[CHUNK - 1] = h;
    for (int j = CHUNK - 2; j >= 0; j--) c->pw[j] = p = gf_mul(p, h);
    c->pw[CHUNK] = _mm_setzero_si128();
    for (int j = 0; j <= CHUNK; j++) c->kw[j] = _mm_xor_si128(c->pw[j], _mm_shuffle_epi32(c->pw[j], 0x4e));
}

void *vgcm_new(const uint8_t key[32]) {
    void *x = NULL;
    if (posix_memalign(&x, 64, sizeof(struct vgcm)) != 0) return NULL;
    expand_key(x, key);
    hash_key(x);
    return x;
}

/* the round keys and the hash key powers are key material */
void vgcm_free(void *x) {
    if (!x) return;
    sodium_memzero(x, sizeof(struct vgcm));
    free(x);
}

/* the keystream for `pairs` pairs of blocks XORed into buf */
static void ctr16_tail(const struct vgcm *c, __m256i ctr, __m256i *buf, unsigned pairs) {
    const __m256i two = _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 2);
    for (unsigned k = 0; k < pairs; k++) {
        NO_SPILL();
        __m256i b = _mm256_xor_si256(bswap256(ctr), c->rk[0]);
        UNROLL for (int r = 1; r < 14; r++) b = _mm256_aesenc_epi128(b, c->rk[r]);
        buf[k] = _mm256_xor_si256(buf[k], _mm256_aesenclast_epi128(b, c->rk[14]));
        ctr = _mm256_add_epi32(ctr, two);
    }
}

/* The counter blocks for the data: nonce || 2 onwards, kept byte-reversed so a 32-bit
 * add steps them (lane 0: n, lane 1: n + 1). */
static __m256i first_counters(const uint8_t nonce[12], __m128i *j0) {
    uint8_t b[16] = {0};
    memcpy(b, nonce, 12);
    b[15] = 1;
    __m128i r = bswap128(_mm_loadu_si128((const __m128i *)b));
    *j0 = r;
    r = _mm_add_epi32(r, _mm_set_epi32(0, 0, 0, 1));
    return _mm256_inserti128_si256(_mm256_castsi128_si256(r), _mm_add_epi32(r, _mm_set_epi32(0, 0, 0, 1)), 1);
}

/* the length block (bit lengths, big-endian: ad then data), already byte-reversed,
 * hashed last; then the tag: GHASH + AES_K(J0) */
static __m128i finish(const struct vgcm *c, __m128i y, __m128i j0, size_t adlen, size_t len) {
    __m128i lens = _mm_set_epi64x((long long)adlen * 8, (long long)len * 8);
    y = gf_mul(_mm_xor_si128(y, lens), c->pw[CHUNK - 1]);
    return _mm_xor_si128(bswap128(y), aes_block(c, bswap128(j0)));
}

/* One pass over the data: CTR, and GHASH over the ciphertext. in == out, or apart
 * (not overlapping otherwise). len < 2^32, so the 32-bit counter cannot wrap.
 * Sealing hashes the chunk of 16 blocks it sealed in the round before, beside this
 * round's AES, so neither waits for the other's latency; opening hashes the chunk it
 * is about to decrypt (read before it is overwritten in place). Always inlined into
 * seal and open, so `enc` is a constant there. */
INLINE __m128i crypt(const struct vgcm *c, int enc, const uint8_t nonce[12], const uint8_t *ad, size_t adlen,
                     const uint8_t *in, uint8_t *out, size_t len) {
    const size_t step = 16 * CHUNK;
    __m128i j0, y = ghash_bytes(c, _mm_setzero_si128(), ad, adlen);
    __m256i ctr = first_counters(nonce, &j0);
    size_t done = 0;
    for (; len - done >= step; done += step) {
        if (enc && done) y = ghash_n(c, y, out + done - step, CHUNK);
        if (!enc) y = ghash_n(c, y, in + done, CHUNK);
        ctr16(c, &ctr, in + done, out + done);
    }
    if (enc && done) y = ghash_n(c, y, out + done - step, CHUNK);
    size_t rest = len - done;
    if (rest) {
        /* the last 1..255 bytes through a zeroed buffer, in pairs of blocks: the bytes
         * past the end stay zero in what is hashed (GCM's padding) */
        __m256i buf[CHUNK / 2];
        unsigned n = (unsigned)(rest + 15) / 16, pairs = (n + 1) / 2;
        memset(buf, 0, 32 * pairs);
        memcpy(buf, in + done, rest);
        if (!enc) y = ghash_n(c, y, (const uint8_t *)buf, n);
        ctr16_tail(c, ctr, buf, pairs);
        memcpy(out + done, buf, rest);
        if (enc) {
            memset((uint8_t *)buf + rest, 0, 32 * pairs - rest);
            y = ghash_n(c, y, (const uint8_t *)buf, n);
        }
        sodium_memzero(buf, 32 * pairs);
    }
    return finish(c, y, j0, adlen, len);
}

void vgcm_seal(const void *x, const uint8_t nonce[12], const uint8_t *ad, size_t adlen, const uint8_t *in,
               uint8_t *out, size_t len, uint8_t tag[16]) {
    _mm_storeu_si128((__m128i *)tag, crypt(x, 1, nonce, ad, adlen, in, out, len));
}

/* 1, or 0 when the tag does not match; then the `len` bytes at `out` are zeroed, so no
 * unauthenticated plaintext is left. The comparison tests all 128 bits of the XOR at
 * once (no early exit on the first differing byte). */
int vgcm_open(const void *x, const uint8_t nonce[12], const uint8_t *ad, size_t adlen, const uint8_t *in,
              uint8_t *out, size_t len, const uint8_t tag[16]) {
    __m128i t = crypt(x, 0, nonce, ad, adlen, in, out, len);
    t = _mm_xor_si128(t, _mm_loadu_si128((const __m128i *)tag));
    if (_mm_testz_si128(t, t)) return 1;
    sodium_memzero(out, len);
    return 0;
}

#pragma GCC pop_options
