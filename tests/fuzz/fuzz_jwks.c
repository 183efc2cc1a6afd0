/*
 * fuzz_jwks.c — libFuzzer target for the JWK set parser of
 * plugins/auth/jwt.c (jwt_keyset_from_jwks), then the PEM key reader on the
 * same bytes. A parsed set has at least one key and each key the material
 * its type needs; anything else aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    jwt_keyset ks;
    char why[200];
    size_t skipped;
    if (jwt_keyset_from_jwks(&ks, (const char *)data, size, &skipped, why, sizeof(why)) == 0) {
        if (ks.n == 0) abort();
        for (size_t i = 0; i < ks.n; i++) {
            const jwt_key *k = &ks.keys[i];
            if (!k->a || !k->alen) abort();
            if ((k->kty == JWK_RSA || k->kty == JWK_EC) && (!k->b || !k->blen)) abort();
            if (k->kty == JWK_EC && k->curve != 256 && k->curve != 384) abort();
        }
        jwt_keyset_free(&ks);
    }
    if (jwt_keyset_from_pem(&ks, (const char *)data, size, why, sizeof(why)) == 0) {
        if (ks.n != 1) abort();
        jwt_keyset_free(&ks);
    }
    return 0;
}
