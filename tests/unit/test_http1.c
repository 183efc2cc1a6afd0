/*
 * test_http1.c — unit tests of header handling: message-head accumulation
 * from split parser pieces (http1.c), its limits and trailers, value
 * trimming, and the upstream request head: the fields proxy.c chooses
 * (hop-by-hop removal, Connection-named headers, x-forwarded-*,
 * x-request-id, rewrite_prefix) as h1_client.c writes them (re-framing).
 * proxy.c is included to reach its statics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/proxy/proxy.c"

#include "check.h"

/* The upstream connection the heads are written to (never connected). */
static sk_upconn test_up;

/* The request head of r as sent upstream: what the HTTP/1 client wrote. */
static sk_buf test_head;
static const sk_buf *uphead(const sk_request *r)
{
    SK_UNUSED(r);
    test_head.data = (char *)test_up.head;
    test_head.off = 0;
    test_head.len = test_head.cap = test_up.head_len;
    return &test_head;
}

/* Works out r's upstream request and writes it as the HTTP/1 client does. */
static int build_upstream_head(sk_request *r)
{
    sk_out_request q;
    test_up.req = &r->msg;
    sk_out_clear(&test_up.out);
    if (build_upstream_request(r, &q) < 0) return -1;
    return sk_h1_client_ops.send_head(&test_up, &q);
}

static bool has(const sk_buf *b, const char *s)
{
    return b->len && memmem(b->data, b->len, s, strlen(s)) != NULL;
}

/* Feeds "name: value" pairs to a head, each split into 1-byte pieces. */
static void feed(sk_head *h, const char *name, const char *value)
{
    for (const char *p = name; *p; p++) CHECK(sk_head_field(h, p, 1, 100, 4096) == 0);
    for (const char *p = value; *p; p++) CHECK(sk_head_value(h, p, 1, 4096) == 0);
}

static void test_head_pieces(void)
{
    sk_head h = {0};
    feed(&h, "Host", "example.com");
    feed(&h, "X-Long", "  a b  ");
    feed(&h, "Empty", "");
    CHECK(h.nhdrs == 3);
    CHECK(sk_head_finish(&h) == 0);
    const sk_header *x = sk_head_get(&h, "host");
    CHECK(x && x->value_len == 11 && memcmp(x->value, "example.com", 11) == 0);
    x = sk_head_get(&h, "x-long");
    CHECK(x && x->value_len == 3 && memcmp(x->value, "a b", 3) == 0); /* trimmed both sides */
    x = sk_head_get(&h, "EMPTY");
    CHECK(x && x->value_len == 0);
    CHECK(sk_head_get(&h, "missing") == NULL);
    CHECK(sk_head_count(&h, "host") == 1);
    /* after the head: trailers are counted, not stored */
    size_t before = h.raw.len;
    CHECK(sk_head_field(&h, "X-Sum", 5, 100, 4096) == 0);
    CHECK(sk_head_value(&h, "1", 1, 4096) == 0);
    CHECK(h.raw.len == before && h.nhdrs == 3);
    CHECK(sk_head_field(&h, "x", 1, 100, 6) == -2); /* trailer bytes bounded too */
    sk_buf_free(&h.raw);
    free(h.offs);
    free(h.views);
}

static void test_head_limits(void)
{
    sk_head h = {0};
    CHECK(sk_head_field(&h, "a", 1, 2, 100) == 0);
    CHECK(sk_head_value(&h, "1", 1, 100) == 0);
    CHECK(sk_head_field(&h, "b", 1, 2, 100) == 0);
    CHECK(sk_head_value(&h, "2", 1, 100) == 0);
    CHECK(sk_head_field(&h, "c", 1, 2, 100) == -1); /* third header with max 2 */
    sk_head g = {0};
    char big[64];
    memset(big, 'v', sizeof(big));
    CHECK(sk_head_field(&g, "n", 1, 10, 40) == 0);
    CHECK(sk_head_value(&g, big, sizeof(big), 40) == -2); /* too many bytes */
    CHECK(sk_head_value(&h, "x", 1, 100) == 0);
    sk_head e = {0};
    CHECK(sk_head_value(&e, "x", 1, 100) == -1); /* a value without a name */
    sk_buf_free(&h.raw);
    free(h.offs);
    sk_buf_free(&g.raw);
    free(g.offs);
}

static void test_status_text(void)
{
    CHECK(strcmp(sk_status_text(200), "OK") == 0);
    CHECK(strcmp(sk_status_text(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(sk_status_text(599), "Server Error") == 0);
}

static void test_skip_header(void)
{
    sk_header conn = {"Connection", 10, "close, X-Foo ,x-bar", 19};
    struct {
        const char *name;
        bool skip;
    } cases[] = {
        {"Connection", true},
        {"keep-alive", true},
        {"TE", true},
        {"Transfer-Encoding", true},
        {"Upgrade", true},
        {"Proxy-Authorization", true},
        {"proxy-connection", true},
        {"Trailer", true},
        {"X-Foo", true},
        {"x-bar", true},
        {"x-foobar", false},
        {"x-fo", false},
        {"Content-Type", false},
        {"Content-Length", true},
        {"Expect", true},
        {"x-request-id", true},
        {"Accept", false},
    };
    for (size_t i = 0; i < SK_ARRAY_LEN(cases); i++) {
        sk_header h = {cases[i].name, strlen(cases[i].name), "v", 1};
        bool got = skip_header(&h, &conn, true);
        if (got != cases[i].skip) fprintf(stderr, "skip_header(%s) = %d\n", cases[i].name, got);
        CHECK(got == cases[i].skip);
    }
    /* responses keep what only requests drop */
    sk_header exp = {"Expect", 6, "x", 1};
    CHECK(!skip_header(&exp, NULL, false));
}

/* Builds the upstream head of a request made of raw header lines. */
static void build(sk_request *r, const char *client_ip, sk_wctx *w, sk_route *rt, const char *path,
                  const char *const *hdrs, size_t n)
{
    memset(r, 0, sizeof(*r));
    r->client_ip = client_ip;
    r->worker = w;
    r->route = rt;
    r->method = "GET";
    r->method_id = SK_METHOD_GET;
    for (size_t i = 0; i < n; i += 2) {
        CHECK(sk_head_field(&r->head, hdrs[i], strlen(hdrs[i]), 100, 8192) == 0);
        CHECK(sk_head_value(&r->head, hdrs[i + 1], strlen(hdrs[i + 1]), 8192) == 0);
    }
    CHECK(sk_head_finish(&r->head) == 0);
    const char *q = strchr(path, '?');
    r->path = path;
    r->path_len = q ? (size_t)(q - path) : strlen(path);
    if (q) {
        r->query = q + 1;
        r->query_len = strlen(q + 1);
    }
    const sk_header *rid = sk_head_get(&r->head, "x-request-id");
    if (rid)
        snprintf(r->request_id, sizeof(r->request_id), "%.*s", (int)rid->value_len, rid->value);
    else
        gen_request_id(w, r->request_id);
    CHECK(build_upstream_head(r) == 0);
}

static void free_req(sk_request *r)
{
    sk_buf_free(&r->head.raw);
    free(r->head.offs);
    free(r->head.views);
    free(r->up_hdrs);
    sk_buf_free(&r->xff);
    sk_arena_free(&r->arena);
}

static void test_upstream_head(void)
{
    sk_wctx w = {.rng = 42};
    const char *client_ip = "10.1.2.3";
    sk_route rt = {.name = "r", .prefix = "/"};
    sk_request r;

    const char *h1[] = {"Host",
                        "svc",
                        "Connection",
                        "keep-alive, X-Secret",
                        "X-Secret",
                        "s",
                        "Keep-Alive",
                        "timeout=5",
                        "TE",
                        "trailers",
                        "Upgrade",
                        "h2c",
                        "Proxy-Authorization",
                        "Basic x",
                        "X-Forwarded-For",
                        "1.1.1.1",
                        "X-Forwarded-Proto",
                        "https",
                        "Accept",
                        "*/*"};
    build(&r, client_ip, &w, &rt, "/a/b?x=1", h1, SK_ARRAY_LEN(h1));
    const sk_buf *b = uphead(&r);
    CHECK(has(b, "GET /a/b?x=1 HTTP/1.1\r\n"));
    CHECK(has(b, "Host: svc\r\n"));
    CHECK(has(b, "Accept: */*\r\n"));
    CHECK(!has(b, "X-Secret") && !has(b, "Keep-Alive") && !has(b, "TE:") && !has(b, "Upgrade") &&
          !has(b, "Proxy-Authorization") && !has(b, "Connection"));
    CHECK(has(b, "x-forwarded-for: 1.1.1.1, 10.1.2.3\r\n"));
    CHECK(has(b, "x-forwarded-proto: http\r\n") && !has(b, "https"));
    CHECK(has(b, "x-request-id: ") && strlen(r.request_id) == 36);
    CHECK(memcmp(b->data + b->len - 4, "\r\n\r\n", 4) == 0);
    CHECK(!has(b, "content-length") && !has(b, "transfer-encoding"));
    free_req(&r);

    /* kept request id, chunked re-framing, rewrite_prefix */
    sk_route rw = {.name = "rw", .prefix = "/api/", .rewrite_prefix = "/"};
    const char *h2[] = {"Host", "svc", "X-Request-Id", "abc-123", "Transfer-Encoding", "chunked"};
    build(&r, client_ip, &w, &rw, "/api/v1/x?q", h2, SK_ARRAY_LEN(h2));
    r.req_framing = SK_BODY_CHUNKED;
    CHECK(build_upstream_head(&r) == 0);
    b = uphead(&r);
    CHECK(has(b, "GET /v1/x?q HTTP/1.1\r\n"));
    CHECK(has(b, "x-request-id: abc-123\r\n"));
    CHECK(has(b, "transfer-encoding: chunked\r\n"));
    CHECK(!has(b, "Transfer-Encoding: chunked"));
    free_req(&r);

    sk_route rw2 = {.name = "rw2", .prefix = "/old", .rewrite_prefix = "/new"};
    const char *h3[] = {"Host", "svc", "Content-Length", "5"};
    build(&r, client_ip, &w, &rw2, "/old/x", h3, SK_ARRAY_LEN(h3));
    r.req_framing = SK_BODY_LENGTH;
    r.req_content_length = 5;
    CHECK(build_upstream_head(&r) == 0);
    CHECK(has(uphead(&r), "GET /new/x HTTP/1.1\r\n"));
    CHECK(has(uphead(&r), "content-length: 5\r\n"));
    CHECK(!has(uphead(&r), "Content-Length: 5"));
    free_req(&r);
}

int main(void)
{
    test_head_pieces();
    test_head_limits();
    test_status_text();
    test_skip_header();
    test_upstream_head();
    sk_out_free(&test_up.out);
    printf("test_http1: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
