/*
 * h1_client.c — the upstream HTTP/1.1 codec: writes the request head and
 * body (re-framed: content-length or chunked), parses the response with
 * llhttp and hands it to the request layer (sk_client_cbs). Informational
 * 1xx responses are dropped; a response the retry policy wants retried is
 * read whole and dropped. Whether a connection may be reused is decided
 * here (clean framing, keep-alive, nothing extra); keeping it is the
 * owner's (upstream/pool.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "h1_client.h"
#include "tls.h"

#define SK_UP_MAX_HEADERS    200
#define SK_UP_MAX_HEAD_BYTES (64 * 1024)

static int on_status(llhttp_t *p, const char *at, size_t n);
static int on_header_field(llhttp_t *p, const char *at, size_t n);
static int on_header_value(llhttp_t *p, const char *at, size_t n);
static int on_headers_complete(llhttp_t *p);
static int on_body(llhttp_t *p, const char *at, size_t n);
static int on_message_complete(llhttp_t *p);

static const llhttp_settings_t resp_settings = {
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_readable(sk_transport *t);
static void on_writable(sk_transport *t);
static void on_connected(sk_transport *t, int err);
static void on_idle_timer(struct ev_loop *loop, ev_timer *t, int revents);

static const sk_transport_cbs up_cbs = {
    .on_readable = on_readable,
    .on_writable = on_writable,
    .on_connected = on_connected,
};

/* Opens a connection (see h1_client.h). */
sk_upconn *sk_upconn_open(sk_wctx *w, const struct sockaddr *sa, socklen_t len, const char *peer,
                          uint64_t connect_timeout_ms, const sk_transport_ops *ops, void *ops_state,
                          const sk_upconn_owner *owner, void *owner_data)
{
    sk_upconn *u = calloc(1, sizeof(*u));
    if (!u) {
        if (ops == &sk_tls_ops) sk_tls_conn_free(ops_state);
        errno = ENOMEM;
        return NULL;
    }
    u->worker = w;
    u->owner = owner;
    u->owner_data = owner_data;
    u->peer = peer;
    sk_list_init(&u->link);
    ev_init(&u->timer, on_idle_timer);
    u->timer.data = u;
    int rc = sk_transport_connect(&u->tr, w->loop, sa, len, connect_timeout_ms, &u->timer, ops, ops_state,
                                  &up_cbs, u);
    if (rc < 0) {
        int e = errno;
        if (!u->tr.ops && ops == &sk_tls_ops) sk_tls_conn_free(ops_state); /* no socket: the transport took nothing */
        free(u);
        errno = e;
        return NULL;
    }
    if (rc == 1) {
        u->connected = true;
        sk_transport_want_read(&u->tr, true);
    }
    return u;
}

/* Closes and frees u. */
void sk_upconn_close(sk_upconn *u)
{
    sk_wctx *w = u->worker;
    ev_timer_stop(w->loop, &u->timer);
    u->owner->closed(u);
    sk_transport_close(&u->tr);
    sk_wctx_buf_put(w, u->rbuf);
    sk_out_free(&u->out);
    free(u);
}

/* Starts a request on u. */
void sk_upconn_attach(sk_upconn *u, sk_msg *m, void *rq, const sk_client_cbs *cbs)
{
    llhttp_init(&u->parser, HTTP_RESPONSE, &resp_settings);
    u->parser.data = u;
    u->req = m;
    u->rq = rq;
    u->cbs = cbs;
    u->got_response_bytes = false;
    u->response_done = false;
    u->reusable = false;
    u->retry_response = false;
    u->filter_reply = false;
    u->req_framing = SK_BODY_NONE;
    m->upstream_bytes_sent = 0;
    u->requests++;
}

/* The request lets go of u. */
void sk_upconn_detach(sk_upconn *u)
{
    u->req = NULL;
    u->rq = NULL;
    u->cbs = NULL;
}

/* Reusable: connected, all written, nothing unread. */
bool sk_upconn_reusable(const sk_upconn *u)
{
    return u->connected && sk_out_pending(&u->out) == 0 && u->rpos == u->rlen;
}

/* Parks u in its pool: its read buffer goes back, a close by the upstream
 * is noticed, idle_ms closes it. */
void sk_upconn_park(sk_upconn *u, uint64_t idle_ms)
{
    sk_wctx_buf_put(u->worker, u->rbuf);
    u->rbuf = NULL;
    u->rpos = u->rlen = 0;
    sk_transport_want_read(&u->tr, true);
    u->timer.repeat = (double)idle_ms / 1000.0;
    ev_timer_again(u->worker->loop, &u->timer);
}

/* Takes u out of its pool for a request. */
void sk_upconn_unpark(sk_upconn *u)
{
    ev_timer_stop(u->worker->loop, &u->timer);
}

/* Fails the request using u (if any); the request layer releases (and so
 * closes) u. Without a request, u just closes. */
static void up_fail(sk_upconn *u, int status, const char *reason, bool retryable)
{
    if (!u->req) {
        sk_upconn_close(u);
        return;
    }
    u->cbs->error(u->rq, status, reason, retryable);
}

/* ---- sk_client_ops ---- */

/* Writes the request line, the given fields and the body framing. */
static int op_send_head(void *h, const sk_out_request *q)
{
    sk_upconn *u = h;
    /* The head lives in the request's arena (queued by reference): nothing
     * per connection. Its size: the request line, the fields, one framing
     * line (at most 38 bytes) and the blank line. */
    size_t mlen = strlen(q->method);
    size_t cap = mlen + 1 + q->path_len + 1 + q->query_len + 11 + 38 + 2;
    for (size_t i = 0; i < q->nhdrs; i++) cap += q->hdrs[i].name_len + q->hdrs[i].value_len + 4;
    char *head = sk_arena_alloc(&u->req->arena, cap), *p = head;
    if (!head) return -1;
    p = sk_put(p, q->method, mlen);
    *p++ = ' ';
    p = sk_put(p, q->path, q->path_len);
    if (q->query) {
        *p++ = '?';
        p = sk_put(p, q->query, q->query_len);
    }
    p = SK_PUT_LIT(p, " HTTP/1.1\r\n");
    for (size_t i = 0; i < q->nhdrs; i++) p = sk_put_header(p, &q->hdrs[i]);
    if (q->framing == SK_BODY_LENGTH) {
        p = SK_PUT_LIT(p, "content-length: ");
        p = sk_put_u64(p, q->length);
        p = SK_PUT_LIT(p, "\r\n");
    } else if (q->framing == SK_BODY_CHUNKED) {
        p = SK_PUT_LIT(p, "transfer-encoding: chunked\r\n");
    } else if (q->method_id == SK_METHOD_POST || q->method_id == SK_METHOD_PUT ||
               q->method_id == SK_METHOD_PATCH) {
        p = SK_PUT_LIT(p, "content-length: 0\r\n");
    }
    p = SK_PUT_LIT(p, "\r\n");
    u->req_framing = q->framing;
    u->head = head;
    u->head_len = (size_t)(p - head);
    return sk_out_ref(&u->out, head, u->head_len) < 0 ? -1 : 0;
}

/* Queues request body bytes, chunk-framed when the body is chunked. */
static int op_send_body(void *h, const void *p, size_t n)
{
    sk_upconn *u = h;
    int rc = 0;
    if (u->req_framing == SK_BODY_CHUNKED) {
        char hdr[24];
        size_t hl = sk_chunk_header(hdr, n);
        rc |= sk_out_copy(&u->out, hdr, hl);
        rc |= sk_out_ref(&u->out, p, n);
        rc |= sk_out_copy(&u->out, "\r\n", 2);
    } else {
        rc |= sk_out_ref(&u->out, p, n);
    }
    return rc ? -1 : 0;
}

/* Ends the request body (the last chunk when chunked). */
static int op_send_end(void *h)
{
    sk_upconn *u = h;
    if (u->req_framing != SK_BODY_CHUNKED) return 0;
    return sk_out_copy(&u->out, "0\r\n\r\n", 5);
}

/* Writes queued request bytes; arms the write for the rest and tells the
 * request layer when the upstream is slower than the client. Returns -1
 * when u failed (and is gone). */
static int op_flush(void *h)
{
    sk_upconn *u = h;
    size_t before = sk_out_pending(&u->out);
    if (sk_out_flush(&u->out, u->connected ? &u->tr : NULL) < 0) {
        up_fail(u, 502, "upstream_reset", !u->got_response_bytes);
        return -1;
    }
    size_t pending = sk_out_pending(&u->out);
    /* what the upstream got of the request: the retry policy never sends a
     * non-idempotent request again once a byte of it went out */
    if (u->req && u->connected) u->req->upstream_bytes_sent += before - pending;
    if (u->connected) sk_transport_want_write(&u->tr, pending > 0);
    if (u->req && pending > SK_HIGH_WATER) u->cbs->congested(u->rq);
    return 0;
}

static void op_pause_read(void *h)
{
    sk_upconn *u = h;
    sk_transport_want_read(&u->tr, false);
}

static void op_resume_read(void *h)
{
    sk_upconn *u = h;
    if (u->connected) sk_transport_want_read(&u->tr, true);
}

const sk_client_ops sk_h1_client_ops = {
    .send_head = op_send_head,
    .send_body = op_send_body,
    .send_end = op_send_end,
    .flush = op_flush,
    .pause_read = op_pause_read,
    .resume_read = op_resume_read,
};

/* ---- response parser callbacks ---- */

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    sk_head *h = &u->req->rhead;
    if (h->raw.len + n > SK_UP_MAX_HEAD_BYTES || sk_buf_append(&h->raw, at, n) < 0) return -1;
    h->url_len += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    return sk_head_field(&u->req->rhead, at, n, SK_UP_MAX_HEADERS, SK_UP_MAX_HEAD_BYTES) ? -1 : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    /* obs-fold (RFC 9112 5.2): llhttp hands the continuation over as another value
     * piece right after the line break; refused, as in requests (h1_server.c). */
    char prev = at > u->rbuf ? at[-1] : u->last_byte;
    if (u->req->rhead.in_value && (prev == '\n' || prev == '\r')) return -1;
    return sk_head_value(&u->req->rhead, at, n, SK_UP_MAX_HEAD_BYTES) ? -1 : 0;
}

static int on_headers_complete(llhttp_t *p)
{
    sk_upconn *u = p->data;
    sk_msg *r = u->req;
    int status = p->status_code;
    if (status >= 100 && status < 200) {
        if (status == 101) return -1; /* never asked for an upgrade */
        /* Informational: dropped; the final response follows. */
        sk_head_reset(&r->rhead);
        return 0;
    }
    bool head = r->method_id == SK_METHOD_HEAD;
    if (u->cbs->retry_status(u->rq, status)) {
        u->retry_response = true; /* read it whole, drop it, try again */
        return head ? 1 : 0;
    }
    bool no_body = head || status == 204 || status == 304;
    bool length = (p->flags & F_CONTENT_LENGTH) != 0;
    int rc = u->cbs->response_head(u->rq, status, no_body, length, p->content_length);
    if (rc < 0) return -1;
    if (rc == 1) {
        u->filter_reply = true; /* a filter answers instead: stop here, see on_readable */
        return HPE_PAUSED;
    }
    return no_body ? 1 : 0; /* 1: tells llhttp there is no body, whatever the headers say */
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    sk_upconn *u = p->data;
    if (u->retry_response) return 0;
    return u->cbs->response_body(u->rq, at, n) < 0 ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    sk_upconn *u = p->data;
    int status = p->status_code;
    if (status >= 100 && status < 200) return 0;
    u->response_done = true;
    return HPE_PAUSED;
}

/* ---- I/O ---- */

/* The response is complete: reusable only when cleanly framed. */
static void finish_response(sk_upconn *u, bool eof)
{
    u->reusable = !eof && llhttp_should_keep_alive(&u->parser) && u->rpos == u->rlen;
    if (u->retry_response)
        u->cbs->retry(u->rq, u->reusable);
    else
        u->cbs->response_end(u->rq, u->reusable); /* may release and free u */
}

static void on_readable(sk_transport *t)
{
    sk_upconn *u = t->data;
    sk_wctx *w = u->worker;
    if (!u->req) {
        /* Idle in the pool: the upstream closed it, or sent something it
         * should not have. Either way it is not reusable. */
        char b[1];
        ssize_t n = sk_transport_read(&u->tr, b, sizeof(b));
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        sk_upconn_close(u);
        return;
    }
    if (!u->rbuf) {
        u->rbuf = sk_wctx_buf_get(w);
        if (!u->rbuf) {
            up_fail(u, 502, "upstream_reset", false);
            return;
        }
        u->rpos = u->rlen = 0;
    }
    ssize_t n = sk_transport_read(&u->tr, u->rbuf, SK_READ_BUF);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    sk_msg *r = u->req;
    if (n <= 0) {
        if (n == 0 && (r->response_started || u->retry_response) && llhttp_message_needs_eof(&u->parser)) {
            /* Body delimited by the connection close. */
            llhttp_finish(&u->parser);
            u->rpos = u->rlen = 0;
            finish_response(u, true);
            return;
        }
        bool retry = !u->got_response_bytes && !r->response_started;
        sk_debug("upstream %s closed the connection%s", u->peer,
                 u->got_response_bytes ? " mid-response" : " before responding");
        up_fail(u, 502, "upstream_reset", retry);
        return;
    }
    if (!u->got_response_bytes) r->upstream_first_byte_ns = sk_now_ns();
    u->got_response_bytes = true;
    u->rpos = 0;
    u->rlen = (size_t)n;
    llhttp_errno_t err = llhttp_execute(&u->parser, u->rbuf, (size_t)n);
    u->last_byte = u->rbuf[n - 1];
    if (err == HPE_PAUSED && u->filter_reply) {
        u->cbs->filter_reply(u->rq); /* releases (closes) u */
        return;
    }
    if (err == HPE_PAUSED) {
        u->rpos = (size_t)(llhttp_get_error_pos(&u->parser) - u->rbuf);
        finish_response(u, false);
        return;
    }
    if (err != HPE_OK) {
        sk_debug("bad response from %s: %s (%s)", u->peer, llhttp_errno_name(err),
                 llhttp_get_error_reason(&u->parser));
        up_fail(u, 502, "upstream_protocol_error", false);
        return;
    }
    u->rpos = u->rlen = 0;
    /* Body pieces reference rbuf: the request layer writes (or copies) them
     * before the next read. */
    int rc = u->cbs->read_done(u->rq);
    if (rc < 0) return; /* the request is gone, and u with it */
    if (rc == 1) sk_transport_want_read(&u->tr, false);
}

static void on_writable(sk_transport *t)
{
    sk_upconn *u = t->data;
    if (op_flush(u) < 0) return;
    if (u->req && sk_out_pending(&u->out) < SK_LOW_WATER) u->cbs->drained(u->rq);
}

static void on_connected(sk_transport *t, int err)
{
    sk_upconn *u = t->data;
    if (err) {
        sk_debug("connect to %s: %s", u->peer, err == ETIMEDOUT ? "timed out" : strerror(err));
        /* the TLS kind refused the peer's identity: nothing was sent; another endpoint may do */
        up_fail(u, 502, err == EACCES ? "upstream_identity_mismatch" : "upstream_connect_failure", true);
        return;
    }
    u->connected = true;
    if (u->req) u->cbs->connected(u->rq);
    sk_transport_want_read(&u->tr, true);
    on_writable(t);
}

static void on_idle_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_upconn_close(t->data); /* idle too long in the pool */
}
