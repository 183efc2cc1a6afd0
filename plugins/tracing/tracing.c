/*
 * tracing.so — what happened between services: one span per request,
 * W3C Trace Context and B3 propagation, export over OTLP/HTTP JSON or
 * Zipkin v2 JSON from the main thread.
 *
 *     [plugin tracing]
 *     service_name = shop-frontend
 *     propagation = w3c, b3        ; w3c | b3 | b3multi: read in this order, write all
 *     span_kind = server           ; server (inbound listener) | client (outbound)
 *     sampling = 0.1               ; ratio for new traces, deterministic from the trace id
 *     force_header = x-sidekick-trace   ; "NAME: 1" samples the request; off = never
 *     exporter = otlp              ; otlp | zipkin
 *     endpoint = http://127.0.0.1:4318/v1/traces
 *     flush_interval = 1s
 *     batch_size = 512
 *     queue_size = 8192
 *     export_timeout = 5s
 *     max_retries = 3
 *     retry_backoff = 200ms
 *     export_header = authorization: Bearer xyz   ; repeatable
 *
 * The request path (workers):
 *  - on_request reads the incoming context (propagation.c), decides on
 *    sampling, picks our span id, rewrites the upstream request's
 *    traceparent / tracestate / b3 / X-B3-* headers with our span as the
 *    parent, and sets meta trace_id and span_id. A sampled request also
 *    gets a private meta key with the ids, which is how on_log finds them
 *    (the ABI has no per-request slot).
 *  - on_log builds a compact span record (span.h) on the worker's own
 *    scratch memory and copies it into the instance's queue under a mutex
 *    held for that one memcpy. A full queue drops the span (counted): a
 *    worker never waits for the exporter.
 *
 * The queue is two byte buffers: workers append to the active one; the
 * main thread swaps them under the lock (O(1)) and encodes the other one's
 * records into JSON outside the lock. queue_size bounds the spans in both
 * (the records not exported yet); each buffer has room for queue_size
 * records of 512 bytes on average (memory is touched only as it is used,
 * and each buffer restarts at its beginning when swapped in).
 *
 * Export (main thread): a main-loop timer (every min(flush_interval,
 * 100ms)) starts an export when batch_size spans wait or flush_interval
 * passed since the last one; one call in flight at a time, the next batch
 * at once when enough wait. A failed export (connection error, timeout,
 * broken response, 429 or 5xx) is retried with exponential backoff and
 * jitter, at most max_retries times, then its spans are dropped (counted);
 * other answers (4xx) drop the batch at once. When every worker of the
 * instance has finished (drain, or its generation retired after a reload)
 * the queue is exported without waiting for flush_interval. Whatever is
 * still queued at destroy is dropped, counted and logged (see
 * docs/plugins/tracing.md on drain).
 *
 * Built against <sidekick/plugin.h> alone (see plugins/CMakeLists.txt).
 */
#include <sidekick/plugin.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "propagation.h"
#include "span.h"

#define MAX_EXPORT_HEADERS 16
#define MAX_BODY           (8u << 20) /* bytes of one export body, well below SK_HTTP_MAX_REQUEST_BODY */
#define AVG_SPAN_BYTES     512        /* queue memory per span of queue_size */
#define TICK_MAX_MS        100        /* the main-loop poll, at most */
#define BACKOFF_MAX_MS     30000      /* retry delays are capped here */
#define FAIL_LOG_MS        30000      /* at most one "still failing" line per this */
#define MAX_TRACESTATE_HDR 8          /* tracestate header lines considered */

enum prop { P_W3C = 0, P_B3 = 1, P_B3MULTI = 2 };

/* sidekick_plugin_tracing_spans_dropped_total{reason} */
enum { DROP_QUEUE_FULL, DROP_EXPORT_FAILED, DROP_SHUTDOWN, DROP_N };
static const char *const drop_names[DROP_N] = {"queue_full", "export_failed", "shutdown"};
/* sidekick_plugin_tracing_export_requests_total{result} */
enum { RES_OK, RES_HTTP_4XX, RES_HTTP_5XX, RES_CONNECT, RES_TIMEOUT, RES_TLS, RES_ERROR, RES_N };
static const char *const res_names[RES_N] = {"ok",      "http_4xx",  "http_5xx", "connect_error",
                                             "timeout", "tls_error", "error"};

typedef struct tracing {
    const sk_host_api *host;
    sk_instance *self;
    /* config (read-only after create) */
    char *service_name;
    int read[2]; /* formats read, in order: P_W3C, P_B3 (B3 covers b3 and b3multi) */
    size_t nread;
    int write_w3c, write_b3, write_b3multi;
    int kind; /* SPAN_SERVER / SPAN_CLIENT */
    double sampling;
    uint64_t bound; /* tp_ratio_bound(sampling) */
    char *force;    /* force header name (lower case), NULL = off */
    size_t force_len;
    int fmt; /* FMT_OTLP / FMT_ZIPKIN */
    char *endpoint;
    uint64_t flush_ms, timeout_ms, backoff_ms;
    unsigned max_retries;
    size_t batch_size, queue_size;
    char *hdrs[2 * (MAX_EXPORT_HEADERS + 1) + 1]; /* name, value, ..., NULL (content-type first) */
    size_t nhdrs;
    char *meta_key; /* "tracing.INSTANCE": the sampled request's ids, on_request → on_log */

    /* the queue (see the top of the file) */
    pthread_mutex_t lock;
    int lock_ok;
    char *buf[2];
    size_t cap;     /* bytes of each buffer */
    size_t blen[2]; /* bytes used (active: under lock; standby: main) */
    size_t bn[2];   /* records in it */
    int act;        /* index of the active buffer (under lock) */
    size_t sb_left; /* records of the standby not taken yet (written by main under lock) */
    size_t sb_off;  /* main: read offset in the standby */

    /* workers of this instance */
    atomic_int live_workers;
    atomic_int seen_workers;

    /* export (main thread only) */
    sk_timer *tick, *retry_timer;
    sk_http_call *call;
    jbuf body;
    size_t body_spans; /* spans in body (in flight or waiting for a retry); 0 = no batch */
    unsigned attempt;  /* retries made for this batch */
    int status;        /* status of the call in flight */
    int in_retry;      /* waiting for retry_timer */
    int final_flush;   /* no worker left: export without waiting */
    int in_send;       /* send_body is handling a refused http_start */
    int draining;      /* on_drain ran (ABI 1.2): the host waits for our calls, not our timers */
    int closing;       /* destroy is running */
    int failing;       /* the last batch failed: log the recovery */
    uint64_t last_flush_ms, last_fail_log_ms;
    uint64_t lost_cancelled; /* spans of a call the host cancelled before destroy */
    uint64_t rng;            /* jitter */

    sk_metric *m_started, *m_sampled, *m_exported, *m_dropped, *m_requests, *m_queued;
} tracing;

typedef struct worker {
    tracing *t;
    uint64_t rng;
    union {
        span_rec rec;
        char bytes[SPAN_REC_MAX];
    } scratch;
    char ts_in[TP_TRACESTATE_MAX_INPUT + 1];
    char ts_out[TP_TRACESTATE_MAX_LEN + 1];
} worker;

/* ---- small helpers ---- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* splitmix64 */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t seed(const void *salt)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
    }
    return s ^ (uint64_t)(uintptr_t)salt;
}

/* n random bytes, not all zero. */
static void rand_id(uint64_t *s, uint8_t *b, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = next_rand(s);
            memcpy(b + i, &v, n - i < 8 ? n - i : 8);
        }
    } while (tp_all_zero(b, n));
}

static int streq(sk_str s, const char *lit, size_t n)
{
    return s.len == n && strncasecmp(s.ptr, lit, n) == 0;
}

/* RFC 9110 token characters. */
static int tchar(int c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

/* "250ms", "1s", "2m": min..max ms. 0, or -1. */
static int parse_ms(const char *v, uint64_t min, uint64_t max, uint64_t *ms)
{
    char *end;
    if (!isdigit((unsigned char)*v)) return -1;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || n > 86400000ull) return -1;
    uint64_t m;
    if (!strcmp(end, "ms"))
        m = n;
    else if (!strcmp(end, "s"))
        m = n * 1000;
    else if (!strcmp(end, "m"))
        m = n * 60000;
    else
        return -1;
    if (m < min || m > max) return -1;
    *ms = m;
    return 0;
}

/* A whole number in min..max. */
static int parse_count(const char *v, unsigned long long min, unsigned long long max, size_t *out)
{
    char *end;
    if (!isdigit((unsigned char)*v)) return -1;
    errno = 0;
    unsigned long long n = strtoull(v, &end, 10);
    if (errno || *end || n < min || n > max) return -1;
    *out = (size_t)n;
    return 0;
}

/* ---- the queue ---- */

/* Copies a finished record into the active buffer, or counts it dropped.
 * Any worker; the lock is held for the copy only. */
static void enqueue(tracing *t, const span_rec *r)
{
    int ok = 0;
    pthread_mutex_lock(&t->lock);
    int a = t->act;
    if (t->bn[a] + t->sb_left < t->queue_size && t->blen[a] + r->size <= t->cap) {
        memcpy(t->buf[a] + t->blen[a], r, r->size);
        t->blen[a] += r->size;
        t->bn[a]++;
        ok = 1;
    }
    pthread_mutex_unlock(&t->lock);
    if (!ok) t->host->metric_add_at(t->m_dropped, DROP_QUEUE_FULL, 1);
}

/* Spans waiting for export (not counting a batch in flight). */
static size_t queued(tracing *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->bn[t->act] + t->sb_left;
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* ---- export (main thread) ---- */

static void send_body(tracing *t);

static void drop_batch(tracing *t, int reason)
{
    if (t->body_spans) t->host->metric_add_at(t->m_dropped, (size_t)reason, (int64_t)t->body_spans);
    t->body_spans = 0;
    t->attempt = 0;
    t->body.len = 0;
    if (t->body.cap > (1u << 20)) jbuf_free(&t->body); /* keep a small body buffer only */
}

/* Encodes up to batch_size queued spans into t->body. Returns their number. */
static size_t take_batch(tracing *t)
{
    size_t taken = 0, sb_rem;
    pthread_mutex_lock(&t->lock);
    sb_rem = t->sb_left;
    pthread_mutex_unlock(&t->lock);
    span_batch_begin(&t->body, t->fmt, t->service_name);
    while (taken < t->batch_size && t->body.len < MAX_BODY) {
        if (sb_rem == 0) {
            /* the standby is empty: swap it in as the active buffer */
            pthread_mutex_lock(&t->lock);
            int a = t->act;
            if (t->bn[a] == 0) {
                t->sb_left = 0;
                pthread_mutex_unlock(&t->lock);
                break;
            }
            t->act = a ^ 1;
            t->blen[a ^ 1] = 0;
            t->bn[a ^ 1] = 0;
            t->sb_left = sb_rem = t->bn[a];
            pthread_mutex_unlock(&t->lock);
            t->sb_off = 0;
        }
        const span_rec *r = (const span_rec *)(t->buf[t->act ^ 1] + t->sb_off);
        span_batch_add(&t->body, t->fmt, r, t->service_name, taken == 0);
        t->sb_off += r->size;
        sb_rem--;
        taken++;
    }
    pthread_mutex_lock(&t->lock);
    t->sb_left = sb_rem;
    pthread_mutex_unlock(&t->lock);
    if (span_batch_end(&t->body, t->fmt) != 0) {
        t->host->log(t->self, SK_LOG_ERROR, "out of memory encoding %zu span(s): dropped", taken);
        t->body_spans = taken;
        drop_batch(t, DROP_EXPORT_FAILED);
        return 0;
    }
    return taken;
}

/* Starts the next batch when there is one and nothing is in flight. */
static void export_next(tracing *t)
{
    if (t->call || t->in_retry || t->body_spans || t->closing) return;
    size_t n = take_batch(t);
    if (!n) return;
    t->body_spans = n;
    t->attempt = 0;
    t->last_flush_ms = mono_ms();
    send_body(t);
}

static void retry_fired(void *arg)
{
    tracing *t = arg;
    t->retry_timer = NULL;
    t->in_retry = 0;
    send_body(t);
}

/* One attempt of the current batch failed: retry it later or drop it. */
static void attempt_failed(tracing *t, int result, int retryable, const char *why)
{
    t->host->metric_add_at(t->m_requests, (size_t)result, 1);
    uint64_t now = mono_ms();
    int log = !t->failing || now - t->last_fail_log_ms >= FAIL_LOG_MS;
    /* After on_drain the host waits for calls in flight, not for timers: a
     * failed batch is dropped and the next one tried at once. */
    if (retryable && t->attempt < t->max_retries && !t->closing && !t->draining) {
        uint64_t d = t->backoff_ms;
        for (unsigned i = 0; i < t->attempt && d < BACKOFF_MAX_MS; i++) d *= 2;
        if (d > BACKOFF_MAX_MS) d = BACKOFF_MAX_MS;
        d = d / 2 + next_rand(&t->rng) % (d / 2 + 1); /* jitter: 50..100% */
        t->attempt++;
        t->retry_timer = t->host->timer_start(t->host->main_loop(), d ? d : 1, retry_fired, t);
        if (t->retry_timer) {
            t->in_retry = 1;
            if (log)
                t->host->log(t->self, SK_LOG_WARN,
                             "export to %s failed (%s): %zu span(s), retry %u/%u in %llums", t->endpoint, why,
                             t->body_spans, t->attempt, t->max_retries, (unsigned long long)d);
            if (log) t->last_fail_log_ms = now;
            t->failing = 1;
            return;
        }
    }
    if (log) {
        t->host->log(t->self, SK_LOG_WARN, "export to %s failed (%s): %zu span(s) dropped%s", t->endpoint,
                     why, t->body_spans, retryable ? " after the last retry" : "");
        t->last_fail_log_ms = now;
    }
    t->failing = 1;
    drop_batch(t, DROP_EXPORT_FAILED);
    if (t->draining && !t->in_send) export_next(t); /* not from a refused http_start: no loop */
}

static void on_head(void *arg, int status, const sk_str *names, const sk_str *values, size_t n)
{
    (void)names, (void)values, (void)n;
    ((tracing *)arg)->status = status;
}

static void on_done(void *arg, int error, const char *message)
{
    tracing *t = arg;
    char why[160];
    t->call = NULL;
    if (error == SK_HTTP_ECANCELLED) { /* the instance is being destroyed */
        t->lost_cancelled += t->body_spans;
        t->body_spans = 0;
        return;
    }
    int st = t->status;
    if ((error == 0 || error == SK_HTTP_ETOOLARGE) && st >= 200 && st < 300) {
        t->host->metric_add_at(t->m_requests, RES_OK, 1);
        t->host->metric_add(t->m_exported, (int64_t)t->body_spans);
        if (t->failing) t->host->log(t->self, SK_LOG_INFO, "export to %s works again", t->endpoint);
        t->failing = 0;
        t->body_spans = 0;
        t->attempt = 0;
        t->body.len = 0;
        if (t->final_flush || queued(t) >= t->batch_size) export_next(t);
        return;
    }
    if (error == 0) {
        snprintf(why, sizeof(why), "status %d", st);
        if (st >= 500 || st == 429)
            attempt_failed(t, st >= 500 ? RES_HTTP_5XX : RES_HTTP_4XX, 1, why);
        else
            attempt_failed(t, st >= 400 ? RES_HTTP_4XX : RES_ERROR, 0, why);
        return;
    }
    snprintf(why, sizeof(why), "%s", message ? message : t->host->http_strerror(error));
    switch (error) {
    case SK_HTTP_ECONNECT: attempt_failed(t, RES_CONNECT, 1, why); break;
    case SK_HTTP_ETIMEOUT: attempt_failed(t, RES_TIMEOUT, 1, why); break;
    case SK_HTTP_EPROTO: attempt_failed(t, RES_ERROR, 1, why); break;
    case -11 /* SK_HTTP_ETLS, ABI 1.2 */: attempt_failed(t, RES_TLS, 1, why); break;
    default: attempt_failed(t, RES_ERROR, 0, why); break;
    }
}

/* Sends t->body (a new batch or a retry). */
static void send_body(tracing *t)
{
    if (t->closing || !t->body_spans) return;
    sk_http_request rq = {
        .method = "POST",
        .url = t->endpoint,
        .headers = (const char *const *)t->hdrs,
        .body = t->body.p,
        .body_len = t->body.len,
        .timeout_ms = t->timeout_ms,
        .connect_timeout_ms = t->timeout_ms < 2000 ? t->timeout_ms : 2000,
        .max_body = 64 * 1024,
        .on_head = on_head,
        .on_done = on_done,
        .arg = t,
    };
    t->status = 0;
    int rc = t->host->http_start(t->self, &rq, &t->call);
    if (rc != 0) {
        t->call = NULL;
        char why[120];
        snprintf(why, sizeof(why), "http_start: %s", t->host->http_strerror(rc));
        t->in_send = 1;
        attempt_failed(t, rc == SK_HTTP_EBUSY ? RES_CONNECT : RES_ERROR,
                       rc == SK_HTTP_EBUSY || rc == SK_HTTP_ENOMEM, why);
        t->in_send = 0;
    }
}

/* The main-loop poll: export when a batch is full, flush_interval passed,
 * or no worker is left. */
static void tick(void *arg)
{
    tracing *t = arg;
    t->tick = NULL;
    if (atomic_load(&t->seen_workers) && atomic_load(&t->live_workers) == 0 && !t->final_flush) {
        t->final_flush = 1;
        size_t q = queued(t);
        if (q)
            t->host->log(t->self, SK_LOG_INFO, "every worker finished: exporting the %zu queued span(s)", q);
    }
    size_t q = queued(t);
    t->host->metric_set(t->m_queued, (int64_t)(q + t->body_spans));
    uint64_t now = mono_ms();
    if (q && (q >= t->batch_size || now - t->last_flush_ms >= t->flush_ms || t->final_flush)) export_next(t);
    uint64_t every = t->flush_ms < TICK_MAX_MS ? t->flush_ms : TICK_MAX_MS;
    t->tick = t->host->timer_start(t->host->main_loop(), every, tick, t);
    if (!t->tick) t->host->log(t->self, SK_LOG_ERROR, "cannot re-arm the export timer (out of memory)");
}

/* ABI 1.2: no request will come any more; the host keeps the instance
 * while its HTTP calls are in flight (bounded by drain_timeout). Export
 * everything now, batch after batch. */
static void on_drain(void *inst)
{
    tracing *t = inst;
    t->final_flush = 1;
    t->draining = 1;
    size_t q = queued(t) + t->body_spans;
    if (q) t->host->log(t->self, SK_LOG_INFO, "draining: exporting the %zu span(s) still queued", q);
    if (t->in_retry) { /* a batch waits for its retry: now or never */
        t->host->timer_stop(t->retry_timer);
        t->retry_timer = NULL;
        t->in_retry = 0;
        send_body(t);
    }
    export_next(t);
}

/* ---- lifecycle ---- */

static void destroy(void *inst)
{
    tracing *t = inst;
    if (!t) return;
    t->closing = 1;
    if (t->tick) t->host->timer_stop(t->tick);
    if (t->retry_timer) t->host->timer_stop(t->retry_timer);
    if (t->call) t->host->http_cancel(t->call); /* the host cancelled it already, normally */
    if (t->lock_ok && t->m_dropped) {
        uint64_t lost = queued(t) + t->body_spans + t->lost_cancelled;
        if (lost) {
            t->host->metric_add_at(t->m_dropped, DROP_SHUTDOWN, (int64_t)lost);
            t->host->log(t->self, SK_LOG_WARN, "%llu span(s) not exported when the instance ended: dropped",
                         (unsigned long long)lost);
        }
    }
    jbuf_free(&t->body);
    free(t->buf[0]);
    free(t->buf[1]);
    if (t->lock_ok) pthread_mutex_destroy(&t->lock);
    for (size_t i = 0; t->hdrs[i]; i++) free(t->hdrs[i]);
    free(t->service_name);
    free(t->force);
    free(t->endpoint);
    free(t->meta_key);
    free(t);
}

/* propagation = LIST */
static int parse_propagation(tracing *t, const char *v, char *msg, size_t ms)
{
    char tmp[256];
    if (strlen(v) >= sizeof(tmp)) return snprintf(msg, ms, "too long"), -1;
    strcpy(tmp, v);
    int seen[3] = {0, 0, 0};
    t->nread = 0;
    t->write_w3c = t->write_b3 = t->write_b3multi = 0;
    for (char *save = NULL, *it = strtok_r(tmp, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
        it = trim(it);
        int p;
        if (!strcmp(it, "w3c") || !strcmp(it, "tracecontext"))
            p = P_W3C;
        else if (!strcmp(it, "b3"))
            p = P_B3;
        else if (!strcmp(it, "b3multi"))
            p = P_B3MULTI;
        else
            return snprintf(msg, ms, "'%s': expected w3c, b3 or b3multi", it), -1;
        if (seen[p]) return snprintf(msg, ms, "'%s' named twice", it), -1;
        seen[p] = 1;
        int r = p == P_W3C ? P_W3C : P_B3;
        int dup = 0;
        for (size_t i = 0; i < t->nread; i++) dup |= t->read[i] == r;
        if (!dup) t->read[t->nread++] = r;
    }
    if (!t->nread) return snprintf(msg, ms, "a list of w3c, b3, b3multi"), -1;
    t->write_w3c = seen[P_W3C];
    t->write_b3 = seen[P_B3];
    t->write_b3multi = seen[P_B3MULTI];
    return 0;
}

/* endpoint = http://HOST[:PORT][/PATH]; no path → the exporter's default */
static int parse_endpoint(tracing *t, const char *v, char *msg, size_t ms)
{
    size_t sl = !strncmp(v, "https://", 8) ? 8 : 7;
    if (sl == 8 && t->host->abi_minor < 2)
        return snprintf(msg, ms,
                        "https needs a sidekick with plugin ABI 1.2 (TLS in its HTTP client): use http://"),
               -1;
    if ((sl == 7 && strncmp(v, "http://", 7) != 0) || !v[sl] || v[sl] == '/')
        return snprintf(msg, ms, "an http:// or https:// URL (http://127.0.0.1:4318/v1/traces)"), -1;
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) return snprintf(msg, ms, "a URL without spaces"), -1;
    free(t->endpoint);
    t->endpoint = strdup(v);
    return t->endpoint ? 0 : (snprintf(msg, ms, "out of memory"), -1);
}

/* export_header = NAME: VALUE */
static int parse_export_header(tracing *t, const char *v, char *msg, size_t ms)
{
    const char *colon = strchr(v, ':');
    if (!colon || colon == v) return snprintf(msg, ms, "expected 'NAME: VALUE'"), -1;
    size_t nl = (size_t)(colon - v);
    for (size_t i = 0; i < nl; i++)
        if (!tchar((unsigned char)v[i])) return snprintf(msg, ms, "a header name is a token"), -1;
    const char *val = colon + 1;
    while (*val == ' ' || *val == '\t') val++;
    for (const char *p = val; *p; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f)
            return snprintf(msg, ms, "a header value without control characters"), -1;
    static const char *const refused[] = {"content-type", "content-length", "transfer-encoding",
                                          "host",         "connection",     NULL};
    for (const char *const *r = refused; *r; r++)
        if (strlen(*r) == nl && !strncasecmp(*r, v, nl))
            return snprintf(msg, ms, "%s is set by the plugin or the host", *r), -1;
    if (t->nhdrs / 2 > MAX_EXPORT_HEADERS) return snprintf(msg, ms, "at most %d", MAX_EXPORT_HEADERS), -1;
    char *n = strndup(v, nl), *vv = strdup(val);
    if (!n || !vv) {
        free(n), free(vv);
        return snprintf(msg, ms, "out of memory"), -1;
    }
    t->hdrs[t->nhdrs++] = n;
    t->hdrs[t->nhdrs++] = vv;
    return 0;
}

#define KNOWN_KEYS                                                                                       \
    "service_name, propagation, span_kind, sampling, force_header, exporter, endpoint, flush_interval, " \
    "batch_size, queue_size, export_timeout, max_retries, retry_backoff, export_header"

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    char msg[300];
    tracing *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, err_size, "tracing: out of memory");
        return NULL;
    }
    t->host = host;
    t->self = self;
    t->read[0] = P_W3C;
    t->nread = 1;
    t->write_w3c = 1;
    t->kind = SPAN_SERVER;
    t->sampling = 1.0;
    t->fmt = FMT_OTLP;
    t->flush_ms = 1000;
    t->timeout_ms = 5000;
    t->backoff_ms = 200;
    t->max_retries = 3;
    t->batch_size = 512;
    t->queue_size = 8192;
    t->rng = seed(t);
    if (host->abi_minor < 1) {
        snprintf(err, err_size,
                 "tracing: needs a sidekick with plugin ABI 1.1 or newer (request_info, http_start)");
        free(t);
        return NULL;
    }
    if (pthread_mutex_init(&t->lock, NULL) != 0) {
        snprintf(err, err_size, "tracing: cannot create a lock");
        free(t);
        return NULL;
    }
    t->lock_ok = 1;
    t->hdrs[t->nhdrs++] = strdup("content-type");
    t->hdrs[t->nhdrs++] = strdup("application/json");
    int force_set = 0, endpoint_set = 0, line = 0;
    const char *force = "x-sidekick-trace";
    char force_buf[128];
    const char *service = NULL;
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        line = keys[i].line;
        msg[0] = 0;
        if (!strcmp(k, "service_name")) {
            if (!*v || strlen(v) > 256)
                snprintf(msg, sizeof(msg), "1..256 characters");
            else
                service = v;
            if (service) {
                free(t->service_name);
                if (!(t->service_name = strdup(service))) snprintf(msg, sizeof(msg), "out of memory");
            }
        } else if (!strcmp(k, "propagation")) {
            parse_propagation(t, v, msg, sizeof(msg));
        } else if (!strcmp(k, "span_kind")) {
            if (!strcmp(v, "server"))
                t->kind = SPAN_SERVER;
            else if (!strcmp(v, "client"))
                t->kind = SPAN_CLIENT;
            else
                snprintf(msg, sizeof(msg), "server or client");
        } else if (!strcmp(k, "sampling")) {
            char *end;
            errno = 0;
            double d = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(d) || d < 0 || d > 1)
                snprintf(msg, sizeof(msg), "a ratio from 0 to 1 (0.1 = 10%% of new traces)");
            else
                t->sampling = d;
        } else if (!strcmp(k, "force_header")) {
            int ok = *v && strlen(v) < sizeof(force_buf);
            for (const char *p = v; ok && *p; p++) ok = tchar((unsigned char)*p);
            if (!ok)
                snprintf(msg, sizeof(msg), "a header name, or off");
            else {
                snprintf(force_buf, sizeof(force_buf), "%s", v);
                force = !strcmp(v, "off") ? NULL : force_buf;
                force_set = 1;
            }
        } else if (!strcmp(k, "exporter")) {
            if (!strcmp(v, "otlp"))
                t->fmt = FMT_OTLP;
            else if (!strcmp(v, "zipkin"))
                t->fmt = FMT_ZIPKIN;
            else
                snprintf(msg, sizeof(msg), "otlp or zipkin");
        } else if (!strcmp(k, "endpoint")) {
            if (parse_endpoint(t, v, msg, sizeof(msg)) == 0) endpoint_set = 1;
        } else if (!strcmp(k, "flush_interval")) {
            if (parse_ms(v, 10, 3600000, &t->flush_ms) != 0)
                snprintf(msg, sizeof(msg), "a duration from 10ms to 60m (1s, 500ms)");
        } else if (!strcmp(k, "export_timeout")) {
            if (parse_ms(v, 10, 300000, &t->timeout_ms) != 0)
                snprintf(msg, sizeof(msg), "a duration from 10ms to 5m (5s)");
        } else if (!strcmp(k, "retry_backoff")) {
            if (parse_ms(v, 1, 60000, &t->backoff_ms) != 0)
                snprintf(msg, sizeof(msg), "a duration from 1ms to 60s (200ms)");
        } else if (!strcmp(k, "max_retries")) {
            size_t n;
            if (parse_count(v, 0, 100, &n) != 0)
                snprintf(msg, sizeof(msg), "a whole number from 0 to 100");
            else
                t->max_retries = (unsigned)n;
        } else if (!strcmp(k, "batch_size")) {
            if (parse_count(v, 1, 10000, &t->batch_size) != 0)
                snprintf(msg, sizeof(msg), "a whole number from 1 to 10000");
        } else if (!strcmp(k, "queue_size")) {
            if (parse_count(v, 1, 1000000, &t->queue_size) != 0)
                snprintf(msg, sizeof(msg), "a whole number from 1 to 1000000");
        } else if (!strcmp(k, "export_header")) {
            parse_export_header(t, v, msg, sizeof(msg));
        } else {
            snprintf(msg, sizeof(msg), "unknown key (known: %s)", KNOWN_KEYS);
        }
        if (msg[0]) {
            snprintf(err, err_size, "tracing: line %d: %s: %s", line, k, msg);
            destroy(t);
            return NULL;
        }
    }
    (void)force_set;
    const char *problem = NULL;
    if (!t->service_name && !(t->service_name = strdup("unknown_service:sidekick")))
        problem = "out of memory";
    if (!problem && !endpoint_set &&
        !(t->endpoint = strdup(t->fmt == FMT_ZIPKIN ? "http://127.0.0.1:9411/api/v2/spans"
                                                    : "http://127.0.0.1:4318/v1/traces")))
        problem = "out of memory";
    if (!problem && endpoint_set && !strchr(strstr(t->endpoint, "://") + 3, '/')) {
        /* no path: the exporter's own */
        const char *path = t->fmt == FMT_ZIPKIN ? "/api/v2/spans" : "/v1/traces";
        char *e = malloc(strlen(t->endpoint) + strlen(path) + 1);
        if (!e)
            problem = "out of memory";
        else {
            sprintf(e, "%s%s", t->endpoint, path);
            free(t->endpoint);
            t->endpoint = e;
        }
    }
    if (!problem && force) {
        t->force_len = strlen(force);
        if (!(t->force = strdup(force))) problem = "out of memory";
    }
    const char *iname = host->instance_name(self);
    if (!problem && !(t->meta_key = malloc(strlen(iname) + 9))) problem = "out of memory";
    if (!problem) sprintf(t->meta_key, "tracing.%s", iname);
    for (size_t i = 0; !problem && i < t->nhdrs; i++)
        if (!t->hdrs[i]) problem = "out of memory";
    t->bound = tp_ratio_bound(t->sampling);
    if (!problem) {
        /* glibc maps large blocks lazily: pages cost memory once written */
        t->cap = t->queue_size * AVG_SPAN_BYTES;
        if (t->cap < 2 * SPAN_REC_MAX) t->cap = 2 * SPAN_REC_MAX;
        t->buf[0] = malloc(t->cap);
        t->buf[1] = malloc(t->cap);
        if (!t->buf[0] || !t->buf[1]) problem = "out of memory (queue)";
    }
    if (!problem) {
        t->m_started = host->counter(self, "tracing_spans_started_total",
                                     "Requests traced (a span id given), sampled or not");
        t->m_sampled =
            host->counter(self, "tracing_spans_sampled_total", "Spans recorded (sampled requests)");
        t->m_exported =
            host->counter(self, "tracing_spans_exported_total", "Spans the collector accepted (2xx)");
        t->m_dropped = host->counter_labelled(self, "tracing_spans_dropped_total",
                                              "Spans lost: queue full, export failed after retries, "
                                              "or still queued when the instance ended",
                                              "reason", drop_names, DROP_N);
        t->m_requests =
            host->counter_labelled(self, "tracing_export_requests_total",
                                   "Export requests (each try) by result", "result", res_names, RES_N);
        t->m_queued =
            host->gauge(self, "tracing_queue_spans", "Spans waiting for export, batch in flight included");
        if (!t->m_started || !t->m_sampled || !t->m_exported || !t->m_dropped || !t->m_requests ||
            !t->m_queued)
            problem = "cannot register the metrics";
    }
    if (!problem) {
        t->last_flush_ms = mono_ms();
        t->tick = host->timer_start(host->main_loop(), t->flush_ms < TICK_MAX_MS ? t->flush_ms : TICK_MAX_MS,
                                    tick, t);
        if (!t->tick) problem = "cannot start the export timer";
    }
    if (problem) {
        snprintf(err, err_size, "tracing: %s", problem);
        destroy(t);
        return NULL;
    }
    return t;
}

static int worker_init(void *inst, sk_loop *loop, void **wdata)
{
    tracing *t = inst;
    (void)loop;
    worker *w = calloc(1, sizeof(*w));
    if (!w) return -1;
    w->t = t;
    w->rng = seed(w);
    *wdata = w;
    atomic_fetch_add(&t->live_workers, 1);
    atomic_store(&t->seen_workers, 1);
    return 0;
}

static void worker_fini(void *inst, void *wdata)
{
    tracing *t = inst;
    if (wdata) atomic_fetch_sub(&t->live_workers, 1);
    free(wdata);
}

/* ---- the request ---- */

/* What on_request found among the request headers. */
typedef struct incoming {
    sk_str tp; /* traceparent */
    int ntp;   /* how many traceparent lines */
    sk_str ts[MAX_TRACESTATE_HDR];
    int nts; /* tracestate lines (more than MAX_TRACESTATE_HDR: invalid) */
    sk_str b3;
    int nb3;
    sk_str x[5]; /* X-B3-TraceId, SpanId, ParentSpanId, Sampled, Flags */
    int nx[5];
    int any_x;
    int force; /* the force header with value 1 */
} incoming;

static const char *const xb3_names[5] = {"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled",
                                         "x-b3-flags"};

static void scan(const tracing *t, sk_req *r, incoming *in)
{
    const sk_host_api *h = t->host;
    memset(in, 0, sizeof(*in));
    size_t n = h->header_count(r);
    for (size_t i = 0; i < n; i++) {
        sk_str name, value;
        if (!h->header_at(r, i, &name, &value)) break;
        switch (name.len) {
        case 11:
            if (streq(name, "traceparent", 11)) {
                in->tp = value;
                in->ntp++;
                continue;
            }
            if (streq(name, xb3_names[1], 11)) {
                in->x[1] = value, in->nx[1]++, in->any_x = 1;
                continue;
            }
            break;
        case 10:
            if (streq(name, "tracestate", 10)) {
                if (in->nts < MAX_TRACESTATE_HDR) in->ts[in->nts] = value;
                in->nts++;
                continue;
            }
            if (streq(name, xb3_names[4], 10)) {
                in->x[4] = value, in->nx[4]++, in->any_x = 1;
                continue;
            }
            break;
        case 2:
            if (streq(name, "b3", 2)) {
                in->b3 = value;
                in->nb3++;
                continue;
            }
            break;
        case 12:
            if (streq(name, xb3_names[0], 12)) {
                in->x[0] = value, in->nx[0]++, in->any_x = 1;
                continue;
            }
            if (streq(name, xb3_names[3], 12)) {
                in->x[3] = value, in->nx[3]++, in->any_x = 1;
                continue;
            }
            break;
        case 17:
            if (streq(name, xb3_names[2], 17)) {
                in->x[2] = value, in->nx[2]++, in->any_x = 1;
                continue;
            }
            break;
        default: break;
        }
        if (t->force && name.len == t->force_len && streq(name, t->force, t->force_len))
            in->force = value.len == 1 && value.ptr[0] == '1';
    }
}

/* B3 as read: the single header wins over X-B3-* when both came. */
static int read_b3(const incoming *in, tp_ctx *c)
{
    if (in->nb3) return in->nb3 == 1 ? tp_b3_parse(in->b3.ptr, in->b3.len, c) : -1;
    if (!in->any_x) return -1;
    for (int i = 0; i < 5; i++)
        if (in->nx[i] > 1) return -1;
    return tp_b3_multi_parse(in->x[0].ptr, in->x[0].len, in->x[1].ptr, in->x[1].len, in->x[2].ptr,
                             in->x[2].len, in->x[3].ptr, in->x[3].len, in->x[4].ptr, in->x[4].len, c);
}

/* The tracestate to forward with a valid traceparent, normalised into
 * w->ts_out: its length, or 0 (none, or dropped as invalid). */
static size_t tracestate(worker *w, const incoming *in)
{
    if (!in->nts || in->nts > MAX_TRACESTATE_HDR) return 0;
    size_t n = 0;
    for (int i = 0; i < in->nts; i++) {
        if (n + in->ts[i].len + 1 > TP_TRACESTATE_MAX_INPUT) return 0;
        if (i) w->ts_in[n++] = ',';
        memcpy(w->ts_in + n, in->ts[i].ptr, in->ts[i].len);
        n += in->ts[i].len;
    }
    size_t len;
    if (tp_tracestate_normalize(w->ts_in, n, w->ts_out, sizeof(w->ts_out), &len) != 0) return 0;
    return len;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    tracing *t = inst;
    worker *w = wdata;
    const sk_host_api *h = t->host;
    if (!w) return SK_CONTINUE;
    incoming in;
    scan(t, r, &in);

    tp_ctx ctx, dec, c;
    memset(&dec, 0, sizeof(dec));
    int have = 0, have_dec = 0, from_w3c = 0;
    memset(&ctx, 0, sizeof(ctx));
    for (size_t i = 0; i < t->nread && !have; i++) {
        if (t->read[i] == P_W3C) {
            if (in.ntp == 1 && tp_traceparent_parse(in.tp.ptr, in.tp.len, &c) == 0)
                ctx = c, have = from_w3c = 1;
        } else if (read_b3(&in, &c) == 0) {
            if (c.has_ids)
                ctx = c, have = 1;
            else if (!have_dec)
                dec = c, have_dec = 1; /* a sampling decision alone ("b3: 0") */
        }
    }
    uint8_t span_id[8];
    rand_id(&w->rng, span_id, 8);
    if (!have) {
        rand_id(&w->rng, ctx.trace_id, 16);
        ctx.sampled = have_dec ? dec.sampled : -1;
        ctx.debug = have_dec ? dec.debug : 0;
    }
    int sampled = in.force ? 1 : ctx.sampled >= 0 ? ctx.sampled : tp_ratio_sampled(ctx.trace_id, t->bound);
    int debug = ctx.debug && sampled;

    char trace_hex[33], span_hex[17], buf[72];
    tp_hex(trace_hex, ctx.trace_id, 16);
    tp_hex(span_hex, span_id, 8);
    int bad = 0;
    size_t tsl = 0;
    if (t->write_w3c) {
        tp_traceparent_format(buf, ctx.trace_id, span_id, sampled);
        bad |= h->set_header(r, "traceparent", buf);
        tsl = from_w3c ? tracestate(w, &in) : 0;
        if (tsl) {
            if (!(in.nts == 1 && in.ts[0].len == tsl && !memcmp(in.ts[0].ptr, w->ts_out, tsl)))
                bad |= h->set_header(r, "tracestate", w->ts_out);
        } else if (in.nts) {
            bad |= h->remove_header(r, "tracestate");
        }
    }
    if (t->write_b3 || t->write_b3multi) {
        if (in.nb3 && !t->write_b3) bad |= h->remove_header(r, "b3");
        for (int i = 0; i < 5; i++)
            if (in.nx[i]) bad |= h->remove_header(r, xb3_names[i]);
        if (t->write_b3) {
            tp_b3_format(buf, ctx.trace_id, span_id, have ? ctx.span_id : NULL, sampled, debug);
            bad |= h->set_header(r, "b3", buf);
        }
        if (t->write_b3multi) {
            bad |= h->set_header(r, "x-b3-traceid", trace_hex);
            bad |= h->set_header(r, "x-b3-spanid", span_hex);
            if (have) {
                tp_hex(buf, ctx.span_id, 8);
                bad |= h->set_header(r, "x-b3-parentspanid", buf);
            }
            bad |= debug ? h->set_header(r, "x-b3-flags", "1")
                         : h->set_header(r, "x-b3-sampled", sampled ? "1" : "0");
        }
    }
    bad |= h->set_meta(r, "trace_id", trace_hex);
    bad |= h->set_meta(r, "span_id", span_hex);
    h->metric_add(t->m_started, 1);
    if (sampled) {
        /* TRACE(32) SPAN(16) PARENT(16, or 16 '-') FLAGS(1: '0' + has_parent + 2 * tracestate) */
        char priv[66];
        memcpy(priv, trace_hex, 32);
        memcpy(priv + 32, span_hex, 16);
        if (have)
            tp_hex(priv + 48, ctx.span_id, 8);
        else
            memset(priv + 48, '-', 16);
        priv[64] = (char)('0' + (have ? 1 : 0) + (tsl ? 2 : 0));
        priv[65] = 0;
        bad |= h->set_meta(r, t->meta_key, priv);
    }
    if (bad) h->log(t->self, SK_LOG_WARN, "a header or metadata edit failed (out of memory?)");
    return SK_CONTINUE;
}

static void on_log(void *inst, void *wdata, sk_req *r)
{
    tracing *t = inst;
    worker *w = wdata;
    const sk_host_api *h = t->host;
    if (!w) return;
    const char *priv = h->meta(r, t->meta_key);
    if (!priv || strlen(priv) != 65) return;
    span_rec *rec = &w->scratch.rec;
    memset(rec, 0, sizeof(*rec));
    int flags = priv[64] - '0';
    if (tp_unhex(rec->trace_id, priv, 16) != 0 || tp_unhex(rec->span_id, priv + 32, 8) != 0) return;
    if (flags & 1) {
        if (tp_unhex(rec->parent_id, priv + 48, 8) != 0) return;
        rec->has_parent = 1;
    }
    rec->kind = (uint8_t)t->kind;

    sk_req_info info;
    memset(&info, 0, sizeof(info));
    info.size = sizeof(info);
    h->request_info(r, &info);
    struct timespec rt, mt;
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &mt);
    int64_t off = ((int64_t)rt.tv_sec - (int64_t)mt.tv_sec) * 1000000000 + (rt.tv_nsec - mt.tv_nsec);
    uint64_t mono_now = (uint64_t)mt.tv_sec * 1000000000u + (uint64_t)mt.tv_nsec;
    uint64_t start = info.start_ns ? info.start_ns : mono_now;
    uint64_t end = info.end_ns ? info.end_ns : mono_now;
    rec->start_ns = (uint64_t)((int64_t)start + off);
    rec->end_ns = (uint64_t)((int64_t)end + off);
    if (info.upstream_connect_ns) rec->connect_ns = (uint64_t)((int64_t)info.upstream_connect_ns + off);
    if (info.upstream_first_byte_ns)
        rec->first_byte_ns = (uint64_t)((int64_t)info.upstream_first_byte_ns + off);
    rec->bytes_in = info.bytes_received;
    rec->bytes_out = info.bytes_sent;
    rec->attempts = info.attempts;
    rec->status = (uint16_t)(info.status > 0 && info.status < 1000 ? info.status : h->status(r));
    /* ABI 1.2 hosts say whether the request came over TLS and its
     * generation; on older ones a verified peer identity proves TLS */
    int https;
    if (info.size >= offsetof(sk_req_info, tls) + sizeof(info.tls)) {
        https = info.tls != 0;
        rec->generation = info.generation;
    } else {
        https = h->identity(r).ptr != NULL;
    }

    sk_str s = h->method(r);
    span_put(rec, S_METHOD, s.ptr, s.len);
    s = h->route(r);
    span_put(rec, S_ROUTE, s.ptr, s.len);
    s = h->path(r);
    span_put(rec, S_PATH, s.ptr, s.len);
    s = h->authority(r);
    span_put(rec, S_AUTHORITY, s.ptr, s.len);
    s = h->client_ip(r);
    span_put(rec, S_CLIENT, s.ptr, s.len);
    span_put(rec, S_ENDPOINT, info.endpoint.ptr, info.endpoint.len);
    if (!h->header(r, "user-agent", &s)) s = (sk_str){NULL, 0};
    span_put(rec, S_USER_AGENT, s.ptr, s.len);
    s = h->identity(r);
    span_put(rec, S_IDENTITY, s.ptr, s.len);
    span_put(rec, S_REASON, info.reason.ptr, info.reason.len);
    if (!(flags & 2) || !h->header(r, "tracestate", &s)) s = (sk_str){NULL, 0};
    span_put(rec, S_TRACESTATE, s.ptr, s.len);
    span_put(rec, S_SCHEME, https ? "https" : "http", https ? 5 : 4);
    /* server.port: the Host header's, else the scheme's */
    rec->server_port = https ? 443 : 80;
    if (h->header(r, "host", &s) && s.len) {
        size_t i = s.len;
        unsigned port = 0, mul = 1;
        while (i > 0 && s.ptr[i - 1] >= '0' && s.ptr[i - 1] <= '9' && mul <= 10000)
            port += (unsigned)(s.ptr[i - 1] - '0') * mul, mul *= 10, i--;
        if (i > 0 && i < s.len && s.ptr[i - 1] == ':' && port > 0 && port <= 65535)
            rec->server_port = (uint16_t)port;
    }
    span_end(rec);
    h->metric_add(t->m_sampled, 1);
    enqueue(t, rec);
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "tracing",
    .description = "W3C / B3 propagation, one span per request, OTLP or Zipkin export",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .on_request = on_request,
    .on_log = on_log,
    .on_drain = on_drain,
};
