/*
 * fuzz_normalize.c — libFuzzer target for core/http/normalize.c. Byte 0
 * chooses the flags (merge_slashes, escaped_slashes reject/keep/decode); the
 * rest is a request path. For every accepted path the invariants of
 * normalize.h are checked, and a violation aborts:
 *   - the result is never longer than the input and starts with "/";
 *   - an already-normal input comes back as the same pointer;
 *   - it is a fixed point: normalising it again gives it back unchanged
 *     (and sk_path_is_normal agrees when it has no "%");
 *   - it has no "." or ".." segment (so never "/./" or "/../"), no "//"
 *     when merging, no "%00", no "%2F" unless the policy is keep, and every
 *     "%" starts an upper-case escape of a reserved or non-ASCII byte.
 * The rest of the input is also checked as an authority (Host): an accepted
 * one has none of the characters RFC 3986 leaves out of a host.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normalize.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *in, size_t n)
{
    fprintf(stderr, "fuzz_normalize: %s for input '%.*s'\n", what, (int)n, in);
    abort();
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1; /* lower case is not canonical */
}

static bool unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static void check_result(const char *in, size_t n, unsigned flags, const char *res, size_t rl)
{
    if (rl > n) fail("longer output", in, n);
    if (rl == 0 || res[0] != '/') fail("output does not start with /", in, n);
    for (size_t i = 0; i < rl; i++) {
        if (res[i] == '/') {
            size_t e = i + 1;
            while (e < rl && res[e] != '/') e++;
            size_t l = e - i - 1;
            if ((l == 1 && res[i + 1] == '.') || (l == 2 && res[i + 1] == '.' && res[i + 2] == '.'))
                fail("dot segment left", in, n);
            if ((flags & SK_PATH_MERGE_SLASHES) && l == 0 && e < rl) fail("// left while merging", in, n);
        } else if (res[i] == '%') {
            if (i + 2 >= rl || hexval(res[i + 1]) < 0 || hexval(res[i + 2]) < 0)
                fail("bad escape left", in, n);
            int v = hexval(res[i + 1]) << 4 | hexval(res[i + 2]);
            if (v == 0) fail("%00 left", in, n);
            if (unreserved(v)) fail("unreserved escape left", in, n);
            if (v == '/' && !(flags & SK_PATH_KEEP_SLASHES)) fail("%2F left", in, n);
        }
    }
    char *copy = malloc(rl ? rl : 1), *buf = malloc(rl ? rl : 1);
    if (!copy || !buf) abort();
    memcpy(copy, res, rl);
    const char *r2 = NULL;
    size_t l2 = 0;
    if (sk_path_normalize(copy, rl, flags, buf, &r2, &l2) != 0) fail("output refused", in, n);
    if (l2 != rl || memcmp(r2, copy, rl) != 0) fail("not idempotent", in, n);
    if (!memchr(copy, '%', rl) && !sk_path_is_normal(copy, rl, flags))
        fail("normal output not seen as normal", in, n);
    free(copy);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    static const unsigned slash[] = {0, SK_PATH_KEEP_SLASHES, SK_PATH_DECODE_SLASHES, 0};
    unsigned flags = ((data[0] & 1) ? SK_PATH_MERGE_SLASHES : 0) | slash[(data[0] >> 1) & 3];
    size_t n = size - 1;
    /* an exact-size heap copy, so that ASan sees any read past the end */
    char *in = malloc(n ? n : 1), *out = malloc(n ? n : 1);
    if (!in || !out) abort();
    memcpy(in, data + 1, n);

    const char *res = NULL;
    size_t rl = 0;
    int rc = sk_path_normalize(in, n, flags, out, &res, &rl);
    if (rc == 0) {
        if (res != in && res != out) fail("result points elsewhere", in, n);
        if (sk_path_is_normal(in, n, flags) && (res != in || rl != n)) fail("normal path changed", in, n);
        check_result(in, n, flags, res, rl);
    } else if (rc > 0 || sk_path_strerror(rc) == NULL) {
        fail("bad return", in, n);
    }

    const char *h = NULL;
    size_t hl = 0;
    if (sk_authority_parse(in, n, &h, &hl) == 0) {
        if (hl == 0 || h < in || h + hl > in + n) fail("bad host range", in, n);
        for (size_t i = 0; i < n; i++)
            if (strchr(" /?#@\\\"<>{}|^`", in[i]) || (unsigned char)in[i] < 0x21 ||
                (unsigned char)in[i] > 0x7e)
                fail("authority with a forbidden byte accepted", in, n);
    }
    free(in);
    free(out);
    return 0;
}
