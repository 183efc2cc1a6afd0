/*
 * mirror.c — request mirroring (shadow traffic): a route's `mirror =
 * CLUSTER PCT%` sends that share of its requests, as a copy, to another
 * cluster as well. The copy is its own exchange (sk_shadow) on a
 * connection of the mirror cluster's pools, with "-shadow" appended to
 * the host; its answer is read and dropped, so neither its status nor its
 * latency reaches the client, and nothing of it touches the request it
 * was copied from, which may finish (and be recycled) first.
 *
 * Bounded: a copy counts against the mirror cluster's circuit breakers
 * (max_requests for copies in flight, max_connections, max_pending) and
 * is dropped (counted) over them; it lives at most the route's `timeout`
 * (15 s when the route has none). A body is copied only up to the replay
 * bound (SK_REPLAY_MAX): a request with a bigger one is not mirrored.
 *
 * A copy holds a reference to its config generation, so its cluster and
 * pools outlive a reload; the worker ends the copies still in flight when
 * it exits (sk_mirror_abort_all). Copies are recycled per thread.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "h1_client.h"
#include "pool.h"
#include "traffic.h"
#include "metrics.h"

#define SK_SHADOW_SPARE      64    /* copies kept for reuse per thread */
#define SK_SHADOW_DEFAULT_MS 15000 /* life of a copy when the route has no timeout */

/* One mirrored copy in flight. */
typedef struct sk_shadow {
    sk_msg msg;            /* the exchange as the client codec sees it (response head, arena) */
    sk_link link;          /* in the thread's list of copies in flight, or of spare ones */
    sk_wctx *worker;       /* its thread */
    sk_config *config;     /* the generation of its route (reference) */
    sk_cluster *cluster;   /* the mirror cluster */
    const sk_route *route; /* the route it was copied for (its counters) */
    sk_upconn *up;         /* its upstream connection, or NULL */
    bool counted_request;  /* holds a max_requests slot of the mirror cluster */
    bool counted_pending;  /* holds a max_pending slot while connecting */
    ev_timer timer;        /* its time limit */
} sk_shadow;

/* The thread's copies: in flight, and spare ones for reuse. */
static __thread sk_link live, spare;
static __thread bool lists_ready;
static __thread size_t nspare;

static void lists_init(void)
{
    if (lists_ready) return;
    sk_list_init(&live);
    sk_list_init(&spare);
    lists_ready = true;
}

/* Counts an event (enum sk_mcounter) in row `row` of the thread's metrics. */
static void count(sk_wctx *w, size_t row, int which)
{
    sk_metrics_count(w->metrics, row, which);
}

static void pending_done(sk_shadow *s)
{
    if (s->counted_pending) {
        __atomic_sub_fetch(&s->cluster->active_pending, 1, __ATOMIC_RELAXED);
        s->counted_pending = false;
    }
}

/* The copy is over: its slots and connection go back, it is recycled. */
static void shadow_done(sk_shadow *s, bool reuse)
{
    if (ev_is_active(&s->timer)) ev_timer_stop(s->worker->loop, &s->timer);
    if (s->up) {
        sk_upconn *u = s->up;
        s->up = NULL;
        sk_pool_put(u, reuse);
    }
    pending_done(s);
    if (s->counted_request) {
        __atomic_sub_fetch(&s->cluster->active_requests, 1, __ATOMIC_RELAXED);
        s->counted_request = false;
    }
    sk_list_remove(&s->link);
    sk_config_unref(s->config);
    s->config = NULL;
    if (nspare >= SK_SHADOW_SPARE || s->msg.rhead.raw.cap > 65536 || s->msg.rhead.cap > 256) {
        sk_head_free(&s->msg.rhead);
        sk_arena_free(&s->msg.arena);
        free(s);
        return;
    }
    sk_head_reset(&s->msg.rhead);
    sk_arena_reset(&s->msg.arena);
    sk_list_insert(&spare, &s->link);
    nspare++;
}

/* The copy got no complete answer. */
static void shadow_failed(sk_shadow *s)
{
    count(s->worker, s->route->metrics_row, SK_MC_MIRROR_FAILED);
    shadow_done(s, false);
}

static void on_shadow_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_shadow *s = t->data;
    sk_debug("mirror %s: no answer in time", s->cluster->name);
    shadow_failed(s);
}

/* ---- sk_client_cbs of a copy: the answer is read and dropped ---- */

static void sh_connected(void *rq)
{
    pending_done(rq);
}

static bool sh_retry_status(void *rq, int status)
{
    return false; /* a copy is never retried */
}

static int sh_response_head(void *rq, int status, bool no_body, bool has_length, uint64_t length)
{
    return 0;
}

static int sh_response_body(void *rq, const char *p, size_t n)
{
    return 0;
}

static void sh_response_end(void *rq, bool reusable)
{
    shadow_done(rq, reusable);
}

static void sh_retry(void *rq, bool reusable)
{
    shadow_done(rq, false); /* not reached: sh_retry_status never asks for it */
}

static void sh_error(void *rq, int status, const char *reason, bool retryable)
{
    sk_shadow *s = rq;
    sk_debug("mirror %s: %s", s->cluster->name, reason);
    shadow_failed(s);
}

static void sh_filter_reply(void *rq)
{
    shadow_failed(rq); /* not reached: no filter runs on a copy */
}

static void sh_nothing(void *rq) {}

static int sh_read_done(void *rq)
{
    return 0;
}

static const sk_client_cbs shadow_cbs = {
    .connected = sh_connected,
    .retry_status = sh_retry_status,
    .response_head = sh_response_head,
    .response_body = sh_response_body,
    .response_end = sh_response_end,
    .retry = sh_retry,
    .error = sh_error,
    .filter_reply = sh_filter_reply,
    .congested = sh_nothing,
    .drained = sh_nothing,
    .read_done = sh_read_done,
};

/* A spare or new copy, listed as in flight; NULL on OOM. */
static sk_shadow *shadow_new(sk_request *r)
{
    lists_init();
    sk_shadow *s;
    if (!sk_list_empty(&spare)) {
        sk_link *l = spare.next;
        sk_list_remove(l);
        nspare--;
        s = SK_CONTAINER(l, sk_shadow, link);
    } else {
        if (!(s = calloc(1, sizeof(*s)))) return NULL;
        sk_list_init(&s->link);
    }
    sk_head head = s->msg.rhead;
    sk_arena arena = s->msg.arena;
    memset(s, 0, sizeof(*s));
    s->msg.rhead = head;
    s->msg.arena = arena;
    sk_list_init(&s->link);
    s->worker = r->worker;
    s->config = r->config;
    sk_config_ref(s->config);
    s->route = r->route;
    s->cluster = r->route->mirror;
    s->msg.method = r->method;
    s->msg.method_id = r->method_id;
    s->msg.state = SK_REQ_UPSTREAM;
    s->msg.start_ns = sk_now_ns();
    ev_init(&s->timer, on_shadow_timeout);
    s->timer.data = s;
    sk_list_insert(&live, &s->link);
    return s;
}

/* The copy's header fields: q's, with "-shadow" appended to the host (before
 * a port: "api:8080" → "api-shadow:8080"), in the copy's arena. */
static const sk_header *shadow_headers(sk_shadow *s, const sk_out_request *q)
{
    sk_header *h = sk_arena_alloc(&s->msg.arena, (q->nhdrs ? q->nhdrs : 1) * sizeof(*h));
    if (!h) return NULL;
    for (size_t i = 0; i < q->nhdrs; i++) {
        h[i] = q->hdrs[i];
        if (!sk_streq_nocase(h[i].name, h[i].name_len, "host")) continue;
        const char *v = h[i].value;
        size_t n = h[i].value_len, cut = n;
        for (size_t j = n; j-- > 0;) { /* a port: ":" then digits, after any "]" */
            if (v[j] == ':') {
                cut = j;
                break;
            }
            if (v[j] < '0' || v[j] > '9') break;
        }
        if (cut == n - 1) cut = n; /* "host:" without digits: no port */
        char *nv = sk_arena_alloc(&s->msg.arena, n + 7);
        if (!nv) return NULL;
        memcpy(nv, v, cut);
        memcpy(nv + cut, "-shadow", 7);
        memcpy(nv + cut + 7, v + cut, n - cut);
        h[i].value = nv;
        h[i].value_len = n + 7;
    }
    return h;
}

/* Sends a copy of r to its route's mirror cluster (see traffic.h). */
void sk__mirror_send(sk_request *r, const sk_out_request *q)
{
    const sk_route *rt = r->route;
    sk_cluster *cl = rt->mirror;
    sk_wctx *w = r->worker;
    if (w->draining || !sk__can_replay(r)) { /* a body past the bound is not copied */
        count(w, rt->metrics_row, SK_MC_MIRROR_DROPPED);
        return;
    }
    if (__atomic_add_fetch(&cl->active_requests, 1, __ATOMIC_RELAXED) > cl->max_requests) {
        __atomic_sub_fetch(&cl->active_requests, 1, __ATOMIC_RELAXED);
        count(w, cl->metrics_row, SK_MC_OVERFLOW_REQUESTS);
        count(w, rt->metrics_row, SK_MC_MIRROR_DROPPED);
        return;
    }
    sk_shadow *s = shadow_new(r);
    if (!s) {
        __atomic_sub_fetch(&cl->active_requests, 1, __ATOMIC_RELAXED);
        count(w, rt->metrics_row, SK_MC_MIRROR_DROPPED);
        return;
    }
    s->counted_request = true;
    sk_balance_ctx ctx = {0};
    sk_pool *pool = sk_cluster_pick(w, cl, &ctx);
    int got = SK_POOL_FAILED;
    sk_upconn *u = pool ? sk_pool_get(w, pool, &got) : NULL;
    if (got == SK_POOL_OVERLOADED) {
        count(w, rt->metrics_row, SK_MC_MIRROR_DROPPED);
        shadow_done(s, false);
        return;
    }
    if (!u) {
        shadow_failed(s);
        return;
    }
    s->counted_pending = got == SK_POOL_CONNECTING;
    s->up = u;
    sk_upconn_attach(u, &s->msg, s, &shadow_cbs);
    sk_out_request c = *q;
    c.hdrs = shadow_headers(s, q);
    /* the body is whole now: sent with its length, whatever its framing was */
    c.framing = r->req_framing == SK_BODY_NONE ? SK_BODY_NONE : SK_BODY_LENGTH;
    c.length = r->body_seen;
    char *body = NULL;
    if (r->body_seen && (body = sk_arena_alloc(&s->msg.arena, r->replay.len)) != NULL)
        memcpy(body, r->replay.data, r->replay.len);
    if (!c.hdrs || (r->body_seen && !body) || sk_h1_client_ops.send_head(u, &c) < 0 ||
        (body && sk_h1_client_ops.send_body(u, body, r->replay.len) < 0)) {
        shadow_failed(s);
        return;
    }
    count(w, rt->metrics_row, SK_MC_MIRROR_SENT);
    uint64_t ms = rt->timeout_ms ? rt->timeout_ms : SK_SHADOW_DEFAULT_MS;
    ev_timer_set(&s->timer, (double)ms / 1000.0, 0.);
    ev_timer_start(w->loop, &s->timer);
    sk_h1_client_ops.flush(u); /* on failure the error callback has ended the copy */
}

/* Ends the copies in flight and frees the spare ones (worker exit). */
void sk_mirror_abort_all(void)
{
    if (!lists_ready) return;
    while (!sk_list_empty(&live)) shadow_done(SK_CONTAINER(live.next, sk_shadow, link), false);
    while (!sk_list_empty(&spare)) {
        sk_shadow *s = SK_CONTAINER(spare.next, sk_shadow, link);
        sk_list_remove(&s->link);
        sk_head_free(&s->msg.rhead);
        sk_arena_free(&s->msg.arena);
        free(s);
    }
    nspare = 0;
}
