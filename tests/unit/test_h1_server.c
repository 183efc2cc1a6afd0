/*
 * test_h1_server.c — the HTTP/1 server codec's trailers (send_trailers of
 * the codec seam, codec.h): a chunked body ends with a trailer section; with
 * a content-length or no body there is nowhere to put them, nothing is
 * written; a send_end after them writes nothing. The connection is made by
 * hand (never accepted): the bytes stay in its write queue.
 */
#include <string.h>

#include "h1_server.h"

#include "check.h"

static sk_buf written(sk_conn *c)
{
    CHECK(sk_out_detach(&c->out) == 0);
    return c->out.backlog;
}

static void test_chunked_trailers(void)
{
    sk_conn c;
    sk_msg m;
    memset(&c, 0, sizeof(c));
    memset(&m, 0, sizeof(m));
    c.req = &m;
    c.resp_framing = SK_BODY_CHUNKED;
    const sk_header t[2] = {{"grpc-status", 11, "0", 1}, {"grpc-message", 12, "ok", 2}};
    CHECK(sk_h1_server_ops.send_trailers(&c, t, 2) == 0);
    CHECK(sk_h1_server_ops.send_end(&c) == 0); /* after trailers: nothing more */
    sk_buf b = written(&c);
    static const char want[] = "0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n";
    CHECK(b.len - b.off == sizeof(want) - 1 && memcmp(b.data + b.off, want, sizeof(want) - 1) == 0);
    CHECK(m.bytes_sent == sizeof(want) - 1);
    sk_out_free(&c.out);
}

static void test_trailers_without_chunking_are_dropped(void)
{
    for (int framing = SK_BODY_NONE; framing <= SK_BODY_EOF; framing++) {
        if (framing == SK_BODY_CHUNKED) continue;
        sk_conn c;
        sk_msg m;
        memset(&c, 0, sizeof(c));
        memset(&m, 0, sizeof(m));
        c.req = &m;
        c.resp_framing = framing;
        const sk_header t[1] = {{"x-t", 3, "1", 1}};
        CHECK(sk_h1_server_ops.send_trailers(&c, t, 1) == 0);
        sk_buf b = written(&c);
        CHECK(b.len == b.off);
        CHECK(m.bytes_sent == 0);
        sk_out_free(&c.out);
    }
}

static void test_no_trailers_is_the_last_chunk(void)
{
    sk_conn c;
    sk_msg m;
    memset(&c, 0, sizeof(c));
    memset(&m, 0, sizeof(m));
    c.req = &m;
    c.resp_framing = SK_BODY_CHUNKED;
    CHECK(sk_h1_server_ops.send_trailers(&c, NULL, 0) == 0);
    sk_buf b = written(&c);
    CHECK(b.len - b.off == 5 && memcmp(b.data + b.off, "0\r\n\r\n", 5) == 0);
    sk_out_free(&c.out);
}

int main(void)
{
    test_chunked_trailers();
    test_trailers_without_chunking_are_dropped();
    test_no_trailers_is_the_last_chunk();
    printf("test_h1_server: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
