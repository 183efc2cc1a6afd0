/*
 * jwt.c — compact JWS verification (RFC 7515/7518/7519, EdDSA RFC 8037) and
 * JWK sets (RFC 7517) with wolfCrypt and jansson. See jwt.h.
 */
#include <wolfssl/options.h>

#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/hash.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/rsa.h>
#include <wolfssl/wolfcrypt/signature.h>

#include "jwt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JWT_MAX_PART (64u * 1024) /* bytes of one decoded part */

enum fam { F_HS, F_RS, F_PS, F_ES, F_ED };

static const struct {
    const char *name;
    int fam;
    enum wc_HashType hash;
    int hlen;
    int curve; /* ES: 256 or 384 */
} algs[JWT_NALGS] = {
    [JWT_HS256] = {"HS256", F_HS, WC_HASH_TYPE_SHA256, 32, 0},
    [JWT_HS384] = {"HS384", F_HS, WC_HASH_TYPE_SHA384, 48, 0},
    [JWT_HS512] = {"HS512", F_HS, WC_HASH_TYPE_SHA512, 64, 0},
    [JWT_RS256] = {"RS256", F_RS, WC_HASH_TYPE_SHA256, 32, 0},
    [JWT_RS384] = {"RS384", F_RS, WC_HASH_TYPE_SHA384, 48, 0},
    [JWT_RS512] = {"RS512", F_RS, WC_HASH_TYPE_SHA512, 64, 0},
    [JWT_PS256] = {"PS256", F_PS, WC_HASH_TYPE_SHA256, 32, 0},
    [JWT_PS384] = {"PS384", F_PS, WC_HASH_TYPE_SHA384, 48, 0},
    [JWT_PS512] = {"PS512", F_PS, WC_HASH_TYPE_SHA512, 64, 0},
    [JWT_ES256] = {"ES256", F_ES, WC_HASH_TYPE_SHA256, 32, 256},
    [JWT_ES384] = {"ES384", F_ES, WC_HASH_TYPE_SHA384, 48, 384},
    [JWT_EDDSA] = {"EdDSA", F_ED, WC_HASH_TYPE_NONE, 0, 0},
};

const char *jwt_strerror(int e)
{
    static const char *const s[] = {"ok",      "malformed",     "bad_alg",    "unknown_key",  "bad_signature",
                                    "expired", "not_yet_valid", "bad_issuer", "bad_audience", "no_exp"};
    return e >= 0 && e < (int)(sizeof(s) / sizeof(s[0])) ? s[e] : "?";
}

int jwt_alg_from_name(const char *name, size_t len)
{
    for (int i = 0; i < JWT_NALGS; i++)
        if (strlen(algs[i].name) == len && memcmp(algs[i].name, name, len) == 0) return i;
    return -1;
}

const char *jwt_alg_name(int alg)
{
    return alg >= 0 && alg < JWT_NALGS ? algs[alg].name : "?";
}

/* ---- base64 ---- */

static int b64val(int c, int strict)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    if (!strict && c == '+') return 62;
    if (!strict && c == '/') return 63;
    return -1;
}

int jwt_b64_decode(const char *in, size_t len, int strict, unsigned char **out, size_t *outlen)
{
    if (!strict)
        while (len && in[len - 1] == '=') len--;
    if (len % 4 == 1 || len > JWT_MAX_PART * 4 / 3 + 4) return -1;
    unsigned char *o = malloc(len * 3 / 4 + 1);
    if (!o) return -1;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)in[i], strict);
        if (v < 0) {
            free(o);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (strict && acc != 0) { /* non-canonical: unused bits set */
        free(o);
        return -1;
    }
    o[n] = 0;
    *out = o;
    *outlen = n;
    return 0;
}

/* ---- signatures ---- */

static int ct_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++) d |= a[i] ^ b[i];
    return d == 0;
}

/* Whether key k may check alg. */
static int key_fits(const jwt_key *k, int alg)
{
    if (k->alg >= 0 && k->alg != alg) return 0;
    switch (algs[alg].fam) {
    case F_HS: return k->kty == JWK_OCT && k->alen >= (size_t)algs[alg].hlen;
    case F_RS:
    case F_PS: return k->kty == JWK_RSA;
    case F_ES: return k->kty == JWK_EC && k->curve == algs[alg].curve;
    case F_ED: return k->kty == JWK_OKP;
    }
    return 0;
}

static int verify_hs(const jwt_key *k, int alg, const unsigned char *m, size_t mlen, const unsigned char *sig,
                     size_t slen)
{
    Hmac h;
    unsigned char mac[WC_MAX_DIGEST_SIZE];
    int type = algs[alg].hash == WC_HASH_TYPE_SHA256   ? WC_SHA256
               : algs[alg].hash == WC_HASH_TYPE_SHA384 ? WC_SHA384
                                                       : WC_SHA512;
    if (slen != (size_t)algs[alg].hlen) return 0;
    if (wc_HmacInit(&h, NULL, INVALID_DEVID) != 0) return 0;
    int ok = wc_HmacSetKey(&h, type, k->a, (word32)k->alen) == 0 && wc_HmacUpdate(&h, m, (word32)mlen) == 0 &&
             wc_HmacFinal(&h, mac) == 0 && ct_equal(mac, sig, slen);
    wc_HmacFree(&h);
    return ok;
}

static int verify_rsa(const jwt_key *k, int alg, const unsigned char *m, size_t mlen,
                      const unsigned char *sig, size_t slen)
{
    RsaKey *key = malloc(sizeof(*key));
    unsigned char *copy = malloc(slen ? slen : 1), *out = malloc(slen ? slen : 1);
    int ok = 0;
    if (!key || !copy || !out) goto done;
    if (wc_InitRsaKey(key, NULL) != 0) goto done;
    if (wc_RsaPublicKeyDecodeRaw(k->a, (word32)k->alen, k->b, (word32)k->blen, key) != 0) goto freekey;
    if (slen != (size_t)wc_RsaEncryptSize(key)) goto freekey;
    if (algs[alg].fam == F_RS) {
        ok = wc_SignatureVerify(algs[alg].hash, WC_SIGNATURE_TYPE_RSA_W_ENC, m, (word32)mlen, sig,
                                (word32)slen, key, sizeof(*key)) == 0;
    } else {
        unsigned char digest[WC_MAX_DIGEST_SIZE];
        int mgf = algs[alg].hlen == 32 ? WC_MGF1SHA256 : algs[alg].hlen == 48 ? WC_MGF1SHA384 : WC_MGF1SHA512;
        if (wc_Hash(algs[alg].hash, m, (word32)mlen, digest, sizeof(digest)) != 0) goto freekey;
        memcpy(copy, sig, slen);
        ok = wc_RsaPSS_VerifyCheck(copy, (word32)slen, out, (word32)slen, digest, (word32)algs[alg].hlen,
                                   algs[alg].hash, mgf, key) > 0;
    }
freekey:
    wc_FreeRsaKey(key);
done:
    free(key);
    free(copy);
    free(out);
    return ok;
}

static int verify_ec(const jwt_key *k, int alg, const unsigned char *m, size_t mlen, const unsigned char *sig,
                     size_t slen)
{
    size_t half = algs[alg].curve == 256 ? 32 : 48;
    if (slen != 2 * half) return 0; /* JWS wants raw R||S: a DER signature never has this length pattern */
    ecc_key *key = malloc(sizeof(*key));
    unsigned char digest[WC_MAX_DIGEST_SIZE], der[2 * 48 + 16];
    word32 derlen = sizeof(der);
    int ok = 0, res = 0;
    if (!key) return 0;
    if (wc_ecc_init(key) != 0) goto done;
    if (wc_ecc_import_unsigned(key, k->a, k->b, NULL, k->curve == 256 ? ECC_SECP256R1 : ECC_SECP384R1) != 0)
        goto freekey;
    /* the point was checked on the curve when the key was loaded (ec_ok) */
    if (wc_Hash(algs[alg].hash, m, (word32)mlen, digest, sizeof(digest)) != 0) goto freekey;
    if (wc_ecc_rs_raw_to_sig(sig, (word32)half, sig + half, (word32)half, der, &derlen) != 0) goto freekey;
    ok = wc_ecc_verify_hash(der, derlen, digest, (word32)algs[alg].hlen, &res, key) == 0 && res == 1;
freekey:
    wc_ecc_free(key);
done:
    free(key);
    return ok;
}

static int verify_ed(const jwt_key *k, const unsigned char *m, size_t mlen, const unsigned char *sig,
                     size_t slen)
{
    ed25519_key key;
    int ok = 0, res = 0;
    if (slen != ED25519_SIG_SIZE || k->alen != ED25519_PUB_KEY_SIZE) return 0;
    if (wc_ed25519_init(&key) != 0) return 0;
    if (wc_ed25519_import_public(k->a, (word32)k->alen, &key) == 0)
        ok = wc_ed25519_verify_msg(sig, (word32)slen, m, (word32)mlen, &res, &key) == 0 && res == 1;
    wc_ed25519_free(&key);
    return ok;
}

static int verify_one(const jwt_key *k, int alg, const unsigned char *m, size_t mlen,
                      const unsigned char *sig, size_t slen)
{
    switch (algs[alg].fam) {
    case F_HS: return verify_hs(k, alg, m, mlen, sig, slen);
    case F_RS:
    case F_PS: return verify_rsa(k, alg, m, mlen, sig, slen);
    case F_ES: return verify_ec(k, alg, m, mlen, sig, slen);
    case F_ED: return verify_ed(k, m, mlen, sig, slen);
    }
    return 0;
}

static json_t *decode_object(const char *p, size_t len)
{
    unsigned char *raw;
    size_t rawlen;
    if (jwt_b64_decode(p, len, 1, &raw, &rawlen) != 0) return NULL;
    json_t *j = json_loadb((const char *)raw, rawlen, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

int jwt_verify(const jwt_keyset *ks, const char *tok, size_t len, unsigned algmask, json_t **claims,
               int *kid_unknown)
{
    *claims = NULL;
    *kid_unknown = 0;
    const char *d1 = memchr(tok, '.', len);
    if (!d1) return JWT_EMALFORMED;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok));
    if (!d2) return JWT_EMALFORMED;
    if (memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok))) return JWT_EMALFORMED; /* JWE: five parts */
    const char *sigp = d2 + 1;
    size_t siglen_b64 = len - (size_t)(sigp - tok);
    if (siglen_b64 == 0) return JWT_EALG; /* empty signature: an unsecured JWS */

    json_t *hdr = decode_object(tok, (size_t)(d1 - tok));
    if (!hdr) return JWT_EMALFORMED;
    int rc = JWT_EMALFORMED, alg = -1;
    json_t *jalg = json_object_get(hdr, "alg"), *jkid = json_object_get(hdr, "kid");
    if (json_object_get(hdr, "enc") || json_object_get(hdr, "crit") || !json_is_string(jalg) ||
        (jkid && !json_is_string(jkid)))
        goto out;
    alg = jwt_alg_from_name(json_string_value(jalg), json_string_length(jalg));
    if (alg < 0 || !(algmask & (1u << alg))) {
        rc = JWT_EALG;
        goto out;
    }
    unsigned char *sig;
    size_t slen;
    if (jwt_b64_decode(sigp, siglen_b64, 1, &sig, &slen) != 0) goto out;
    const char *kid = jkid ? json_string_value(jkid) : NULL;
    int fitting = 0, kid_seen = 0;
    rc = JWT_ENOKEY;
    for (size_t i = 0; i < ks->n; i++) {
        const jwt_key *k = &ks->keys[i];
        /* A token's kid picks the keys with that kid; a key without a kid
         * (a jwt_key PEM file, a JWK without "kid") is a candidate for every
         * token, as in RFC 7515 4.1.4 where kid is only a hint. */
        if (kid && k->kid && strcmp(k->kid, kid) != 0) continue;
        kid_seen = 1;
        if (!key_fits(k, alg)) continue;
        fitting = 1;
        if (verify_one(k, alg, (const unsigned char *)tok, (size_t)(d2 - tok), sig, slen)) {
            rc = JWT_OK;
            break;
        }
    }
    free(sig);
    if (rc != JWT_OK) {
        if (fitting)
            rc = JWT_ESIGNATURE;
        else if (kid && !kid_seen)
            *kid_unknown = 1;
        goto out;
    }
    *claims = decode_object(d1 + 1, (size_t)(d2 - d1 - 1));
    if (!*claims) rc = JWT_EMALFORMED;
out:
    json_decref(hdr);
    return rc;
}

int jwt_check_claims(json_t *claims, const char *issuer, char *const *aud, int64_t leeway, int require_exp,
                     int64_t now)
{
    json_t *exp = json_object_get(claims, "exp"), *nbf = json_object_get(claims, "nbf");
    if (exp && !json_is_number(exp)) return JWT_ENOEXP;
    if (!exp && require_exp) return JWT_ENOEXP;
    if (exp && (double)now > json_number_value(exp) + (double)leeway) return JWT_EEXPIRED;
    if (nbf && !json_is_number(nbf)) return JWT_EMALFORMED;
    if (nbf && (double)now < json_number_value(nbf) - (double)leeway) return JWT_ENOTYET;
    if (issuer) {
        json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), issuer) != 0) return JWT_EISSUER;
    }
    if (aud) {
        json_t *a = json_object_get(claims, "aud");
        int match = 0;
        for (char *const *w = aud; *w && !match; w++) {
            if (json_is_string(a)) {
                match = strcmp(json_string_value(a), *w) == 0;
            } else if (json_is_array(a)) {
                size_t i;
                json_t *v;
                json_array_foreach(a, i, v) if (json_is_string(v) && strcmp(json_string_value(v), *w) == 0)
                    match = 1;
            }
        }
        if (!match) return JWT_EAUDIENCE;
    }
    return JWT_OK;
}

/* ---- key sets ---- */

static int push(jwt_keyset *ks, const jwt_key *k)
{
    jwt_key *n = realloc(ks->keys, (ks->n + 1) * sizeof(*n));
    if (!n) return -1;
    ks->keys = n;
    ks->keys[ks->n++] = *k;
    return 0;
}

static void key_free(jwt_key *k)
{
    free(k->kid);
    if (k->a) {
        volatile unsigned char *v = k->a;
        for (size_t i = 0; i < k->alen; i++) v[i] = 0;
    }
    free(k->a);
    free(k->b);
}

void jwt_keyset_free(jwt_keyset *ks)
{
    for (size_t i = 0; i < ks->n; i++) key_free(&ks->keys[i]);
    free(ks->keys);
    ks->keys = NULL;
    ks->n = 0;
}

static int field(json_t *o, const char *name, unsigned char **out, size_t *len)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_string(v)) return -1;
    return jwt_b64_decode(json_string_value(v), json_string_length(v), 0, out, len);
}

/* Strips leading zero bytes (an n or x encoded with a sign byte). */
static void strip_zeros(unsigned char *p, size_t *len)
{
    size_t z = 0;
    while (z + 1 < *len && p[z] == 0) z++;
    memmove(p, p + z, *len - z);
    *len -= z;
}

/* Checks an RSA modulus/exponent pair builds a key of >= 2048 bits. */
static int rsa_ok(const jwt_key *k)
{
    /* e: 1..8 bytes, odd, at least 3 (an empty e passes wolfSSL's decoder: fuzz_jwks found it) */
    uint64_t e = 0;
    if (k->blen == 0 || k->blen > 8) return 0;
    for (size_t i = 0; i < k->blen; i++) e = e << 8 | k->b[i];
    if (e < 3 || !(e & 1)) return 0;
    RsaKey *key = malloc(sizeof(*key));
    int ok = 0;
    if (!key) return 0;
    if (wc_InitRsaKey(key, NULL) == 0) {
        ok = wc_RsaPublicKeyDecodeRaw(k->a, (word32)k->alen, k->b, (word32)k->blen, key) == 0 &&
             wc_RsaEncryptSize(key) >= 256;
        wc_FreeRsaKey(key);
    }
    free(key);
    return ok;
}

static int ec_ok(const jwt_key *k)
{
    ecc_key key;
    int ok = 0;
    size_t want = k->curve == 256 ? 32 : 48;
    if (k->alen != want || k->blen != want) return 0;
    if (wc_ecc_init(&key) != 0) return 0;
    ok = wc_ecc_import_unsigned(&key, k->a, k->b, NULL, k->curve == 256 ? ECC_SECP256R1 : ECC_SECP384R1) ==
             0 &&
         wc_ecc_check_key(&key) == 0;
    wc_ecc_free(&key);
    return ok;
}

/* One JWK into k: 0, or -1 (unusable: skipped). */
static int jwk_parse(json_t *o, jwt_key *k)
{
    memset(k, 0, sizeof(*k));
    k->alg = -1;
    json_t *kty = json_object_get(o, "kty"), *alg = json_object_get(o, "alg"),
           *kid = json_object_get(o, "kid"), *use = json_object_get(o, "use"),
           *crv = json_object_get(o, "crv");
    if (!json_is_string(kty)) return -1;
    if (use && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0)) return -1;
    if (alg) {
        if (!json_is_string(alg)) return -1;
        k->alg = jwt_alg_from_name(json_string_value(alg), json_string_length(alg));
        if (k->alg < 0) return -1;
    }
    if (kid) {
        if (!json_is_string(kid) || !(k->kid = strdup(json_string_value(kid)))) return -1;
    }
    const char *t = json_string_value(kty), *c = json_is_string(crv) ? json_string_value(crv) : "";
    int fam = k->alg >= 0 ? algs[k->alg].fam : -1;
    if (strcmp(t, "oct") == 0) {
        k->kty = JWK_OCT;
        if ((fam >= 0 && fam != F_HS) || field(o, "k", &k->a, &k->alen) != 0 || k->alen == 0) goto bad;
    } else if (strcmp(t, "RSA") == 0) {
        k->kty = JWK_RSA;
        if ((fam >= 0 && fam != F_RS && fam != F_PS) || field(o, "n", &k->a, &k->alen) != 0 ||
            field(o, "e", &k->b, &k->blen) != 0)
            goto bad;
        strip_zeros(k->a, &k->alen);
        if (!rsa_ok(k)) goto bad;
    } else if (strcmp(t, "EC") == 0) {
        k->kty = JWK_EC;
        k->curve = strcmp(c, "P-256") == 0 ? 256 : strcmp(c, "P-384") == 0 ? 384 : 0;
        if (!k->curve || (fam >= 0 && (fam != F_ES || algs[k->alg].curve != k->curve)) ||
            field(o, "x", &k->a, &k->alen) != 0 || field(o, "y", &k->b, &k->blen) != 0 || !ec_ok(k))
            goto bad;
    } else if (strcmp(t, "OKP") == 0) {
        k->kty = JWK_OKP;
        if (strcmp(c, "Ed25519") != 0 || (fam >= 0 && fam != F_ED) || field(o, "x", &k->a, &k->alen) != 0 ||
            k->alen != ED25519_PUB_KEY_SIZE)
            goto bad;
    } else {
        goto bad;
    }
    return 0;
bad:
    key_free(k);
    return -1;
}

int jwt_keyset_from_jwks(jwt_keyset *ks, const char *json, size_t len, size_t *skipped, char *why,
                         size_t why_size)
{
    json_error_t e;
    memset(ks, 0, sizeof(*ks));
    *skipped = 0;
    json_t *doc = json_loadb(json, len, 0, &e);
    if (!doc) {
        snprintf(why, why_size, "not JSON: %s (line %d)", e.text, e.line);
        return -1;
    }
    json_t *keys = json_object_get(doc, "keys");
    if (!json_is_array(keys)) {
        snprintf(why, why_size, "no \"keys\" array");
        json_decref(doc);
        return -1;
    }
    size_t i;
    json_t *o;
    json_array_foreach(keys, i, o)
    {
        jwt_key k;
        if (!json_is_object(o) || jwk_parse(o, &k) != 0) {
            (*skipped)++;
            continue;
        }
        if (push(ks, &k) != 0) {
            key_free(&k);
            snprintf(why, why_size, "out of memory");
            jwt_keyset_free(ks);
            json_decref(doc);
            return -1;
        }
    }
    json_decref(doc);
    if (ks->n == 0) {
        snprintf(why, why_size, "no usable key (%zu skipped)", *skipped);
        return -1;
    }
    return 0;
}

int jwt_keyset_from_pem(jwt_keyset *ks, const char *pem, size_t len, char *why, size_t why_size)
{
    memset(ks, 0, sizeof(*ks));
    unsigned char *der = malloc(len + 1);
    jwt_key k;
    memset(&k, 0, sizeof(k));
    k.alg = -1;
    int derlen = der ? wc_PubKeyPemToDer((const unsigned char *)pem, (int)len, der, (int)len) : -1;
    if (derlen <= 0) {
        snprintf(why, why_size, "not a PEM public key (BEGIN PUBLIC KEY)");
        free(der);
        return -1;
    }
    word32 idx = 0;
    RsaKey *rsa = malloc(sizeof(*rsa));
    ecc_key ecc;
    ed25519_key ed;
    int rc = -1;
    if (rsa && wc_InitRsaKey(rsa, NULL) == 0) {
        if (wc_RsaPublicKeyDecode(der, &idx, rsa, (word32)derlen) == 0) {
            word32 nl = 1024, el = 16;
            k.a = malloc(nl);
            k.b = malloc(el);
            if (k.a && k.b && wc_RsaFlattenPublicKey(rsa, k.b, &el, k.a, &nl) == 0) {
                k.kty = JWK_RSA, k.alen = nl, k.blen = el;
                rc = rsa_ok(&k) ? 0 : (snprintf(why, why_size, "RSA key under 2048 bits"), -2);
            }
        }
        wc_FreeRsaKey(rsa);
    }
    free(rsa);
    idx = 0;
    if (rc == -1 && wc_ecc_init(&ecc) == 0) {
        if (wc_EccPublicKeyDecode(der, &idx, &ecc, (word32)derlen) == 0) {
            /* The point is taken from the DER itself, uncompressed only (04||X||Y at
             * the end of the SubjectPublicKeyInfo): wolfSSL's export of a
             * compressed point it decoded writes out of bounds (fuzz_jwks found it). */
            int id = wc_ecc_get_curve_id(ecc.idx);
            int bits = id == ECC_SECP256R1 ? 256 : id == ECC_SECP384R1 ? 384 : 0;
            size_t size = (size_t)bits / 8;
            k.a = malloc(48);
            k.b = malloc(48);
            if (k.a && k.b && bits && (size_t)derlen > 2 * size + 1 && der[derlen - (int)(2 * size) - 1] == 4) {
                memcpy(k.a, der + derlen - 2 * size, size);
                memcpy(k.b, der + derlen - size, size);
                k.kty = JWK_EC, k.alen = size, k.blen = size, k.curve = bits;
                rc = ec_ok(&k) ? 0 : -2;
            }
            if (rc) snprintf(why, why_size, "EC key not an uncompressed point on P-256 or P-384");
            if (rc == -1) rc = -2;
        }
        wc_ecc_free(&ecc);
    }
    idx = 0;
    if (rc == -1 && wc_ed25519_init(&ed) == 0) {
        if (wc_Ed25519PublicKeyDecode(der, &idx, &ed, (word32)derlen) == 0) {
            word32 xl = ED25519_PUB_KEY_SIZE;
            k.a = malloc(xl);
            if (k.a && wc_ed25519_export_public(&ed, k.a, &xl) == 0) k.kty = JWK_OKP, k.alen = xl, rc = 0;
        }
        wc_ed25519_free(&ed);
    }
    free(der);
    if (rc == 0 && push(ks, &k) == 0) return 0;
    if (rc == -1) snprintf(why, why_size, "unsupported public key (RSA, EC P-256/P-384 or Ed25519)");
    key_free(&k);
    return -1;
}

int jwt_keyset_from_secret(jwt_keyset *ks, const unsigned char *s, size_t len)
{
    memset(ks, 0, sizeof(*ks));
    jwt_key k;
    memset(&k, 0, sizeof(k));
    k.alg = -1;
    k.kty = JWK_OCT;
    if (!len || !(k.a = malloc(len))) return -1;
    memcpy(k.a, s, len);
    k.alen = len;
    if (push(ks, &k) != 0) {
        key_free(&k);
        return -1;
    }
    return 0;
}
