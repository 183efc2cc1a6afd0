/*
 * jwt.h — compact JWS verification and JWK sets for auth.so, on wolfCrypt
 * and jansson. No sidekick header: the fuzz targets link jwt.c alone.
 *
 * Keys hold raw public material (n/e, x/y, x, a secret); a wolfCrypt key is
 * built on the stack of each verification, so one key set serves every
 * worker thread at once without locks (wolfCrypt keys carry state).
 */
#ifndef SK_AUTH_JWT_H
#define SK_AUTH_JWT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum jwt_alg {
    JWT_HS256,
    JWT_HS384,
    JWT_HS512,
    JWT_RS256,
    JWT_RS384,
    JWT_RS512,
    JWT_PS256,
    JWT_PS384,
    JWT_PS512,
    JWT_ES256,
    JWT_ES384,
    JWT_EDDSA,
    JWT_NALGS
};

enum jwt_kty { JWK_OCT = 1, JWK_RSA, JWK_EC, JWK_OKP };

typedef struct jwt_key {
    int kty;
    int alg;              /* a jwt_alg, or -1: any algorithm of the key type */
    char *kid;            /* NULL when none */
    unsigned char *a, *b; /* oct: secret; RSA: n, e; EC: x, y; OKP: x */
    size_t alen, blen;
    int curve; /* EC: 256 or 384 */
} jwt_key;

typedef struct jwt_keyset {
    jwt_key *keys;
    size_t n;
} jwt_keyset;

/* Why a token was refused (also the metric label values, after "ok"). */
enum jwt_err {
    JWT_OK = 0,
    JWT_EMALFORMED, /* not three base64url parts, bad JSON, JWE, crit, ... */
    JWT_EALG,       /* none, unknown, or not in jwt_algorithms */
    JWT_ENOKEY,     /* no key fits the kid / algorithm */
    JWT_ESIGNATURE, /* a key fits, the signature does not verify */
    JWT_EEXPIRED,
    JWT_ENOTYET,
    JWT_EISSUER,
    JWT_EAUDIENCE,
    JWT_ENOEXP, /* exp missing (jwt_require_exp) or not a number */
};
const char *jwt_strerror(int e);

/* "HS256" → JWT_HS256, -1 if unknown ("none" included). */
int jwt_alg_from_name(const char *name, size_t len);
const char *jwt_alg_name(int alg);

/* Base64 decoding into a fresh buffer (*out, *outlen; NUL-terminated).
 * strict: base64url without padding, unused bits zero; otherwise both
 * alphabets and optional padding. 0 or -1. */
int jwt_b64_decode(const char *in, size_t len, int strict, unsigned char **out, size_t *outlen);

/* Parses and verifies a compact JWS: header, signature with a key of ks
 * fitting its kid and alg, allowed by algmask (1 << alg). On JWT_OK,
 * *claims is the payload object (a new reference), *kid_unknown 0. When no
 * key has the header's kid, JWT_ENOKEY with *kid_unknown 1. */
int jwt_verify(const jwt_keyset *ks, const char *tok, size_t len, unsigned algmask, json_t **claims,
               int *kid_unknown);

/* The time claims and iss/aud of a verified payload. aud: NULL-terminated
 * list of accepted audiences or NULL. now: seconds since the epoch. */
int jwt_check_claims(json_t *claims, const char *issuer, char *const *aud, int64_t leeway, int require_exp,
                     int64_t now);

/* Key sets. jwt_keyset_from_jwks parses a JWKS document (keys it cannot use
 * are skipped and counted in *skipped); -1 with why on malformed JSON or no
 * usable key. jwt_keyset_from_pem: one PEM public key (RSA, EC P-256/P-384,
 * Ed25519); jwt_keyset_from_secret: one HMAC secret. */
int jwt_keyset_from_jwks(jwt_keyset *ks, const char *json, size_t len, size_t *skipped, char *why,
                         size_t why_size);
int jwt_keyset_from_pem(jwt_keyset *ks, const char *pem, size_t len, char *why, size_t why_size);
int jwt_keyset_from_secret(jwt_keyset *ks, const unsigned char *s, size_t len);
void jwt_keyset_free(jwt_keyset *ks);

#endif
