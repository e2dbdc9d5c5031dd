/* ChaCha20-Poly1305 of long packets through OpenSSL's libcrypto.
 *
 * Same cipher, same bytes as libsodium (RFC 8439; tests/unit/engine/test_aead_large.py
 * compares them): only the code differs. On this project's reference CPU OpenSSL's
 * ChaCha20 and Poly1305 use AVX-512 and seal a 1400-byte packet in ~1.0 us against
 * libsodium 1.0.18's ~1.4 us (AVX2 / SSE2); below ~600 bytes its per-call cost (the
 * EVP layer, ~0.4 us) loses, so shorter packets stay with libsodium or the compact
 * code (aead_small.c). docs/performance.md, "OpenSSL for long packets".
 *
 * Each thread that seals or opens gets its own two EVP contexts (a pthread key frees
 * them when the thread ends): the data-path threads never share one, and nothing is
 * allocated per packet. Without OpenSSL's ChaCha20-Poly1305 (a FIPS-only provider, a
 * failed allocation) every length goes to libsodium, and fn_large_cipher() says so.
 *
 * A context keeps the key it was last given. After each packet it gets a zero key
 * instead, so a session key wiped elsewhere (fn_peer_remove, a rekey) does not live on
 * in an idle thread's context, as with libsodium and the compact code (~0.04-0.07 us a
 * packet; docs/security.md, "Keys in memory").
 */
#include "internal.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sodium.h>
#include <stdlib.h>

static EVP_CIPHER *cipher;                 /* NULL: OpenSSL not used */
static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_key_t ctx_key;
static int large_on = 1;

typedef struct {
    EVP_CIPHER_CTX *seal, *open;
} thread_ctx;

static void thread_ctx_free(void *p) {
    thread_ctx *t = p;
    EVP_CIPHER_CTX_free(t->seal);          /* clears the key it holds */
    EVP_CIPHER_CTX_free(t->open);
    free(t);
}

static void init_once(void) {
    if (pthread_key_create(&ctx_key, thread_ctx_free) != 0) return;
    cipher = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
}

void aead_large_init(void) { pthread_once(&once, init_once); }

void fn_set_large_cipher(int on) { __atomic_store_n(&large_on, on != 0, __ATOMIC_RELAXED); }
int fn_large_cipher(void) { return cipher != NULL && __atomic_load_n(&large_on, __ATOMIC_RELAXED); }

/* the zero key over the packet's: 0, or -1 when OpenSSL refused, and then the thread's
 * contexts are freed (which clears them) and made again on its next packet */
static const uint8_t zero_key[32];
static int forget(thread_ctx *t, int enc) {
    if (enc ? EVP_EncryptInit_ex2(t->seal, NULL, zero_key, NULL, NULL)
            : EVP_DecryptInit_ex2(t->open, NULL, zero_key, NULL, NULL))
        return 0;
    pthread_setspecific(ctx_key, NULL);
    thread_ctx_free(t);
    return -1;
}

static thread_ctx *get_ctx(void) {
    thread_ctx *t = pthread_getspecific(ctx_key);
    if (t) return t;
    t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->seal = EVP_CIPHER_CTX_new();
    t->open = EVP_CIPHER_CTX_new();
    if (!t->seal || !t->open || !EVP_EncryptInit_ex2(t->seal, cipher, NULL, NULL, NULL) ||
        !EVP_DecryptInit_ex2(t->open, cipher, NULL, NULL, NULL) || pthread_setspecific(ctx_key, t) != 0) {
        thread_ctx_free(t);
        return NULL;
    }
    return t;
}

/* Seal `len` bytes at `buf` in place, the tag after them. -1, with `buf` untouched, when
 * OpenSSL cannot take it (the caller uses libsodium then). */
int aead_large_seal(uint8_t *buf, uint32_t len, const uint8_t *ad, uint32_t adlen, const uint8_t nonce[12],
                    const uint8_t key[32]) {
    thread_ctx *t = get_ctx();
    int n;
    if (!t) return -1;
    if (!EVP_EncryptInit_ex2(t->seal, NULL, key, nonce, NULL) || !EVP_EncryptUpdate(t->seal, NULL, &n, ad, (int)adlen)) {
        forget(t, 1);
        return -1;
    }
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + len, FN_TAG),
                         OSSL_PARAM_construct_end()};
    if (!EVP_EncryptUpdate(t->seal, buf, &n, buf, (int)len) || !EVP_EncryptFinal_ex(t->seal, buf + n, &n) ||
        !EVP_CIPHER_CTX_get_params(t->seal, tag)) {
        /* cannot happen with a working context; if it does, nothing half-sealed leaves:
         * the peer counts a datagram that fails authentication */
        sodium_memzero(buf, (size_t)len + FN_TAG);
    }
    forget(t, 1);
    return 0;
}

/* Open `len` bytes (ciphertext, then the tag) at `buf` in place: 0, -1 on a bad tag,
 * -2 when OpenSSL cannot take it (`buf` untouched; the caller uses libsodium then).
 * OpenSSL decrypts before it checks the tag: a forgery's bytes are wiped, so no
 * unauthenticated plaintext stays behind in the buffer. */
int aead_large_open(uint8_t *buf, uint32_t len, const uint8_t *ad, uint32_t adlen, const uint8_t nonce[12],
                    const uint8_t key[32]) {
    if (len < FN_TAG) return -1;
    uint32_t ptlen = len - FN_TAG;
    thread_ctx *t = get_ctx();
    int n;
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + ptlen, FN_TAG),
                         OSSL_PARAM_construct_end()};
    if (!t) return -2;
    if (!EVP_DecryptInit_ex2(t->open, NULL, key, nonce, NULL) || !EVP_CIPHER_CTX_set_params(t->open, tag) ||
        !EVP_DecryptUpdate(t->open, NULL, &n, ad, (int)adlen)) {
        forget(t, 0);
        return -2;
    }
    int ok = EVP_DecryptUpdate(t->open, buf, &n, buf, (int)ptlen) && EVP_DecryptFinal_ex(t->open, buf + n, &n) == 1;
    forget(t, 0);
    if (ok) return 0;
    sodium_memzero(buf, ptlen);
    return -1;
}
