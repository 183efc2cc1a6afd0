/*
 * h1_server.c — the downstream HTTP/1.1 codec: takes a client connection,
 * parses requests with llhttp, enforces the listener's limits and timeouts,
 * writes responses (status line, framing, Connection, 100 Continue, local
 * replies), handles keep-alive and pipelining (one request at a time, in
 * order). What happens to a parsed request is the request layer's business:
 * it hears of it through sk_server_cbs and answers through sk_h1_server_ops.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include "h1_server.h"
#include "h2_server.h"
#include "metrics.h"
#include "normalize.h"
#include "tls.h"

static int on_message_begin(llhttp_t *p);
static int on_url(llhttp_t *p, const char *at, size_t n);
static int on_header_field(llhttp_t *p, const char *at, size_t n);
static int on_header_value(llhttp_t *p, const char *at, size_t n);
static int on_headers_complete(llhttp_t *p);
static int on_body(llhttp_t *p, const char *at, size_t n);
static int on_message_complete(llhttp_t *p);

static const llhttp_settings_t req_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_readable(sk_transport *t);
static void on_writable(sk_transport *t);

static const sk_transport_cbs conn_cbs = {.on_readable = on_readable, .on_writable = on_writable};
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents);
static void finish_request(sk_conn *c);
static int bad_request(sk_conn *c, int status);
static void conn_flush(sk_conn *c);
static void conn_pause_read(sk_conn *c);
static void conn_response_done(sk_conn *c);

/* ---- connection life ---- */

/* The peer's text for a log line (a compound literal buffer per use). */
#define PEER(c) peer_text(c, (char[64]){0}, 64)

/* The peer as "ip:port" ("[ip]:port" for IPv6) in buf (at least 64 bytes). */
static const char *peer_text(const sk_conn *c, char *buf, size_t n)
{
    snprintf(buf, n, c->client_v6 ? "[%s]:%u" : "%s:%u", c->client_ip, (unsigned)c->client_port);
    return buf;
}

/* Starts a request on c through the request layer; NULL on OOM. */
static void *begin_request(sk_conn *c)
{
    char addr[64];
    const sk_conn_info ci = {
        .wctx = c->worker,
        .config = c->config,
        .listener = c->listener,
        .client_ip = c->client_ip,
        .client_addr = peer_text(c, addr, sizeof(addr)),
        .peer_identity = c->tr.peer_identity,
        .secure = c->tr.ops == &sk_tls_ops,
    };
    return c->cbs->begin(c, &sk_h1_server_ops, &ci, &c->req);
}

static void set_timer(sk_conn *c, uint64_t ms)
{
    if (ms == 0) {
        ev_timer_stop(c->worker->loop, &c->timer);
        return;
    }
    c->timer.repeat = (double)ms / 1000.0;
    ev_timer_again(c->worker->loop, &c->timer);
}

/* Takes over an accepted, non-blocking socket fd (see h1_server.h). */
sk_conn *sk_conn_accept(sk_wctx *w, const sk_conn_owner *owner, const sk_server_cbs *cbs,
                        const sk_listener *l, sk_config *cfg, int fd, const struct sockaddr *sa)
{
    sk_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        sk_error("out of memory accepting a connection");
        close(fd);
        return NULL;
    }
    c->worker = w;
    c->owner = owner;
    c->cbs = cbs;
    c->listener = l;
    c->config = cfg;
    sk_config_ref(cfg);
    sk_list_init(&c->link);
    if (l->tls) { /* the slot's context in force now; rotation does not touch this connection */
        void *tls = sk_tls_slot_conn(l->tls->state, true, fd, w->metrics);
        if (!tls) {
            sk_error("out of memory accepting a TLS connection");
            close(fd);
            sk_config_unref(cfg);
            free(c);
            return NULL;
        }
        sk_transport_accept(&c->tr, w->loop, fd, &sk_tls_ops, tls, &conn_cbs, c);
    } else {
        sk_transport_accept(&c->tr, w->loop, fd, NULL, NULL, &conn_cbs, c);
    }
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, c->client_ip, sizeof(c->client_ip));
        c->client_port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, c->client_ip, sizeof(c->client_ip));
        c->client_port = ntohs(in6->sin6_port);
        c->client_v6 = true;
    } else {
        strcpy(c->client_ip, "unknown");
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
    c->parser.data = c;
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    SK_INC(w->metrics->downstream_active);
    SK_INC(w->metrics->downstream_total);
    sk_transport_want_read(&c->tr, true);
    set_timer(c, l->header_timeout_ms);
    return c;
}

/* Moves an idle connection to another generation (the owner's idle hook). */
void sk_conn_set_generation(sk_conn *c, sk_config *cfg, const sk_listener *l)
{
    sk_config_ref(cfg);
    sk_config_unref(c->config); /* never the last: the runtime holds retired generations */
    c->config = cfg;
    c->listener = l;
}

/* Is c between requests with nothing unparsed or unwritten? */
bool sk_conn_idle(const sk_conn *c)
{
    if (c->h2) return sk_h2_idle(c);
    return !c->req && c->rpos == c->rlen && sk_out_pending(&c->out) == 0;
}

/* The listener went away: stop reading, close once the queue is written. */
void sk_conn_close_when_flushed(sk_conn *c)
{
    if (c->dead) return;
    if (c->h2) {
        sk_h2_drain(c);
        return;
    }
    if (c->req) {
        c->req->close_after = true;
        return;
    }
    c->closing = true;
    conn_pause_read(c);
    conn_flush(c);
}

/* Closes c: cuts its requests (logged with `reason` unless they have
 * one), releases the socket; freed later. */
static void close_conn(sk_conn *c, const char *reason)
{
    if (c->dead) return;
    sk_wctx *w = c->worker;
    c->dead = true;
    ev_timer_stop(w->loop, &c->timer);
    if (c->h2) {
        sk_h2_close(c, reason);
    } else if (c->req) {
        if (reason && !c->req->reason) c->req->reason = reason;
        void *rq = c->rq;
        c->req = NULL;
        c->rq = NULL;
        c->cbs->finish(rq, false);
    }
    sk_transport_close(&c->tr);
    SK_DEC(w->metrics->downstream_active);
    sk_wctx_buf_put(w, c->rbuf);
    c->rbuf = NULL;
    c->owner->closed(c);
    sk_wctx_defer(w, sk_conn_free, c);
}

/* Closes c now: cuts its request, releases the socket; freed later. */
void sk_conn_close(sk_conn *c)
{
    close_conn(c, NULL);
}

/* Closes c now; its requests are logged with `reason` (see h1_server.h). */
void sk_conn_cut(sk_conn *c, const char *reason)
{
    close_conn(c, reason);
}

/* Frees a closed connection (from the thread's reaper). */
void sk_conn_free(void *p)
{
    sk_conn *c = p;
    sk_h2_free(c->h2);
    sk_out_free(&c->out);
    sk_config_unref(c->config);
    free(c);
}

/* Draining: an idle connection closes now; a busy one after its response. */
void sk_conn_drain(sk_conn *c)
{
    if (c->h2) {
        sk_h2_drain(c);
        return;
    }
    if (sk_conn_idle(c)) {
        sk_conn_close(c);
        return;
    }
    if (c->req) c->req->close_after = true;
}

/* Writes what can be written; arms the write for the rest. Closes the
 * connection on a write error or when a close is due and all is written. */
static void conn_flush(sk_conn *c)
{
    if (c->dead) return;
    size_t before = sk_out_pending(&c->out);
    if (sk_out_flush(&c->out, &c->tr) < 0) {
        sk_debug("write to client %s: %s", PEER(c), strerror(errno));
        if (c->req && !c->req->response_started) c->req->client_closed = true;
        sk_conn_close(c);
        return;
    }
    size_t pending = sk_out_pending(&c->out);
    if (before > pending) SK_ADD(c->worker->metrics->bytes_sent, before - pending);
    if (pending > 0) {
        sk_transport_want_write(&c->tr, true);
        if (pending > SK_HIGH_WATER && c->req) c->cbs->congested(c->rq);
        return;
    }
    sk_transport_want_write(&c->tr, false);
    if (c->closing && !c->req && !c->lingering) {
        if (!c->linger || c->read_eof) {
            sk_conn_close(c);
            return;
        }
        /* The client may still be sending a body we will not read: closing
         * now would make the kernel answer it with a reset that can destroy
         * the reply in the client's receive queue. Half-close, drain what
         * arrives for a short while, then close (nginx's lingering close). */
        c->lingering = true;
        sk_transport_shutdown(&c->tr);
        ev_timer_stop(c->worker->loop, &c->timer);
        c->timer.repeat = 2.0;
        ev_timer_again(c->worker->loop, &c->timer);
        sk_transport_want_read(&c->tr, true);
    }
}

/* Stops reading from the client (the upstream is slower than the client). */
static void conn_pause_read(sk_conn *c)
{
    sk_transport_want_read(&c->tr, false);
}

/* Resumes reading from the client. */
static void conn_resume_read(sk_conn *c)
{
    if (!c->dead && !c->closing) sk_transport_want_read(&c->tr, true);
}

/* Answers the current request locally (see sk_server_ops.local_reply).
 * Creates a request when there is none yet (a timeout before any byte). */
static void conn_local_reply(sk_conn *c, int status, const char *reason, const char *body, size_t blen,
                             const char *const *headers, bool close)
{
    sk_msg *r = c->req;
    if (!r) {
        c->rq = begin_request(c);
        if (!c->rq) {
            c->req = NULL;
            sk_conn_close(c);
            return;
        }
        r = c->req;
        r->start_ns = sk_now_ns();
        r->body_done = true;
    }
    c->cbs->cancel(c->rq); /* nothing more goes upstream */
    if (r->response_started) {
        /* Part of a response is already on the wire: all we can do is cut it. */
        r->status = r->status ? r->status : status;
        r->reason = reason;
        sk_conn_close(c);
        return;
    }
    if (!r->body_done || c->worker->draining || !r->keep_alive || r->close_after) close = true;
    /* 204 and 304 carry neither a body nor a content-length (RFC 9110 8.6). */
    bool bodiless = status == 204 || status == 304;
    if (bodiless) blen = 0;
    bool own_type = false;
    for (size_t i = 0; headers && headers[i]; i += 2)
        if (strcasecmp(headers[i], "content-type") == 0) own_type = true;
    char head[512];
    int n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n", status, sk_status_text(status));
    if (!bodiless)
        n += snprintf(head + n, sizeof(head) - (size_t)n, "%scontent-length: %zu\r\n",
                      own_type ? "" : "content-type: text/plain\r\n", blen);
    n += snprintf(head + n, sizeof(head) - (size_t)n, "%s%s%s%s", reason ? "x-sidekick-reason: " : "",
                  reason ? reason : "", reason ? "\r\n" : "", close ? "connection: close\r\n" : "");
    int rc = sk_out_copy(&c->out, head, (size_t)n);
    size_t total = (size_t)n + 2;
    for (size_t i = 0; headers && headers[i]; i += 2) {
        size_t nl = strlen(headers[i]), vl = strlen(headers[i + 1]);
        rc |= sk_out_copy(&c->out, headers[i], nl);
        rc |= sk_out_copy(&c->out, ": ", 2);
        rc |= sk_out_copy(&c->out, headers[i + 1], vl);
        rc |= sk_out_copy(&c->out, "\r\n", 2);
        total += nl + vl + 4;
    }
    rc |= sk_out_copy(&c->out, "\r\n", 2);
    if (r->method_id != SK_METHOD_HEAD && !bodiless) {
        rc |= sk_out_copy(&c->out, body, blen);
        total += blen;
    }
    if (rc) {
        sk_conn_close(c);
        return;
    }
    r->bytes_sent += total;
    r->status = status;
    r->reason = reason;
    r->response_started = true;
    if (close) {
        r->close_after = true;
        c->closing = true;
        conn_pause_read(c);
    }
    r->discard_body = true;
    conn_response_done(c);
}

/* A local reply with the reason as its body. */
static void reply(sk_conn *c, int status, const char *reason, const char *body, bool close)
{
    char text[64];
    if (!body) {
        snprintf(text, sizeof(text), "%s\n", reason ? reason : "");
        body = text;
    }
    conn_local_reply(c, status, reason, body, strlen(body), NULL, close);
}

/* A paused chain went on: let the parser continue after the head. */
static void conn_chain_resumed(sk_conn *c)
{
    if (c->dead || !c->filter_wait) return;
    c->filter_wait = false;
    if (c->req && !c->req->body_done) set_timer(c, c->listener->idle_timeout_ms);
    if (c->paused) {
        llhttp_resume(&c->parser);
        c->paused = false;
        if (c->rpos == c->rlen && !c->in_parser) {
            /* Nothing after the head in the buffer (a request without a
             * body): llhttp owes on_message_complete, which it only runs
             * when executed again. Run it over no input now, or the request
             * layer hears of the end only with the next request's bytes,
             * and the upstream connection of this one is not reused. */
            static const char none[1];
            c->in_parser = true;
            llhttp_errno_t err = llhttp_execute(&c->parser, none, 0);
            c->in_parser = false;
            if (c->dead) return;
            if (err == HPE_PAUSED) c->paused = true;
        }
    }
    if (c->rpos < c->rlen) sk_transport_feed_read(&c->tr);
    conn_resume_read(c);
}

/* The response of the current request is complete (queued to the client).
 * Finishes the request when its body has been read too. */
static void conn_response_done(sk_conn *c)
{
    sk_msg *r = c->req;
    r->state = SK_REQ_DONE;
    if (!r->body_done) {
        /* Answered before the request body was read whole (an early upstream
         * reply, a timeout): the rest is dropped and the connection closes
         * after this response, with a lingering close. */
        r->discard_body = true;
        r->close_after = true;
    }
    /* Inside the parser, process() finishes the request once llhttp has
     * returned: never reset a parser from its own callback. */
    if (!c->in_parser && (r->body_done || r->close_after)) finish_request(c);
}

/* Hands the finished request back to the request layer (count, log,
 * recycle); continues with pipelined input or closes. */
static void finish_request(sk_conn *c)
{
    sk_msg *r = c->req;
    sk_wctx *w = c->worker;
    bool close = r->close_after || !r->keep_alive || w->draining || !r->body_done || c->read_eof;
    if (!r->body_done || c->rpos < c->rlen) c->linger = true;
    void *rq = c->rq;
    c->req = NULL;
    c->rq = NULL;
    c->cbs->finish(rq, true);
    if (close) {
        c->closing = true;
        conn_pause_read(c);
        ev_timer_stop(w->loop, &c->timer);
        conn_flush(c);
        return;
    }
    if (c->paused) {
        llhttp_resume(&c->parser);
        c->paused = false;
    }
    c->filter_wait = false;
    c->owner->idle(c); /* may move c to a newer generation, or end it */
    if (c->closing || c->dead) return;
    set_timer(c, c->rpos < c->rlen ? c->listener->header_timeout_ms : c->listener->idle_timeout_ms);
    if (c->rpos < c->rlen) sk_transport_feed_read(&c->tr);
    conn_resume_read(c);
}

/* ---- sk_server_ops: the request layer's side of an HTTP/1 stream ---- */

/* Writes the response head (see sk_server_ops.send_head): the codec picks
 * content-length, chunked or (HTTP/1.0) close-delimited framing and adds
 * the Connection header. */
static int op_send_head(void *s, int status, const char *reason, size_t reason_len, const sk_header *hdrs,
                        size_t n, int framing, bool has_length, uint64_t length)
{
    sk_conn *c = s;
    sk_msg *r = c->req;
    if (status < 100 || status > 999) return -1;
    if (!reason) {
        reason = sk_status_text(status);
        reason_len = strlen(reason);
    }
    /* The head lives in the request's arena until the request is recycled
     * (queued by reference): nothing per connection. Its size: the status
     * line, the fields, one framing line (at most 38 bytes), one Connection
     * line (at most 24) and the blank line. */
    size_t cap = 13 + reason_len + 2 + 38 + 24 + 2;
    for (size_t i = 0; i < n; i++) cap += hdrs[i].name_len + hdrs[i].value_len + 4;
    char *head = sk_arena_alloc(&r->arena, cap), *p = head;
    if (!head) return -1;
    p = SK_PUT_LIT(p, "HTTP/1.1 ");
    *p++ = (char)('0' + status / 100);
    *p++ = (char)('0' + status / 10 % 10);
    *p++ = (char)('0' + status % 10);
    *p++ = ' ';
    p = sk_put(p, reason, reason_len);
    p = SK_PUT_LIT(p, "\r\n");
    for (size_t i = 0; i < n; i++) p = sk_put_header(p, &hdrs[i]);
    bool close = r->close_after || !r->keep_alive || c->worker->draining || c->read_eof;
    if (framing == SK_BODY_NONE) {
        c->resp_framing = SK_BODY_NONE;
    } else if (framing == SK_BODY_LENGTH) {
        c->resp_framing = SK_BODY_LENGTH;
        has_length = true;
    } else if (r->version >= 11) {
        c->resp_framing = SK_BODY_CHUNKED;
        p = SK_PUT_LIT(p, "transfer-encoding: chunked\r\n");
    } else {
        c->resp_framing = SK_BODY_EOF;
        close = true;
    }
    if (has_length && framing != SK_BODY_CHUNKED && framing != SK_BODY_EOF) {
        p = SK_PUT_LIT(p, "content-length: ");
        p = sk_put_u64(p, length);
        p = SK_PUT_LIT(p, "\r\n");
    }
    if (close) {
        r->close_after = true;
        p = SK_PUT_LIT(p, "connection: close\r\n");
    } else if (r->version == 10) {
        p = SK_PUT_LIT(p, "connection: keep-alive\r\n");
    }
    p = SK_PUT_LIT(p, "\r\n");
    size_t len = (size_t)(p - head);
    if (sk_out_ref(&c->out, head, len) < 0) return -1;
    r->status = status;
    r->response_started = true;
    r->state = SK_REQ_RESPONDING;
    r->bytes_sent += len;
    return 0;
}

/* Queues response body bytes by reference, chunk-framed when chunked. */
static int op_send_body(void *s, const void *p, size_t n)
{
    sk_conn *c = s;
    sk_msg *r = c->req;
    int rc = 0;
    if (c->resp_framing == SK_BODY_NONE || n == 0) return 0;
    if (c->resp_framing == SK_BODY_CHUNKED) {
        char hdr[24];
        size_t hl = sk_chunk_header(hdr, n);
        rc |= sk_out_copy(&c->out, hdr, hl);
        rc |= sk_out_ref(&c->out, p, n);
        rc |= sk_out_copy(&c->out, "\r\n", 2);
        r->bytes_sent += hl + n + 2;
    } else {
        rc |= sk_out_ref(&c->out, p, n);
        r->bytes_sent += n;
    }
    return rc ? -1 : 0;
}

/* Ends the response body (the last chunk when chunked). */
static int op_send_end(void *s)
{
    sk_conn *c = s;
    if (c->resp_framing != SK_BODY_CHUNKED) return 0;
    c->req->bytes_sent += 5;
    return sk_out_copy(&c->out, "0\r\n\r\n", 5);
}

/* Ends a chunked body with a trailer section; with other framings there
 * is nowhere to put trailers: they are dropped and the body just ends. */
static int op_send_trailers(void *s, const sk_header *hdrs, size_t n)
{
    sk_conn *c = s;
    if (c->resp_framing != SK_BODY_CHUNKED) return 0;
    c->resp_framing = SK_BODY_NONE; /* a send_end after this writes nothing */
    int rc = sk_out_copy(&c->out, "0\r\n", 3);
    size_t total = 5;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const sk_header *h = &hdrs[i];
        rc |= sk_out_copy(&c->out, h->name, h->name_len);
        rc |= sk_out_copy(&c->out, ": ", 2);
        rc |= sk_out_copy(&c->out, h->value, h->value_len);
        rc |= sk_out_copy(&c->out, "\r\n", 2);
        total += h->name_len + h->value_len + 4;
    }
    rc |= sk_out_copy(&c->out, "\r\n", 2);
    c->req->bytes_sent += total;
    return rc ? -1 : 0;
}

static int op_send_continue(void *s)
{
    sk_conn *c = s;
    return sk_out_copy(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
}

static void op_local_reply(void *s, int status, const char *reason, const char *body, size_t len,
                           const char *const *headers, bool close)
{
    sk_conn *c = s;
    char text[64];
    if (!body) {
        len = (size_t)snprintf(text, sizeof(text), "%s\n", reason ? reason : "");
        body = text;
    }
    conn_local_reply(c, status, reason, body, len, headers, close);
}

static void op_flush(void *s)
{
    conn_flush(s);
}

static size_t op_pending(void *s)
{
    sk_conn *c = s;
    return sk_out_pending(&c->out);
}

static void op_pause_body(void *s)
{
    conn_pause_read(s);
}

static void op_resume_body(void *s)
{
    conn_resume_read(s);
}

static void op_chain_resumed(void *s)
{
    conn_chain_resumed(s);
}

static void op_response_done(void *s)
{
    conn_response_done(s);
}

static void op_abort(void *s)
{
    sk_conn_close(s);
}

static bool op_gone(void *s)
{
    sk_conn *c = s;
    return c->dead;
}

const sk_server_ops sk_h1_server_ops = {
    .send_head = op_send_head,
    .send_body = op_send_body,
    .send_end = op_send_end,
    .send_trailers = op_send_trailers,
    .send_continue = op_send_continue,
    .local_reply = op_local_reply,
    .flush = op_flush,
    .pending = op_pending,
    .pause_body = op_pause_body,
    .resume_body = op_resume_body,
    .chain_resumed = op_chain_resumed,
    .response_done = op_response_done,
    .abort = op_abort,
    .gone = op_gone,
};

/* ---- parser callbacks ---- */

static int limit_reply(sk_conn *c, int rc, int status, const char *reason)
{
    if (rc == -2)
        reply(c, status, reason, NULL, true);
    else
        reply(c, 500, "internal_error", NULL, true);
    return -1;
}

static int on_message_begin(llhttp_t *p)
{
    sk_conn *c = p->data;
    c->rq = begin_request(c);
    if (!c->rq) {
        c->req = NULL;
        return -1;
    }
    c->req->start_ns = sk_now_ns();
    set_timer(c, c->listener->header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    sk_conn *c = p->data;
    sk_head *h = &c->req->head;
    if (h->url_len + n > c->listener->max_header_bytes) {
        reply(c, 414, "uri_too_long", NULL, true);
        return -1;
    }
    if (sk_buf_append(&h->raw, at, n) < 0) return limit_reply(c, -1, 0, NULL);
    h->url_len += (uint32_t)n;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    sk_conn *c = p->data;
    const sk_listener *l = c->listener;
    int rc = sk_head_field(&c->req->head, at, n, l->max_headers, l->max_header_bytes);
    if (rc == -1 && c->req->head.nhdrs >= l->max_headers) rc = -2;
    return rc ? limit_reply(c, rc, 431, "headers_too_large") : 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    sk_conn *c = p->data;
    /* llhttp 8 accepts obs-fold (a header line continued on the next line
     * starting with whitespace) and hands the continuation over as another
     * value piece right after a line break: refuse it (RFC 9112 5.2). */
    char prev = at > c->rbuf ? at[-1] : c->last_byte;
    if (c->req->head.in_value && (prev == '\n' || prev == '\r')) return bad_request(c, 400);
    int rc = sk_head_value(&c->req->head, at, n, c->listener->max_header_bytes);
    return rc ? limit_reply(c, rc, 431, "headers_too_large") : 0;
}

static int bad_request(sk_conn *c, int status)
{
    reply(c, status, "bad_request", NULL, true);
    return -1;
}

/* The normalisation flags of a listener's `merge_slashes` and `escaped_slashes`. */
unsigned sk_listener_path_flags(const sk_listener *l)
{
    unsigned f = l->merge_slashes ? SK_PATH_MERGE_SLASHES : 0;
    if (l->escaped_slashes == SK_ESCAPED_SLASHES_KEEP) f |= SK_PATH_KEEP_SLASHES;
    if (l->escaped_slashes == SK_ESCAPED_SLASHES_DECODE) f |= SK_PATH_DECODE_SLASHES;
    return f;
}

/* Splits the request target into path and query; accepts origin-form and
 * absolute-form (http://authority/path), whose authority goes to
 * r->authority / r->host (validated). The path is normalised (normalize.h);
 * when that changes it, r->path points to a copy in r->arena. Returns 0,
 * -1 for a malformed target, -2 on OOM, or a negative enum sk_path_error. */
static int parse_target(sk_msg *r, const sk_listener *l, bool *absolute)
{
    const char *u = r->head.raw.data + r->head.url;
    size_t n = r->head.url_len;
    *absolute = false;
    if (n >= 7 && strncasecmp(u, "http://", 7) == 0) {
        /* absolute-form: the path starts after the authority; an empty
         * path means "/" (RFC 9112 3.2.2) */
        size_t i = 7;
        while (i < n && u[i] != '/' && u[i] != '?') i++;
        if (sk_authority_parse(u + 7, i - 7, &r->host, &r->host_len) < 0) return -1;
        r->authority = u + 7;
        r->authority_len = i - 7;
        *absolute = true;
        if (i == n || u[i] == '?') {
            for (size_t j = i; j < n; j++) /* llhttp 8 lets a TAB through */
                if ((unsigned char)u[j] <= 0x20 || (unsigned char)u[j] == 0x7f) return -1;
            r->path = "/";
            r->path_len = 1;
            if (i < n) {
                r->query = u + i + 1;
                r->query_len = n - i - 1;
            }
            return 0;
        }
        n -= i;
        u += i;
    }
    return sk_msg_origin_target(r, u, n, sk_listener_path_flags(l));
}

/* The fields the codec itself looks at, found in one pass over the head. */
typedef struct head_fields {
    const sk_header *host, *te, *expect; /* the first of each, or NULL */
    size_t nhost, nte;                   /* how many Host / Transfer-Encoding */
    bool xfcc;                           /* an x-forwarded-client-cert is there */
    bool bad_name;                       /* a field name is not a token */
} head_fields;

static void scan_head(const sk_head *h, head_fields *f)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_header *x = &h->views[i];
        /* llhttp 8 lets whitespace before the colon through ("Host : x"):
         * a header name must be a token (RFC 9110 5.1). */
        if (!sk_is_token(x->name, x->name_len)) f->bad_name = true;
        switch (x->name_len) {
        case 4:
            if (sk_streq_nocase(x->name, 4, "host") && f->nhost++ == 0) f->host = x;
            break;
        case 6:
            if (!f->expect && sk_streq_nocase(x->name, 6, "expect")) f->expect = x;
            break;
        case 17:
            if (sk_streq_nocase(x->name, 17, "transfer-encoding") && f->nte++ == 0) f->te = x;
            break;
        case 23:
            if (sk_streq_nocase(x->name, 23, "x-forwarded-client-cert")) f->xfcc = true;
            break;
        default: break;
        }
    }
}

static int on_headers_complete(llhttp_t *p)
{
    sk_conn *c = p->data;
    sk_msg *r = c->req;
    const sk_listener *l = c->listener;
    r->head.url = 0;
    if (sk_head_finish(&r->head) < 0) return limit_reply(c, -1, 0, NULL);
    head_fields f;
    scan_head(&r->head, &f);
    if (f.bad_name) return bad_request(c, 400);
    /* Asserted by the proxy alone (from a verified peer certificate): a
     * client's copy is never seen by plugins, Lua or the upstream. */
    if (f.xfcc) {
        if (sk_head_edit(&r->head, &r->arena, "x-forwarded-client-cert", NULL, true) < 0)
            return limit_reply(c, -1, 0, NULL);
        scan_head(&r->head, &f); /* the views moved */
    }
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->method_id = sk_method_id(r->method, strlen(r->method));
    r->version = 10 + p->http_minor;
    r->keep_alive = llhttp_should_keep_alive(p);
    if (p->http_major != 1) return bad_request(c, 400);
    if (p->method == HTTP_CONNECT) {
        reply(c, 501, "bad_request", "CONNECT is not supported\n", true);
        return -1;
    }
    bool absolute;
    int rc = parse_target(r, l, &absolute);
    if (rc == -2) return limit_reply(c, -1, 0, NULL);
    if (rc < 0) {
        sk_debug("bad request from %s: %s", PEER(c),
                 rc == -1 ? "malformed request target" : sk_path_strerror(rc));
        return bad_request(c, 400);
    }

    /* Host: exactly one (HTTP/1.1), valid. An absolute-form target's
     * authority wins (RFC 9112 3.2.2) and replaces the Host header, so the
     * upstream gets one Host matching what was routed on. The host used
     * for routing drops the port. */
    size_t nhost = f.nhost;
    const sk_header *host = f.host;
    if (nhost > 1 || (nhost == 0 && r->version >= 11)) return bad_request(c, 400);
    if (host && sk_authority_parse(host->value, host->value_len, absolute ? NULL : &r->host,
                                   absolute ? NULL : &r->host_len) < 0) {
        sk_debug("bad request from %s: invalid Host header", PEER(c));
        return bad_request(c, 400);
    }
    if (absolute) {
        char *v = sk_arena_strndup(&r->arena, r->authority, r->authority_len);
        if (!v || sk_head_edit(&r->head, &r->arena, "host", v, true) < 0) return limit_reply(c, -1, 0, NULL);
        scan_head(&r->head, &f); /* the views moved */
    } else if (host) {
        r->authority = host->value;
        r->authority_len = host->value_len;
    } else {
        r->host = r->authority = "";
    }

    /* Framing. llhttp already refuses CL with TE, bad and duplicate CL. */
    const sk_header *te = f.te;
    if (te && r->version == 10) return bad_request(c, 400); /* RFC 9112 6.1: faulty framing */
    if (te) {
        if (f.nte > 1 || !sk_streq_nocase(te->value, te->value_len, "chunked")) {
            reply(c, 501, "bad_request", "unsupported transfer coding\n", true);
            return -1;
        }
        r->req_framing = SK_BODY_CHUNKED;
    } else if (p->flags & F_CONTENT_LENGTH) {
        r->req_content_length = p->content_length;
        r->req_framing = p->content_length ? SK_BODY_LENGTH : SK_BODY_NONE;
    } else {
        r->req_framing = SK_BODY_NONE;
    }
    if (r->req_framing == SK_BODY_NONE) r->body_done = true;
    if (l->max_body_bytes && r->req_framing == SK_BODY_LENGTH && r->req_content_length > l->max_body_bytes) {
        reply(c, 413, "body_too_large", NULL, true);
        return -1;
    }
    const sk_header *expect = f.expect;
    if (expect) {
        if (!sk_streq_nocase(expect->value, expect->value_len, "100-continue")) {
            reply(c, 417, "bad_request", "unsupported expectation\n", true);
            return -1;
        }
        r->expect_continue = r->version >= 11 && r->req_framing != SK_BODY_NONE;
    }
    if (llhttp_get_upgrade(p)) r->close_after = true;

    /* The head is in: from here on the route timeout governs, and the
     * idle timeout guards a stalled body. */
    set_timer(c, r->body_done ? 0 : l->idle_timeout_ms);
    r->state = SK_REQ_UPSTREAM;
    int hr = c->cbs->head(c->rq);
    if (hr < 0 || c->dead || c->closing) return -1;
    if (hr == 1) {
        /* A plugin is working (SK_PAUSE): the body waits in the read buffer
         * until it resumes (chain_resumed). */
        c->filter_wait = true;
        set_timer(c, 0); /* we hold the body back, not the client: no idle timeout meanwhile */
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    sk_conn *c = p->data;
    sk_msg *r = c->req;
    if (!r) return 0; /* answered (and finished) while a filter held the head */
    const sk_listener *l = c->listener;
    r->body_received += n;
    if (l->max_body_bytes && r->body_received > l->max_body_bytes) {
        reply(c, 413, "body_too_large", NULL, true);
        return -1;
    }
    if (r->discard_body) return 0;
    if (c->cbs->body(c->rq, at, n) < 0) return -1;
    return c->dead ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    sk_conn *c = p->data;
    sk_msg *r = c->req;
    if (!r) return 0; /* answered (and finished) while a filter held the head */
    r->body_done = true;
    if (!r->discard_body && c->cbs->body_end(c->rq) < 0) return -1;
    if (c->dead) return -1;
    return HPE_PAUSED;
}

/* Runs the parser over the unparsed input, then flushes both directions. */
static void process(sk_conn *c)
{
    while (!c->dead && !c->closing && !c->paused && c->rpos < c->rlen) {
        const char *start = c->rbuf + c->rpos;
        size_t from = c->rpos;
        c->in_parser = true;
        llhttp_errno_t err = llhttp_execute(&c->parser, start, c->rlen - c->rpos);
        c->in_parser = false;
        if (c->dead) return;
        if (err == HPE_OK) {
            c->rpos = c->rlen;
        } else if (err == HPE_PAUSED) {
            c->rpos = (size_t)(llhttp_get_error_pos(&c->parser) - c->rbuf);
            c->paused = true;
        }
        if (c->rpos > from) c->last_byte = c->rbuf[c->rpos - 1];
        if (c->req)
            c->req->bytes_received += (err == HPE_OK || err == HPE_PAUSED) ? c->rpos - from : c->rlen - from;
        if (err == HPE_OK || err == HPE_PAUSED) {
        } else {
            if (!c->dead && !c->closing) {
                sk_debug("bad request from %s: %s (%s)", PEER(c), llhttp_errno_name(err),
                         llhttp_get_error_reason(&c->parser));
                int status = 400;
                if (err == HPE_INVALID_TRANSFER_ENCODING) status = 501;
                bad_request(c, status);
            }
            c->rpos = c->rlen;
        }
        sk_msg *r = c->req;
        if (r && r->state == SK_REQ_DONE && (r->body_done || r->close_after)) finish_request(c);
    }
    if (c->dead) return;
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
        if (!c->req || c->req->body_done) {
            sk_wctx_buf_put(c->worker, c->rbuf);
            c->rbuf = NULL;
        }
    }
    /* The body pieces of this read are queued upstream now: one write. */
    if (c->req) c->cbs->input_done(c->rq);
    if (!c->dead) conn_flush(c);
}

/*
 * The client closed its side (FIN). As nginx does by default (without
 * proxy_ignore_client_abort), a request whose response has not started is
 * cancelled: the request layer logs it 499 client_closed, cancels a paused
 * filter and aborts the upstream exchange. This holds for a client that
 * only half-closed (shutdown(SHUT_WR)) and still reads: it gets no answer.
 * A response already started is completed when the request was read whole
 * (then the connection closes), else cut. Responses of earlier pipelined
 * requests that are complete but still queued are written before the close.
 */
static void client_closed(sk_conn *c)
{
    sk_msg *r = c->req;
    if (r && r->response_started) {
        if (r->body_done) {
            r->close_after = true;
            return;
        }
        sk_conn_close(c);
        return;
    }
    if (r) {
        void *rq = c->rq;
        r->client_closed = true;
        c->req = NULL;
        c->rq = NULL;
        c->cbs->finish(rq, false);
    }
    if (sk_out_pending(&c->out) == 0) {
        sk_conn_close(c);
        return;
    }
    c->closing = true; /* conn_flush closes once the queue is written */
    set_timer(c, c->listener->idle_timeout_ms);
    conn_flush(c);
}

/* Chooses the connection's protocol before its first request: HTTP/2 when
 * ALPN chose "h2", or when a plain connection starts with the connection
 * preface (prior knowledge). Returns true when HTTP/2 took over. */
static bool choose_protocol(sk_conn *c)
{
    if (c->tr.ops == &sk_tls_ops) {
        c->chosen = true;
        if (c->tr.alpn && strcmp(c->tr.alpn, "h2") == 0) {
            sk_h2_start(c);
            return true;
        }
        return false;
    }
    if (c->rlen == 0) return false; /* nothing read yet */
    size_t k = c->rlen < SK_H2_PREFACE_LEN ? c->rlen : SK_H2_PREFACE_LEN;
    if (memcmp(c->rbuf, SK_H2_PREFACE, k) != 0) {
        c->chosen = true;
        return false;
    }
    if (c->rlen < SK_H2_PREFACE_LEN) return true; /* so far the preface: wait for the rest */
    c->chosen = true;
    sk_h2_start(c);
    return true;
}

static void on_readable(sk_transport *t)
{
    sk_conn *c = t->data;
    if (c->dead) return;
    if (!c->chosen && c->tr.ops == &sk_tls_ops && choose_protocol(c)) return;
    if (c->lingering) {
        char sink[4096];
        for (int i = 0;; i++) {
            ssize_t n = sk_transport_read(&c->tr, sink, sizeof(sink));
            if (n > 0 && i < 16) continue;
            if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) return;
            break; /* EOF or error */
        }
        sk_conn_close(c);
        return;
    }
    if (!c->rbuf) {
        c->rbuf = sk_wctx_buf_get(c->worker);
        if (!c->rbuf) {
            sk_conn_close(c);
            return;
        }
        c->rpos = c->rlen = 0;
    }
    if (c->rpos > 0 && c->rpos == c->rlen) c->rpos = c->rlen = 0;
    if (c->rpos > 0 && !c->paused) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    if (c->rlen < SK_READ_BUF && !c->closing) {
        ssize_t n = sk_transport_read(&c->tr, c->rbuf + c->rlen, SK_READ_BUF - c->rlen);
        if (n == 0) {
            c->read_eof = true;
            conn_pause_read(c);
            client_closed(c);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                if (c->req && !c->req->response_started) c->req->client_closed = true;
                sk_conn_close(c);
                return;
            }
        } else {
            c->rlen += (size_t)n;
            SK_ADD(c->worker->metrics->bytes_received, (uint64_t)n);
            if (c->req && c->req->state != SK_REQ_HEAD && !c->req->body_done)
                set_timer(c, c->listener->idle_timeout_ms);
        }
    } else if (c->paused) {
        /* Buffer full of pipelined requests: wait until the current one is done. */
        conn_pause_read(c);
    }
    if (c->paused) {
        if (c->rpos == c->rlen) {
            c->rpos = c->rlen = 0;
        }
        return;
    }
    if (!c->chosen && choose_protocol(c)) return;
    process(c);
}

static void on_writable(sk_transport *t)
{
    sk_conn *c = t->data;
    conn_flush(c);
    if (c->dead) return;
    if (sk_out_pending(&c->out) < SK_LOW_WATER && c->req) c->cbs->drained(c->rq);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_conn *c = t->data;
    sk_msg *r = c->req;
    if (c->lingering) {
        sk_conn_close(c);
        return;
    }
    if (!r) {
        /* Idle keep-alive (or a connection that never sent a byte). */
        sk_conn_close(c);
        return;
    }
    if (r->state == SK_REQ_HEAD) {
        reply(c, 408, "header_timeout", NULL, true);
        conn_flush(c);
        return;
    }
    /* A request body stalled longer than idle_timeout. */
    sk_debug("client %s: request body idle for too long", PEER(c));
    if (!r->response_started) {
        reply(c, 408, "idle_timeout", "request body timeout\n", true);
        conn_flush(c);
    } else {
        sk_conn_close(c);
    }
}
