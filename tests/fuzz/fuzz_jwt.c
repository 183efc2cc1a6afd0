/*
 * fuzz_jwt.c — libFuzzer target for plugins/auth/jwt.c: the input is a
 * compact JWS, verified against a fixed key set (an HS secret, a P-256, an
 * Ed25519 and an RS256 key; the seeds in corpus/jwt/ are signed with them, so
 * the fuzzer gets past the signatures into the claims). Also decodes the
 * input as base64 both strictly and leniently. A verified token must hold a
 * JSON object of claims; anything else aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char jwks[] =
    "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"hs\", \"k\": \"ZnV6ei1zZWNyZXQtZnV6ei1zZWNyZXQtZnV6ei1"
    "zZWNyZXQtZnV6ei1zZWNyZXQtZnV6ei1zZWNyZXQtMDEyMw\"}, {\"kty\": \"EC\", \"crv\": \"P-256\", \"x\":"
    " \"1RAtypClWCQxWvFjT9Rs90IS4f2kxv9KlvJMXm_AIxc\", \"y\": \"q9mkacW7ysC86NEY1eNwBSpd-SU0Uccv1FgAy"
    "z-D7TQ\", \"kid\": \"ec\"}, {\"kty\": \"OKP\", \"crv\": \"Ed25519\", \"x\": \"lOdg-Bu1tzvd9dghfl"
    "NGNbBeDutMQCthzn9gk7I2fNY\", \"kid\": \"ed\"}, {\"kty\": \"RSA\", \"n\": \"ANkzEhz6cPv_puNZhfVVf"
    "qSSa0VVAGH8x5cI299zpMjmYjDJeqkmaiL9lmBkWVtqlLrDvUMa476pnb0mtL3FhzXtKAX5Uocg5ThDBI1S7wPQlP1heGSkZ"
    "sbwb056VhvqYclxcHMYuZVo9PfBQui-_B2LFSrGQrm08DX6L1JpTOaRclbgraIWIsMODjyjZN8UajKYH9M1LScI_IrpKxg3e"
    "sXw5CQOvn5CpdTK9KaG1Q9SQro80hUvb6-g4SUSSktTRFfa8JMFteNeshxb9Nq-nLTfkT1HqHrZ7xhPcfQRkfzvAJgQjWkX6"
    "84mGjAAvZRwAb5hrB6tvLNQKrJ9YmcRopc\", \"e\": \"AQAB\", \"kid\": \"rsa\", \"alg\": \"RS256\"}]}";

static jwt_keyset keys;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char why[200];
    size_t skipped;
    (void)argc, (void)argv;
    if (jwt_keyset_from_jwks(&keys, jwks, sizeof(jwks) - 1, &skipped, why, sizeof(why)) != 0 || keys.n != 4) {
        fprintf(stderr, "fuzz_jwt: key set: %s\n", why);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!keys.n) LLVMFuzzerInitialize(NULL, NULL);
    for (int strict = 0; strict < 2; strict++) {
        unsigned char *out;
        size_t n;
        if (jwt_b64_decode((const char *)data, size, strict, &out, &n) == 0) {
            if (n > size) abort();
            free(out);
        }
    }
    json_t *claims;
    int kid_unknown;
    int rc = jwt_verify(&keys, (const char *)data, size, (1u << JWT_NALGS) - 1, &claims, &kid_unknown);
    if (rc == JWT_OK) {
        if (!json_is_object(claims)) abort();
        char *aud[] = {"api", "web", NULL};
        (void)jwt_check_claims(claims, "https://id.test", aud, 60, 1, 1700000000);
        (void)jwt_check_claims(claims, NULL, NULL, 0, 0, 1700000000);
        json_decref(claims);
    } else if (claims) {
        abort();
    }
    return 0;
}
