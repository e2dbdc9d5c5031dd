/* What aes_gcm_vaes.c leaves on the stack (test_aes_gcm_attacks.py builds it with the
 * module's -O2 and runs it): for payloads and associated data of many lengths, seal,
 * open and a refused forgery each run on a stack filled with a marker first; then the
 * stack below is searched for the key material (round keys, the hash key H and its
 * powers as the context holds them) and the keystream. Prints each find; the exit
 * status is the number of finds (0: clean).
 *
 *   gcc -O2 -I engine/crypto/csrc tests/unit/engine/vaes_stack_probe.c -lsodium
 *
 * Reads below its own stack pointer on purpose (the memory the cipher just used).
 * Run with LD_BIND_NOW=1: the dynamic linker saves every ymm register on the stack
 * the first time a function is called through the PLT, which is not this code's doing. */
#include "../../../engine/crypto/csrc/aes_gcm_vaes.c"

#include <stdio.h>

#define DEPTH 16384
#define MAXSEC 2048

static uint8_t secret[MAXSEC][16];
static const char *what[MAXSEC];
static int nsecret, finds;

static void add(const void *p, const char *name) {
    if (nsecret == MAXSEC) return;
    memcpy(secret[nsecret], p, 16);
    what[nsecret++] = name;
}

__attribute__((noinline)) static void fill_stack(void) {
    volatile uint8_t z[DEPTH];
    for (size_t i = 0; i < sizeof(z); i++) z[i] = 0x5a;
}

__attribute__((noinline)) static void scan(const char *op, size_t adlen, size_t len) {
    volatile uint8_t here[16];
    const uint8_t *top = (const uint8_t *)here;
    for (const uint8_t *p = top - DEPTH + 512; p < top - 64; p += 8)
        for (int s = 0; s < nsecret; s++)
            if (memcmp(p, secret[s], 16) == 0 && finds++ < 20)
                printf("%s ad %zu len %zu: %s (#%d) at sp-%ld\n", op, adlen, len, what[s], s, (long)(top - p));
}

int main(void) {
    if (!vgcm_cpu_ok()) {
        printf("skip: no AVX2+VAES+VPCLMULQDQ\n");
        return 0;
    }
    static const size_t lens[] = {0, 1, 15, 16, 17, 31, 32, 100, 255, 256, 257, 300, 511, 512, 1000, 1400, 1452,
                                  4095, 4096, 9000};
    static const size_t adlens[] = {0, 16, 17, 255, 256, 300, 600};
    static uint8_t pt[9000 + 64], ct[9000 + 64], back[9000 + 64], ad[600], tag[16];
    uint8_t key[32], nonce[12];
    randombytes_buf(key, sizeof(key));
    randombytes_buf(nonce, sizeof(nonce));
    randombytes_buf(pt, sizeof(pt));
    randombytes_buf(ad, sizeof(ad));
    struct vgcm *c = vgcm_new(key);
    for (int r = 0; r < 15; r++) add(&c->rk[r], "round key");
    for (int j = 0; j < CHUNK; j++) {
        add(&c->pw[j], "hash key power");
        add(&c->kw[j], "hash key power (Karatsuba)");
    }
    uint8_t h[16] = {0};
    _mm_storeu_si128((__m128i *)h, aes_block(c, _mm_setzero_si128()));
    add(h, "hash key H");
    /* the keystream of the longest payload (the shorter ones' is its beginning) */
    static uint8_t ks[9000 + 64], rev[9000 / 16][16];
    vgcm_seal(c, nonce, ad, 16, pt, ct, 9000, tag);
    for (size_t i = 0; i < 9000; i++) ks[i] = ct[i] ^ pt[i];
    for (size_t i = 0; i + 16 <= 9000; i += 16) {
        add(ks + i, "keystream");
        for (int b = 0; b < 16; b++) rev[i / 16][b] = ks[i + 15 - b];
        add(rev[i / 16], "keystream, byte-reversed");
    }
    for (size_t a = 0; a < sizeof(adlens) / sizeof(*adlens); a++) {
        for (size_t l = 0; l < sizeof(lens) / sizeof(*lens); l++) {
            size_t adlen = adlens[a], len = lens[l];
            fill_stack();
            vgcm_seal(c, nonce, ad, adlen, pt, ct, len, tag);
            scan("seal", adlen, len);
            fill_stack();
            if (!vgcm_open(c, nonce, ad, adlen, ct, back, len, tag) || memcmp(back, pt, len)) {
                printf("open ad %zu len %zu: refused its own seal\n", adlen, len);
                finds++;
            }
            scan("open", adlen, len);
            tag[0] ^= 1;
            fill_stack();
            if (vgcm_open(c, nonce, ad, adlen, ct, back, len, tag)) {
                printf("open ad %zu len %zu: took a forgery\n", adlen, len);
                finds++;
            }
            scan("forgery", adlen, len);
        }
    }
    vgcm_free(c);
    printf("%d finds\n", finds);
    return finds > 255 ? 255 : finds;
}
