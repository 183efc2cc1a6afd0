/*
 * proxy.c — a request's way through the proxy once its head is parsed:
 * route match, local replies, cluster and endpoint choice with circuit
 * breakers, the upstream request head (hop-by-hop removal, x-forwarded-*,
 * x-request-id), body streaming with re-framing, the response head back to
 * the client, retries and upstream errors.
 *
 * This file does not know HTTP/1 wire details of the downstream side beyond
 * the sk_conn calls, so that an HTTP/2 codec can drive it later. The filter
 * chain lives here too (run_chain): listener plugins, route match, route
 * plugins, then the upstream; the Lua step will join it after the plugins.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http1.h"
#include "lua_filter.h"
#include "plugin_host.h"
#include "worker.h"

/* Is this header hop-by-hop, or one the proxy sets itself? `conn` is the
 * Connection header's value (tokens named there are hop-by-hop too). */
#define NAME_IS(lit) (l == sizeof(lit) - 1 && strncasecmp(n, lit, sizeof(lit) - 1) == 0)

/* Is this header hop-by-hop, or one the proxy sets itself? `conn` is the
 * Connection header's value (tokens named there are hop-by-hop too).
 * Dispatches on the length first: this runs for every header twice. */
static bool skip_header(const sk_header *h, const sk_header *conn, bool request)
{
    const char *n = h->name;
    size_t l = h->name_len;
    bool hop = false;
    switch (l) {
    case 2: hop = NAME_IS("te"); break;
    case 6: hop = request && NAME_IS("expect"); break;
    case 7: hop = NAME_IS("upgrade") || NAME_IS("trailer"); break;
    case 10: hop = NAME_IS("connection") || NAME_IS("keep-alive"); break;
    case 12: hop = request && NAME_IS("x-request-id"); break;
    case 14: hop = NAME_IS("content-length"); break;
    case 15: hop = request && NAME_IS("x-forwarded-for"); break;
    case 17: hop = NAME_IS("transfer-encoding") || (request && NAME_IS("x-forwarded-proto")); break;
    default: break;
    }
    if (hop || (l >= 6 && strncasecmp(n, "proxy-", 6) == 0)) return true;
    if (conn) {
        const char *p = conn->value, *e = conn->value + conn->value_len;
        while (p < e) {
            while (p < e && (*p == ',' || *p == ' ' || *p == '\t')) p++;
            const char *s = p;
            while (p < e && *p != ',' && *p != ' ' && *p != '\t') p++;
            if (p > s && (size_t)(p - s) == l && strncasecmp(s, n, l) == 0) return true;
        }
    }
    return false;
}

/* Appends the end-to-end headers of h ("name: value\r\n" each). 0 or -1. */
static int append_headers(sk_buf *b, const sk_head *h, bool request)
{
    const sk_header *conn = sk_head_get(h, "connection");
    int rc = 0;
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_header *x = &h->views[i];
        if (skip_header(x, conn, request)) continue;
        rc |= sk_buf_append(b, x->name, x->name_len);
        rc |= sk_buf_append(b, ": ", 2);
        rc |= sk_buf_append(b, x->value, x->value_len);
        rc |= sk_buf_append(b, "\r\n", 2);
    }
    return rc;
}

static void gen_request_id(sk_worker *w, char out[37])
{
    /* a random (version 4) UUID, formatted by hand: printf is costly here */
    static const char hex[] = "0123456789abcdef";
    uint64_t hi = ((uint64_t)sk_worker_rand(w) << 32) | sk_worker_rand(w);
    uint64_t lo = ((uint64_t)sk_worker_rand(w) << 32) | sk_worker_rand(w);
    hi = (hi & ~0xf000ull) | 0x4000ull;                        /* version 4 */
    lo = (lo & 0x3fffffffffffffffull) | 0x8000000000000000ull; /* variant 10 */
    char *p = out;
    for (int i = 0; i < 32; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20) *p++ = '-';
        uint64_t v = i < 16 ? hi : lo;
        *p++ = hex[(v >> (60 - 4 * (i % 16))) & 15];
    }
    *p = 0;
}

/* Releases the cluster circuit-breaker slots the request holds. */
static void release_cluster(sk_request *r)
{
    sk_request_pending_done(r);
    if (r->counted_request) {
        __atomic_sub_fetch(&r->cluster->active_requests, 1, __ATOMIC_RELAXED);
        r->counted_request = false;
    }
}

static void stop_timeout(sk_request *r)
{
    if (ev_is_active(&r->timeout)) ev_timer_stop(r->worker->loop, &r->timeout);
}

/* Builds the request head as it goes upstream into r->uphead. */
static int build_upstream_head(sk_request *r)
{
    sk_buf *b = &r->uphead;
    const sk_route *rt = r->route;
    sk_buf_reset(b);
    int rc = sk_buf_puts(b, r->method);
    rc |= sk_buf_append(b, " ", 1);
    if (r->up_path) { /* set by the Lua filter: replaces any rewrite */
        rc |= sk_buf_append(b, r->up_path, r->up_path_len);
    } else if (rt->rewrite_prefix && rt->prefix) {
        size_t plen = strlen(rt->prefix);
        rc |= sk_buf_append(b, rt->rewrite_prefix, strlen(rt->rewrite_prefix));
        const char *rest = r->path + plen;
        size_t rlen = r->path_len - plen;
        /* "/api/" → "/" with path "/api/x": avoid "//x" when both carry a slash. */
        size_t rwl = strlen(rt->rewrite_prefix);
        if (rlen && rest[0] == '/' && rwl && rt->rewrite_prefix[rwl - 1] == '/') rest++, rlen--;
        rc |= sk_buf_append(b, rest, rlen);
    } else {
        rc |= sk_buf_append(b, r->path, r->path_len);
    }
    if (r->query) {
        rc |= sk_buf_append(b, "?", 1);
        rc |= sk_buf_append(b, r->query, r->query_len);
    }
    rc |= sk_buf_append(b, " HTTP/1.1\r\n", 11);

    const sk_head *h = &r->head;
    rc |= append_headers(b, h, true);
    rc |= sk_buf_append(b, "x-forwarded-for: ", 17);
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_header *x = &h->views[i];
        if (!sk_streq_nocase(x->name, x->name_len, "x-forwarded-for") || x->value_len == 0) continue;
        rc |= sk_buf_append(b, x->value, x->value_len);
        rc |= sk_buf_append(b, ", ", 2);
    }
    rc |= sk_buf_puts(b, r->conn->client_ip);
    rc |= sk_buf_puts(b, "\r\nx-forwarded-proto: http\r\n");
    /* HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require one. */
    if (!r->authority_len)
        rc |= sk_buf_printf(b, "host: %s\r\n", r->cluster ? r->cluster->name : "localhost");
    rc |= sk_buf_puts(b, "x-request-id: ");
    rc |= sk_buf_puts(b, r->request_id);
    rc |= sk_buf_append(b, "\r\n", 2);
    if (r->req_framing == SK_BODY_LENGTH)
        rc |= sk_buf_puts(b, "content-length: ") | sk_buf_u64(b, r->req_content_length) |
              sk_buf_puts(b, "\r\n");
    else if (r->req_framing == SK_BODY_CHUNKED)
        rc |= sk_buf_append(b, "transfer-encoding: chunked\r\n", 28);
    else if (r->method_id == HTTP_POST || r->method_id == HTTP_PUT || r->method_id == HTTP_PATCH)
        rc |= sk_buf_append(b, "content-length: 0\r\n", 19);
    rc |= sk_buf_append(b, "\r\n", 2);
    return rc ? -1 : 0;
}

static void on_route_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_request *r = t->data;
    sk_conn *c = r->conn;
    sk_proxy_upstream_error(r, 504, "upstream_timeout", false);
    sk_conn_flush(c);
}

/* Starts (or restarts, for a retry) the upstream exchange. */
static void start_upstream(sk_request *r)
{
    sk_pool *pool = sk_cluster_pick(r->worker, r->cluster, r->pool);
    if (!pool) {
        sk_proxy_upstream_error(r, 503, "no_healthy_upstream", false);
        return;
    }
    r->pool = pool;
    memcpy(r->endpoint, pool->endpoint.address.text, sizeof(r->endpoint));
    r->attempts++;
    r->upstream_start_ns = sk_now_ns();
    int rc = sk_upstream_attach(r);
    if (rc == -2) {
        sk_proxy_upstream_error(r, 503, "overloaded", false);
        return;
    }
    if (rc < 0) {
        sk_proxy_upstream_error(r, 502, "upstream_connect_failure", true);
        return;
    }
    /* Inside the client's parser, process() flushes once the body pieces of
     * this read are queued too: one write for head and body. */
    if (!r->conn->in_parser) sk_upstream_flush(r->up);
}

/* The chain is done: pick the cluster and start the upstream exchange. */
static void go_upstream(sk_request *r)
{
    sk_conn *c = r->conn;
    const sk_route *rt = r->route;
    r->cluster =
        r->cluster_override ? r->cluster_override : sk_route_pick_cluster(rt, sk_worker_rand(r->worker));
    if (__atomic_add_fetch(&r->cluster->active_requests, 1, __ATOMIC_RELAXED) > r->cluster->max_requests) {
        __atomic_sub_fetch(&r->cluster->active_requests, 1, __ATOMIC_RELAXED);
        sk_conn_local_reply(c, 503, "overloaded", NULL, false);
        return;
    }
    r->counted_request = true;
    if (build_upstream_head(r) < 0) {
        release_cluster(r);
        sk_conn_local_reply(c, 500, "internal_error", NULL, true);
        return;
    }
    if (rt->timeout_ms) {
        ev_timer_init(&r->timeout, on_route_timeout, (double)rt->timeout_ms / 1000.0, 0.);
        r->timeout.data = r;
        ev_timer_start(r->worker->loop, &r->timeout);
    }
    if (r->expect_continue) sk_conn_send_copy(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    start_upstream(r);
}

/* Sends the local reply a plugin prepared with respond(). */
static void plugin_reply(sk_request *r)
{
    sk_conn_local_reply_ex(r->conn, r->lr_status, r->lr_reason, r->lr_body, r->lr_body_len, r->lr_headers,
                           false);
}

static void filter_error(sk_request *r, sk_instance *pi, const char *hook)
{
    sk_warn("plugin %s: %s failed for %s %.*s", pi->name, hook, r->method ? r->method : "-", (int)r->path_len,
            r->path ? r->path : "");
    sk_conn_local_reply(r->conn, 500, "filter_error", NULL, false);
}

static void on_filter_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_request *r = t->data;
    sk_conn *c = r->conn;
    sk_instance *pi = r->paused_by;
    sk_warn("plugin %s: request paused longer than %.0f ms, giving up", pi->name, t->repeat * 1000);
    r->filter_paused = false;
    r->paused_by = NULL;
    sk_plugin_on_cancel(pi, r);
    __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
    sk_conn_local_reply(c, 500, "filter_error", NULL, false);
    sk_conn_filter_resumed(c);
}

/* Applies a hook's result. Returns true when the chain stops here. */
static bool chain_result(sk_request *r, sk_instance *pi, sk_status st)
{
    switch (st) {
    case SK_CONTINUE: return false;
    case SK_PAUSE: {
        if (r->early_resume) { /* resumed from inside the hook */
            st = (sk_status)(r->early_resume - 1);
            r->early_resume = 0;
            return chain_result(r, pi, st);
        }
        r->filter_paused = true;
        r->paused_by = pi;
        /* A plugin that never resumes must not hold the request forever. */
        uint64_t ms =
            r->route && r->route->timeout_ms ? r->route->timeout_ms : r->conn->listener->header_timeout_ms;
        ev_timer_init(&r->timeout, on_filter_timeout, (double)ms / 1000.0, 0.);
        r->timeout.repeat = (double)ms / 1000.0;
        r->timeout.data = r;
        ev_timer_start(r->worker->loop, &r->timeout);
        return true;
    }
    case SK_RESPOND:
        if (r->lr_status) {
            plugin_reply(r);
            return true;
        }
        sk_warn("plugin %s: returned SK_RESPOND without calling respond()", pi->name);
        __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
        filter_error(r, pi, "on_request");
        return true;
    default: filter_error(r, pi, "on_request"); return true;
    }
}

/*
 * The filter chain: listener plugins, route match, route plugins, then the
 * upstream (or the route's `respond`). Resumable: r->chain_pos remembers
 * where a paused plugin stopped.
 */
static void run_chain(sk_request *r)
{
    sk_conn *c = r->conn;
    const sk_listener *l = c->listener;
    for (;;) {
        if (c->dead || r->response_started) return;
        if (r->chain_pos < l->nplugins) {
            sk_instance *pi = l->plugins[r->chain_pos++];
            if (chain_result(r, pi, sk_plugin_on_request(pi, r))) return;
            continue;
        }
        if (!r->routed) {
            r->routed = true;
            r->route = sk_route_match(l, r->method, strlen(r->method), r->host, r->host_len, r->path,
                                      r->path_len, r->head.views, r->head.nhdrs);
            if (!r->route) {
                sk_conn_local_reply(c, 404, "no_route", NULL, false);
                return;
            }
        }
        const sk_route *rt = r->route;
        if (r->chain_pos < l->nplugins + rt->nplugins) {
            sk_instance *pi = rt->plugins[r->chain_pos++ - l->nplugins];
            if (chain_result(r, pi, sk_plugin_on_request(pi, r))) return;
            continue;
        }
        break;
    }
    if (r->route->lua && !r->lua_ran) {
        r->lua_ran = true;
        sk_status st = sk_lua_on_request(r);
        if (c->dead) return;
        if (st == SK_RESPOND) {
            plugin_reply(r);
            return;
        }
        if (st != SK_CONTINUE) {
            sk_conn_local_reply(c, 500, "filter_error", NULL, false);
            return;
        }
    }
    if (r->route->respond_status) {
        sk_conn_local_reply(c, r->route->respond_status, NULL, r->route->respond_body, false);
        return;
    }
    go_upstream(r);
}

/* Routes a complete request head through the filter chain. Returns 0, or
 * -1 if parsing must stop. r->filter_paused tells the codec to wait. */
int sk_proxy_head(sk_request *r)
{
    sk_conn *c = r->conn;
    /* x-request-id: the client's (if sane) or a new one; logged either way. */
    const sk_header *rid = sk_head_get(&r->head, "x-request-id");
    if (rid && rid->value_len && rid->value_len < sizeof(r->request_id)) {
        memcpy(r->request_id, rid->value, rid->value_len);
        r->request_id[rid->value_len] = 0;
    } else {
        gen_request_id(r->worker, r->request_id);
    }
    run_chain(r);
    return c->dead ? -1 : 0;
}

/* host->resume(): continues a paused chain with the hook's result. */
void sk_proxy_resume(sk_request *r, int status)
{
    sk_status st = (sk_status)status;
    if (r->in_hook && !r->filter_paused) {
        /* called from inside the hook that is about to return SK_PAUSE */
        r->early_resume = (int)st + 1;
        return;
    }
    if (!r->filter_paused) {
        sk_warn("resume() on a request that is not paused: ignored");
        return;
    }
    sk_instance *pi = r->paused_by;
    sk_conn *c = r->conn;
    stop_timeout(r);
    r->filter_paused = false;
    r->paused_by = NULL;
    if (st > SK_ERROR || st == SK_PAUSE) {
        sk_warn("plugin %s: resume() with status %d", pi->name, (int)st);
        st = SK_ERROR;
    }
    if (st == SK_ERROR) __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
    if (!chain_result(r, pi, st)) run_chain(r);
    if (!c->dead) sk_conn_filter_resumed(c);
}

/* The plugins the request went through, for on_response / on_log (in reverse). */
static sk_instance *chain_at(const sk_request *r, unsigned i)
{
    const sk_listener *l = r->conn->listener;
    if (i < l->nplugins) return l->plugins[i];
    return r->route ? r->route->plugins[i - l->nplugins] : NULL;
}

/* on_log of every plugin the request reached, last first. */
void sk_proxy_log(sk_request *r)
{
    r->end_ns = sk_now_ns();
    for (unsigned i = r->chain_pos; i-- > 0;) {
        sk_instance *pi = chain_at(r, i);
        if (pi) sk_plugin_on_log(pi, r);
    }
}

/* A response hook failed: its reply is 500 filter_error. */
static void prepare_filter_error(sk_request *r)
{
    r->lr_status = 500;
    r->lr_reason = "filter_error";
    r->lr_body = "filter_error\n";
    r->lr_body_len = 13;
    r->lr_headers = NULL;
}

/* on_response of the Lua filter, then of every plugin the request reached,
 * last first. Returns true when a hook replaced the response (reply
 * prepared or error). */
static bool response_hooks(sk_request *r)
{
    r->in_response_hooks = true;
    bool stop = false;
    if (r->lua_ran) { /* the Lua filter ran last on the way in: first on the way out */
        r->lr_status = 0;
        sk_status st = sk_lua_on_response(r);
        if (st != SK_CONTINUE) {
            stop = true;
            if (st != SK_RESPOND || !r->lr_status) prepare_filter_error(r);
        }
    }
    for (unsigned i = r->chain_pos; i-- > 0 && !stop;) {
        sk_instance *pi = chain_at(r, i);
        if (!pi) continue;
        r->lr_status = 0; /* only a reply prepared by this hook counts */
        sk_status st = sk_plugin_on_response(pi, r);
        if (st == SK_CONTINUE) continue;
        stop = true;
        if (st == SK_RESPOND && r->lr_status) break;
        if (st == SK_RESPOND) __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
        sk_warn("plugin %s: on_response failed", pi->name);
        prepare_filter_error(r);
    }
    r->in_response_hooks = false;
    return stop;
}

/* A plugin's on_response replaced the upstream response: drop the upstream
 * connection and answer with the prepared reply. */
void sk_proxy_filter_reply(sk_request *r)
{
    if (r->up) {
        sk_upconn *u = r->up;
        r->up = NULL;
        sk_upstream_release(u, false);
    }
    stop_timeout(r);
    release_cluster(r);
    r->status = 0;
    sk_conn *c = r->conn;
    plugin_reply(r);
    sk_conn_flush(c);
}

/* Forwards a piece of decoded request body, re-framed for the upstream. */
int sk_proxy_body(sk_request *r, const char *p, size_t n)
{
    sk_upconn *u = r->up;
    if (!u) return 0; /* the exchange failed; a reply is on its way */
    int rc = 0;
    if (r->req_framing == SK_BODY_CHUNKED) {
        char hdr[24];
        size_t hl = sk_chunk_header(hdr, n);
        rc |= sk_out_copy(&u->out, hdr, (size_t)hl);
        rc |= sk_out_ref(&u->out, p, n);
        rc |= sk_out_copy(&u->out, "\r\n", 2);
    } else {
        rc |= sk_out_ref(&u->out, p, n);
    }
    if (rc) {
        sk_proxy_upstream_error(r, 500, "internal_error", false);
        return -1;
    }
    return 0;
}

/* The request body is complete: terminates chunked framing. */
int sk_proxy_body_end(sk_request *r)
{
    sk_upconn *u = r->up;
    r->up_body_done = true;
    if (!u) return 0;
    if (r->req_framing == SK_BODY_CHUNKED && sk_out_copy(&u->out, "0\r\n\r\n", 5) < 0) {
        sk_proxy_upstream_error(r, 500, "internal_error", false);
        return -1;
    }
    return 0;
}

/* The client went away (or the request is being cut): drop upstream work. */
void sk_proxy_abort(sk_request *r)
{
    stop_timeout(r);
    if (r->filter_paused) {
        sk_instance *pi = r->paused_by;
        r->filter_paused = false;
        r->paused_by = NULL;
        sk_plugin_on_cancel(pi, r);
    }
    if (r->up) {
        sk_upconn *u = r->up;
        r->up = NULL;
        sk_upstream_release(u, false);
    }
    release_cluster(r);
}

/* Client output drained: let the upstream send more. */
void sk_proxy_client_drained(sk_request *r)
{
    if (r->up) sk_upstream_resume_read(r->up);
}

static bool idempotent(int m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT || m == HTTP_DELETE ||
           m == HTTP_TRACE;
}

static bool may_retry(const sk_request *r)
{
    return !r->response_started && r->route && r->attempts <= r->route->retries && idempotent(r->method_id) &&
           r->req_framing == SK_BODY_NONE;
}

/* A 502/503/504 answer is retried (not forwarded) while retries are left. */
bool sk_proxy_retry_status(sk_request *r, int status)
{
    return (status == 502 || status == 503 || status == 504) && may_retry(r);
}

/* Starts the next attempt after a retried response. */
void sk_proxy_retry(sk_request *r)
{
    sk_buf_reset(&r->rhead.raw);
    r->rhead.nhdrs = 0;
    r->rhead.url_len = 0;
    r->rhead.in_value = false;
    r->rhead.done = false;
    r->rhead.trailer_bytes = 0;
    sk_debug("retrying %s %.*s after an upstream %s (attempt %u)", r->method, (int)r->path_len, r->path,
             "5xx", r->attempts + 1);
    start_upstream(r);
}

/* An upstream attempt failed (connect failure, reset, garbage, timeout).
 * Retries when allowed, else answers with a local reply, or cuts the
 * client connection when part of the response is already sent. */
void sk_proxy_upstream_error(sk_request *r, int status, const char *reason, bool retryable)
{
    sk_conn *c = r->conn;
    if (r->up) {
        sk_upconn *u = r->up;
        r->up = NULL;
        sk_upstream_release(u, false);
    }
    sk_request_pending_done(r);
    if (strcmp(reason, "upstream_connect_failure") == 0)
        SK_INC(r->worker->metrics->upstream_connect_failures);
    /* A pooled connection the upstream closed while we picked it (the
     * keep-alive race): one free retry on a fresh connection, whatever
     * `retries` says, when nothing of the response arrived and the request
     * is safe to send again. */
    if (retryable && r->up_reused && !r->stale_retried && !r->response_started && idempotent(r->method_id) &&
        r->req_framing == SK_BODY_NONE) {
        r->stale_retried = true;
        r->attempts--;
        sk_debug("pooled upstream connection was stale, retrying on a new one");
        start_upstream(r);
        return;
    }
    if (retryable && may_retry(r)) {
        sk_debug("retrying %s %.*s after %s (attempt %u)", r->method, (int)r->path_len, r->path, reason,
                 r->attempts + 1);
        start_upstream(r);
        return;
    }
    stop_timeout(r);
    release_cluster(r);
    if (r->response_started) {
        r->reason = reason;
        sk_conn_close(c);
        return;
    }
    sk_conn_local_reply(c, status, reason, NULL, false);
}

/* Builds the response head towards the client from the upstream's. */
int sk_proxy_response_head(sk_request *r, int status, bool no_body, bool up_chunked, bool up_length,
                           uint64_t length)
{
    sk_conn *c = r->conn;
    sk_head *h = &r->rhead;
    if (sk_head_finish(h) < 0) return -1;
    if (r->chain_pos || r->lua_ran) {
        r->status = status;
        if (response_hooks(r)) {
            r->status = 0;
            return 1; /* the caller stops parsing and calls sk_proxy_filter_reply */
        }
    }
    sk_buf *b = &r->uphead; /* the request head was sent: reuse its storage */
    sk_buf_reset(b);
    const char *reason = h->url_len ? h->raw.data + h->url : sk_status_text(status);
    size_t reason_len = h->url_len ? h->url_len : strlen(reason);
    char sl[14] = "HTTP/1.1 000 ";
    if (status < 100 || status > 999) return -1;
    sl[9] = (char)('0' + status / 100);
    sl[10] = (char)('0' + status / 10 % 10);
    sl[11] = (char)('0' + status % 10);
    int rc = sk_buf_append(b, sl, 13);
    rc |= sk_buf_append(b, reason, reason_len);
    rc |= sk_buf_append(b, "\r\n", 2);
    rc |= append_headers(b, h, false);
    bool close = r->close_after || !r->keep_alive || c->worker->draining || c->read_eof;
    if (no_body) {
        r->resp_framing = SK_BODY_NONE;
        if (up_length && (r->method_id == HTTP_HEAD || status == 304))
            rc |= sk_buf_puts(b, "content-length: ") | sk_buf_u64(b, length) | sk_buf_puts(b, "\r\n");
    } else if (up_length) {
        r->resp_framing = SK_BODY_LENGTH;
        rc |= sk_buf_puts(b, "content-length: ") | sk_buf_u64(b, length) | sk_buf_puts(b, "\r\n");
    } else if (r->http_minor >= 1) {
        r->resp_framing = SK_BODY_CHUNKED;
        rc |= sk_buf_append(b, "transfer-encoding: chunked\r\n", 28);
    } else {
        r->resp_framing = SK_BODY_EOF;
        close = true;
    }
    SK_UNUSED(up_chunked);
    if (close) {
        r->close_after = true;
        rc |= sk_buf_append(b, "connection: close\r\n", 19);
    } else if (r->http_minor == 0) {
        rc |= sk_buf_append(b, "connection: keep-alive\r\n", 24);
    }
    rc |= sk_buf_append(b, "\r\n", 2);
    if (rc || sk_conn_send_ref(c, b->data, b->len) < 0) return -1;
    r->status = status;
    r->response_started = true;
    r->state = SK_REQ_RESPONDING;
    r->bytes_sent += b->len;
    return 0;
}

/* Forwards response body bytes, re-framed for the client. */
int sk_proxy_response_body(sk_request *r, const char *p, size_t n)
{
    sk_conn *c = r->conn;
    int rc = 0;
    if (r->resp_framing == SK_BODY_NONE) return 0;
    if (r->resp_framing == SK_BODY_CHUNKED) {
        char hdr[24];
        size_t hl = sk_chunk_header(hdr, n);
        rc |= sk_conn_send_copy(c, hdr, (size_t)hl);
        rc |= sk_conn_send_ref(c, p, n);
        rc |= sk_conn_send_copy(c, "\r\n", 2);
        r->bytes_sent += (size_t)hl + n + 2;
    } else {
        rc |= sk_conn_send_ref(c, p, n);
        r->bytes_sent += n;
    }
    return rc ? -1 : 0;
}

/* The upstream response is complete: flush, release the upstream
 * connection (pooled if it is still cleanly framed), finish the request. */
void sk_proxy_response_end(sk_request *r)
{
    sk_conn *c = r->conn;
    if (r->resp_framing == SK_BODY_CHUNKED) {
        sk_conn_send_copy(c, "0\r\n\r\n", 5);
        r->bytes_sent += 5;
    }
    r->upstream_end_ns = sk_now_ns();
    stop_timeout(r);
    /* Flush while the body still points into the upstream read buffer. */
    sk_conn_flush(c);
    if (c->dead) return; /* closing aborted the request and released everything */
    sk_upconn *u = r->up;
    r->up = NULL;
    if (u) sk_upstream_release(u, u->reusable && r->up_body_done);
    release_cluster(r);
    sk_conn_response_done(c);
}
