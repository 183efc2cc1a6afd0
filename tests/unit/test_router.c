/*
 * test_router.c — unit tests of router.c: route matching (host exact and
 * wildcard, case, prefix and exact path, methods, header conditions, file
 * order) and weighted cluster picking. Routes come from a real config file
 * written to a temporary directory.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "generation.h"

#include "check.h"

static char tmpdir[256];

static sk_config *load(const char *text)
{
    char path[512], *err = NULL;
    snprintf(path, sizeof(path), "%s/r.ini", tmpdir);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    sk_config *c = sk_config_load(path, &err);
    if (!c) fprintf(stderr, "config refused: %s\n", err);
    free(err);
    unlink(path);
    return c;
}

/* A request as the HTTP codec hands it over: nothing is NUL-terminated, so
 * every string is copied into a buffer followed by junk. */
typedef struct req {
    char method[32], host[128], path[256];
    size_t method_len, host_len, path_len;
    sk_header headers[8];
    size_t nheaders;
    char hbuf[8][64];
} req;

static void put(char *dst, size_t cap, size_t *len, const char *s)
{
    *len = strlen(s);
    snprintf(dst, cap, "%sJUNK", s);
}

static const sk_route *match(const sk_listener *l, const char *method, const char *host, const char *path,
                             const char *const *hdrs)
{
    static req r;
    memset(&r, 0, sizeof(r));
    put(r.method, sizeof(r.method), &r.method_len, method);
    put(r.path, sizeof(r.path), &r.path_len, path);
    if (host) put(r.host, sizeof(r.host), &r.host_len, host);
    for (size_t i = 0; hdrs && hdrs[i] && i < 8; i++) {
        /* "Name: value" */
        const char *colon = strchr(hdrs[i], ':');
        snprintf(r.hbuf[i], sizeof(r.hbuf[i]), "%sJUNK", hdrs[i]);
        r.headers[i].name = r.hbuf[i];
        r.headers[i].name_len = (size_t)(colon - hdrs[i]);
        r.headers[i].value = r.hbuf[i] + (colon - hdrs[i]) + 2;
        r.headers[i].value_len = strlen(colon + 2);
        r.nheaders++;
    }
    return sk_route_match(l, r.method, r.method_len, host ? r.host : NULL, r.host_len, r.path, r.path_len,
                          r.headers, r.nheaders);
}

static const char *name_of(const sk_route *r)
{
    return r ? r->name : "(none)";
}

#define MATCH(l, m, h, p, hdrs, want)                                                          \
    do {                                                                                       \
        const char *got_ = name_of(match(l, m, h, p, hdrs));                                   \
        checks++;                                                                              \
        if (strcmp(got_, want) != 0) {                                                         \
            failures++;                                                                        \
            fprintf(stderr, "%s:%d: %s %s %s: got route %s, want %s\n", __FILE__, __LINE__, m, \
                    h ? h : "(no host)", p, got_, want);                                       \
        }                                                                                      \
    } while (0)

static const char conf[] = "[listener in]\n"
                           "address = 127.0.0.1:0\n"
                           "[listener other]\n"
                           "address = 127.0.0.1:0\n"
                           "[route exact-host]\n"
                           "listener = in\n"
                           "host = API.internal\n"
                           "prefix = /api/\n"
                           "respond = 200\n"
                           "[route wildcard]\n"
                           "listener = in\n"
                           "host = *.example.com\n"
                           "respond = 200\n"
                           "[route health]\n"
                           "listener = in\n"
                           "path = /healthz\n"
                           "method = GET, HEAD\n"
                           "respond = 200\n"
                           "[route canary]\n"
                           "listener = in\n"
                           "prefix = /svc\n"
                           "header = X-Canary: 1\n"
                           "header = x-user\n"
                           "respond = 200\n"
                           "[route writes]\n"
                           "listener = in\n"
                           "prefix = /svc\n"
                           "method = POST,PUT\n"
                           "respond = 200\n"
                           "[route svc]\n"
                           "listener = in\n"
                           "prefix = /svc\n"
                           "respond = 200\n"
                           "[route other-only]\n"
                           "listener = other\n"
                           "prefix = /\n"
                           "respond = 200\n";

static void test_match(void)
{
    sk_config *c = load(conf);
    ASSERT(c != NULL);
    const sk_listener *in = c->listeners[0], *other = c->listeners[1];
    ASSERT(in->nroutes == 6 && other->nroutes == 1);

    /* host, exact: any case on the request side */
    MATCH(in, "GET", "api.internal", "/api/users", NULL, "exact-host");
    MATCH(in, "GET", "API.INTERNAL", "/api/", NULL, "exact-host");
    MATCH(in, "GET", "api.internal", "/api", NULL, "(none)");
    MATCH(in, "GET", "api.internal2", "/api/x", NULL, "(none)");
    MATCH(in, "GET", "xapi.internal", "/api/x", NULL, "(none)");
    MATCH(in, "GET", "api", "/api/x", NULL, "(none)");
    MATCH(in, "GET", NULL, "/api/x", NULL, "(none)");
    MATCH(in, "GET", "", "/api/x", NULL, "(none)");

    /* host, wildcard: at least one character before ".suffix" */
    MATCH(in, "GET", "a.example.com", "/", NULL, "wildcard");
    MATCH(in, "GET", "A.B.Example.COM", "/anything", NULL, "wildcard");
    MATCH(in, "DELETE", "www.example.com", "/svc", NULL, "wildcard");
    MATCH(in, "GET", "example.com", "/", NULL, "(none)");
    MATCH(in, "GET", ".example.com", "/", NULL, "(none)");
    MATCH(in, "GET", "badexample.com", "/", NULL, "(none)");
    MATCH(in, "GET", "a.example.com.evil", "/", NULL, "(none)");

    /* exact path and methods (case-sensitive) */
    MATCH(in, "GET", "h", "/healthz", NULL, "health");
    MATCH(in, "HEAD", NULL, "/healthz", NULL, "health");
    MATCH(in, "get", "h", "/healthz", NULL, "(none)");
    MATCH(in, "POST", "h", "/healthz", NULL, "(none)");
    MATCH(in, "GE", "h", "/healthz", NULL, "(none)");
    MATCH(in, "GETS", "h", "/healthz", NULL, "(none)");
    MATCH(in, "GET", "h", "/healthz/", NULL, "(none)");
    MATCH(in, "GET", "h", "/healthz2", NULL, "(none)");
    MATCH(in, "GET", "h", "/health", NULL, "(none)");

    /* headers: names any case, values exact; all conditions must hold */
    const char *const canary[] = {"x-canary: 1", "X-User: bob", NULL};
    const char *const canary_upper[] = {"X-CANARY: 1", "x-user: ", NULL};
    const char *const canary_two[] = {"x-canary: 2", "x-canary: 1", "x-user: a", NULL};
    const char *const canary_wrong[] = {"x-canary: 10", "x-user: a", NULL};
    const char *const canary_case[] = {"x-canary: 1 ", "x-user: a", NULL};
    const char *const canary_only[] = {"x-canary: 1", NULL};
    const char *const user_only[] = {"x-user: a", NULL};
    MATCH(in, "GET", "h", "/svc/a", canary, "canary");
    MATCH(in, "GET", "h", "/svc/a", canary_upper, "canary");
    MATCH(in, "GET", "h", "/svc/a", canary_two, "canary");
    MATCH(in, "GET", "h", "/svc/a", canary_wrong, "svc");
    MATCH(in, "GET", "h", "/svc/a", canary_case, "svc");
    MATCH(in, "GET", "h", "/svc/a", canary_only, "svc");
    MATCH(in, "GET", "h", "/svc/a", user_only, "svc");

    /* order: the first matching route wins */
    MATCH(in, "POST", "h", "/svc/a", canary, "canary");
    MATCH(in, "POST", "h", "/svc/a", NULL, "writes");
    MATCH(in, "PUT", "h", "/svcx", NULL, "writes");
    MATCH(in, "GET", "h", "/svc", NULL, "svc");
    MATCH(in, "GET", "h", "/sv", NULL, "(none)");
    MATCH(in, "GET", "h", "/", NULL, "(none)");
    MATCH(in, "GET", "h", "", NULL, "(none)");

    /* routes of other listeners are not considered */
    MATCH(other, "GET", "api.internal", "/api/users", NULL, "other-only");
    MATCH(other, "BREW", NULL, "/", NULL, "other-only");
    CHECK(sk_route_match(NULL, "GET", 3, NULL, 0, "/", 1, NULL, 0) == NULL);

    sk_config_unref(c);
}

static void test_pick(void)
{
    sk_config *c = load("[listener in]\naddress = 127.0.0.1:0\n"
                        "[route split]\nlistener = in\ncluster = b 10, a 90\n"
                        "[route zero]\nlistener = in\ncluster = a 0, b 3, c 0\n"
                        "[route single]\nlistener = in\ncluster = c\n"
                        "[route local]\nlistener = in\nrespond = 204\n"
                        "[cluster a]\nendpoints = 127.0.0.1:1\n"
                        "[cluster b]\nendpoints = 127.0.0.1:2\n"
                        "[cluster c]\nendpoints = 127.0.0.1:3\n");
    ASSERT(c != NULL);
    const sk_route *split = c->routes[0], *zero = c->routes[1], *single = c->routes[2], *local = c->routes[3];
    sk_cluster *a = c->clusters[0], *b = c->clusters[1], *cc = c->clusters[2];

    /* rnd % total decides, in the order the route names the clusters */
    CHECK(sk_route_pick_cluster(split, 0) == b);
    CHECK(sk_route_pick_cluster(split, 9) == b);
    CHECK(sk_route_pick_cluster(split, 10) == a);
    CHECK(sk_route_pick_cluster(split, 99) == a);
    CHECK(sk_route_pick_cluster(split, 100) == b);
    CHECK(sk_route_pick_cluster(split, UINT32_MAX) == a); /* 4294967295 % 100 = 95 */

    /* every residue once: exactly the weights */
    unsigned na = 0, nb = 0;
    for (uint32_t i = 0; i < 100000; i++) {
        sk_cluster *p = sk_route_pick_cluster(split, i);
        na += p == a;
        nb += p == b;
    }
    CHECK(na == 90000 && nb == 10000);

    /* pseudo-random values: close to the weights */
    uint32_t x = 12345;
    na = nb = 0;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        sk_cluster *p = sk_route_pick_cluster(split, x);
        na += p == a;
        nb += p == b;
    }
    CHECK(na + nb == 200000);
    CHECK(nb > 19000 && nb < 21000);

    /* weight 0 is never picked */
    bool only_b = true;
    for (uint32_t i = 0; i < 1000; i++) only_b = only_b && sk_route_pick_cluster(zero, i) == b;
    CHECK(only_b);
    CHECK(sk_route_pick_cluster(single, 0) == cc && sk_route_pick_cluster(single, 77) == cc);
    CHECK(sk_route_pick_cluster(local, 5) == NULL);
    CHECK(sk_route_pick_cluster(NULL, 5) == NULL);

    sk_config_unref(c);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sk-unit-router-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    test_match();
    test_pick();
    rmdir(tmpdir);
    printf("test_router: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
