/*
 * etcd.c — source = etcd of discovery.so: endpoints kept in etcd v3 by a
 * control plane, followed through etcd's JSON gateway over the host's
 * asynchronous HTTP client (main loop).
 *
 *     [plugin etcd]
 *     source = etcd
 *     etcd = 10.0.0.1:2379, 10.0.0.2:2379   servers, tried in turn
 *     prefix = /sidekick/endpoints/         default
 *     etcd_timeout = 5s                     a range call, and every connect
 *     reconnect_min = 500ms                 backoff after a failure, doubled
 *     reconnect_max = 30s                   per failure in a row up to this
 *
 *     [cluster orders]
 *     discovery = etcd orders               keys under PREFIX + "orders/"
 *
 * Each endpoint is one key under PREFIX + ARG + "/", whose value is JSON
 * {"address": "10.0.0.7", "port": 8080, "weight": 10} (etcd_json.c).
 *
 * One range and one watch serve every cluster of the instance: the range
 * and the watch cover the longest common prefix of the clusters' key
 * prefixes (PREFIX + "orders/" alone, or PREFIX itself for "orders" and
 * "users"), and each key goes to the clusters whose prefix it has.
 *
 * The cycle:
 *   range   POST /v3/kv/range {key, range_end} → every cluster's set, and
 *           the revision R of the answer
 *   watch   POST /v3/watch {create_request: {key, range_end,
 *           start_revision: R + 1, progress_notify}} read as a stream of
 *           JSON lines; each line with events is one batch: the clusters it
 *           changed are published once, after the whole batch
 * and what breaks it:
 *   - the call fails or the stream ends (etcd down, restarted, a network
 *     cut): every cluster keeps its endpoints (dsc_stale), and after a
 *     backoff with jitter the next listed server is asked to watch again
 *     from the last revision seen + 1 (no range: nothing was missed);
 *   - the start revision was compacted (compact_revision in the answer, or
 *     "required revision has been compacted"), the server canceled the
 *     watch, or a line did not parse: range again, then watch;
 *   - the etcd cluster id or member changed, or a header's revision went
 *     below one seen before (a restore from a backup): range again.
 * A progress notification (no event) moves the last revision forward, so a
 * quiet prefix does not fall behind compaction.
 *
 * Nothing here blocks: every call is the host's (http_start on the main
 * loop), every wait a host timer; destroy cancels both.
 */
#include "discovery.h"
#include "etcd_json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define ETCD_MAX_SERVERS    16
#define ETCD_DEFAULT_PREFIX "/sidekick/endpoints/"
#define ETCD_RANGE_MAX_BODY ((size_t)256 * 1024 * 1024) /* one range answer */
/* A watch is one response that never ends: SK_HTTP_UNLIMITED on an ABI
 * 1.2 host; an older one passes max_body to curl as a signed size, where
 * SIZE_MAX is refused, so 1 TiB there (a stream that reaches it just
 * reconnects). */
#define ETCD_WATCH_MAX_BODY_OLD ((size_t)1 << 40)
#define ETCD_LINE_MAX         ((size_t)64 * 1024 * 1024) /* one watch response */
#define ETCD_ERRBODY_MAX      1024  /* bytes of a failed call's body kept for its message */
#define ETCD_COMPACT_AGAIN_MS 10000 /* two compaction resyncs closer than this: the second waits */

/* One key of a cluster. */
typedef struct entry {
    char *key; /* the whole key (malloc'd, NUL after key_len) */
    size_t key_len;
    char addr[ETCD_ADDR_MAX]; /* "" when the value was malformed: the key gives no endpoint */
    uint32_t weight;
} entry;

/* A cluster's keys, sorted by key. */
typedef struct ecl {
    char *prefix; /* PREFIX + ARG + "/" */
    size_t prefix_len;
    entry *e;
    size_t n, cap;
    int dirty; /* changed by the batch being applied */
} ecl;

enum { CALL_NONE, CALL_RANGE, CALL_WATCH };

typedef struct est {
    dsc_inst *inst;
    dsc_hostport servers[ETCD_MAX_SERVERS];
    size_t nservers, cur; /* cur: the server asked now */
    char *prefix;         /* `prefix =` */
    size_t prefix_len;
    char *wprefix; /* what the range and the watch cover (see the top) */
    size_t wprefix_len;
    uint64_t timeout_ms, retry_min_ms, retry_max_ms;

    sk_timer *timer;    /* the next step, pending */
    sk_timer *wdog;     /* a watch must be created within timeout_ms */
    sk_http_call *call; /* the range or the watch in flight */
    int kind;           /* CALL_* of call */
    int status;         /* its HTTP status, 0 before the head */
    char *body;         /* range: the answer; watch: an error answer (bounded) */
    size_t body_len, body_cap;
    etcd_lines lines; /* the watch stream */
    int created;      /* the watch in flight was set up by etcd */

    int need_range;   /* the next step reads the prefix first */
    int64_t rev;      /* everything up to this revision is applied */
    int64_t seen_rev; /* the highest header revision seen since the last range */
    char cluster_id[ETCD_ID_MAX], member_id[ETCD_ID_MAX];
    unsigned attempt; /* failures in a row */
    uint64_t last_compact_ms;
    int closing; /* destroy is near: start nothing */
    const char *scheme; /* "http", or "https" with etcd_tls = on */
} est;

/* ---- small helpers ---- */

static const char *server_text(est *s, char *buf, size_t n)
{
    const dsc_hostport *h = &s->servers[s->cur];
    snprintf(buf, n, h->family == AF_INET6 ? "[%s]:%u" : "%s:%u", h->host, (unsigned)h->port);
    return buf;
}

static void keep_body(est *s, const char *data, size_t len, size_t max)
{
    if (s->body_len + len > max) len = max - s->body_len;
    if (!len) return;
    if (s->body_len + len + 1 > s->body_cap) {
        size_t cap = s->body_cap ? s->body_cap : 4096;
        while (cap < s->body_len + len + 1) cap *= 2;
        char *b = realloc(s->body, cap);
        if (!b) return; /* the parse then fails, and says so */
        s->body = b;
        s->body_cap = cap;
    }
    memcpy(s->body + s->body_len, data, len);
    s->body_len += len;
    s->body[s->body_len] = '\0';
}

static void drop_body(est *s)
{
    free(s->body);
    s->body = NULL;
    s->body_len = s->body_cap = 0;
}

/* Ends the call in flight without callbacks, if any. */
static void end_call(est *s)
{
    if (s->wdog) s->inst->host->timer_stop(s->wdog);
    s->wdog = NULL;
    if (s->call) s->inst->host->http_cancel(s->call);
    s->call = NULL;
    s->kind = CALL_NONE;
    s->status = 0;
    s->created = 0;
    drop_body(s);
    etcd_lines_reset(&s->lines);
}

static void step(void *arg);

/* Runs step() after ms (0: from the loop, at once). */
static void schedule(est *s, uint64_t ms)
{
    if (s->closing || s->timer) return;
    s->timer = s->inst->host->timer_start(s->inst->host->main_loop(), ms, step, s);
    if (!s->timer) dsc_log(s->inst, SK_LOG_ERROR, "etcd: cannot start a timer (out of memory): stopped");
}

/* A failed call or stream: every cluster keeps its endpoints (stale), the
 * next server is tried after a backoff. */
static void failed(est *s, const char *fmt, ...) SK_PLUGIN_PRINTF(2, 3);
static void failed(est *s, const char *fmt, ...)
{
    char why[200], srv[300], next[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    server_text(s, srv, sizeof srv);
    for (dsc_cluster *cl = s->inst->clusters; cl; cl = cl->next) dsc_stale(cl, "etcd %s: %s", srv, why);
    if (!s->inst->clusters) dsc_count(s->inst, DSC_FAILED);
    s->attempt++;
    uint64_t ms = dsc_backoff_ms(s->attempt, s->retry_min_ms, s->retry_max_ms);
    s->cur = (s->cur + 1) % s->nservers;
    /* the clusters' stale messages say what failed; this says what is next
     * (once per outage at info level) */
    dsc_log(s->inst, s->attempt == 1 ? SK_LOG_INFO : SK_LOG_DEBUG,
            "etcd: %s: %s; next try on %s in %llu ms%s", srv, why, server_text(s, next, sizeof next),
            (unsigned long long)ms, s->need_range ? " (reading the prefix again)" : "");
    schedule(s, ms);
}

/* Range again, then watch, at once: after a compaction (a second one
 * within ETCD_COMPACT_AGAIN_MS waits a backoff), a restore, a line that
 * does not parse. */
static void resync(est *s, int compaction, const char *fmt, ...) SK_PLUGIN_PRINTF(3, 4);
static void resync(est *s, int compaction, const char *fmt, ...)
{
    char why[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    s->need_range = 1;
    uint64_t ms = 0, now = dsc_now_ms();
    if (compaction) {
        if (s->last_compact_ms && now - s->last_compact_ms < ETCD_COMPACT_AGAIN_MS)
            ms = dsc_backoff_ms(++s->attempt, s->retry_min_ms, s->retry_max_ms);
        s->last_compact_ms = now;
    }
    dsc_log(s->inst, SK_LOG_WARN, "etcd: %s: reading %s again%s", why, s->wprefix,
            ms ? " after a backoff" : "");
    schedule(s, ms);
}

/* ---- cluster key sets ---- */

static int entry_cmp(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static void entries_free(entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) free(e[i].key);
    free(e);
}

/* The index of key in c (found: 1), or where it would go (0). */
static int find(const ecl *c, const char *key, size_t len, size_t *at)
{
    size_t lo = 0, hi = c->n;
    entry probe = {.key = (char *)key, .key_len = len};
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int r = entry_cmp(&c->e[mid], &probe);
        if (r == 0) {
            *at = mid;
            return 1;
        }
        if (r < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *at = lo;
    return 0;
}

/* The endpoint of a value into e (addr "" when malformed, logged). */
static void read_value(est *s, dsc_cluster *cl, entry *e, const char *value, size_t len)
{
    char why[160];
    if (etcd_parse_endpoint(value, len, e->addr, &e->weight, why, sizeof why) == 0) return;
    char key[200];
    etcd_printable(e->key, e->key_len, key, sizeof key);
    dsc_log(s->inst, SK_LOG_WARN, "cluster %s: key %s: %s; the key is skipped", cl->name, key, why);
    e->addr[0] = '\0';
    e->weight = 0;
}

static int has_prefix(const char *key, size_t len, const ecl *c)
{
    return len >= c->prefix_len && memcmp(key, c->prefix, c->prefix_len) == 0;
}

/* Sends the cluster's set (the keys whose value parsed) to the host. */
static void publish(dsc_cluster *cl)
{
    ecl *c = cl->priv;
    sk_weighted_endpoint *eps = calloc(c->n ? c->n : 1, sizeof *eps);
    if (!eps) {
        dsc_stale(cl, "etcd: out of memory");
        return;
    }
    size_t m = 0;
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].addr[0]) eps[m++] = (sk_weighted_endpoint){c->e[i].addr, c->e[i].weight};
    dsc_publish(cl, eps, m);
    free(eps);
    c->dirty = 0;
}

/* A PUT (value) or DELETE (value NULL) of key, for cluster cl. 0 or -1 (OOM). */
static int apply(est *s, dsc_cluster *cl, const char *key, size_t len, const char *value, size_t vlen)
{
    ecl *c = cl->priv;
    size_t at;
    int found = find(c, key, len, &at);
    if (!value) {
        if (!found) return 0;
        free(c->e[at].key);
        memmove(&c->e[at], &c->e[at + 1], (c->n - at - 1) * sizeof *c->e);
        c->n--;
        c->dirty = 1;
        return 0;
    }
    if (!found) {
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 16;
            entry *e = realloc(c->e, cap * sizeof *e);
            if (!e) return -1;
            c->e = e;
            c->cap = cap;
        }
        char *k = malloc(len + 1);
        if (!k) return -1;
        memcpy(k, key, len);
        k[len] = '\0';
        memmove(&c->e[at + 1], &c->e[at], (c->n - at) * sizeof *c->e);
        c->e[at] = (entry){.key = k, .key_len = len};
        c->n++;
    }
    read_value(s, cl, &c->e[at], value, vlen);
    c->dirty = 1;
    return 0;
}

/* ---- the range ---- */

/* Replaces every cluster's keys with those of the range answer. */
static void apply_range(est *s, const etcd_range *r)
{
    for (dsc_cluster *cl = s->inst->clusters; cl; cl = cl->next) {
        ecl *c = cl->priv;
        size_t n = 0;
        for (size_t i = 0; i < r->nkvs; i++) n += has_prefix(r->kvs[i].key, r->kvs[i].key_len, c);
        entry *e = calloc(n ? n : 1, sizeof *e);
        size_t m = 0;
        for (size_t i = 0; e && i < r->nkvs; i++) {
            const etcd_kv *kv = &r->kvs[i];
            if (!has_prefix(kv->key, kv->key_len, c)) continue;
            if (!(e[m].key = malloc(kv->key_len + 1))) {
                entries_free(e, m);
                e = NULL;
                break;
            }
            memcpy(e[m].key, kv->key, kv->key_len + 1);
            e[m].key_len = kv->key_len;
            read_value(s, cl, &e[m], kv->value, kv->value_len);
            m++;
        }
        if (!e) {
            dsc_stale(cl, "etcd: out of memory reading the range");
            continue;
        }
        qsort(e, m, sizeof *e, entry_cmp);
        entries_free(c->e, c->n);
        c->e = e;
        c->n = c->cap = n;
        publish(cl);
    }
}

static void range_head(void *arg, int status, const sk_str *names, const sk_str *values, size_t n)
{
    ((est *)arg)->status = status;
}

static void range_body(void *arg, const char *data, size_t len)
{
    keep_body(arg, data, len, ETCD_RANGE_MAX_BODY);
}

static void range_done(void *arg, int error, const char *message)
{
    est *s = arg;
    s->call = NULL;
    if (error == SK_HTTP_ECANCELLED) {
        s->closing = 1;
        drop_body(s);
        return;
    }
    int status = s->status;
    etcd_range r;
    char why[300], perr[240];
    int compacted = 0, ok = 0;
    if (error) {
        snprintf(why, sizeof why, "range: %s", message);
    } else if (etcd_parse_range(s->body ? s->body : "", s->body_len, &r, &compacted, perr, sizeof perr) < 0) {
        if (status != 200)
            snprintf(why, sizeof why, "range: HTTP %d: %s", status, perr);
        else
            snprintf(why, sizeof why, "range: %s", perr);
    } else if (status != 200) {
        snprintf(why, sizeof why, "range: HTTP %d", status);
        etcd_range_free(&r);
    } else {
        ok = 1;
    }
    drop_body(s);
    s->kind = CALL_NONE;
    s->status = 0;
    if (!ok) {
        failed(s, "%s", why);
        return;
    }
    if (r.more)
        dsc_log(s->inst, SK_LOG_WARN, "etcd: the range answer of %s was cut short (more = true)", s->wprefix);
    if (s->cluster_id[0] && strcmp(s->cluster_id, r.header.cluster_id) != 0)
        dsc_log(s->inst, SK_LOG_WARN, "etcd: cluster id changed from %s to %s", s->cluster_id,
                r.header.cluster_id);
    snprintf(s->cluster_id, sizeof s->cluster_id, "%s", r.header.cluster_id);
    snprintf(s->member_id, sizeof s->member_id, "%s", r.header.member_id);
    s->rev = s->seen_rev = r.header.revision;
    s->need_range = 0;
    char srv[300];
    dsc_log(s->inst, SK_LOG_INFO, "etcd: read %zu key(s) under %s from %s at revision %lld", r.nkvs,
            s->wprefix, server_text(s, srv, sizeof srv), (long long)r.header.revision);
    apply_range(s, &r);
    etcd_range_free(&r);
    /* from the loop: the range's connection is back in the client's pool by
     * then, and the watch takes it (one connection to etcd, not two) */
    schedule(s, 0);
}

static void start_range(est *s)
{
    char url[400], srv[300];
    snprintf(url, sizeof url, "%s://%s/v3/kv/range", s->scheme, server_text(s, srv, sizeof srv));
    char *body = etcd_range_request(s->wprefix, s->wprefix_len);
    if (!body) {
        failed(s, "out of memory");
        return;
    }
    static const char *const headers[] = {"content-type", "application/json", NULL};
    sk_http_request rq = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .body = body,
        .body_len = strlen(body),
        .timeout_ms = s->timeout_ms,
        .connect_timeout_ms = s->timeout_ms,
        .max_body = ETCD_RANGE_MAX_BODY,
        .on_head = range_head,
        .on_body = range_body,
        .on_done = range_done,
        .arg = s,
    };
    s->kind = CALL_RANGE;
    s->status = 0;
    int rc = s->inst->host->http_start(s->inst->self, &rq, &s->call);
    free(body);
    if (rc != 0) {
        s->call = NULL;
        s->kind = CALL_NONE;
        failed(s, "range: %s", s->inst->host->http_strerror(rc));
    }
}

/* ---- the watch ---- */

enum { LINE_GO = 0, LINE_STOP = 1 };

/* The header of a watch answer against what was seen: 0, or -1 after a
 * resync was scheduled (a restore or another cluster). */
static int check_header(est *s, const etcd_header *h)
{
    if (s->cluster_id[0] && h->cluster_id[0] && strcmp(s->cluster_id, h->cluster_id) != 0) {
        resync(s, 0, "the etcd cluster id changed from %s to %s", s->cluster_id, h->cluster_id);
        return -1;
    }
    if (s->member_id[0] && h->member_id[0] && strcmp(s->member_id, h->member_id) != 0) {
        resync(s, 0, "now on etcd member %s, was %s", h->member_id, s->member_id);
        return -1;
    }
    if (h->revision > 0 && h->revision < s->seen_rev) {
        resync(s, 0, "etcd's revision went back from %lld to %lld (restored from a backup?)",
               (long long)s->seen_rev, (long long)h->revision);
        return -1;
    }
    if (h->cluster_id[0]) snprintf(s->cluster_id, sizeof s->cluster_id, "%s", h->cluster_id);
    if (h->member_id[0]) snprintf(s->member_id, sizeof s->member_id, "%s", h->member_id);
    if (h->revision > s->seen_rev) s->seen_rev = h->revision;
    return 0;
}

/* One batch of events: each key to the clusters it belongs to, then one
 * publish per changed cluster. */
static void apply_events(est *s, const etcd_watch_resp *w)
{
    int64_t top = s->rev;
    for (size_t i = 0; i < w->nevents; i++) {
        const etcd_event *ev = &w->events[i];
        const etcd_kv *kv = &ev->kv;
        for (dsc_cluster *cl = s->inst->clusters; cl; cl = cl->next) {
            if (!has_prefix(kv->key, kv->key_len, cl->priv)) continue;
            if (apply(s, cl, kv->key, kv->key_len, ev->type == ETCD_PUT ? kv->value : NULL, kv->value_len) <
                0)
                dsc_log(s->inst, SK_LOG_ERROR, "cluster %s: out of memory applying an event", cl->name);
        }
        if (kv->mod_revision > top) top = kv->mod_revision;
    }
    /* without a mod_revision (never from etcd), the header's */
    if (top == s->rev && w->header.revision > top) top = w->header.revision;
    s->rev = top;
    for (dsc_cluster *cl = s->inst->clusters; cl; cl = cl->next)
        if (((ecl *)cl->priv)->dirty) publish(cl);
}

static int on_line(void *arg, const char *line, size_t len)
{
    est *s = arg;
    etcd_watch_resp w;
    char why[200];
    if (etcd_parse_watch(line, len, &w, why, sizeof why) < 0) {
        resync(s, 0, "a watch answer that does not parse (%s)", why);
        return LINE_STOP;
    }
    int rc = LINE_GO;
    switch (w.kind) {
    case ETCD_W_ERROR:
        if (etcd_is_compacted_message(w.message)) {
            resync(s, 1, "the watch from revision %lld was compacted (%s)", (long long)s->rev + 1, w.message);
        } else {
            failed(s, "watch: %s", w.message);
        }
        rc = LINE_STOP;
        break;
    case ETCD_W_COMPACTED:
        resync(s, 1, "revision %lld is compacted (compact_revision %lld)", (long long)s->rev + 1,
               (long long)w.compact_revision);
        rc = LINE_STOP;
        break;
    case ETCD_W_CANCELED:
        s->need_range = 1;
        failed(s, "the watch was canceled by etcd: %s", w.message);
        rc = LINE_STOP;
        break;
    case ETCD_W_CREATED:
        if (check_header(s, &w.header) < 0) {
            rc = LINE_STOP;
            break;
        }
        s->created = 1;
        s->attempt = 0;
        if (s->wdog) s->inst->host->timer_stop(s->wdog);
        s->wdog = NULL;
        {
            char srv[300];
            dsc_log(s->inst, SK_LOG_INFO, "etcd: watching %s on %s from revision %lld (%zu cluster(s))",
                    s->wprefix, server_text(s, srv, sizeof srv), (long long)s->rev + 1, s->inst->nclusters);
        }
        /* resumed without a gap: the kept endpoints are current again */
        for (dsc_cluster *cl = s->inst->clusters; cl; cl = cl->next)
            if (cl->stale) publish(cl);
        if (w.nevents) apply_events(s, &w);
        break;
    case ETCD_W_EVENTS:
        if (check_header(s, &w.header) < 0) {
            rc = LINE_STOP;
            break;
        }
        apply_events(s, &w);
        break;
    case ETCD_W_PROGRESS:
        if (check_header(s, &w.header) < 0) {
            rc = LINE_STOP;
            break;
        }
        if (w.header.revision > s->rev) s->rev = w.header.revision;
        dsc_log(s->inst, SK_LOG_DEBUG, "etcd: progress notification: revision %lld", (long long)s->rev);
        break;
    }
    etcd_watch_free(&w);
    return rc;
}

static void watch_head(void *arg, int status, const sk_str *names, const sk_str *values, size_t n)
{
    ((est *)arg)->status = status;
}

static void watch_body(void *arg, const char *data, size_t len)
{
    est *s = arg;
    if (s->status != 200) {
        keep_body(s, data, len, ETCD_ERRBODY_MAX);
        return;
    }
    int rc = etcd_lines_feed(&s->lines, data, len, on_line, s);
    if (rc == 0) return;
    if (rc < 0) resync(s, 0, "a watch answer longer than %zu bytes", (size_t)ETCD_LINE_MAX);
    /* what to do next is scheduled: this stream is done */
    end_call(s);
}

static void watch_done(void *arg, int error, const char *message)
{
    est *s = arg;
    s->call = NULL;
    if (error == SK_HTTP_ECANCELLED) {
        s->closing = 1;
        end_call(s);
        return;
    }
    char why[400];
    int compacted = 0;
    if (s->status != 200 && s->status != 0) {
        /* an error answer: {"error": ...} */
        etcd_watch_resp w;
        char perr[100];
        if (etcd_parse_watch(s->body ? s->body : "", s->body_len, &w, perr, sizeof perr) == 0 &&
            w.kind == ETCD_W_ERROR) {
            compacted = etcd_is_compacted_message(w.message);
            snprintf(why, sizeof why, "watch: HTTP %d: %s", s->status, w.message);
        } else {
            snprintf(why, sizeof why, "watch: HTTP %d", s->status);
        }
        if (w.kind) etcd_watch_free(&w);
    } else if (error) {
        snprintf(why, sizeof why, "watch: %s", message);
    } else {
        snprintf(why, sizeof why, "watch: the stream ended");
    }
    end_call(s);
    if (compacted)
        resync(s, 1, "%s", why);
    else
        failed(s, "%s", why);
}

/* The watch was not created within etcd_timeout: a server that accepts
 * connections and does not answer. */
static void watch_stuck(void *arg)
{
    est *s = arg;
    s->wdog = NULL;
    if (s->kind != CALL_WATCH || s->created) return;
    end_call(s);
    failed(s, "watch: not created within etcd_timeout (%llu ms)", (unsigned long long)s->timeout_ms);
}

static void start_watch(est *s)
{
    char url[400], srv[300];
    snprintf(url, sizeof url, "%s://%s/v3/watch", s->scheme, server_text(s, srv, sizeof srv));
    char *body = etcd_watch_request(s->wprefix, s->wprefix_len, s->rev + 1);
    if (!body) {
        failed(s, "out of memory");
        return;
    }
    static const char *const headers[] = {"content-type", "application/json", NULL};
    sk_http_request rq = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .body = body,
        .body_len = strlen(body),
        .timeout_ms = 0, /* a stream */
        .connect_timeout_ms = s->timeout_ms,
        .max_body = s->inst->host->abi_minor >= 2 ? SK_HTTP_UNLIMITED : ETCD_WATCH_MAX_BODY_OLD,
        .on_head = watch_head,
        .on_body = watch_body,
        .on_done = watch_done,
        .arg = s,
    };
    s->kind = CALL_WATCH;
    s->status = 0;
    s->created = 0;
    s->lines.max = ETCD_LINE_MAX;
    int rc = s->inst->host->http_start(s->inst->self, &rq, &s->call);
    free(body);
    if (rc != 0) {
        s->call = NULL;
        s->kind = CALL_NONE;
        failed(s, "watch: %s", s->inst->host->http_strerror(rc));
        return;
    }
    s->wdog = s->inst->host->timer_start(s->inst->host->main_loop(), s->timeout_ms, watch_stuck, s);
}

/* The timer: the next call. */
static void step(void *arg)
{
    est *s = arg;
    s->timer = NULL;
    if (s->closing || s->call) return;
    if (s->need_range)
        start_range(s);
    else
        start_watch(s);
}

/* ---- the source ---- */

/* The longest common prefix of the clusters' key prefixes. */
static int compute_wprefix(est *s)
{
    free(s->wprefix);
    s->wprefix = NULL;
    ecl *first = s->inst->clusters ? s->inst->clusters->priv : NULL;
    size_t n = first ? first->prefix_len : s->prefix_len;
    const char *p = first ? first->prefix : s->prefix;
    for (dsc_cluster *cl = s->inst->clusters; cl; cl = cl->next) {
        ecl *c = cl->priv;
        size_t i = 0;
        while (i < n && i < c->prefix_len && c->prefix[i] == p[i]) i++;
        n = i;
    }
    if (n < s->prefix_len) n = s->prefix_len; /* every cluster prefix starts with PREFIX */
    if (!(s->wprefix = malloc(n + 1))) return -1;
    memcpy(s->wprefix, p, n);
    s->wprefix[n] = '\0';
    s->wprefix_len = n;
    return 0;
}

/* The first step, once every cluster was added (the timer runs from the
 * loop, after the host's on_cluster calls of this generation). */
static void first_step(void *arg)
{
    est *s = arg;
    s->timer = NULL;
    if (s->closing) return;
    if (compute_wprefix(s) < 0) {
        dsc_log(s->inst, SK_LOG_ERROR, "etcd: out of memory: stopped");
        return;
    }
    s->need_range = 1;
    step(s);
}

static int etcd_create(dsc_inst *inst, const sk_kv *keys, size_t n, char *err, size_t errsz)
{
    est *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errsz, "etcd: out of memory");
        return -1;
    }
    inst->priv = s;
    s->inst = inst;
    s->timeout_ms = 5000;
    s->retry_min_ms = 500;
    s->retry_max_ms = 30000;
    s->scheme = "http";
    const char *prefix = ETCD_DEFAULT_PREFIX;
    int have_etcd = 0, line_min = 0;
    for (size_t i = 0; i < n; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        int line = keys[i].line;
        char why[300];
        if (strcmp(k, "etcd") == 0) {
            if (dsc_parse_hostports(v, 1, s->servers, ETCD_MAX_SERVERS, &s->nservers, why, sizeof why) < 0) {
                snprintf(err, errsz, "etcd: line %d: etcd: %s", line, why);
                return -1;
            }
            have_etcd = 1;
        } else if (strcmp(k, "prefix") == 0) {
            if (!*v || strchr(v, ' ') || strchr(v, '\t')) {
                snprintf(err, errsz, "etcd: line %d: prefix: expected a key prefix without spaces, like %s",
                         line, ETCD_DEFAULT_PREFIX);
                return -1;
            }
            prefix = v;
        } else if (strcmp(k, "etcd_timeout") == 0) {
            if (dsc_parse_duration(v, 10, 600000, &s->timeout_ms) < 0) {
                snprintf(err, errsz, "etcd: line %d: etcd_timeout: expected a duration 10ms..10m (5s)", line);
                return -1;
            }
        } else if (strcmp(k, "reconnect_min") == 0) {
            if (dsc_parse_duration(v, 1, 3600000, &s->retry_min_ms) < 0) {
                snprintf(err, errsz, "etcd: line %d: reconnect_min: expected a duration 1ms..1h (500ms)",
                         line);
                return -1;
            }
            line_min = line;
        } else if (strcmp(k, "reconnect_max") == 0) {
            if (dsc_parse_duration(v, 1, 3600000, &s->retry_max_ms) < 0) {
                snprintf(err, errsz, "etcd: line %d: reconnect_max: expected a duration 1ms..1h (30s)", line);
                return -1;
            }
        } else if (strcmp(k, "etcd_tls") == 0) {
            if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0) {
                snprintf(err, errsz, "etcd: line %d: etcd_tls: expected on or off", line);
                return -1;
            }
            if (strcmp(v, "on") == 0 && inst->host->abi_minor < 2) {
                snprintf(err, errsz, "etcd: line %d: etcd_tls: this host's HTTP client has no https (ABI 1.2)",
                         line);
                return -1;
            }
            s->scheme = strcmp(v, "on") == 0 ? "https" : "http";
        } else {
            snprintf(err, errsz,
                     "etcd: line %d: unknown key '%s' (source = etcd takes etcd, etcd_tls, prefix, etcd_timeout, "
                     "reconnect_min, reconnect_max)",
                     line, k);
            return -1;
        }
    }
    if (!have_etcd) {
        snprintf(err, errsz, "etcd: etcd is required: the servers' HOST:PORT list (e.g. 127.0.0.1:2379)");
        return -1;
    }
    if (s->retry_min_ms > s->retry_max_ms) {
        snprintf(err, errsz, "etcd: line %d: reconnect_min is above reconnect_max", line_min);
        return -1;
    }
    if (!(s->prefix = strdup(prefix))) {
        snprintf(err, errsz, "etcd: out of memory");
        return -1;
    }
    s->prefix_len = strlen(prefix);
    return 0;
}

static int etcd_add_cluster(dsc_inst *inst, dsc_cluster *cl, const char *arg, char *err, size_t errsz)
{
    est *s = inst->priv;
    for (const char *p = arg; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f) {
            snprintf(err, errsz,
                     "etcd: cluster %s: discovery = %s %s: the name under the prefix has a space "
                     "or a control character",
                     cl->name, inst->name, arg);
            return -1;
        }
    size_t alen = strlen(arg);
    if (arg[alen - 1] == '/') {
        snprintf(err, errsz,
                 "etcd: cluster %s: discovery = %s %s: leave out the trailing '/' (the keys are "
                 "under PREFIX + NAME + \"/\")",
                 cl->name, inst->name, arg);
        return -1;
    }
    ecl *c = calloc(1, sizeof *c);
    if (!c || !(c->prefix = malloc(s->prefix_len + alen + 2))) {
        free(c);
        snprintf(err, errsz, "etcd: out of memory");
        return -1;
    }
    memcpy(c->prefix, s->prefix, s->prefix_len);
    memcpy(c->prefix + s->prefix_len, arg, alen);
    c->prefix[s->prefix_len + alen] = '/';
    c->prefix[s->prefix_len + alen + 1] = '\0';
    c->prefix_len = s->prefix_len + alen + 1;
    cl->priv = c;
    /* the first call waits for the loop: every cluster is known by then */
    if (!s->timer && !s->call) {
        s->timer = inst->host->timer_start(inst->host->main_loop(), 0, first_step, s);
        if (!s->timer) {
            snprintf(err, errsz, "etcd: cannot start a timer (out of memory)");
            return -1;
        }
    }
    return 0;
}

static void etcd_destroy(dsc_inst *inst)
{
    est *s = inst->priv;
    if (s) {
        s->closing = 1;
        if (s->timer) inst->host->timer_stop(s->timer);
        s->timer = NULL;
        end_call(s);
        free(s->prefix);
        free(s->wprefix);
        free(s);
        inst->priv = NULL;
    }
    for (dsc_cluster *cl = inst->clusters; cl; cl = cl->next) {
        ecl *c = cl->priv;
        if (!c) continue;
        entries_free(c->e, c->n);
        free(c->prefix);
        free(c);
        cl->priv = NULL;
    }
}

const dsc_source_ops dsc_etcd_ops = {
    .name = "etcd",
    .create = etcd_create,
    .add_cluster = etcd_add_cluster,
    .destroy = etcd_destroy,
};
