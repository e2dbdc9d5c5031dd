/* One core, one packet per call: ChaCha20-Poly1305 from libsodium and from OpenSSL's
 * libcrypto (the data path's two), and AES-256-GCM from OpenSSL (not a Flatnet suite;
 * measured for issue 19's question whether a second suite would pay).
 *
 *   gcc -O2 benchmarks/aead_compare.c -o /tmp/aead_compare -lcrypto -lsodium && /tmp/aead_compare
 *
 * Thread CPU time (not wall time: the machine is shared), best of 30 rounds per cell,
 * 16-byte associated data like a Flatnet header, sealed in place. */
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

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

int main(void) {
    if (sodium_init() < 0) return 1;
    EVP_CIPHER_CTX *cc = EVP_CIPHER_CTX_new(), *gc = EVP_CIPHER_CTX_new();
    EVP_CIPHER *chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    EVP_CIPHER *gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (!chacha || !gcm || !EVP_EncryptInit_ex2(cc, chacha, NULL, NULL, NULL) ||
        !EVP_EncryptInit_ex2(gc, gcm, NULL, NULL, NULL)) return 2;
    static uint8_t buf[65536 + 64];
    uint8_t key[32] = {1}, nonce[12] = {0}, ad[16] = {3};
    const int sizes[] = {64, 1400, 65536};
    printf("| bytes | ChaCha20-Poly1305 libsodium | ChaCha20-Poly1305 OpenSSL | AES-256-GCM OpenSSL |\n|---|---|---|---|\n");
    for (int s = 0; s < 3; s++) {
        int len = sizes[s], rounds = len > 4096 ? 50 : 2000;
        double best[3] = {1e9, 1e9, 1e9};
        for (int r = 0; r < 30; r++) {
            for (int c = 0; c < 3; c++) {
                double t = cpu_now();
                for (int i = 0; i < rounds; i++) {
                    nonce[4] = (uint8_t)i;
                    if (c == 0) crypto_aead_chacha20poly1305_ietf_encrypt(buf, NULL, buf, len, ad, 16, NULL, nonce, key);
                    else if (evp_seal(c == 1 ? cc : gc, buf, len, ad, nonce, key) < 0) return 3;
                }
                double d = (cpu_now() - t) / rounds;
                if (d < best[c]) best[c] = d;
            }
        }
        printf("| %d |", len);
        for (int c = 0; c < 3; c++) printf(" %.0f ns (%.2f Gbit/s) |", best[c] * 1e9, len * 8 / best[c] / 1e9);
        printf("\n");
    }
    return 0;
}
