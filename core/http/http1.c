/*
 * http1.c — the downstream HTTP/1.1 codec: accepts a client connection,
 * parses requests with llhttp, enforces the listener's limits and timeouts,
 * writes responses, handles keep-alive and pipelining (one request at a
 * time, in order). What happens to a parsed request is proxy.c's business.
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

#include "http1.h"
#include "normalize.h"
#include "worker.h"

void sk__listener_conn_closed(const sk_listener *l);
void sk__worker_defer_free(sk_worker *w, sk_conn *c);

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

static void on_read(struct ev_loop *loop, ev_io *io, int revents);
static void on_write(struct ev_loop *loop, ev_io *io, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *t, int revents);
static void finish_request(sk_conn *c);
static int bad_request(sk_conn *c, int status);

/* ---- message heads, shared with upstream.c ---- */

/* Appends a piece of a header name; starts a new header when the previous
 * piece was a value. Returns 0, or -1 when a limit is exceeded / OOM. */
int sk_head_field(sk_head *h, const char *at, size_t n, size_t max_headers, size_t max_bytes)
{
    if (h->done) {
        /* A trailer field of a chunked body: not forwarded (the head went
         * out long ago), but bounded like the head. */
        h->trailer_bytes += n;
        return h->trailer_bytes > max_bytes ? -2 : 0;
    }
    if (h->nhdrs == 0 || h->in_value) {
        if (h->nhdrs >= max_headers) return -1;
        if (h->nhdrs == h->cap) {
            size_t cap = h->cap ? h->cap * 2 : 32;
            sk_hdr_off *o = realloc(h->offs, cap * sizeof(*o));
            if (!o) return -1;
            h->offs = o;
            h->cap = cap;
        }
        sk_hdr_off *o = &h->offs[h->nhdrs++];
        o->name = (uint32_t)h->raw.len;
        o->name_len = 0;
        o->value = (uint32_t)h->raw.len;
        o->value_len = 0;
        h->in_value = false;
    }
    if (h->raw.len + n > max_bytes) return -2;
    if (sk_buf_append(&h->raw, at, n) < 0) return -1;
    h->offs[h->nhdrs - 1].name_len += (uint32_t)n;
    return 0;
}

/* Appends a piece of a header value. Same returns as sk_head_field. */
int sk_head_value(sk_head *h, const char *at, size_t n, size_t max_bytes)
{
    if (h->done) {
        h->trailer_bytes += n;
        return h->trailer_bytes > max_bytes ? -2 : 0;
    }
    if (h->nhdrs == 0) return -1;
    sk_hdr_off *o = &h->offs[h->nhdrs - 1];
    if (!h->in_value) {
        o->value = (uint32_t)h->raw.len;
        o->value_len = 0;
        h->in_value = true;
    }
    if (h->raw.len + n > max_bytes) return -2;
    if (sk_buf_append(&h->raw, at, n) < 0) return -1;
    o->value_len += (uint32_t)n;
    return 0;
}

/* Builds the sk_header views once the head is complete (raw no longer
 * grows). Trims surrounding whitespace from values. Returns 0 or -1. */
int sk_head_finish(sk_head *h)
{
    h->done = true;
    if (h->nhdrs > h->views_cap) {
        sk_header *v = realloc(h->views, h->nhdrs * sizeof(*v));
        if (!v) return -1;
        h->views = v;
        h->views_cap = h->nhdrs;
    }
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_hdr_off *o = &h->offs[i];
        const char *v = h->raw.data + o->value;
        size_t vl = o->value_len;
        while (vl && (*v == ' ' || *v == '\t')) v++, vl--;
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
        h->views[i].name = h->raw.data + o->name;
        h->views[i].name_len = o->name_len;
        h->views[i].value = v;
        h->views[i].value_len = vl;
    }
    return 0;
}

/* Returns the first header named `name` (lower-case), or NULL. */
const sk_header *sk_head_get(const sk_head *h, const char *name)
{
    for (size_t i = 0; i < h->nhdrs; i++)
        if (sk_streq_nocase(h->views[i].name, h->views[i].name_len, name)) return &h->views[i];
    return NULL;
}

/* Counts headers named `name`. */
size_t sk_head_count(const sk_head *h, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < h->nhdrs; i++)
        if (sk_streq_nocase(h->views[i].name, h->views[i].name_len, name)) n++;
    return n;
}

/* Is s a valid header name (name) or value (no CR, LF, NUL or other
 * controls but TAB)? Shared with the plugin host. */
bool sk_header_field_ok(const char *s, bool name)
{
    if (!s || (name && !*s)) return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\r' || *p == '\n' || *p == 0x7f || (*p < 0x20 && *p != '\t')) return false;
        if (name && (*p == ':' || *p <= 0x20)) return false;
    }
    return true;
}

/* Edits a complete head (plugins, filters): with `replace`, removes every
 * header named `name`; then, when value is not NULL, appends `name: value`
 * (copied into the arena). Returns 0, or -1 on a bad name/value or OOM. */
int sk_head_edit(sk_head *h, sk_arena *a, const char *name, const char *value, bool replace)
{
    if (!h->done || !sk_header_field_ok(name, true) || (value && !sk_header_field_ok(value, false)))
        return -1;
    if (replace) {
        size_t j = 0;
        for (size_t i = 0; i < h->nhdrs; i++)
            if (!sk_streq_nocase(h->views[i].name, h->views[i].name_len, name)) h->views[j++] = h->views[i];
        h->nhdrs = j;
    }
    if (!value) return 0;
    if (h->nhdrs + 1 > h->views_cap) {
        size_t cap = h->views_cap ? h->views_cap * 2 : 8;
        sk_header *v = realloc(h->views, cap * sizeof(*v));
        if (!v) return -1;
        h->views = v;
        h->views_cap = cap;
    }
    size_t nl = strlen(name), vl = strlen(value);
    const char *n = sk_arena_strndup(a, name, nl), *v = sk_arena_strndup(a, value, vl);
    if (!n || !v) return -1;
    h->views[h->nhdrs].name = n;
    h->views[h->nhdrs].name_len = nl;
    h->views[h->nhdrs].value = v;
    h->views[h->nhdrs].value_len = vl;
    h->nhdrs++;
    return 0;
}

/* Standard reason phrase of a status code. */
const char *sk_status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:
        return status < 300   ? "OK"
               : status < 400 ? "Redirect"
               : status < 500 ? "Client Error"
                              : "Server Error";
    }
}

/* ---- connection life ---- */

static void set_timer(sk_conn *c, uint64_t ms)
{
    if (ms == 0) {
        ev_timer_stop(c->worker->loop, &c->timer);
        return;
    }
    c->timer.repeat = (double)ms / 1000.0;
    ev_timer_again(c->worker->loop, &c->timer);
}

/* Takes over an accepted, non-blocking socket fd. */
void sk_conn_accept(sk_worker *w, const sk_listener *l, int fd, const struct sockaddr *sa)
{
    sk_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        sk_error("out of memory accepting a connection");
        close(fd);
        sk__listener_conn_closed(l);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->worker = w;
    c->listener = l;
    c->config = w->config;
    sk_config_ref(c->config);
    sk_transport_plain(&c->tr, fd);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, c->client_ip, sizeof(c->client_ip));
        snprintf(c->client_addr, sizeof(c->client_addr), "%s:%u", c->client_ip, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, c->client_ip, sizeof(c->client_ip));
        snprintf(c->client_addr, sizeof(c->client_addr), "[%s]:%u", c->client_ip, ntohs(in6->sin6_port));
    } else {
        strcpy(c->client_ip, "unknown");
        strcpy(c->client_addr, "unknown");
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &req_settings);
    c->parser.data = c;
    ev_io_init(&c->rio, on_read, fd, EV_READ);
    ev_io_init(&c->wio, on_write, fd, EV_WRITE);
    c->rio.data = c->wio.data = c;
    ev_init(&c->timer, on_timer);
    c->timer.data = c;
    sk_list_insert(&w->conns, &c->link);
    w->nconns++;
    SK_INC(w->metrics->downstream_active);
    SK_INC(w->metrics->downstream_total);
    ev_io_start(w->loop, &c->rio);
    c->reading = true;
    set_timer(c, l->header_timeout_ms);
}

/* Closes c now: aborts its request, releases the socket; freed later. */
void sk_conn_close(sk_conn *c)
{
    if (c->dead) return;
    sk_worker *w = c->worker;
    c->dead = true;
    ev_io_stop(w->loop, &c->rio);
    ev_io_stop(w->loop, &c->wio);
    ev_timer_stop(w->loop, &c->timer);
    if (c->req) {
        sk_request *r = c->req;
        sk_proxy_abort(r);
        if (r->status == 0 || !r->response_started || r->state != SK_REQ_DONE) {
            if (!r->reason) r->reason = "client_abort";
            sk_proxy_log(r);
            sk_accesslog_write(r);
        }
        sk_request_free(r);
        c->req = NULL;
    }
    c->tr.ops->close(&c->tr);
    sk__listener_conn_closed(c->listener);
    SK_DEC(w->metrics->downstream_active);
    sk_list_remove(&c->link);
    w->nconns--;
    sk_worker_buf_put(w, c->rbuf);
    c->rbuf = NULL;
    sk__worker_defer_free(w, c);
}

/* Frees a closed connection (from the worker's reaper). */
void sk_conn_free(sk_conn *c)
{
    sk_out_free(&c->out);
    sk_config_unref(c->config);
    free(c);
}

/* Draining: an idle connection closes now; a busy one after its response. */
void sk_conn_drain(sk_conn *c)
{
    if (!c->req && c->rpos == c->rlen && sk_out_pending(&c->out) == 0) {
        sk_conn_close(c);
        return;
    }
    if (c->req) c->req->close_after = true;
}

/* Writes what can be written; arms EV_WRITE for the rest. Closes the
 * connection on a write error or when a close is due and all is written. */
void sk_conn_flush(sk_conn *c)
{
    if (c->dead) return;
    size_t before = sk_out_pending(&c->out);
    if (sk_out_flush(&c->out, &c->tr) < 0) {
        sk_debug("write to client %s: %s", c->client_addr, strerror(errno));
        sk_conn_close(c);
        return;
    }
    size_t pending = sk_out_pending(&c->out);
    if (before > pending) SK_ADD(c->worker->metrics->bytes_sent, before - pending);
    if (pending > 0) {
        if (!ev_is_active(&c->wio)) ev_io_start(c->worker->loop, &c->wio);
        if (pending > SK_HIGH_WATER && c->req && c->req->up) sk_upstream_pause_read(c->req->up);
        return;
    }
    if (ev_is_active(&c->wio)) ev_io_stop(c->worker->loop, &c->wio);
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
        c->tr.ops->shutdown(&c->tr);
        ev_timer_stop(c->worker->loop, &c->timer);
        c->timer.repeat = 2.0;
        ev_timer_again(c->worker->loop, &c->timer);
        if (!c->reading) {
            ev_io_start(c->worker->loop, &c->rio);
            c->reading = true;
        }
    }
}

/* Queues bytes towards the client by reference (valid until the flush that
 * ends the current event handler). */
int sk_conn_send_ref(sk_conn *c, const void *p, size_t n)
{
    return sk_out_ref(&c->out, p, n);
}

/* Queues a copy of bytes towards the client. */
int sk_conn_send_copy(sk_conn *c, const void *p, size_t n)
{
    return sk_out_copy(&c->out, p, n);
}

/* Stops reading from the client (upstream is slower than the client). */
void sk_conn_pause_read(sk_conn *c)
{
    if (c->reading) {
        ev_io_stop(c->worker->loop, &c->rio);
        c->reading = false;
    }
}

/* Resumes reading from the client. */
void sk_conn_resume_read(sk_conn *c)
{
    if (!c->reading && !c->dead && !c->closing) {
        ev_io_start(c->worker->loop, &c->rio);
        c->reading = true;
    }
}

/* Queues a local reply for the current request. With `close`, the
 * connection closes once it is written. A request whose body is still
 * arriving has the rest discarded. */
void sk_conn_local_reply(sk_conn *c, int status, const char *reason, const char *body, bool close)
{
    char text[64];
    if (!body) {
        snprintf(text, sizeof(text), "%s\n", reason ? reason : "");
        body = text;
    }
    sk_conn_local_reply_ex(c, status, reason, body, strlen(body), NULL, close);
}

/* Queues a local reply with extra headers (name, value, ..., NULL; a
 * content-type among them replaces text/plain). */
void sk_conn_local_reply_ex(sk_conn *c, int status, const char *reason, const char *body, size_t blen,
                            const char *const *headers, bool close)
{
    sk_request *r = c->req;
    if (!r) {
        r = c->req = sk_request_new(c->worker, c);
        if (!r) {
            sk_conn_close(c);
            return;
        }
        r->start_ns = sk_now_ns();
        r->body_done = true;
    }
    if (r->up || r->counted_request) sk_proxy_abort(r); /* nothing more goes upstream */
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
    if (r->method_id != HTTP_HEAD && !bodiless) {
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
        sk_conn_pause_read(c);
    }
    r->discard_body = true;
    sk_conn_response_done(c);
}

/* A paused chain went on: let the parser continue after the head. */
void sk_conn_filter_resumed(sk_conn *c)
{
    if (c->dead) return;
    if (c->filter_wait) {
        c->filter_wait = false;
        if (c->req && !c->req->body_done) set_timer(c, c->listener->idle_timeout_ms);
        if (c->paused) {
            llhttp_resume(&c->parser);
            c->paused = false;
        }
        if (c->rpos < c->rlen) ev_feed_event(c->worker->loop, &c->rio, EV_READ);
        sk_conn_resume_read(c);
    }
    sk_request *r = c->req;
    if (r && r->up && sk_upstream_flush(r->up) < 0) return;
    sk_conn_flush(c);
}

/* The response of the current request is complete (queued to the client).
 * Finishes the request when its body has been read too. */
void sk_conn_response_done(sk_conn *c)
{
    sk_request *r = c->req;
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

/* Logs and recycles the current request; continues with pipelined input. */
static void finish_request(sk_conn *c)
{
    sk_request *r = c->req;
    sk_worker *w = c->worker;
    uint64_t dur_us = (sk_now_ns() - r->start_ns) / 1000;
    if (r->status >= 100 && r->status <= 599) sk_metrics_request(w->metrics, r->route, r->status, dur_us);
    sk_proxy_log(r);
    sk_accesslog_write(r);
    bool close = r->close_after || !r->keep_alive || w->draining || !r->body_done || c->read_eof;
    if (!r->body_done || c->rpos < c->rlen) c->linger = true;
    sk_request_free(r);
    c->req = NULL;
    if (close) {
        c->closing = true;
        sk_conn_pause_read(c);
        ev_timer_stop(w->loop, &c->timer);
        sk_conn_flush(c);
        return;
    }
    if (c->paused) {
        llhttp_resume(&c->parser);
        c->paused = false;
    }
    c->filter_wait = false;
    if (c->config != w->config) { /* reloaded meanwhile: the next request uses the new generation */
        sk_conn_adopt_generation(c);
        if (c->closing || c->dead) return;
    }
    set_timer(c, c->rpos < c->rlen ? c->listener->header_timeout_ms : c->listener->idle_timeout_ms);
    if (c->rpos < c->rlen) ev_feed_event(w->loop, &c->rio, EV_READ);
    sk_conn_resume_read(c);
}

/* ---- parser callbacks ---- */

static int limit_reply(sk_conn *c, int rc, int status, const char *reason)
{
    if (rc == -2)
        sk_conn_local_reply(c, status, reason, NULL, true);
    else
        sk_conn_local_reply(c, 500, "internal_error", NULL, true);
    return -1;
}

static int on_message_begin(llhttp_t *p)
{
    sk_conn *c = p->data;
    c->req = sk_request_new(c->worker, c);
    if (!c->req) return -1;
    c->req->start_ns = sk_now_ns();
    set_timer(c, c->listener->header_timeout_ms);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    sk_conn *c = p->data;
    sk_head *h = &c->req->head;
    if (h->url_len + n > c->listener->max_header_bytes) {
        sk_conn_local_reply(c, 414, "uri_too_long", NULL, true);
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
    sk_conn_local_reply(c, status, "bad_request", NULL, true);
    return -1;
}

static bool is_token(const char *s, size_t n)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr(extra, ch))))
            return false;
    }
    return true;
}

/* The normalisation flags of a listener's `merge_slashes` and `escaped_slashes`. */
static unsigned path_flags(const sk_listener *l)
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
static int parse_target(sk_request *r, const sk_listener *l, bool *absolute)
{
    const char *u = r->head.raw.data + r->head.url;
    size_t n = r->head.url_len;
    *absolute = false;
    for (size_t i = 0; i < n; i++) /* llhttp 8 lets a TAB through */
        if ((unsigned char)u[i] <= 0x20 || (unsigned char)u[i] == 0x7f) return -1;
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
    if (n == 0 || (u[0] != '/' && !(n == 1 && u[0] == '*'))) return -1;
    const char *q = memchr(u, '?', n);
    r->path = u;
    r->path_len = q ? (size_t)(q - u) : n;
    if (q) {
        r->query = q + 1;
        r->query_len = n - r->path_len - 1;
    }
    if (u[0] == '*') return 0;
    unsigned flags = path_flags(l);
    char *buf = NULL;
    if (!sk_path_is_normal(r->path, r->path_len, flags) && !(buf = sk_arena_alloc(&r->arena, r->path_len)))
        return -2;
    return sk_path_normalize(r->path, r->path_len, flags, buf, &r->path, &r->path_len);
}

static int on_headers_complete(llhttp_t *p)
{
    sk_conn *c = p->data;
    sk_request *r = c->req;
    const sk_listener *l = c->listener;
    r->head.url = 0;
    if (sk_head_finish(&r->head) < 0) return limit_reply(c, -1, 0, NULL);
    /* llhttp 8 lets whitespace before the colon through ("Host : x"):
     * a header name must be a token (RFC 9110 5.1). */
    for (size_t i = 0; i < r->head.nhdrs; i++)
        if (!is_token(r->head.views[i].name, r->head.views[i].name_len)) return bad_request(c, 400);
    /* Asserted by the proxy alone (from a verified peer certificate): a
     * client's copy is never seen by plugins, Lua or the upstream. */
    if (sk_head_edit(&r->head, &r->arena, "x-forwarded-client-cert", NULL, true) < 0)
        return limit_reply(c, -1, 0, NULL);
    r->method_id = p->method;
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->http_minor = p->http_minor;
    r->keep_alive = llhttp_should_keep_alive(p);
    if (p->http_major != 1) return bad_request(c, 400);
    if (p->method == HTTP_CONNECT) {
        sk_conn_local_reply(c, 501, "bad_request", "CONNECT is not supported\n", true);
        return -1;
    }
    bool absolute;
    int rc = parse_target(r, l, &absolute);
    if (rc == -2) return limit_reply(c, -1, 0, NULL);
    if (rc < 0) {
        sk_debug("bad request from %s: %s", c->client_addr,
                 rc == -1 ? "malformed request target" : sk_path_strerror(rc));
        return bad_request(c, 400);
    }

    /* Host: exactly one (HTTP/1.1), valid. An absolute-form target's
     * authority wins (RFC 9112 3.2.2) and replaces the Host header, so the
     * upstream gets one Host matching what was routed on. The host used
     * for routing drops the port. */
    size_t nhost = sk_head_count(&r->head, "host");
    const sk_header *host = sk_head_get(&r->head, "host");
    if (nhost > 1 || (nhost == 0 && r->http_minor >= 1)) return bad_request(c, 400);
    if (host && sk_authority_parse(host->value, host->value_len, absolute ? NULL : &r->host,
                                   absolute ? NULL : &r->host_len) < 0) {
        sk_debug("bad request from %s: invalid Host header", c->client_addr);
        return bad_request(c, 400);
    }
    if (absolute) {
        char *v = sk_arena_strndup(&r->arena, r->authority, r->authority_len);
        if (!v || sk_head_edit(&r->head, &r->arena, "host", v, true) < 0) return limit_reply(c, -1, 0, NULL);
    } else if (host) {
        r->authority = host->value;
        r->authority_len = host->value_len;
    } else {
        r->host = r->authority = "";
    }

    /* Framing. llhttp already refuses CL with TE, bad and duplicate CL. */
    const sk_header *te = sk_head_get(&r->head, "transfer-encoding");
    if (te && r->http_minor == 0) return bad_request(c, 400); /* RFC 9112 6.1: faulty framing */
    if (te) {
        if (sk_head_count(&r->head, "transfer-encoding") > 1 ||
            !sk_streq_nocase(te->value, te->value_len, "chunked")) {
            sk_conn_local_reply(c, 501, "bad_request", "unsupported transfer coding\n", true);
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
        sk_conn_local_reply(c, 413, "body_too_large", NULL, true);
        return -1;
    }
    const sk_header *expect = sk_head_get(&r->head, "expect");
    if (expect) {
        if (!sk_streq_nocase(expect->value, expect->value_len, "100-continue")) {
            sk_conn_local_reply(c, 417, "bad_request", "unsupported expectation\n", true);
            return -1;
        }
        r->expect_continue = r->http_minor >= 1 && r->req_framing != SK_BODY_NONE;
    }
    if (llhttp_get_upgrade(p)) r->close_after = true;

    /* The head is in: from here on the route timeout governs, and the
     * idle timeout guards a stalled body. */
    set_timer(c, r->body_done ? 0 : l->idle_timeout_ms);
    r->state = SK_REQ_UPSTREAM;
    if (sk_proxy_head(r) < 0) return -1;
    if (c->dead || c->closing) return -1;
    if (r->filter_paused) {
        /* A plugin is working (SK_PAUSE): the body waits in the read buffer
         * until it resumes (sk_conn_filter_resumed). */
        c->filter_wait = true;
        set_timer(c, 0); /* we hold the body back, not the client: no idle timeout meanwhile */
        return HPE_PAUSED;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    sk_conn *c = p->data;
    sk_request *r = c->req;
    if (!r) return 0; /* answered (and finished) while a filter held the head */
    const sk_listener *l = c->listener;
    r->body_received += n;
    if (l->max_body_bytes && r->body_received > l->max_body_bytes) {
        if (r->up) sk_proxy_abort(r);
        sk_conn_local_reply(c, 413, "body_too_large", NULL, true);
        return -1;
    }
    if (r->discard_body) return 0;
    if (sk_proxy_body(r, at, n) < 0) return -1;
    return c->dead ? -1 : 0;
}

static int on_message_complete(llhttp_t *p)
{
    sk_conn *c = p->data;
    sk_request *r = c->req;
    if (!r) return 0; /* answered (and finished) while a filter held the head */
    r->body_done = true;
    if (!r->discard_body && sk_proxy_body_end(r) < 0) return -1;
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
                sk_debug("bad request from %s: %s (%s)", c->client_addr, llhttp_errno_name(err),
                         llhttp_get_error_reason(&c->parser));
                int status = 400;
                if (err == HPE_INVALID_TRANSFER_ENCODING) status = 501;
                bad_request(c, status);
            }
            c->rpos = c->rlen;
        }
        sk_request *r = c->req;
        if (r && r->state == SK_REQ_DONE && (r->body_done || r->close_after)) finish_request(c);
    }
    if (c->dead) return;
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
        if (!c->req || c->req->body_done) {
            sk_worker_buf_put(c->worker, c->rbuf);
            c->rbuf = NULL;
        }
    }
    sk_request *r = c->req;
    if (r && r->up) sk_upstream_flush(r->up);
    if (!c->dead) sk_conn_flush(c);
}

static void on_read(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_conn *c = io->data;
    if (c->dead) return;
    if (c->lingering) {
        char sink[4096];
        for (int i = 0;; i++) {
            ssize_t n = c->tr.ops->read(&c->tr, sink, sizeof(sink));
            if (n > 0 && i < 16) continue;
            if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) return;
            break; /* EOF or error */
        }
        sk_conn_close(c);
        return;
    }
    if (!c->rbuf) {
        c->rbuf = sk_worker_buf_get(c->worker);
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
        ssize_t n = c->tr.ops->read(&c->tr, c->rbuf + c->rlen, SK_READ_BUF - c->rlen);
        if (n == 0) {
            /* The client closed its side. A request that was read whole is
             * still answered (then the connection closes); anything else is
             * aborted. */
            c->read_eof = true;
            sk_conn_pause_read(c);
            if (c->req && c->req->body_done && c->rpos == c->rlen) {
                c->req->close_after = true;
                return;
            }
            sk_conn_close(c);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
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
        sk_conn_pause_read(c);
    }
    if (c->paused) {
        if (c->rpos == c->rlen) {
            c->rpos = c->rlen = 0;
        }
        return;
    }
    process(c);
}

static void on_write(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_conn *c = io->data;
    sk_conn_flush(c);
    if (c->dead) return;
    if (sk_out_pending(&c->out) < SK_LOW_WATER && c->req) sk_proxy_client_drained(c->req);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_conn *c = t->data;
    sk_request *r = c->req;
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
        sk_conn_local_reply(c, 408, "header_timeout", NULL, true);
        sk_conn_flush(c);
        return;
    }
    /* A request body stalled longer than idle_timeout. */
    sk_debug("client %s: request body idle for too long", c->client_addr);
    if (!r->response_started) {
        if (r->up) sk_proxy_abort(r);
        sk_conn_local_reply(c, 408, "idle_timeout", "request body timeout\n", true);
        sk_conn_flush(c);
    } else {
        sk_conn_close(c);
    }
}
