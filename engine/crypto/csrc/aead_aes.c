/* AES-256-GCM, the transport cipher a session may negotiate instead of
 * ChaCha20-Poly1305 (docs/protocol.md 5.2 and 6; docs/decisions.md).
 *
 * Through OpenSSL's libcrypto (its AES-256-GCM implementation), offered only where this
 * CPU has AES-NI and PCLMULQDQ (constant-time AES and GHASH in hardware; without them
 * OpenSSL's table code is slower than ChaCha20 and leaks through the cache).
 *
 * Keying: one context per session key, keyed once (the AES key schedule and the
 * GHASH table are made then) and kept for the session's life: the send key's in the
 * peer (tx_lock), each receive key's in its rx slot (rx_lock). Per packet only the
 * nonce is set. Keying a context costs ~280 ns, more than sealing a 1400-byte packet
 * once keyed (~500 ns); benchmarks/aead_compare.c measures the policies. The context
 * is freed by the provider's freectx, which cleanses it, when the key is replaced,
 * removed or the data path freed (docs/security.md, "Keys in memory").
 *
 * The calls: the provider's own cipher functions (provider-cipher(7)), found once
 * with OSSL_PROVIDER_query_operation for the provider that EVP_CIPHER_fetch chose,
 * not the EVP_Encrypt* / EVP_Decrypt* wrappers around them. Those wrappers cost
 * ~65 ns a packet in OpenSSL 3.0 (the IV length is looked up by name through
 * OSSL_PARAM for every new nonce; ~5% of the engines' CPU in one TCP stream). The
 * same code runs either way; the provider interface is OpenSSL's stable ABI for
 * loadable providers. A seal: 64 B 192 -> 127 ns, 1400 B 505 -> 439 ns
 * (benchmarks/aead_compare.c, column "(e)"). The self test below goes through the
 * very functions the data path calls.
 *
 * Where the CPU also has AVX2, VAES and VPCLMULQDQ (Zen 3+, Ice Lake+), our own
 * implementation (aes_gcm_vaes.c: two blocks per instruction; OpenSSL 3.0 has no such
 * code) replaces OpenSSL's functions: 1400 B 441 -> 235 ns. Same bytes. It is chosen
 * once, at the first use, and only after OpenSSL's path passed its self test (so AES
 * is offered exactly where it was before), the VAES path gave OpenSSL's bytes at
 * lengths that reach each of its paths, and it passed the same self test.
 * FLATNET_AES_IMPL=openssl in the environment keeps OpenSSL's (to compare, or should
 * the VAES code ever be in doubt); fn_aes_gcm_impl says which one runs.
 */
#include "internal.h"

#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static EVP_CIPHER *gcm;                    /* NULL: AES-256-GCM not offered; held: keeps its provider loaded */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int impl = FN_AES_IMPL_NONE;        /* FN_AES_IMPL_*, set once by init_once */

/* the provider's AES-256-GCM functions (all set, or gcm is NULL) */
static struct {
    void *provctx;
    OSSL_FUNC_cipher_newctx_fn *newctx;
    OSSL_FUNC_cipher_freectx_fn *freectx;
    OSSL_FUNC_cipher_encrypt_init_fn *einit;
    OSSL_FUNC_cipher_decrypt_init_fn *dinit;
    OSSL_FUNC_cipher_update_fn *update;
    OSSL_FUNC_cipher_final_fn *final;
    OSSL_FUNC_cipher_get_ctx_params_fn *get_params;
} fn;

/* one of the ':'-separated names of an algorithm is `name` */
static int has_name(const char *names, const char *name) {
    size_t n = strlen(name);
    for (const char *p = names; p; p = strchr(p, ':'), p = p ? p + 1 : NULL)
        if (strncmp(p, name, n) == 0 && (p[n] == ':' || p[n] == 0)) return 1;
    return 0;
}

/* the functions of the implementation the fetched cipher came from: 1, or 0 if its
 * provider does not list them all */
static int find_functions(const EVP_CIPHER *c) {
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(c);
    int no_cache = 0;
    const OSSL_ALGORITHM *all = prov ? OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache) : NULL;
    const char *name = EVP_CIPHER_get0_name(c);
    for (const OSSL_ALGORITHM *a = all; a && a->algorithm_names; a++) {
        if (!name || !has_name(a->algorithm_names, name)) continue;
        for (const OSSL_DISPATCH *d = a->implementation; d->function_id; d++) {
            switch (d->function_id) {
            case OSSL_FUNC_CIPHER_NEWCTX: fn.newctx = OSSL_FUNC_cipher_newctx(d); break;
            case OSSL_FUNC_CIPHER_FREECTX: fn.freectx = OSSL_FUNC_cipher_freectx(d); break;
            case OSSL_FUNC_CIPHER_ENCRYPT_INIT: fn.einit = OSSL_FUNC_cipher_encrypt_init(d); break;
            case OSSL_FUNC_CIPHER_DECRYPT_INIT: fn.dinit = OSSL_FUNC_cipher_decrypt_init(d); break;
            case OSSL_FUNC_CIPHER_UPDATE: fn.update = OSSL_FUNC_cipher_update(d); break;
            case OSSL_FUNC_CIPHER_FINAL: fn.final = OSSL_FUNC_cipher_final(d); break;
            case OSSL_FUNC_CIPHER_GET_CTX_PARAMS: fn.get_params = OSSL_FUNC_cipher_get_ctx_params(d); break;
            }
        }
        break;
    }
    if (all) OSSL_PROVIDER_unquery_operation(prov, OSSL_OP_CIPHER, all);
    fn.provctx = prov ? OSSL_PROVIDER_get0_provider_ctx(prov) : NULL;
    return fn.newctx && fn.freectx && fn.einit && fn.dinit && fn.update && fn.final && fn.get_params;
}

static void *ctx_new(const uint8_t key[32], int enc);
static int gcm_run(void *x, int enc, const uint8_t nonce[12], const uint8_t *ad, size_t adlen, const uint8_t *in,
                   uint8_t *out, size_t len, uint8_t *tag);

/* A known answer through the very calls the data path makes (the header as
 * associated data, the nonce of docs/protocol.md 6.1; sealed out of place as the inside
 * thread does, opened in place as the outside thread does). An OpenSSL that lists
 * AES-256-GCM but refuses it as used here (a FIPS setting that wants the IV made inside
 * the module) or computes it wrongly is not offered: every packet of such a session
 * would be lost. The expected bytes are the `cryptography` package's: key 00..1f,
 * nonce 00000000 0500000000000000, header 03 02 then zeros, plaintext 10..2f. */
static int self_test(void) {
    static const uint8_t want[32 + FN_TAG] = {
        0x6e, 0x1c, 0x0a, 0x8e, 0xec, 0x8b, 0x1c, 0x54, 0xc2, 0x3d, 0x57, 0x58, 0xa4, 0xe7, 0x82, 0x37,
        0x9e, 0x65, 0xc8, 0x55, 0x1d, 0x79, 0x62, 0x69, 0xf1, 0x35, 0x5f, 0x5f, 0xec, 0x3f, 0x09, 0xd4,
        0x1d, 0xcc, 0x14, 0xe2, 0x5b, 0x21, 0x67, 0x08, 0x71, 0x11, 0xad, 0xe5, 0x9f, 0xe5, 0x5d, 0xed};
    uint8_t key[32], src[32], pkt[FN_HEADER + 32 + FN_TAG] = {3, 2}, nonce[12] = {0, 0, 0, 0, 5};
    for (int i = 0; i < 32; i++) {
        key[i] = (uint8_t)i;
        src[i] = (uint8_t)(16 + i);
    }
    void *enc = ctx_new(key, 1), *dec = ctx_new(key, 0);
    int ok = enc && dec && aes_seal(enc, pkt, src, 32, nonce) == 0 && memcmp(pkt + FN_HEADER, want, sizeof(want)) == 0 &&
             aes_open(dec, pkt, sizeof(want), nonce) == 0 && memcmp(pkt + FN_HEADER, src, 32) == 0;
    aes_free(enc);
    aes_free(dec);
    return ok;
}

/* The operator may keep OpenSSL's code: FLATNET_AES_IMPL=openssl (any case). Unset,
 * empty or "auto" lets the VAES code run where the CPU has it. Any other value (a
 * typo) keeps OpenSSL's too: an operator who set the variable wanted a change, and the
 * engine's start-up check (engine/config.py check_aes_impl) refuses such a value. */
static int vaes_allowed(void) {
    const char *v = getenv("FLATNET_AES_IMPL");
    return !v || !*v || strcasecmp(v, "auto") == 0;
}

/* Before the VAES code is chosen: the same messages through it and through OpenSSL's,
 * at lengths that reach each of its paths (empty, partial blocks, the 16-block loop and
 * its tail, a 64 KiB GSO train). The bytes and tags must agree, and it must open what
 * OpenSSL sealed. The one known answer of self_test() never reaches the loop. */
static int vaes_agrees_with_openssl(void) {
    static const uint32_t lens[] = {0, 1, 15, 16, 17, 255, 256, 257, 1400, 4099, 65519};
    const uint32_t most = 65519 + FN_TAG;
    uint8_t key[32], nonce[12] = {0, 0, 0, 0, 9}, ad[FN_HEADER] = {3, 2};
    uint8_t *src = malloc(most), *a = malloc(most), *b = malloc(most);
    for (int i = 0; i < 32; i++) key[i] = (uint8_t)(0xa5 ^ i);
    void *ossl = ctx_new(key, 1), *v = vgcm_new(key);
    int ok = src && a && b && ossl && v;
    for (uint32_t i = 0; ok && i < most; i++) src[i] = (uint8_t)(i * 131 + (i >> 8));
    for (size_t k = 0; ok && k < sizeof(lens) / sizeof(lens[0]); k++) {
        uint32_t n = lens[k];
        nonce[11] = (uint8_t)k;
        ok = gcm_run(ossl, 1, nonce, ad, sizeof(ad), src, a, n, a + n);
        vgcm_seal(v, nonce, ad, sizeof(ad), src, b, n, b + n);
        ok = ok && memcmp(a, b, (size_t)n + FN_TAG) == 0 && vgcm_open(v, nonce, ad, sizeof(ad), a, a, n, a + n) &&
             memcmp(a, src, n) == 0;
    }
    aes_free(ossl);
    if (v) vgcm_free(v);
    free(src);
    free(a);
    free(b);
    return ok;
}

static void init_once(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("aes") || !__builtin_cpu_supports("pclmul")) return;
    gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (gcm && find_functions(gcm)) {
        impl = FN_AES_IMPL_OPENSSL;
        if (!self_test()) impl = FN_AES_IMPL_NONE;
    }
    if (impl == FN_AES_IMPL_NONE) {
        if (gcm) EVP_CIPHER_free(gcm);
        gcm = NULL;
        memset(&fn, 0, sizeof(fn));
    } else if (vaes_allowed() && vgcm_cpu_ok() && vaes_agrees_with_openssl()) {
        impl = FN_AES_IMPL_VAES;
        if (!self_test()) impl = FN_AES_IMPL_OPENSSL;  /* never seen; OpenSSL's still works */
    }
    ERR_clear_error();  /* a failed fetch or test leaves nothing in this thread's error queue */
}

int fn_aes_gcm_available(void) {
    pthread_once(&once, init_once);
    return gcm != NULL;
}

int fn_aes_gcm_impl(void) {
    pthread_once(&once, init_once);
    return impl;
}

void *aes_new(const uint8_t key[32], int enc) {
    if (!fn_aes_gcm_available()) return NULL;
    return ctx_new(key, enc);
}

static void *ctx_new(const uint8_t key[32], int enc) {
    if (impl == FN_AES_IMPL_VAES) return vgcm_new(key);
    void *x = fn.newctx(fn.provctx);
    if (!x) return NULL;
    if (!(enc ? fn.einit(x, key, 32, NULL, 0, NULL) : fn.dinit(x, key, 32, NULL, 0, NULL))) {
        fn.freectx(x);
        return NULL;
    }
    return x;
}

/* NULL is fine (then there may be no provider either); both free functions cleanse
 * the key material */
void aes_free(void *x) {
    if (!x) return;
    if (impl == FN_AES_IMPL_VAES) vgcm_free(x);
    else fn.freectx(x);
}

/* One message: a new nonce on the keyed context, `ad` authenticated, `len` bytes from
 * `in` to `out` (the same place, or apart: GCM is a stream cipher), the tag written to
 * `tag` (enc) or checked against it. 1, or 0: bad tag, or the provider refused. The
 * buffer sizes given are the ones EVP_EncryptUpdate and EVP_EncryptFinal_ex give
 * (block size 1). */
static int gcm_run(void *x, int enc, const uint8_t nonce[12], const uint8_t *ad, size_t adlen, const uint8_t *in,
                   uint8_t *out, size_t len, uint8_t *tag) {
    size_t n;
    OSSL_PARAM t[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, FN_TAG),
                       OSSL_PARAM_construct_end()};
    if (!x) return 0;
    if (impl == FN_AES_IMPL_VAES) {
        if (!enc) return vgcm_open(x, nonce, ad, adlen, in, out, len, tag);
        vgcm_seal(x, nonce, ad, adlen, in, out, len, tag);
        return 1;
    }
    if (enc)
        return fn.einit(x, NULL, 0, nonce, 12, NULL) && fn.update(x, NULL, &n, adlen, ad, adlen) &&
               fn.update(x, out, &n, len, in, len) && fn.final(x, out + len, &n, 0) && fn.get_params(x, t);
    return fn.dinit(x, NULL, 0, nonce, 12, t) && fn.update(x, NULL, &n, adlen, ad, adlen) &&
           fn.update(x, out, &n, len, in, len) && fn.final(x, out + len, &n, 0);
}

/* Seal the `ptlen` bytes at `src` into the place after the header at `pkt`, the tag
 * after them; the header is the associated data. `src` is that place (in place) or a
 * buffer apart from it (the TUN read: no copy of the segment first). 0, or -1 when
 * OpenSSL failed or there is no context (nothing half-sealed is left: the bytes are
 * wiped, and the peer counts auth_failed). */
int aes_seal(void *ctx, uint8_t *pkt, const uint8_t *src, uint32_t ptlen, const uint8_t nonce[12]) {
    uint8_t *buf = pkt + FN_HEADER;
    if (gcm_run(ctx, 1, nonce, pkt, FN_HEADER, src, buf, ptlen, buf + ptlen)) return 0;
    sodium_memzero(buf, (size_t)ptlen + FN_TAG);
    return -1;
}

/* Open `len` bytes (ciphertext, then the tag) after the header at `pkt` in place: 0,
 * or -1 (bad tag, or OpenSSL failed). OpenSSL decrypts before it checks the tag: a
 * forgery's bytes are wiped, so no unauthenticated plaintext stays in the buffer. */
int aes_open(void *ctx, uint8_t *pkt, uint32_t len, const uint8_t nonce[12]) {
    uint8_t *buf = pkt + FN_HEADER;
    if (len < FN_TAG) return -1;
    uint32_t ptlen = len - FN_TAG;
    if (gcm_run(ctx, 0, nonce, pkt, FN_HEADER, buf, buf, ptlen, buf + ptlen)) return 0;
    sodium_memzero(buf, ptlen);
    return -1;
}

int fn_aes_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                uint32_t len) {
    return fn_aes_crypt(1, key, nonce, ad, adlen, buf, buf, len);
}

int fn_aes_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                uint32_t len) {
    return fn_aes_crypt(0, key, nonce, ad, adlen, buf, buf, len);
}

/* for tests: any associated data, the tag after the ciphertext; a context made and
 * freed per call, the same functions as the data path's. From `in` to `out` (apart, or
 * the same place: fn_aes_seal / fn_aes_open), so tests can place both anywhere
 * (unaligned, overlapping exactly). Output length, or -1 (bad tag, or AES-256-GCM not
 * available). */
int fn_aes_crypt(int enc, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen,
                 const uint8_t *in, uint8_t *out, uint32_t len) {
    if (!enc && len < FN_TAG) return -1;
    void *x = aes_new(key, enc);
    uint32_t ptlen = enc ? len : len - FN_TAG;
    /* the tag: after the ciphertext written (seal) or read (open) */
    int ok = gcm_run(x, enc, nonce, ad, adlen, in, out, ptlen, enc ? out + ptlen : (uint8_t *)in + ptlen);
    aes_free(x);
    if (ok) return (int)(enc ? len + FN_TAG : ptlen);
    sodium_memzero(out, ptlen);
    return -1;
}
