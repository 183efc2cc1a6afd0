/* wolfCrypt throughput, independent of sidekick (tests/bench/tls/bench-tls, issue 11).
 *
 *   wcspeed [SECONDS]
 *
 * Bulk: encrypts 16 KiB records (the TLS maximum record) with a 13-byte AAD, like a TLS 1.3
 * record layer: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305, each for SECONDS (default 1)
 * of wall time. Handshake primitives: P-256 ECDHE key generation + shared secret, ECDSA P-256
 * sign and verify (against 64 peer keys in turn), X25519 key generation + shared secret. One line per measurement:
 *   NAME<TAB>VALUE<TAB>UNIT
 * Build against the wolfSSL whose headers match the library it runs with (struct sizes of
 * Aes and ecc_key depend on the configure flags):
 *   cc -O2 wcspeed.c -o wcspeed -lwolfssl          (Debian's libwolfssl-dev)
 */
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/curve25519.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define REC 16384

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "wcspeed: %s failed: %d\n", what, rc);
    exit(1);
}

static unsigned char in[REC], out[REC], key[32], iv[12], aad[13], tag[16];

static void bulk_aes(const char *name, int keylen, double secs)
{
    Aes aes;
    int rc;
    if ((rc = wc_AesInit(&aes, NULL, INVALID_DEVID)) != 0) die("wc_AesInit", rc);
    if ((rc = wc_AesGcmSetKey(&aes, key, (word32)keylen)) != 0) die("wc_AesGcmSetKey", rc);
    long n = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 16; i++, n++) {
            iv[11] = (unsigned char)n;
            rc = wc_AesGcmEncrypt(&aes, out, in, REC, iv, sizeof iv, tag, sizeof tag, aad, sizeof aad);
            if (rc != 0) die("wc_AesGcmEncrypt", rc);
        }
        t = now() - t0;
    } while (t < secs);
    wc_AesFree(&aes);
    printf("%s\t%.1f\tMB/s\n", name, (double)n * REC / t / 1e6);
}

static void bulk_chacha(double secs)
{
    long n = 0;
    int rc;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 16; i++, n++) {
            iv[11] = (unsigned char)n;
            rc = wc_ChaCha20Poly1305_Encrypt(key, iv, aad, sizeof aad, in, REC, out, tag);
            if (rc != 0) die("wc_ChaCha20Poly1305_Encrypt", rc);
        }
        t = now() - t0;
    } while (t < secs);
    printf("chacha20-poly1305\t%.1f\tMB/s\n", (double)n * REC / t / 1e6);
}

/* P-256 against NPEER different peer keys in turn, as in handshakes (every peer point is
 * new): more than wolfSSL's fixed-point cache (FP_ECC, FP_ENTRIES 15) holds, so a loop over
 * one key would measure cache hits that a server does not get. */
#define NPEER 64
static void p256(WC_RNG *rng, double secs)
{
    static ecc_key peer[NPEER];
    static unsigned char sigs[NPEER][80];
    static word32 siglens[NPEER];
    ecc_key a;
    unsigned char sec[32], sig[80], hash[32] = {1};
    word32 sl, siglen;
    int rc, ok;
    long n;
    double t0, t;

    for (int i = 0; i < NPEER; i++) {
        if ((rc = wc_ecc_init(&peer[i])) != 0) die("wc_ecc_init", rc);
        if ((rc = wc_ecc_make_key_ex(rng, 32, &peer[i], ECC_SECP256R1)) != 0) die("wc_ecc_make_key_ex", rc);
        siglens[i] = sizeof sigs[i];
        if ((rc = wc_ecc_sign_hash(hash, sizeof hash, sigs[i], &siglens[i], rng, &peer[i])) != 0)
            die("wc_ecc_sign_hash", rc);
    }

    /* ECDHE: one key generation + one shared secret with a peer's point (one side of a handshake) */
    n = 0;
    t0 = now();
    do {
        if ((rc = wc_ecc_init(&a)) != 0) die("wc_ecc_init", rc);
        if ((rc = wc_ecc_make_key_ex(rng, 32, &a, ECC_SECP256R1)) != 0) die("wc_ecc_make_key_ex", rc);
#ifdef ECC_TIMING_RESISTANT
        wc_ecc_set_rng(&a, rng);
#endif
        sl = sizeof sec;
        if ((rc = wc_ecc_shared_secret(&a, &peer[n % NPEER], sec, &sl)) != 0) die("wc_ecc_shared_secret", rc);
        wc_ecc_free(&a);
        n++;
        t = now() - t0;
    } while (t < secs);
    printf("ecdhe-p256 (keygen+derive)\t%.0f\tops/s\n", n / t);

    /* ECDSA P-256 sign (CertificateVerify, with the server's one key) */
    n = 0;
    t0 = now();
    do {
        siglen = sizeof sig;
        if ((rc = wc_ecc_sign_hash(hash, sizeof hash, sig, &siglen, rng, &peer[0])) != 0) die("wc_ecc_sign_hash", rc);
        n++;
        t = now() - t0;
    } while (t < secs);
    printf("ecdsa-p256 sign\t%.0f\tops/s\n", n / t);

    /* ECDSA P-256 verify with a peer's key (certificate chains, the peer's CertificateVerify) */
    n = 0;
    t0 = now();
    do {
        int k = (int)(n % NPEER);
        ok = 0;
        if ((rc = wc_ecc_verify_hash(sigs[k], siglens[k], hash, sizeof hash, &ok, &peer[k])) != 0 || !ok)
            die("wc_ecc_verify_hash", rc);
        n++;
        t = now() - t0;
    } while (t < secs);
    printf("ecdsa-p256 verify\t%.0f\tops/s\n", n / t);
    for (int i = 0; i < NPEER; i++) wc_ecc_free(&peer[i]);
}

static void x25519(WC_RNG *rng, double secs)
{
    curve25519_key a, b;
    unsigned char sec[32];
    word32 sl;
    int rc;
    long n = 0;
    double t0, t;
    wc_curve25519_init(&b);
    if ((rc = wc_curve25519_make_key(rng, 32, &b)) != 0) die("wc_curve25519_make_key", rc);
    t0 = now();
    do {
        wc_curve25519_init(&a);
        if ((rc = wc_curve25519_make_key(rng, 32, &a)) != 0) die("wc_curve25519_make_key", rc);
        sl = sizeof sec;
        if ((rc = wc_curve25519_shared_secret(&a, &b, sec, &sl)) != 0) die("wc_curve25519_shared_secret", rc);
        wc_curve25519_free(&a);
        n++;
        t = now() - t0;
    } while (t < secs);
    wc_curve25519_free(&b);
    printf("x25519 (keygen+derive)\t%.0f\tops/s\n", n / t);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    if (secs <= 0 || secs > 60) secs = 1.0;
    WC_RNG rng;
    int rc;
    if ((rc = wc_InitRng(&rng)) != 0) die("wc_InitRng", rc);
    wc_RNG_GenerateBlock(&rng, in, sizeof in);
    wc_RNG_GenerateBlock(&rng, key, sizeof key);
    bulk_aes("aes-128-gcm", 16, secs);
    bulk_aes("aes-256-gcm", 32, secs);
    bulk_chacha(secs);
    p256(&rng, secs);
    x25519(&rng, secs);
    wc_FreeRng(&rng);
    return 0;
}
