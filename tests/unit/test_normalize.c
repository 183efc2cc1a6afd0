/*
 * test_normalize.c — unit tests of normalize.c: path normalisation (RFC 3986
 * §5.2.4 dot segments in the style of the §5.4 examples, percent-decoding of
 * unreserved characters, slash merging, every escaped-slash policy, every
 * refusal, the no-copy fast path, idempotence) and authority validation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normalize.h"

#include "check.h"

#define M  SK_PATH_MERGE_SLASHES
#define K  SK_PATH_KEEP_SLASHES
#define D  SK_PATH_DECODE_SLASHES
#define MK (SK_PATH_MERGE_SLASHES | SK_PATH_KEEP_SLASHES)
#define MD (SK_PATH_MERGE_SLASHES | SK_PATH_DECODE_SLASHES)

static const struct {
    const char *in;
    unsigned flags;
    int rc;
    const char *out; /* expected result when rc == 0 */
} cases[] = {
    /* already normal: unchanged */
    {"/", 0, 0, "/"},
    {"/a/b/c", 0, 0, "/a/b/c"},
    {"/a/b/", 0, 0, "/a/b/"},
    {"/a.b/.c/..d/d../...", 0, 0, "/a.b/.c/..d/d../..."},
    {"/a//b", 0, 0, "/a//b"}, /* no merging by default */
    {"//admin", 0, 0, "//admin"},
    /* RFC 3986 §5.2.4 / §5.4 style dot-segment removal */
    {"/a/b/c/./../../g", 0, 0, "/a/g"},
    {"/mid/content=5/../6", 0, 0, "/mid/6"},
    {"/b/c/./g", 0, 0, "/b/c/g"},
    {"/b/c/g/.", 0, 0, "/b/c/g/"},
    {"/b/c/.", 0, 0, "/b/c/"},
    {"/b/c/./", 0, 0, "/b/c/"},
    {"/b/c/..", 0, 0, "/b/"},
    {"/b/c/../", 0, 0, "/b/"},
    {"/b/c/../g", 0, 0, "/b/g"},
    {"/b/c/../..", 0, 0, "/"},
    {"/b/c/../../", 0, 0, "/"},
    {"/b/c/../../g", 0, 0, "/g"},
    {"/.", 0, 0, "/"},
    {"/./", 0, 0, "/"},
    {"/./a", 0, 0, "/a"},
    {"/./admin/x", 0, 0, "/admin/x"},
    {"/public/../admin", 0, 0, "/admin"},
    {"/a/./b/./c/.", 0, 0, "/a/b/c/"},
    {"/a//../b", 0, 0, "/a/b"}, /* ".." removes the empty segment */
    {"/a/.//b", 0, 0, "/a//b"},
    /* percent-decoding: unreserved only, the rest upper-cased */
    {"/%7euser", 0, 0, "/~user"},
    {"/%7Euser", 0, 0, "/~user"},
    {"/%41%62%2D%2e%5F%7E%30", 0, 0, "/Ab-._~0"},
    {"/a%20b", 0, 0, "/a%20b"},
    {"/a%c3%a9", 0, 0, "/a%C3%A9"},
    {"/a%3Fb", 0, 0, "/a%3Fb"}, /* an encoded "?" is not the query */
    {"/%25", 0, 0, "/%25"},
    {"/%252e%252e/x", 0, 0, "/%252e%252e/x"}, /* no double decoding */
    {"/%2e%2e/admin", 0, SK_PATH_EABOVE, NULL},
    {"/public/%2E%2E/admin", 0, 0, "/admin"},
    {"/public/%2e./admin", 0, 0, "/admin"},
    {"/public/.%2e/admin", 0, 0, "/admin"},
    {"/%2e/admin", 0, 0, "/admin"},
    {"/a/%2E", 0, 0, "/a/"},
    {"/a.%2e/x", 0, 0, "/a../x"},
    /* merge_slashes */
    {"//admin", M, 0, "/admin"},
    {"/a//b///c", M, 0, "/a/b/c"},
    {"/a//", M, 0, "/a/"},
    {"//", M, 0, "/"},
    {"///", M, 0, "/"},
    {"/a//../b", M, 0, "/b"}, /* merged first, then ".." */
    {"//..//admin", M, SK_PATH_EABOVE, NULL},
    {"/x//.//admin", M, 0, "/x/admin"},
    /* escaped slashes: reject (default), keep, decode */
    {"/a%2Fb", 0, SK_PATH_ESLASH, NULL},
    {"/a%2fb", 0, SK_PATH_ESLASH, NULL},
    {"/a%2Fb", M, SK_PATH_ESLASH, NULL},
    {"/a%2Fb", K, 0, "/a%2Fb"},
    {"/a%2fb", K, 0, "/a%2Fb"},
    {"/a/..%2F..%2Fadmin", K, 0, "/a/..%2F..%2Fadmin"}, /* one segment */
    {"/a%2F..%2Fb", K, 0, "/a%2F..%2Fb"},
    {"/x/%2F%2Fb", MK, 0, "/x/%2F%2Fb"},
    {"/a%2Fb", D, 0, "/a/b"},
    {"/a%2fb", D, 0, "/a/b"},
    {"/a%2F..%2Fadmin", D, 0, "/admin"},
    {"/x%2F%2Fadmin", D, 0, "/x//admin"},
    {"/x%2F%2Fadmin", MD, 0, "/x/admin"},
    {"/%2F", D, 0, "//"},
    {"/%2F..%2F..", D, SK_PATH_EABOVE, NULL},
    /* refusals */
    {"", 0, SK_PATH_ENOTABS, NULL},
    {"a/b", 0, SK_PATH_ENOTABS, NULL},
    {"*", 0, SK_PATH_ENOTABS, NULL},
    {"/a%00b", 0, SK_PATH_ENUL, NULL},
    {"/a%00b", D, SK_PATH_ENUL, NULL},
    {"/a%00b", K, SK_PATH_ENUL, NULL},
    {"/%", 0, SK_PATH_EPERCENT, NULL},
    {"/%4", 0, SK_PATH_EPERCENT, NULL},
    {"/%4g", 0, SK_PATH_EPERCENT, NULL},
    {"/%g4", 0, SK_PATH_EPERCENT, NULL},
    {"/a%", 0, SK_PATH_EPERCENT, NULL},
    {"/a%2", D, SK_PATH_EPERCENT, NULL},
    {"/%%41", 0, SK_PATH_EPERCENT, NULL},
    {"/..", 0, SK_PATH_EABOVE, NULL},
    {"/../", 0, SK_PATH_EABOVE, NULL},
    {"/../a", 0, SK_PATH_EABOVE, NULL},
    {"/a/../..", 0, SK_PATH_EABOVE, NULL},
    {"/a/../../b", 0, SK_PATH_EABOVE, NULL},
    {"/./..", 0, SK_PATH_EABOVE, NULL},
    {"/a/./../../", 0, SK_PATH_EABOVE, NULL},
    {"/..", M, SK_PATH_EABOVE, NULL},
};

/* The result has no "." or ".." segment (and no "//" when merging). */
static bool clean(const char *p, size_t n, unsigned flags)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '/') continue;
        size_t e = i + 1;
        while (e < n && p[e] != '/') e++;
        size_t l = e - i - 1;
        if ((l == 1 && p[i + 1] == '.') || (l == 2 && p[i + 1] == '.' && p[i + 2] == '.')) return false;
        if ((flags & M) && l == 0 && e < n) return false;
    }
    return true;
}

static void test_table(void)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *in = cases[i].in;
        size_t n = strlen(in);
        char *buf = malloc(n + 1);
        const char *res = NULL;
        size_t rl = 0;
        int rc = sk_path_normalize(in, n, cases[i].flags, buf, &res, &rl);
        checks++;
        if (rc != cases[i].rc ||
            (rc == 0 && (rl != strlen(cases[i].out) || memcmp(res, cases[i].out, rl) != 0))) {
            failures++;
            fprintf(stderr, "case %zu '%s' flags %u: rc %d '%.*s', want rc %d '%s'\n", i, in, cases[i].flags,
                    rc, rc == 0 ? (int)rl : 0, rc == 0 ? res : "", cases[i].rc,
                    cases[i].out ? cases[i].out : "");
        }
        if (rc == 0) {
            CHECK(rl <= n);
            CHECK(rl >= 1 && res[0] == '/');
            /* a fixed point: normalising the result again gives it back, without a copy */
            char *again = malloc(rl + 1);
            memcpy(again, res, rl);
            again[rl] = '\0';
            const char *r2 = NULL;
            size_t l2 = 0;
            char *b2 = malloc(rl + 1);
            CHECK(sk_path_normalize(again, rl, cases[i].flags, b2, &r2, &l2) == 0);
            CHECK(l2 == rl && memcmp(r2, again, rl) == 0);
            CHECK(clean(again, rl, cases[i].flags));
            free(b2);
            free(again);
        }
        free(buf);
    }
}

/* A path that needs no change is handed back as is: no byte written to out. */
static void test_fast_path(void)
{
    static const char *const normal[] = {"/",    "/a/b",  "/a.b/c.d/", "/.well-known/x",
                                         "/a..", "/..a/", "/a//b"};
    for (size_t i = 0; i < sizeof(normal) / sizeof(normal[0]); i++) {
        const char *p = normal[i];
        size_t n = strlen(p);
        CHECK(sk_path_is_normal(p, n, 0));
        char out[32];
        memset(out, 'Z', sizeof(out));
        const char *res = NULL;
        size_t rl = 0;
        CHECK(sk_path_normalize(p, n, 0, out, &res, &rl) == 0);
        CHECK(res == p && rl == n);
        CHECK(out[0] == 'Z');
        CHECK(sk_path_normalize(p, n, 0, NULL, &res, &rl) == 0 && res == p); /* out may be NULL then */
    }
    CHECK(!sk_path_is_normal("/a//b", 5, M));
    CHECK(!sk_path_is_normal("/a%41", 5, 0));
    CHECK(!sk_path_is_normal("/a/.", 4, 0));
    CHECK(!sk_path_is_normal("/./a", 4, 0));
    CHECK(!sk_path_is_normal("/a/../b", 7, 0));
    CHECK(!sk_path_is_normal("", 0, 0));
    CHECK(!sk_path_is_normal("a", 1, 0));
    /* a path that changes is written to out */
    char out[16];
    const char *res = NULL;
    size_t rl = 0;
    CHECK(sk_path_normalize("/a/../b", 7, 0, out, &res, &rl) == 0);
    CHECK(res == out && rl == 2 && memcmp(out, "/b", 2) == 0);
    /* the input is a byte range: no NUL needed, bytes after it are not read */
    CHECK(sk_path_normalize("/a/..XYZ", 5, 0, out, &res, &rl) == 0);
    CHECK(rl == 1 && res[0] == '/');
    /* a refusal leaves the results alone */
    res = "keep";
    rl = 4;
    CHECK(sk_path_normalize("/..", 3, 0, out, &res, &rl) == SK_PATH_EABOVE);
    CHECK(strcmp(res, "keep") == 0 && rl == 4);
}

static void test_strerror(void)
{
    CHECK(strstr(sk_path_strerror(SK_PATH_ENUL), "%00") != NULL);
    CHECK(strstr(sk_path_strerror(SK_PATH_ESLASH), "slash") != NULL);
    CHECK(strstr(sk_path_strerror(SK_PATH_EABOVE), "above") != NULL);
    CHECK(strstr(sk_path_strerror(SK_PATH_EPERCENT), "percent") != NULL);
    CHECK(strstr(sk_path_strerror(SK_PATH_ENOTABS), "/") != NULL);
    CHECK(sk_path_strerror(-99) != NULL);
}

static const struct {
    const char *in;
    int rc;
    const char *host; /* expected host part when rc == 0 */
} authorities[] = {
    {"example.test", 0, "example.test"},
    {"Example.TEST:8080", 0, "Example.TEST"},
    {"a-b_c~d.e", 0, "a-b_c~d.e"},
    {"127.0.0.1", 0, "127.0.0.1"},
    {"127.0.0.1:80", 0, "127.0.0.1"},
    {"x:0", 0, "x"},
    {"x:65535", 0, "x"},
    {"ex%41mple", 0, "ex%41mple"},
    {"a!$&'()*+,;=b", 0, "a!$&'()*+,;=b"},
    {"[::1]", 0, "::1"},
    {"[::1]:8080", 0, "::1"},
    {"[2001:db8::7]:1", 0, "2001:db8::7"},
    {"[::ffff:1.2.3.4]", 0, "::ffff:1.2.3.4"},
    {"[v1.fe80::a+en1]", 0, "v1.fe80::a+en1"},
    {"", -1, NULL},
    {":80", -1, NULL},
    {"x:", -1, NULL},
    {"x:65536", -1, NULL},
    {"x:123456", -1, NULL},
    {"x:8a", -1, NULL},
    {"x:-1", -1, NULL},
    {"x:80:80", -1, NULL},
    {"exa mple.test", -1, NULL},
    {"a/b", -1, NULL},
    {"a?b", -1, NULL},
    {"a#b", -1, NULL},
    {"user@host", -1, NULL},
    {"a\tb", -1, NULL},
    {"a\"b", -1, NULL},
    {"a<b", -1, NULL},
    {"a\\b", -1, NULL},
    {"h\xc3\xa9", -1, NULL},
    {"ex%4", -1, NULL},
    {"ex%zz", -1, NULL},
    {"[::1", -1, NULL},
    {"[]", -1, NULL},
    {"[::1]x", -1, NULL},
    {"[::1]:", -1, NULL},
    {"[1.2.3.4]", -1, NULL},
    {"[::1%25eth0]", -1, NULL},
    {"[v1.]", -1, NULL},
    {"[v.x]", -1, NULL},
    {"[fe80::1::2]", -1, NULL},
    {"::1", -1, NULL},
};

static void test_authority(void)
{
    for (size_t i = 0; i < sizeof(authorities) / sizeof(authorities[0]); i++) {
        const char *in = authorities[i].in;
        const char *h = NULL;
        size_t hl = 0;
        int rc = sk_authority_parse(in, strlen(in), &h, &hl);
        checks++;
        if (rc != authorities[i].rc ||
            (rc == 0 && (hl != strlen(authorities[i].host) || memcmp(h, authorities[i].host, hl) != 0))) {
            failures++;
            fprintf(stderr, "authority %zu '%s': rc %d, want %d\n", i, in, rc, authorities[i].rc);
        }
        CHECK(sk_authority_parse(in, strlen(in), NULL, NULL) == authorities[i].rc);
    }
    /* a NUL inside an IP-literal (inet_pton would stop there; found by fuzz_normalize) */
    CHECK(sk_authority_parse("[::\0\0001]:80", 10, NULL, NULL) == -1);
    CHECK(sk_authority_parse("a\0b", 3, NULL, NULL) == -1);
    /* a byte range: what follows is not looked at */
    CHECK(sk_authority_parse("a.b/x", 3, NULL, NULL) == 0);
}

int main(void)
{
    test_table();
    test_fast_path();
    test_strerror();
    test_authority();
    printf("test_normalize: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
