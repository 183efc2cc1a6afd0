/*
 * proxy.c — a request's way through the proxy once its head is parsed: the
 * filter chain (listener plugins, route match, route plugins, the route's
 * Lua filter), local replies, cluster and endpoint choice with circuit
 * breakers, the upstream request (hop-by-hop removal, x-forwarded-*,
 * x-request-id), body streaming both ways with back-pressure, the response
 * head back to the client, retries and upstream errors, and the traffic
 * management of a route (docs/traffic.md): the retry policy (retry_on,
 * per_try_timeout, backoff, the cluster's retry budget and max_retries,
 * body replay), fault injection and the trigger of mirroring (mirror.c).
 *
 * This file writes no wire format: it hears from the downstream codec
 * through sk_proxy_server_cbs, from upstream connections through
 * client_cbs, and answers through their ops tables (http/codec.h). So an
 * HTTP/2 codec drives it unchanged.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "h1_client.h"
#include "hashkey.h"
#include "head.h"
#include "filter.h"
#include "metrics.h"
#include "pool.h"
#include "request.h"
#include "traffic.h"

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
    case 23: hop = request && NAME_IS("x-forwarded-client-cert"); break; /* only the proxy vouches */
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

/* Collects the end-to-end fields of h into a growable array *out (capacity
 * *cap, kept for the next request), leaving `room` free entries at the
 * end. Returns the number collected, or -1 on OOM. */
static ssize_t collect_headers(const sk_head *h, bool request, sk_header **out, size_t *cap, size_t room)
{
    if (h->nhdrs + room > *cap) {
        size_t n = h->nhdrs + room + 8;
        sk_header *v = realloc(*out, n * sizeof(*v));
        if (!v) return -1;
        *out = v;
        *cap = n;
    }
    const sk_header *conn = sk_head_get(h, "connection");
    size_t k = 0;
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_header *x = &h->views[i];
        if (!skip_header(x, conn, request)) (*out)[k++] = *x;
    }
    return (ssize_t)k;
}

static void hdr_set(sk_header *h, const char *name, size_t name_len, const char *value, size_t value_len)
{
    h->name = name;
    h->name_len = name_len;
    h->value = value;
    h->value_len = value_len;
}
#define HDR_SET(h, lit, v, vl) hdr_set(h, lit, sizeof(lit) - 1, v, vl)

static void gen_request_id(sk_wctx *w, char out[37])
{
    /* a random (version 4) UUID, formatted by hand: printf is costly here */
    static const char hex[] = "0123456789abcdef";
    uint64_t hi = ((uint64_t)sk_wctx_rand(w) << 32) | sk_wctx_rand(w);
    uint64_t lo = ((uint64_t)sk_wctx_rand(w) << 32) | sk_wctx_rand(w);
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
    if (r->counted_retry) {
        __atomic_sub_fetch(&r->cluster->active_retries, 1, __ATOMIC_RELAXED);
        r->counted_retry = false;
    }
}

/* Counts an event of the request's cluster (enum sk_mcounter). */
static void count_cluster(sk_request *r, int which)
{
    sk_metrics_count(r->worker->metrics, r->cluster->metrics_row, which);
}

/* Counts an event of the request's route (enum sk_mcounter: mirrors, faults). */
static void count_route(sk_request *r, int which)
{
    sk_metrics_count(r->worker->metrics, r->route->metrics_row, which);
}

/* Counts the status of an upstream response head in the endpoint's row. */
static void count_upstream_code(sk_request *r, int status)
{
    sk_mrow *row = r->pool ? sk_metrics_row(r->worker->metrics, r->pool->endpoint->metrics_row) : NULL;
    if (row) sk_metrics_code(row, status);
}

/* Observes the duration of the attempt that just ended in the cluster's histogram. */
static void observe_upstream(sk_request *r)
{
    sk_mrow *row = sk_metrics_row(r->worker->metrics, r->cluster->metrics_row);
    if (row) sk_metrics_observe(row, (sk_now_ns() - r->upstream_start_ns) / 1000);
}

static void stop_timeout(sk_request *r)
{
    if (ev_is_active(&r->timeout)) ev_timer_stop(r->worker->loop, &r->timeout);
}

/* Stops the per-try timer or the backoff; after a backoff, the client's
 * body flows again when `resume` (not for a stream that is going away). */
static void stop_try_timer(sk_request *r, bool resume)
{
    if (ev_is_active(&r->try_timer)) ev_timer_stop(r->worker->loop, &r->try_timer);
    if (r->backing_off) {
        r->backing_off = false;
        if (resume && !r->up_body_done) r->down_ops->resume_body(r->down);
    }
}

/* A draw of `ppm` parts per million. */
static bool draw(sk_request *r, uint32_t ppm)
{
    return ppm >= SK_PPM || (ppm && sk_wctx_rand(r->worker) % SK_PPM < ppm);
}

/* Lets go of the upstream connection: back to its pool when reuse is
 * allowed, else closed. */
static void release_upstream(sk_request *r, bool reuse)
{
    if (!r->up) return;
    sk_upconn *u = r->up;
    r->up = NULL;
    sk_pool_put(u, reuse);
}

/* A local reply through the downstream codec; body NULL = the reason. */
static void reply(sk_request *r, int status, const char *reason, const char *body, bool close)
{
    r->down_ops->local_reply(r->down, status, reason, body, body ? strlen(body) : 0, NULL, close);
}

static bool gone(const sk_request *r)
{
    return r->down_ops->gone(r->down);
}

/*
 * Works out the request as it goes upstream: the path (Lua's set_path, or
 * the route's rewrite_prefix), and the header fields — the client's
 * end-to-end ones, x-forwarded-for (appended), x-forwarded-proto, a Host
 * for HTTP/1.0 clients that sent none, x-request-id. Kept in the request
 * for retries. Returns 0 or -1 (OOM).
 */
static int build_upstream_request(sk_request *r, sk_out_request *q)
{
    const sk_route *rt = r->route;
    const sk_head *h = &r->head;
    memset(q, 0, sizeof(*q));
    q->method = r->method;
    q->method_id = r->method_id;
    if (r->up_path) { /* set by the Lua filter: replaces any rewrite */
        q->path = r->up_path;
        q->path_len = r->up_path_len;
    } else if (rt->rewrite_prefix && rt->prefix) {
        size_t plen = strlen(rt->prefix), rwl = strlen(rt->rewrite_prefix);
        const char *rest = r->path + plen;
        size_t rlen = r->path_len - plen;
        /* "/api/" → "/" with path "/api/x": avoid "//x" when both carry a slash. */
        if (rlen && rest[0] == '/' && rwl && rt->rewrite_prefix[rwl - 1] == '/') rest++, rlen--;
        char *p = sk_arena_alloc(&r->arena, rwl + rlen + 1);
        if (!p) return -1;
        memcpy(p, rt->rewrite_prefix, rwl);
        memcpy(p + rwl, rest, rlen);
        p[rwl + rlen] = 0;
        q->path = p;
        q->path_len = rwl + rlen;
    } else {
        q->path = r->path;
        q->path_len = r->path_len;
    }
    q->query = r->query;
    q->query_len = r->query_len;
    q->framing = r->req_framing;
    q->length = r->req_content_length;

    ssize_t k = collect_headers(h, true, &r->up_hdrs, &r->up_nhdrs_cap, 5);
    if (k < 0) return -1;
    if (rt->fault_headers) { /* consumed here: x-sidekick-fault-* never reach the upstream */
        ssize_t j = 0;
        for (ssize_t i = 0; i < k; i++) {
            const sk_header *v = &r->up_hdrs[i];
            if (!(v->name_len > 17 && strncasecmp(v->name, "x-sidekick-fault-", 17) == 0))
                r->up_hdrs[j++] = *v;
        }
        k = j;
    }
    sk_buf *x = &r->xff;
    sk_buf_reset(x);
    int rc = 0;
    for (size_t i = 0; i < h->nhdrs; i++) {
        const sk_header *v = &h->views[i];
        if (!sk_streq_nocase(v->name, v->name_len, "x-forwarded-for") || v->value_len == 0) continue;
        rc |= sk_buf_append(x, v->value, v->value_len);
        rc |= sk_buf_append(x, ", ", 2);
    }
    rc |= sk_buf_puts(x, r->client_ip);
    if (rc) return -1;
    sk_header *o = r->up_hdrs;
    HDR_SET(&o[k++], "x-forwarded-for", x->data, x->len);
    HDR_SET(&o[k++], "x-forwarded-proto", r->secure ? "https" : "http", r->secure ? 5 : 4);
    if (r->identity) { /* the verified peer's SPIFFE ID, as Envoy forwards it */
        size_t il = strlen(r->identity);
        char *v = sk_arena_alloc(&r->arena, il + 5);
        if (!v) return -1;
        memcpy(v, "URI=", 4);
        memcpy(v + 4, r->identity, il + 1);
        HDR_SET(&o[k++], "x-forwarded-client-cert", v, il + 4);
    }
    /* HTTP/1.0 clients may omit Host; HTTP/1.1 upstreams require one. */
    if (!r->authority_len) {
        const char *host = r->cluster ? r->cluster->name : "localhost";
        HDR_SET(&o[k++], "host", host, strlen(host));
    }
    HDR_SET(&o[k++], "x-request-id", r->request_id, strlen(r->request_id));
    r->up_nhdrs = (size_t)k;
    q->hdrs = r->up_hdrs;
    q->nhdrs = r->up_nhdrs;
    return 0;
}

static void upstream_error(sk_request *r, int status, const char *reason, bool retryable);
static void on_try_timer(struct ev_loop *loop, ev_timer *t, int revents);

static void on_route_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_request *r = t->data;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    upstream_error(r, 504, "upstream_timeout", false);
    ops->flush(down);
}

extern const sk_client_cbs sk_proxy_client_cbs;

/* Picks the endpoint of this attempt through the cluster's balancer,
 * avoiding the endpoints the request tried when another one exists. */
static sk_pool *pick_endpoint(sk_request *r)
{
    sk_balance_ctx ctx = {.avoid = r->tried, .navoid = r->ntried < SK_TRIED_MAX ? r->ntried : SK_TRIED_MAX};
    const char *key = NULL;
    ctx.hash_key_len = sk_request_hash_key(r, r->cluster, &key);
    ctx.hash_key = key;
    sk_pool *pool = sk_cluster_pick(r->worker, r->cluster, &ctx);
    if (pool) r->tried[r->ntried++ % SK_TRIED_MAX] = pool->endpoint;
    return pool;
}

/* Starts (or restarts, for a retry) the upstream exchange. */
static void start_upstream(sk_request *r)
{
    sk_pool *pool = pick_endpoint(r);
    if (!pool) {
        upstream_error(r, 503, "no_healthy_upstream", false);
        return;
    }
    r->pool = pool;
    memcpy(r->endpoint, pool->endpoint->address.text, sizeof(r->endpoint));
    r->attempts++;
    r->upstream_start_ns = sk_now_ns();
    r->upstream_bytes_sent = 0;
    int got;
    sk_upconn *u = sk_pool_get(r->worker, pool, &got);
    if (got == SK_POOL_OVERLOADED) {
        upstream_error(r, 503, "overloaded", false);
        return;
    }
    r->attempt_open = true; /* report_attempt tells the cluster how it went */
    if (!u) {
        upstream_error(r, 502, "upstream_connect_failure", true);
        return;
    }
    r->up_reused = got == SK_POOL_REUSED;
    r->counted_pending = got == SK_POOL_CONNECTING;
    if (got != SK_POOL_CONNECTING) r->upstream_connect_ns = sk_now_ns();
    r->up = u;
    r->up_ops = &sk_h1_client_ops;
    sk_upconn_attach(u, &r->msg, r, &sk_proxy_client_cbs);
    if (r->route->per_try_timeout_ms) {
        ev_timer_set(&r->try_timer, (double)r->route->per_try_timeout_ms / 1000.0, 0.);
        ev_timer_start(r->worker->loop, &r->try_timer);
    }
    sk_out_request q;
    if (build_upstream_request(r, &q) < 0 || r->up_ops->send_head(u, &q) < 0) {
        upstream_error(r, 500, "internal_error", false);
        return;
    }
    /* A retry sends the body received so far again (the retry policy only
     * retries when all of it is kept); the rest streams as it comes. */
    bool replayed = r->body_seen > 0;
    if (replayed && (!sk__can_replay(r) || r->up_ops->send_body(u, r->replay.data, r->replay.len) < 0)) {
        upstream_error(r, 500, "internal_error", false);
        return;
    }
    if (r->up_body_done && r->up_ops->send_end(u) < 0) {
        upstream_error(r, 500, "internal_error", false);
        return;
    }
    /* Inside the codec's parser, input_done flushes once the body pieces of
     * this read are queued too: one write for head and body. A replayed
     * body is written (or copied) at once: replay may grow under it. */
    if (replayed || !r->in_codec) r->up_ops->flush(u);
}

/* Mirroring: a copy of r for the route's mirror cluster (mirror.c), once
 * its body is complete. */
static void mirror(sk_request *r)
{
    r->mirror_pending = false;
    sk_out_request q;
    if (build_upstream_request(r, &q) < 0) {
        count_route(r, SK_MC_MIRROR_FAILED);
        return;
    }
    sk__mirror_send(r, &q);
}

/* The chain is done: pick the cluster and start the upstream exchange. */
static void go_upstream(sk_request *r)
{
    const sk_route *rt = r->route;
    r->cluster =
        r->cluster_override ? r->cluster_override : sk_route_pick_cluster(rt, sk_wctx_rand(r->worker));
    if (__atomic_add_fetch(&r->cluster->active_requests, 1, __ATOMIC_RELAXED) > r->cluster->max_requests) {
        __atomic_sub_fetch(&r->cluster->active_requests, 1, __ATOMIC_RELAXED);
        count_cluster(r, SK_MC_OVERFLOW_REQUESTS);
        reply(r, 503, "overloaded", NULL, false);
        return;
    }
    r->counted_request = true;
    if (rt->retries) sk__retry_budget_deposit(r->cluster); /* the requests that may retry earn the budget */
    if (rt->timeout_ms) {
        ev_timer_init(&r->timeout, on_route_timeout, (double)rt->timeout_ms / 1000.0, 0.);
        r->timeout.data = r;
        ev_timer_start(r->worker->loop, &r->timeout);
    }
    ev_init(&r->try_timer, on_try_timer);
    r->try_timer.data = r;
    /* The body is kept for a retry or the mirror while it fits the bound. */
    r->replay_keep = (rt->retries || rt->mirror) && r->req_framing != SK_BODY_NONE &&
                     !(r->req_framing == SK_BODY_LENGTH && r->req_content_length > SK_REPLAY_MAX);
    if (rt->mirror && !r->worker->draining && draw(r, rt->mirror_ppm)) {
        if (r->req_framing == SK_BODY_NONE)
            mirror(r);
        else
            r->mirror_pending = true; /* sent with the whole body (down_body_end) */
    }
    if (r->expect_continue) r->down_ops->send_continue(r->down);
    start_upstream(r);
}

/* ---- fault injection ---- */

static void on_fault_delay(struct ev_loop *loop, ev_timer *t, int revents);

/* A status 200..599 of three digits. 0 or -1. */
static int parse_status(const char *v, uint64_t *status)
{
    if (strlen(v) != 3 || v[0] < '2' || v[0] > '5' || v[1] < '0' || v[1] > '9' || v[2] < '0' || v[2] > '9')
        return -1;
    *status = (uint64_t)((v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0'));
    return 0;
}

/* The value of request header `name` as a C string in buf, or NULL. */
static const char *header_text(const sk_request *r, const char *name, char *buf, size_t size)
{
    const sk_header *h = sk_head_get(&r->head, name);
    if (!h || h->value_len == 0 || h->value_len >= size) return NULL;
    memcpy(buf, h->value, h->value_len);
    buf[h->value_len] = 0;
    return buf;
}

/*
 * The route's faults, between the filter chain and the upstream: first a
 * delay (fault_delay's share, or forced by x-sidekick-fault-delay with
 * fault_headers = on), during which the codec holds the body, then an
 * abort (fault_abort's share, or x-sidekick-fault-abort): a local reply
 * with reason fault_injected. Header values out of range are ignored.
 * Returns true when the request waits for its delay or was answered.
 */
static bool inject_faults(sk_request *r)
{
    const sk_route *rt = r->route;
    char buf[32];
    const char *v;
    if (!r->fault_decided) {
        r->fault_decided = true;
        uint64_t ms = 0;
        if (rt->fault_headers && (v = header_text(r, "x-sidekick-fault-delay", buf, sizeof(buf))) &&
            (sk_parse_duration(v, &ms) < 0 || ms > SK_FAULT_DELAY_MAX_MS))
            ms = 0;
        if (!ms && rt->fault_delay_ms && draw(r, rt->fault_delay_ppm)) ms = rt->fault_delay_ms;
        if (ms) {
            r->faults |= 1;
            count_route(r, SK_MC_FAULT_DELAY);
            r->fault_wait = true;
            ev_timer_init(&r->timeout, on_fault_delay, (double)ms / 1000.0, 0.);
            r->timeout.data = r;
            ev_now_update(r->worker->loop); /* from now, not from the loop's cached time */
            ev_timer_start(r->worker->loop, &r->timeout);
            return true;
        }
    }
    uint64_t status = 0;
    if (rt->fault_headers && (v = header_text(r, "x-sidekick-fault-abort", buf, sizeof(buf))) &&
        parse_status(v, &status) < 0)
        status = 0;
    if (!status && rt->fault_abort_status && draw(r, rt->fault_abort_ppm))
        status = (uint64_t)rt->fault_abort_status;
    if (!status) return false;
    r->faults |= 2;
    count_route(r, SK_MC_FAULT_ABORT);
    reply(r, (int)status, "fault_injected", NULL, false);
    return true;
}

/* The fault delay is over: the abort draw, then upstream; the codec
 * delivers the body from here on. */
static void on_fault_delay(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_request *r = t->data;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    r->fault_wait = false;
    if (!inject_faults(r)) go_upstream(r);
    if (ops->gone(down)) return;
    ops->chain_resumed(down);
    if (!r->finished && r->up && r->up_ops->flush(r->up) < 0) return;
    ops->flush(down);
}

/* Sends the local reply a plugin prepared with respond(). */
static void plugin_reply(sk_request *r)
{
    r->down_ops->local_reply(r->down, r->lr_status, r->lr_reason, r->lr_body, r->lr_body_len, r->lr_headers,
                             false);
}

static void filter_error(sk_request *r, sk_instance *pi, const char *hook)
{
    sk_warn("plugin %s: %s failed for %s %.*s", sk_filters->name(pi), hook, r->method ? r->method : "-",
            (int)r->path_len, r->path ? r->path : "");
    reply(r, 500, "filter_error", NULL, false);
}

static void on_filter_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_request *r = t->data;
    sk_instance *pi = r->paused_by;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    sk_warn("plugin %s: request paused longer than %.0f ms, giving up", sk_filters->name(pi),
            t->repeat * 1000);
    r->filter_paused = false;
    r->paused_by = NULL;
    sk_filters->on_cancel(pi, r);
    sk_filters->count_error(pi);
    reply(r, 500, "filter_error", NULL, false);
    ops->chain_resumed(down);
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
            r->route && r->route->timeout_ms ? r->route->timeout_ms : r->listener->header_timeout_ms;
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
        sk_warn("plugin %s: returned SK_RESPOND without calling respond()", sk_filters->name(pi));
        sk_filters->count_error(pi);
        filter_error(r, pi, "on_request");
        return true;
    default: filter_error(r, pi, "on_request"); return true;
    }
}

/*
 * The filter chain: listener plugins, route match, route plugins, the Lua
 * filter, then the upstream (or the route's `respond`). Resumable:
 * r->chain_pos remembers where a paused plugin stopped.
 */
static void run_chain(sk_request *r)
{
    const sk_listener *l = r->listener;
    for (;;) {
        if (gone(r) || r->response_started) return;
        if (r->chain_pos < l->nplugins) {
            sk_instance *pi = l->plugins[r->chain_pos++];
            if (chain_result(r, pi, sk_filters->on_request(pi, r))) return;
            continue;
        }
        if (!r->routed) {
            r->routed = true;
            r->route = sk_route_match(l, r->method, strlen(r->method), r->host, r->host_len, r->path,
                                      r->path_len, r->head.views, r->head.nhdrs);
            if (!r->route) {
                reply(r, 404, "no_route", NULL, false);
                return;
            }
        }
        const sk_route *rt = r->route;
        if (r->chain_pos < l->nplugins + rt->nplugins) {
            sk_instance *pi = rt->plugins[r->chain_pos++ - l->nplugins];
            if (chain_result(r, pi, sk_filters->on_request(pi, r))) return;
            continue;
        }
        break;
    }
    if (r->route->lua && !r->lua_ran) {
        r->lua_ran = true;
        sk_status st = sk_filters->lua_on_request(r);
        if (gone(r)) return;
        if (st == SK_RESPOND) {
            plugin_reply(r);
            return;
        }
        if (st != SK_CONTINUE) {
            reply(r, 500, "filter_error", NULL, false);
            return;
        }
    }
    if (r->route->respond_status) {
        reply(r, r->route->respond_status, NULL, r->route->respond_body, false);
        return;
    }
    if (inject_faults(r)) return;
    go_upstream(r);
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
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    stop_timeout(r);
    r->filter_paused = false;
    r->paused_by = NULL;
    if (st > SK_ERROR || st == SK_PAUSE) {
        sk_warn("plugin %s: resume() with status %d", sk_filters->name(pi), (int)st);
        st = SK_ERROR;
    }
    if (st == SK_ERROR) sk_filters->count_error(pi);
    if (!chain_result(r, pi, st)) run_chain(r);
    /* A reply may have finished (and recycled) r by now: it is only touched
     * again while it is not finished. The stream outlives this call. */
    if (ops->gone(down)) return;
    if (!r->finished && r->fault_wait) return; /* the fault delay holds the body: on_fault_delay goes on */
    ops->chain_resumed(down);
    if (!r->finished && r->up && r->up_ops->flush(r->up) < 0) return;
    ops->flush(down);
}

/* The plugins the request went through, for on_response / on_log (in reverse). */
static sk_instance *chain_at(const sk_request *r, unsigned i)
{
    const sk_listener *l = r->listener;
    if (i < l->nplugins) return l->plugins[i];
    return r->route ? r->route->plugins[i - l->nplugins] : NULL;
}

/* on_log of every plugin the request reached, last first. */
void sk_proxy_log(sk_request *r)
{
    r->end_ns = sk_now_ns();
    for (unsigned i = r->chain_pos; i-- > 0;) {
        sk_instance *pi = chain_at(r, i);
        if (pi) sk_filters->on_log(pi, r);
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
        sk_status st = sk_filters->lua_on_response(r);
        if (st != SK_CONTINUE) {
            stop = true;
            if (st != SK_RESPOND || !r->lr_status) prepare_filter_error(r);
        }
    }
    for (unsigned i = r->chain_pos; i-- > 0 && !stop;) {
        sk_instance *pi = chain_at(r, i);
        if (!pi) continue;
        r->lr_status = 0; /* only a reply prepared by this hook counts */
        sk_status st = sk_filters->on_response(pi, r);
        if (st == SK_CONTINUE) continue;
        stop = true;
        if (st == SK_RESPOND && r->lr_status) break;
        if (st == SK_RESPOND) sk_filters->count_error(pi);
        sk_warn("plugin %s: on_response failed", sk_filters->name(pi));
        prepare_filter_error(r);
    }
    r->in_response_hooks = false;
    return stop;
}

/* A filter's on_response replaced the upstream response: drop the upstream
 * connection and answer with the prepared reply. */
static void filter_reply(sk_request *r)
{
    release_upstream(r, false);
    stop_timeout(r);
    stop_try_timer(r, false);
    release_cluster(r);
    r->status = 0;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    plugin_reply(r);
    ops->flush(down);
}

/* Nothing more goes upstream for r: a paused filter is cancelled, the
 * upstream connection and the circuit-breaker slots are released. */
static void cancel(sk_request *r)
{
    stop_timeout(r);
    stop_try_timer(r, false);
    r->fault_wait = false;
    r->mirror_pending = false;
    if (r->filter_paused) {
        sk_instance *pi = r->paused_by;
        r->filter_paused = false;
        r->paused_by = NULL;
        sk_filters->on_cancel(pi, r);
    }
    release_upstream(r, false);
    release_cluster(r);
}

/* ---- what the cluster learns of each attempt (ewma, outlier detection) ---- */

/* The attempt in flight is over: tell its cluster once, with its latency
 * from the request going out on a ready connection (a new connection's
 * connect is not the endpoint's answer time), or from the attempt's start
 * when it never got one. */
static void report_attempt(sk_request *r, bool failed)
{
    if (!r->attempt_open || !r->pool) return;
    r->attempt_open = false;
    uint64_t from =
        r->upstream_connect_ns > r->upstream_start_ns ? r->upstream_connect_ns : r->upstream_start_ns;
    if (sk_cluster_report(r->cluster, r->pool->endpoint, failed, sk_now_ns() - from))
        count_cluster(r, SK_MC_EJECTIONS);
}

/* An attempt failed with `reason`: gateway failures count against the
 * endpoint; our own limits and errors (overloaded, internal_error) do not. */
static void report_failure(sk_request *r, const char *reason)
{
    static const char *const gateway[] = {"upstream_connect_failure", "upstream_reset", "upstream_timeout",
                                          "upstream_protocol_error", "upstream_identity_mismatch"};
    for (size_t i = 0; i < SK_ARRAY_LEN(gateway); i++)
        if (strcmp(reason, gateway[i]) == 0) {
            report_attempt(r, true);
            return;
        }
    r->attempt_open = false;
}

/* ---- retry policy ---- */

/*
 * May r be tried again after its attempt failed for `cond` (enum
 * sk_retry_cond)? All of: the route's retry_on has it, retries are left,
 * nothing of the response went to the client, the body so far can be
 * replayed, the method is idempotent or no byte of the request reached the
 * upstream, and — last, as they are taken — a max_retries slot of the
 * cluster and its retry budget. Counts the retry (or why it was refused)
 * and records it as the request's retry_reason.
 */
static bool retry_allowed(sk_request *r, int cond)
{
    const sk_route *rt = r->route;
    sk_cluster *cl = r->cluster;
    unsigned on = cond == SK_RETRY_PER_TRY_TIMEOUT ? SK_RETRY_BIT(SK_RETRY_504) : SK_RETRY_BIT(cond);
    if (!rt || !cl || r->response_started || !(rt->retry_on & on) || r->attempts > rt->retries) return false;
    if (!sk__can_replay(r)) return false;
    if (!sk_method_idempotent(r->method_id) && r->upstream_bytes_sent > 0) return false;
    if (!r->counted_retry) {
        if (__atomic_add_fetch(&cl->active_retries, 1, __ATOMIC_RELAXED) > cl->max_retries) {
            __atomic_sub_fetch(&cl->active_retries, 1, __ATOMIC_RELAXED);
            count_cluster(r, SK_MC_OVERFLOW_RETRIES);
            return false;
        }
        r->counted_retry = true;
    }
    if (!sk__retry_budget_take(cl)) {
        count_cluster(r, SK_MC_RETRY_BUDGET_EXHAUSTED);
        return false;
    }
    count_cluster(r, SK_MC_RETRIES + cond);
    r->retry_reason = cond;
    return true;
}

/* A pooled connection the upstream closed while we picked it (the
 * keep-alive race) gets one free retry on a fresh connection, whatever
 * `retries` says, when nothing of the response arrived and the request is
 * safe to send again (idempotent, its body so far kept or none yet). */
static bool may_retry_stale(const sk_request *r)
{
    return r->up_reused && !r->stale_retried && !r->response_started && sk_method_idempotent(r->method_id) &&
           sk__can_replay(r);
}

/* The next attempt after the route's backoff (or at once without one).
 * status and reason: the answer if it cannot start after all. */
static void schedule_retry(sk_request *r, int status, const char *reason)
{
    sk_debug("retrying %s %.*s after %s (attempt %u)", r->method, (int)r->path_len, r->path,
             sk_retry_cond_name(r->retry_reason), r->attempts + 1);
    uint64_t ms = sk__retry_backoff_ms(r->route, r->attempts, sk_wctx_rand(r->worker));
    if (!ms) {
        start_upstream(r);
        return;
    }
    r->backing_off = true;
    r->retry_fail_status = status;
    r->retry_fail_reason = reason;
    if (!r->up_body_done) r->down_ops->pause_body(r->down); /* what still comes is kept in replay */
    ev_timer_set(&r->try_timer, (double)ms / 1000.0, 0.);
    ev_now_update(r->worker->loop);
    ev_timer_start(r->worker->loop, &r->try_timer);
}

/* The attempt is over for good: a local reply, or a cut stream when part
 * of the response already went to the client. */
static void final_error(sk_request *r, int status, const char *reason)
{
    stop_timeout(r);
    stop_try_timer(r, true);
    release_cluster(r);
    if (r->response_started) {
        r->reason = reason;
        r->down_ops->abort(r->down);
        return;
    }
    reply(r, status, reason, NULL, false);
}

/* What a failed attempt's reason is to retry_on. */
static int failure_cond(const char *reason)
{
    if (strcmp(reason, "upstream_connect_failure") == 0 || strcmp(reason, "upstream_identity_mismatch") == 0)
        return SK_RETRY_CONNECT_FAILURE;
    if (strcmp(reason, "upstream_reset") == 0) return SK_RETRY_RESET;
    return SK_RETRY_NONE;
}

/* An upstream attempt failed (connect failure, reset, garbage, timeout).
 * Retries when allowed, else answers with a local reply, or cuts the
 * client connection when part of the response is already sent. */
static void upstream_error(sk_request *r, int status, const char *reason, bool retryable)
{
    report_failure(r, reason);
    release_upstream(r, false);
    sk_request_pending_done(r);
    stop_try_timer(r, true);
    /* what went wrong with the attempt, by cluster (not the local refusals:
     * no endpoint, a circuit breaker, an internal error) */
    if (r->cluster) {
        if (strcmp(reason, "upstream_connect_failure") == 0 ||
            strcmp(reason, "upstream_identity_mismatch") == 0)
            count_cluster(r, SK_MC_CONNECT_FAILURES);
        else if (strcmp(reason, "upstream_reset") == 0 || strcmp(reason, "upstream_protocol_error") == 0)
            count_cluster(r, SK_MC_RESETS);
        else if (strcmp(reason, "upstream_timeout") == 0)
            count_cluster(r, SK_MC_TIMEOUTS);
    }
    if (retryable && may_retry_stale(r)) {
        r->stale_retried = true;
        r->attempts--;
        sk_debug("pooled upstream connection was stale, retrying on a new one");
        count_cluster(r, SK_MC_RETRIES + SK_RETRY_NONE); /* reason stale-connection */
        start_upstream(r);
        return;
    }
    int cond = retryable ? failure_cond(reason) : SK_RETRY_NONE;
    if (cond != SK_RETRY_NONE && retry_allowed(r, cond)) {
        schedule_retry(r, status, reason);
        return;
    }
    final_error(r, status, reason);
}

/* try_timer: the backoff is over (start the next attempt), or the running
 * attempt reached per_try_timeout (cut it; retried under `504`). */
static void on_try_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_request *r = t->data;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    if (r->backing_off) {
        stop_try_timer(r, true);
        if (!sk__can_replay(r)) /* the body outgrew the bound while we waited */
            final_error(r, r->retry_fail_status, r->retry_fail_reason);
        else
            start_upstream(r);
        if (!ops->gone(down)) ops->flush(down);
        return;
    }
    sk_debug("%s %.*s: try %u cut after per_try_timeout", r->method, (int)r->path_len, r->path, r->attempts);
    report_failure(r, "upstream_timeout"); /* a try that timed out counts against its endpoint */
    count_cluster(r, SK_MC_TIMEOUTS);
    release_upstream(r, false);
    sk_request_pending_done(r);
    if (retry_allowed(r, SK_RETRY_PER_TRY_TIMEOUT))
        schedule_retry(r, 504, "upstream_timeout");
    else
        final_error(r, 504, "upstream_timeout");
    if (!ops->gone(down)) ops->flush(down);
}

/* ---- sk_client_cbs: what the upstream connection tells the request ---- */

static void up_connected(void *rq)
{
    sk_request *r = rq;
    r->upstream_connect_ns = sk_now_ns();
    sk_request_pending_done(r);
}

/* An answer whose status is in retry_on is retried (read whole and
 * dropped, not forwarded) while the retry policy allows; only once the
 * request body is complete, as the next attempt replays all of it. Asked
 * once per final response head: a retried one is counted here. */
static bool up_retry_status(void *rq, int status)
{
    sk_request *r = rq;
    report_attempt(r, status >= 500); /* every final response head comes here first */
    int cond = status == 502   ? SK_RETRY_502
               : status == 503 ? SK_RETRY_503
               : status == 504 ? SK_RETRY_504
               : status == 409 ? SK_RETRY_409
                               : SK_RETRY_NONE;
    bool retry = cond != SK_RETRY_NONE && r->up_body_done && retry_allowed(r, cond);
    if (retry) count_upstream_code(r, status);
    return retry;
}

/* Sends the response head to the client, after the on_response hooks. */
static int up_response_head(void *rq, int status, bool no_body, bool has_length, uint64_t length)
{
    sk_request *r = rq;
    sk_head *h = &r->rhead;
    stop_try_timer(r, false); /* the answer is here: per_try_timeout is over, the route timeout goes on */
    count_upstream_code(r, status);
    if (sk_head_finish(h) < 0) return -1;
    if (r->chain_pos || r->lua_ran) {
        r->status = status;
        if (response_hooks(r)) {
            r->status = 0;
            return 1; /* the codec stops reading and calls filter_reply */
        }
    }
    if (status < 100 || status > 999) return -1;
    ssize_t n = collect_headers(h, false, &r->down_hdrs, &r->down_hdrs_cap, 0);
    if (n < 0) return -1;
    int framing;
    if (no_body) {
        framing = SK_BODY_NONE;
        has_length = has_length && (r->method_id == SK_METHOD_HEAD || status == 304);
    } else {
        framing = has_length ? SK_BODY_LENGTH : SK_BODY_CHUNKED;
    }
    const char *reason = h->url_len ? h->raw.data + h->url : NULL;
    return r->down_ops->send_head(r->down, status, reason, h->url_len, r->down_hdrs, (size_t)n, framing,
                                  has_length, length);
}

static int up_response_body(void *rq, const char *p, size_t n)
{
    sk_request *r = rq;
    return r->down_ops->send_body(r->down, p, n);
}

/* The upstream response is complete: flush, release the upstream
 * connection (pooled if it is still cleanly framed), finish the response. */
static void up_response_end(void *rq, bool reusable)
{
    sk_request *r = rq;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    stop_try_timer(r, false);
    ops->send_end(down);
    r->upstream_end_ns = sk_now_ns();
    observe_upstream(r);
    stop_timeout(r);
    /* Flush while the body still points into the upstream read buffer. */
    ops->flush(down);
    if (ops->gone(down)) return; /* closing finished the request and released everything */
    release_upstream(r, reusable && r->up_body_done);
    release_cluster(r);
    ops->response_done(down);
}

/* A retried response was read whole: try again. */
static void up_retry(void *rq, bool reusable)
{
    sk_request *r = rq;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    observe_upstream(r);
    release_upstream(r, reusable && r->up_body_done);
    sk_head_reset(&r->rhead);
    stop_try_timer(r, false); /* the retry was counted when it was decided (retry_allowed) */
    schedule_retry(r, 502, "upstream_reset");
    ops->flush(down);
}

static void up_error(void *rq, int status, const char *reason, bool retryable)
{
    sk_request *r = rq;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    upstream_error(r, status, reason, retryable);
    ops->flush(down);
}

static void up_filter_reply(void *rq)
{
    filter_reply(rq);
}

/* The upstream is slower than the client: stop reading the client. */
static void up_congested(void *rq)
{
    sk_request *r = rq;
    r->down_ops->pause_body(r->down);
}

static void up_drained(void *rq)
{
    sk_request *r = rq;
    r->down_ops->resume_body(r->down);
}

/* Body pieces of one upstream read are queued to the client: write them. */
static int up_read_done(void *rq)
{
    sk_request *r = rq;
    const sk_server_ops *ops = r->down_ops;
    void *down = r->down;
    ops->flush(down);
    if (ops->gone(down)) return -1; /* closing released the upstream connection */
    return ops->pending(down) > SK_HIGH_WATER ? 1 : 0;
}

const sk_client_cbs sk_proxy_client_cbs = {
    .connected = up_connected,
    .retry_status = up_retry_status,
    .response_head = up_response_head,
    .response_body = up_response_body,
    .response_end = up_response_end,
    .retry = up_retry,
    .error = up_error,
    .filter_reply = up_filter_reply,
    .congested = up_congested,
    .drained = up_drained,
    .read_done = up_read_done,
};

/* ---- sk_server_cbs: what the downstream codec tells the request ---- */

static void *down_begin(void *s, const sk_server_ops *ops, const sk_conn_info *ci, sk_msg **msg)
{
    sk_request *r = sk_request_new(ci, ops, s);
    if (!r) return NULL;
    *msg = &r->msg;
    return r;
}

/* The request head is complete: x-request-id, then the filter chain.
 * 1 while a filter holds it, -1 when the stream is gone, else 0. */
static int down_head(void *rq)
{
    sk_request *r = rq;
    /* x-request-id: the client's (if sane) or a new one; logged either way. */
    const sk_header *rid = sk_head_get(&r->head, "x-request-id");
    if (rid && rid->value_len && rid->value_len < sizeof(r->request_id)) {
        memcpy(r->request_id, rid->value, rid->value_len);
        r->request_id[rid->value_len] = 0;
    } else {
        gen_request_id(r->worker, r->request_id);
    }
    r->in_codec = true;
    if (r->listener->tls && !sk_tls_identity_allowed(r->listener->tls, r->identity)) {
        /* a verified peer that is not on the listener's peer_identity: every request of it */
        sk_debug("client %s: identity %s not allowed on listener %s", r->client_addr,
                 r->identity ? r->identity : "(none)", r->listener->name);
        reply(r, 403, "forbidden", NULL, false);
    } else {
        run_chain(r);
    }
    if (gone(r)) return -1;
    r->in_codec = false;
    return r->filter_paused || r->fault_wait ? 1 : 0;
}

/* Forwards a piece of decoded request body. */
static int down_body(void *rq, const char *p, size_t n)
{
    sk_request *r = rq;
    r->body_seen += n;
    if (r->replay_keep && (r->replay.len + n > SK_REPLAY_MAX || sk_buf_append(&r->replay, p, n) < 0)) {
        r->replay_keep = false; /* past the bound: not replayed, not mirrored */
        sk_buf_reset(&r->replay);
    }
    if (!r->up) return 0; /* the exchange failed (a reply is on its way), or a retry waits: kept above */
    if (r->up_ops->send_body(r->up, p, n) < 0) {
        upstream_error(r, 500, "internal_error", false);
        return -1;
    }
    return 0;
}

/* The request body is complete. */
static int down_body_end(void *rq)
{
    sk_request *r = rq;
    r->up_body_done = true;
    if (r->mirror_pending) mirror(r);
    if (r->up && r->up_ops->send_end(r->up) < 0) {
        upstream_error(r, 500, "internal_error", false);
        return -1;
    }
    return 0;
}

/* What one client read brought is queued upstream: write it. */
static void down_input_done(void *rq)
{
    sk_request *r = rq;
    if (r->up) r->up_ops->flush(r->up);
}

/* The client is slower than the upstream: stop reading the upstream. */
static void down_congested(void *rq)
{
    sk_request *r = rq;
    if (r->up) r->up_ops->pause_read(r->up);
}

static void down_drained(void *rq)
{
    sk_request *r = rq;
    if (r->up) r->up_ops->resume_read(r->up);
}

static void down_cancel(void *rq)
{
    sk_request *r = rq;
    if (r->up || r->counted_request || r->filter_paused || r->fault_wait) cancel(r);
}

/* The exchange is over. A cut one is cancelled (a paused filter gets
 * on_cancel, the upstream request is aborted) and logged unless its
 * response was complete. A client that closed before its response started
 * is logged and counted with status 499 and reason client_closed (nginx's
 * 499); other cut requests are logged with their reason (client_abort by
 * default) and not counted. Complete ones are counted and logged. Either
 * way the request is recycled. */
static void down_finish(void *rq, bool complete)
{
    sk_request *r = rq;
    if (!complete) {
        cancel(r);
        if (r->client_closed && !r->response_started && !r->reason) {
            r->status = 499;
            r->reason = "client_closed";
            if (r->state == SK_REQ_HEAD) { /* not a request yet: logged, not counted */
                sk_request_log(r);
                sk_request_free(r);
                return;
            }
            sk_request_finish(r);
            return;
        }
        if (r->status == 0 || !r->response_started || r->state != SK_REQ_DONE) {
            if (!r->reason) r->reason = "client_abort";
            sk_request_log(r);
        }
        sk_request_free(r);
        return;
    }
    sk_request_finish(r);
}

const sk_server_cbs sk_proxy_server_cbs = {
    .begin = down_begin,
    .head = down_head,
    .body = down_body,
    .body_end = down_body_end,
    .input_done = down_input_done,
    .congested = down_congested,
    .drained = down_drained,
    .cancel = down_cancel,
    .finish = down_finish,
};
