/* AES-256-GCM, the transport cipher a session may negotiate instead of
 * ChaCha20-Poly1305 (docs/protocol.md 5.2 and 6; docs/decisions.md).
 *
 * Through OpenSSL's libcrypto (EVP_aes_256_gcm), offered only where this CPU has
 * AES-NI and PCLMULQDQ (constant-time AES and GHASH in hardware; without them
 * OpenSSL's table code is slower than ChaCha20 and leaks through the cache).
 *
 * Keying: one EVP context per session key, keyed once (the AES key schedule and the
 * GHASH table are made then) and kept for the session's life: the send key's in the
 * peer (tx_lock), each receive key's in its rx slot (rx_lock). Per packet only the
 * nonce is set. Keying a context costs ~280 ns, more than sealing a 1400-byte packet
 * once keyed (~500 ns); benchmarks/aead_compare.c measures the policies. The context
 * is freed with EVP_CIPHER_CTX_free, which cleanses it, when the key is replaced,
 * removed or the data path freed (docs/security.md, "Keys in memory").
 */
#include "internal.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sodium.h>
#include <string.h>

static EVP_CIPHER *gcm;                    /* NULL: AES-256-GCM not offered */
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void *ctx_new(const uint8_t key[32], int enc);

/* A known answer through the very calls the data path makes (in place, the header as
 * associated data, the nonce of docs/protocol.md 6.1), sealed and opened again. An
 * OpenSSL that lists AES-256-GCM but refuses it as used here (a FIPS setting that wants
 * the IV made inside the module) or computes it wrongly is not offered: every packet
 * of such a session would be lost. The expected bytes are the `cryptography`
 * package's: key 00..1f, nonce 00000000 0500000000000000, header 03 02 then zeros,
 * plaintext 10..2f. */
static int self_test(void) {
    static const uint8_t want[32 + FN_TAG] = {
        0x6e, 0x1c, 0x0a, 0x8e, 0xec, 0x8b, 0x1c, 0x54, 0xc2, 0x3d, 0x57, 0x58, 0xa4, 0xe7, 0x82, 0x37,
        0x9e, 0x65, 0xc8, 0x55, 0x1d, 0x79, 0x62, 0x69, 0xf1, 0x35, 0x5f, 0x5f, 0xec, 0x3f, 0x09, 0xd4,
        0x1d, 0xcc, 0x14, 0xe2, 0x5b, 0x21, 0x67, 0x08, 0x71, 0x11, 0xad, 0xe5, 0x9f, 0xe5, 0x5d, 0xed};
    uint8_t key[32], pkt[FN_HEADER + 32 + FN_TAG] = {3, 2}, nonce[12] = {0, 0, 0, 0, 5};
    for (int i = 0; i < 32; i++) {
        key[i] = (uint8_t)i;
        pkt[FN_HEADER + i] = (uint8_t)(16 + i);
    }
    void *enc = ctx_new(key, 1), *dec = ctx_new(key, 0);
    int ok = enc && dec && aes_seal(enc, pkt, 32, nonce) == 0 && memcmp(pkt + FN_HEADER, want, sizeof(want)) == 0 &&
             aes_open(dec, pkt, sizeof(want), nonce) == 0 && pkt[FN_HEADER] == 16 && pkt[FN_HEADER + 31] == 47;
    aes_free(enc);
    aes_free(dec);
    return ok;
}

static void init_once(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("aes") || !__builtin_cpu_supports("pclmul")) return;
    gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (gcm && !self_test()) {
        EVP_CIPHER_free(gcm);
        gcm = NULL;
    }
    ERR_clear_error();  /* a failed fetch or test leaves nothing in this thread's error queue */
}

int fn_aes_gcm_available(void) {
    pthread_once(&once, init_once);
    return gcm != NULL;
}

void *aes_new(const uint8_t key[32], int enc) {
    if (!fn_aes_gcm_available()) return NULL;
    return ctx_new(key, enc);
}

static void *ctx_new(const uint8_t key[32], int enc) {
    EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
    if (!x) return NULL;
    if (!EVP_CipherInit_ex2(x, gcm, key, NULL, enc, NULL)) {
        EVP_CIPHER_CTX_free(x);
        return NULL;
    }
    return x;
}

void aes_free(void *x) { EVP_CIPHER_CTX_free(x); }  /* NULL is fine; it cleanses the key */

/* Seal the `ptlen` bytes after the header at `pkt` in place, the tag after them; the
 * header is the associated data. 0, or -1 when OpenSSL failed or there is no context
 * (nothing half-sealed is left: the bytes are wiped, and the peer counts auth_failed). */
int aes_seal(void *ctx, uint8_t *pkt, uint32_t ptlen, const uint8_t nonce[12]) {
    EVP_CIPHER_CTX *x = ctx;
    uint8_t *buf = pkt + FN_HEADER;
    int n;
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + ptlen, FN_TAG),
                         OSSL_PARAM_construct_end()};
    if (x && EVP_EncryptInit_ex2(x, NULL, NULL, nonce, NULL) && EVP_EncryptUpdate(x, NULL, &n, pkt, FN_HEADER) &&
        EVP_EncryptUpdate(x, buf, &n, buf, (int)ptlen) && EVP_EncryptFinal_ex(x, buf + n, &n) &&
        EVP_CIPHER_CTX_get_params(x, tag))
        return 0;
    sodium_memzero(buf, (size_t)ptlen + FN_TAG);
    return -1;
}

/* Open `len` bytes (ciphertext, then the tag) after the header at `pkt` in place: 0,
 * or -1 (bad tag, or OpenSSL failed). OpenSSL decrypts before it checks the tag: a
 * forgery's bytes are wiped, so no unauthenticated plaintext stays in the buffer. */
int aes_open(void *ctx, uint8_t *pkt, uint32_t len, const uint8_t nonce[12]) {
    EVP_CIPHER_CTX *x = ctx;
    uint8_t *buf = pkt + FN_HEADER;
    int n;
    if (len < FN_TAG) return -1;
    uint32_t ptlen = len - FN_TAG;
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + ptlen, FN_TAG),
                         OSSL_PARAM_construct_end()};
    int ok = x && EVP_DecryptInit_ex2(x, NULL, NULL, nonce, NULL) && EVP_CIPHER_CTX_set_params(x, tag) &&
             EVP_DecryptUpdate(x, NULL, &n, pkt, FN_HEADER) && EVP_DecryptUpdate(x, buf, &n, buf, (int)ptlen) &&
             EVP_DecryptFinal_ex(x, buf + n, &n) == 1;
    if (ok) return 0;
    sodium_memzero(buf, ptlen);
    return -1;
}

/* for tests: any associated data, the tag after the ciphertext; a context made and
 * freed per call. Output length, or -1 (bad tag, or AES-256-GCM not available). */
static int aes_once(int enc, const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen,
                    uint8_t *buf, uint32_t len) {
    EVP_CIPHER_CTX *x = aes_new(key, enc);
    int n, ok;
    if (!x || (!enc && len < FN_TAG)) {
        aes_free(x);
        return -1;
    }
    uint32_t ptlen = enc ? len : len - FN_TAG;
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + ptlen, FN_TAG),
                         OSSL_PARAM_construct_end()};
    ok = EVP_CipherInit_ex2(x, NULL, NULL, nonce, enc, NULL) && (enc || EVP_CIPHER_CTX_set_params(x, tag)) &&
         EVP_CipherUpdate(x, NULL, &n, ad, (int)adlen) && EVP_CipherUpdate(x, buf, &n, buf, (int)ptlen) &&
         EVP_CipherFinal_ex(x, buf + n, &n) == 1 && (!enc || EVP_CIPHER_CTX_get_params(x, tag));
    aes_free(x);
    if (ok) return (int)(enc ? len + FN_TAG : ptlen);
    sodium_memzero(buf, ptlen);
    return -1;
}

int fn_aes_seal(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                uint32_t len) {
    return aes_once(1, key, nonce, ad, adlen, buf, len);
}

int fn_aes_open(const uint8_t *key, const uint8_t *nonce, const uint8_t *ad, uint32_t adlen, uint8_t *buf,
                uint32_t len) {
    return aes_once(0, key, nonce, ad, adlen, buf, len);
}
