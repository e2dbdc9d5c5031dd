/* One core, one packet per call: ChaCha20-Poly1305 from libsodium and from OpenSSL's
 * libcrypto (the data path's two), and AES-256-GCM (the negotiated second suite,
 * engine/crypto/csrc/aead_aes.c) under four keying policies (issue 19):
 *   (a) key set for every packet, then a zero key over it (what the data path does)
 *   (b) key set once per batch of 64 packets of one session, zeroed at the batch end
 *   (c) a context keyed once and kept (only the nonce set per packet)
 *   (d) libsodium crypto_aead_aes256gcm_beforenm state, precomputed once
 *   (e) as (c), but the provider's cipher functions called directly (what aead_aes.c
 *       does), not through EVP_EncryptInit_ex2 / EVP_EncryptUpdate / ...
 *   (f) Flatnet's own AES-256-GCM with VAES + VPCLMULQDQ on ymm registers
 *       (engine/crypto/csrc/aes_gcm_vaes.c, what aead_aes.c uses where the CPU has
 *       them), keyed once; "-" where the CPU lacks them
 *
 *   gcc -O2 benchmarks/aead_compare.c -o /tmp/aead_compare -lcrypto -lsodium && /tmp/aead_compare
 *
 * Thread CPU time (not wall time: the machine is shared), best of 30 rounds per cell,
 * 16-byte associated data like a Flatnet header, sealed in place. */
/* first: it includes internal.h, which defines _GNU_SOURCE */
#include "../engine/crypto/csrc/aes_gcm_vaes.c"
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define NCOL 9
static const char *names[NCOL] = {"ChaCha libsodium", "ChaCha OpenSSL (a)", "AES-GCM OpenSSL (a)",
                                  "AES-GCM OpenSSL (b)", "AES-GCM OpenSSL (c)", "AES-GCM libsodium",
                                  "AES-GCM libsodium (d)", "AES-GCM OpenSSL (e)",
                                  "AES-GCM VAES (f)"};

/* (e): the provider's functions for the fetched cipher (as aead_aes.c finds them) */
static OSSL_FUNC_cipher_newctx_fn *p_new;
static OSSL_FUNC_cipher_encrypt_init_fn *p_einit;
static OSSL_FUNC_cipher_update_fn *p_update;
static OSSL_FUNC_cipher_final_fn *p_final;
static OSSL_FUNC_cipher_get_ctx_params_fn *p_get;

static void *provider_ctx(const EVP_CIPHER *c, const uint8_t *key) {
    const OSSL_PROVIDER *prov = EVP_CIPHER_get0_provider(c);
    int no_cache;
    for (const OSSL_ALGORITHM *a = OSSL_PROVIDER_query_operation(prov, OSSL_OP_CIPHER, &no_cache);
         a && a->algorithm_names; a++) {
        if (strncmp(a->algorithm_names, "AES-256-GCM:", 12) != 0) continue;
        for (const OSSL_DISPATCH *d = a->implementation; d->function_id; d++) {
            if (d->function_id == OSSL_FUNC_CIPHER_NEWCTX) p_new = OSSL_FUNC_cipher_newctx(d);
            if (d->function_id == OSSL_FUNC_CIPHER_ENCRYPT_INIT) p_einit = OSSL_FUNC_cipher_encrypt_init(d);
            if (d->function_id == OSSL_FUNC_CIPHER_UPDATE) p_update = OSSL_FUNC_cipher_update(d);
            if (d->function_id == OSSL_FUNC_CIPHER_FINAL) p_final = OSSL_FUNC_cipher_final(d);
            if (d->function_id == OSSL_FUNC_CIPHER_GET_CTX_PARAMS) p_get = OSSL_FUNC_cipher_get_ctx_params(d);
        }
    }
    void *x = p_new && p_einit && p_update && p_final && p_get ? p_new(OSSL_PROVIDER_get0_provider_ctx(prov)) : NULL;
    return x && p_einit(x, key, 32, NULL, 0, NULL) ? x : NULL;
}

static int direct_seal(void *x, uint8_t *buf, size_t len, const uint8_t *ad, const uint8_t *nonce) {
    size_t n;
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + len, 16),
                         OSSL_PARAM_construct_end()};
    return p_einit(x, NULL, 0, nonce, 12, NULL) && p_update(x, NULL, &n, 16, ad, 16) &&
                   p_update(x, buf, &n, len, buf, len) && p_final(x, buf + len, &n, 0) && p_get(x, tag)
               ? 0 : -1;
}

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* key NULL: the context keeps the key it has (policies b, c) */
static int evp_seal(EVP_CIPHER_CTX *x, uint8_t *buf, int len, const uint8_t *ad, const uint8_t *nonce,
                    const uint8_t *key) {
    int n;
    OSSL_PARAM tag[2] = {OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, buf + len, 16),
                         OSSL_PARAM_construct_end()};
    return EVP_EncryptInit_ex2(x, NULL, key, nonce, NULL) && EVP_EncryptUpdate(x, NULL, &n, ad, 16) &&
                   EVP_EncryptUpdate(x, buf, &n, buf, len) && EVP_EncryptFinal_ex(x, buf + n, &n) &&
                   EVP_CIPHER_CTX_get_params(x, tag)
               ? 0 : -1;
}

static const uint8_t zero[32];

int main(void) {
    if (sodium_init() < 0) return 1;
    EVP_CIPHER_CTX *cc = EVP_CIPHER_CTX_new(), *gc = EVP_CIPHER_CTX_new(), *kept = EVP_CIPHER_CTX_new();
    EVP_CIPHER *chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    EVP_CIPHER *gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    static uint8_t buf[65536 + 64];
    uint8_t key[32] = {1}, nonce[12] = {0}, ad[16] = {3};
    if (!chacha || !gcm || !EVP_EncryptInit_ex2(cc, chacha, NULL, NULL, NULL) ||
        !EVP_EncryptInit_ex2(gc, gcm, NULL, NULL, NULL) || !EVP_EncryptInit_ex2(kept, gcm, key, NULL, NULL))
        return 2;
    void *direct = provider_ctx(gcm, key);
    if (!direct) return 2;
    int have_sodium_gcm = crypto_aead_aes256gcm_is_available();
    void *vaes = vgcm_cpu_ok() ? vgcm_new(key) : NULL;
    crypto_aead_aes256gcm_state st;
    if (have_sodium_gcm) crypto_aead_aes256gcm_beforenm(&st, key);
    const int sizes[] = {64, 1400, 65536};
    printf("| bytes |");
    for (int c = 0; c < NCOL; c++) printf(" %s |", names[c]);
    printf("\n|---|");
    for (int c = 0; c < NCOL; c++) printf("---|");
    printf("\n");
    for (int s = 0; s < 3; s++) {
        int len = sizes[s], rounds = len > 4096 ? 64 : 2048;
        if (len > 65536 - 16) len = 65536 - 16;
        double best[NCOL];
        for (int c = 0; c < NCOL; c++) best[c] = 1e9;
        for (int r = 0; r < 30; r++) {
            for (int c = 0; c < NCOL; c++) {
                if ((c == 5 || c == 6) && !have_sodium_gcm) continue;
                if (c == 8 && !vaes) continue;
                double t = cpu_now();
                for (int i = 0; i < rounds; i++) {
                    nonce[4] = (uint8_t)i;
                    nonce[5] = (uint8_t)(i >> 8);
                    switch (c) {
                    case 0: crypto_aead_chacha20poly1305_ietf_encrypt(buf, NULL, buf, len, ad, 16, NULL, nonce, key); break;
                    case 1: case 2:
                        if (evp_seal(c == 1 ? cc : gc, buf, len, ad, nonce, key) < 0) return 3;
                        if (!EVP_EncryptInit_ex2(c == 1 ? cc : gc, NULL, zero, NULL, NULL)) return 3;
                        break;
                    case 3:
                        if (evp_seal(gc, buf, len, ad, nonce, i % 64 == 0 ? key : NULL) < 0) return 3;
                        if (i % 64 == 63 && !EVP_EncryptInit_ex2(gc, NULL, zero, NULL, NULL)) return 3;
                        break;
                    case 4: if (evp_seal(kept, buf, len, ad, nonce, NULL) < 0) return 3; break;
                    case 5: crypto_aead_aes256gcm_encrypt(buf, NULL, buf, len, ad, 16, NULL, nonce, key); break;
                    case 6: crypto_aead_aes256gcm_encrypt_afternm(buf, NULL, buf, len, ad, 16, NULL, nonce, &st); break;
                    case 7: if (direct_seal(direct, buf, len, ad, nonce) < 0) return 3; break;
                    case 8: vgcm_seal(vaes, nonce, ad, 16, buf, buf, len, buf + len); break;
                    }
                }
                double d = (cpu_now() - t) / rounds;
                if (d < best[c]) best[c] = d;
            }
        }
        printf("| %d |", len);
        for (int c = 0; c < NCOL; c++)
            if (best[c] < 1e9) printf(" %.0f ns (%.2f Gbit/s) |", best[c] * 1e9, len * 8 / best[c] / 1e9);
            else printf(" - |");
        printf("\n");
    }
    return 0;
}
