/*
 * fuzz_traffic.c — libFuzzer target for what traffic management reads
 * from outside: the active health check's response reader
 * (core/upstream/health.c sk_health_parse_feed, llhttp) and the Cookie
 * lookup of hash_key = cookie:NAME (core/proxy/hashkey.c sk_cookie_find).
 *
 * Byte 0 says how the rest is cut into pieces (1 + byte 0 % 64 bytes each).
 * The rest is fed to the health reader whole and in those pieces: both
 * must agree, a status once found must stay, a found status is final
 * (200..999, never 1xx) and an error is -1 for good; a violation aborts.
 * Then the rest is a cookie name (up to the first newline, at most 64
 * bytes) and a Cookie header value (the remainder): a found value must lie
 * inside the header, hold no ';', and follow "NAME" and "=".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashkey.h"
#include "health.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_traffic: %s\n", what);
    abort();
}

static void check_health(const char *p, size_t n, size_t piece)
{
    sk_health_parse whole, cut;
    sk_health_parse_init(&whole);
    sk_health_parse_init(&cut);
    int a = sk_health_parse_feed(&whole, p, n), b = 0;
    for (size_t off = 0; off < n || n == 0; off += piece) {
        size_t k = n - off < piece ? n - off : piece;
        int r = sk_health_parse_feed(&cut, p + off, k);
        if (b > 0 && r != b) fail("a status changed");
        if (b < 0 && r >= 0) fail("an error went away");
        b = r;
        if (b != 0 || n == 0) break;
    }
    if (a != b) fail("whole and cut disagree");
    if (a > 0 && (a < 200 || a > 999)) fail("a non-final status came out");
    if (a > 0 && sk_health_parse_feed(&whole, "x", 1) != a) fail("the status did not stay");
}

static void check_cookie(const char *p, size_t n)
{
    const char *nl = memchr(p, '\n', n);
    size_t nlen = nl ? (size_t)(nl - p) : 0;
    if (nlen > 64) nlen = 64;
    char name[65];
    memcpy(name, p, nlen);
    name[nlen] = 0;
    const char *v = nl ? nl + 1 : p;
    size_t vn = nl ? n - (size_t)(v - p) : n;
    const char *val = NULL;
    size_t vlen = 0;
    if (!sk_cookie_find(v, vn, name, nlen, &val, &vlen)) return;
    if (nlen == 0) fail("an empty name was found");
    if (val < v || val + vlen > v + vn) fail("value outside the header");
    if (memchr(val, ';', vlen)) fail("value holds ';'");
    const char *q = val;
    while (q > v && (q[-1] == ' ' || q[-1] == '\t')) q--;
    if (q == v || q[-1] != '=') fail("value not after '='");
    q--;
    while (q > v && (q[-1] == ' ' || q[-1] == '\t')) q--;
    if ((size_t)(q - v) < nlen || memcmp(q - nlen, name, nlen) != 0) fail("value not after its name");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t piece = 1 + data[0] % 64;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    check_health(p, n, piece);
    check_cookie(p, n);
    return 0;
}
