/*
 * health.c — active health checks (see health.h): one probe per endpoint
 * of the set in force of each cluster with `health_check`, on the main
 * loop. A probe connects (through the transport seam, over the cluster's
 * TLS context when it has `tls`: the same certificate, SNI and
 * peer_identity checks as its traffic), writes
 *
 *     GET <health_check> HTTP/1.1
 *     Host: <the tls section's sni, else the cluster's name>
 *     User-Agent: sidekick-health-check
 *     Connection: close
 *
 * reads until the final response's status is known (sk_health_parse,
 * llhttp) and closes. 2xx passes; another status, a refused or failed
 * connect, a reset, a close before the status, or no status within
 * health_timeout (connect included) fails. The next check of that endpoint
 * starts health_interval plus a random 0..10 % of it after this one ended,
 * so checks never overlap and the endpoints of a cluster drift apart.
 *
 * The probes follow the set: sk__health_hooks->sync (from cluster.c
 * publish) checks new endpoints at once and stops the probes of endpoints
 * that left (a check in progress is dropped).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "tls.h"
#include "transport.h"

typedef struct probe probe;
typedef struct sk_health_checks sk_health;

struct probe {
    sk_health *h;          /* the cluster's checks */
    sk_endpoint *e;        /* the endpoint (a reference) */
    ev_timer timer;        /* the next check, or the running check's health_timeout */
    ev_timer ctimer;       /* lent to the transport for its connect timeout */
    sk_transport tr;       /* the check's connection while `running` */
    bool running;          /* a check is in progress */
    bool checked;          /* a result came since the probe started */
    bool kept;             /* scratch of sync */
    size_t sent;           /* request bytes written */
    sk_health_parse parse; /* the response */
};

struct sk_health_checks {
    sk_cluster *cl;       /* the cluster (its state holds this) */
    struct ev_loop *loop; /* the main loop */
    probe **probes;       /* one per endpoint of the set in force */
    size_t n;
    char *request; /* the request bytes */
    size_t request_len;
    uint64_t rng; /* jitter */
};

static void start_check(probe *p);

/* ---- response parsing ---- */

static int on_headers_complete(llhttp_t *lp)
{
    sk_health_parse *hp = lp->data;
    int status = lp->status_code;
    if (status < 100 || status > 999) return -1;                      /* not a status */
    if (status >= 100 && status < 200) return status == 101 ? -1 : 0; /* interim: the final one follows */
    hp->status = status;
    return HPE_PAUSED;
}

/* Starts reading a response (see health.h). */
void sk_health_parse_init(sk_health_parse *hp)
{
    memset(hp, 0, sizeof(*hp));
    llhttp_settings_init(&hp->settings);
    hp->settings.on_headers_complete = on_headers_complete;
    llhttp_init(&hp->parser, HTTP_RESPONSE, &hp->settings);
    hp->parser.data = hp;
}

/* Feeds response bytes (see health.h). */
int sk_health_parse_feed(sk_health_parse *hp, const char *p, size_t n)
{
    if (hp->status) return hp->status;
    if (n > SK_HEALTH_HEAD_MAX - hp->seen) return -1;
    hp->seen += n;
    llhttp_errno_t err = llhttp_execute(&hp->parser, p, n);
    if (hp->status) return hp->status;
    return err == HPE_OK ? 0 : -1;
}

/* ---- one check ---- */

static void transport_readable(sk_transport *t);
static void transport_writable(sk_transport *t);
static void transport_connected(sk_transport *t, int err);

static const sk_transport_cbs probe_cbs = {
    .on_readable = transport_readable,
    .on_writable = transport_writable,
    .on_connected = transport_connected,
};

static uint32_t rand32(sk_health *h)
{
    h->rng ^= h->rng >> 12;
    h->rng ^= h->rng << 25;
    h->rng ^= h->rng >> 27;
    return (uint32_t)((h->rng * 0x2545f4914f6cdd1dull) >> 32);
}

/* The check is over: apply the thresholds, schedule the next one. */
static void finish(probe *p, bool pass, const char *why)
{
    sk_health *h = p->h;
    sk_cluster *cl = h->cl;
    sk_endpoint *e = p->e;
    sk_cluster_state *st = cl->upstream;
    if (p->running) sk_transport_close(&p->tr);
    p->running = false;
    ev_timer_stop(h->loop, &p->timer);
    ev_timer_stop(h->loop, &p->ctimer);
    int health = __atomic_load_n(&e->health, __ATOMIC_RELAXED);
    bool never = __atomic_load_n(&e->hc_passes, __ATOMIC_RELAXED) == 0 &&
                 __atomic_load_n(&e->hc_failures, __ATOMIC_RELAXED) == 0 && !p->checked;
    bool changed = false;
    p->checked = true;
    if (pass) {
        unsigned passes = __atomic_load_n(&e->hc_passes, __ATOMIC_RELAXED) + 1;
        __atomic_store_n(&e->hc_passes, passes, __ATOMIC_RELAXED);
        __atomic_store_n(&e->hc_failures, 0, __ATOMIC_RELAXED);
        if (st->stats) __atomic_add_fetch(&st->stats->checks_passed, 1, __ATOMIC_RELAXED);
        /* an endpoint unhealthy from the start (health_initial) needs one pass */
        bool initial = never && health == SK_HEALTH_UNHEALTHY && cl->health_initial_unhealthy;
        if (health == SK_HEALTH_UNHEALTHY && (passes >= cl->healthy_threshold || initial)) {
            __atomic_store_n(&e->health, SK_HEALTH_HEALTHY, __ATOMIC_RELAXED);
            if (st->stats) __atomic_add_fetch(&st->stats->became_healthy, 1, __ATOMIC_RELAXED);
            sk_info("cluster %s: endpoint %s is healthy (%u health check%s passed in a row)", cl->name,
                    e->address.text, passes, passes == 1 ? "" : "s");
            changed = true;
        } else if (health == SK_HEALTH_UNKNOWN) {
            __atomic_store_n(&e->health, SK_HEALTH_HEALTHY, __ATOMIC_RELAXED); /* it was usable already */
        }
        sk__endpoint_uneject(cl, e);
    } else {
        unsigned fails = __atomic_load_n(&e->hc_failures, __ATOMIC_RELAXED) + 1;
        __atomic_store_n(&e->hc_failures, fails, __ATOMIC_RELAXED);
        __atomic_store_n(&e->hc_passes, 0, __ATOMIC_RELAXED);
        if (st->stats) __atomic_add_fetch(&st->stats->checks_failed, 1, __ATOMIC_RELAXED);
        if (health != SK_HEALTH_UNHEALTHY && fails >= cl->unhealthy_threshold) {
            __atomic_store_n(&e->health, SK_HEALTH_UNHEALTHY, __ATOMIC_RELAXED);
            if (st->stats) __atomic_add_fetch(&st->stats->became_unhealthy, 1, __ATOMIC_RELAXED);
            sk_warn("cluster %s: endpoint %s is unhealthy: %u health check%s failed in a row (last: %s)",
                    cl->name, e->address.text, fails, fails == 1 ? "" : "s", why);
            changed = true;
        } else {
            sk_debug("cluster %s: health check of %s failed (%u in a row): %s", cl->name, e->address.text,
                     fails, why);
        }
    }
    if (changed) {
        sk__cluster_health_changed(cl);
        /* the panic state is logged when it changes, traffic or not */
        sk_endpoint_set *set = sk_cluster_endpoints(cl);
        size_t usable;
        if (set) sk_cluster_check_panic(cl, set, sk_now_ms(), &usable);
        sk_endpoint_set_unref(set);
    }
    uint64_t ms = cl->health_interval_ms + (uint64_t)rand32(h) % (cl->health_interval_ms / 10 + 1);
    ev_timer_set(&p->timer, (double)ms / 1e3, 0.);
    ev_timer_start(h->loop, &p->timer);
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    probe *p = t->data;
    if (p->running)
        finish(p, false, "timed out");
    else
        start_check(p);
}

static void on_ctimer(struct ev_loop *loop, ev_timer *t, int revents)
{
    /* only ever armed by the transport, which puts its own callback in while connecting */
}

/* Writes what is left of the request; then waits for the answer. */
static void send_request(probe *p)
{
    sk_health *h = p->h;
    while (p->sent < h->request_len) {
        struct iovec iov = {.iov_base = h->request + p->sent, .iov_len = h->request_len - p->sent};
        ssize_t k = sk_transport_writev(&p->tr, &iov, 1);
        if (k < 0 && errno == EAGAIN) {
            sk_transport_want_write(&p->tr, true);
            return;
        }
        if (k <= 0) {
            finish(p, false, k < 0 ? strerror(errno) : "write failed");
            return;
        }
        p->sent += (size_t)k;
    }
    sk_transport_want_write(&p->tr, false);
    sk_transport_want_read(&p->tr, true);
}

static void transport_connected(sk_transport *t, int err)
{
    probe *p = t->data;
    if (err) {
        char why[96];
        snprintf(why, sizeof(why), "connect: %s",
                 err == ETIMEDOUT ? "timed out"
                 : err == EACCES  ? "peer identity refused"
                                  : strerror(err));
        finish(p, false, why);
        return;
    }
    send_request(p);
}

static void transport_writable(sk_transport *t)
{
    send_request(t->data);
}

static void transport_readable(sk_transport *t)
{
    probe *p = t->data;
    char buf[4096];
    for (int k = 0; k < 16; k++) {
        ssize_t n = sk_transport_read(t, buf, sizeof(buf));
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) {
            finish(p, false, n == 0 ? "closed before a status" : strerror(errno));
            return;
        }
        int status = sk_health_parse_feed(&p->parse, buf, (size_t)n);
        if (status < 0) {
            finish(p, false, "not an HTTP/1 response");
            return;
        }
        if (status > 0) {
            char why[32];
            snprintf(why, sizeof(why), "status %d", status);
            finish(p, status >= 200 && status < 300, why);
            return;
        }
    }
    sk_transport_feed_read(t); /* more later: other probes get their turn */
}

/* Starts one check of p's endpoint. */
static void start_check(probe *p)
{
    sk_health *h = p->h;
    sk_cluster *cl = h->cl;
    const sk_addr *a = &p->e->address;
    p->sent = 0;
    sk_health_parse_init(&p->parse);
    void *tls = NULL;
    if (cl->tls && !(tls = sk_tls_slot_conn(cl->tls->state, false, -1, NULL))) {
        p->running = false;
        finish(p, false, "out of memory");
        return;
    }
    p->running = true;
    ev_timer_set(&p->timer, (double)cl->health_timeout_ms / 1e3, 0.);
    ev_timer_start(h->loop, &p->timer);
    int rc =
        sk_transport_connect(&p->tr, h->loop, (const struct sockaddr *)&a->ss, a->len, cl->health_timeout_ms,
                             &p->ctimer, tls ? &sk_tls_ops : NULL, tls, &probe_cbs, p);
    if (rc < 0) {
        int e = errno;
        if (tls && !p->tr.ops) sk_tls_conn_free(tls); /* no socket: the transport took nothing */
        p->running = false;
        char why[96];
        snprintf(why, sizeof(why), "connect: %s", strerror(e));
        finish(p, false, why);
        return;
    }
    if (rc == 1) send_request(p);
}

/* ---- probes following the set ---- */

static void probe_free(probe *p)
{
    struct ev_loop *loop = p->h->loop;
    if (p->running) sk_transport_close(&p->tr);
    ev_timer_stop(loop, &p->timer);
    ev_timer_stop(loop, &p->ctimer);
    sk_endpoint_unref(p->e);
    free(p);
}

/* A probe of e, its first check due at once. NULL on OOM. */
static probe *probe_new(sk_health *h, sk_endpoint *e)
{
    probe *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->h = h;
    p->e = e;
    sk_endpoint_ref(e);
    ev_timer_init(&p->timer, on_timer, 0., 0.);
    p->timer.data = p;
    ev_init(&p->ctimer, on_ctimer);
    p->ctimer.data = p;
    ev_timer_start(h->loop, &p->timer);
    return p;
}

/* The probes follow cl's set in force: new endpoints get one, checked at
 * once (at the loop's next turn); those of endpoints that left go. */
static void health_sync(sk_cluster *cl)
{
    sk_cluster_state *st = cl->upstream;
    sk_health *h = st ? st->health : NULL;
    if (!h) return;
    sk_endpoint_set *set = sk_cluster_endpoints(cl);
    if (!set) return;
    probe **next = calloc(set->n ? set->n : 1, sizeof(*next));
    if (!next) {
        sk_error("cluster %s: out of memory following its endpoints with health checks", cl->name);
        sk_endpoint_set_unref(set);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < set->n; i++) {
        probe *p = NULL;
        for (size_t j = 0; j < h->n && !p; j++)
            if (h->probes[j] && !h->probes[j]->kept && h->probes[j]->e == set->eps[i]) p = h->probes[j];
        if (!p && !(p = probe_new(h, set->eps[i]))) {
            sk_error("cluster %s: out of memory: endpoint %s is not health checked", cl->name,
                     set->eps[i]->address.text);
            continue;
        }
        p->kept = true;
        next[k++] = p;
    }
    for (size_t j = 0; j < h->n; j++) {
        if (h->probes[j]->kept)
            h->probes[j]->kept = false;
        else
            probe_free(h->probes[j]); /* left the set */
    }
    for (size_t i = 0; i < k; i++) next[i]->kept = false;
    free(h->probes);
    h->probes = next;
    h->n = k;
    sk_endpoint_set_unref(set);
}

/* Stops and frees st's checks. */
static void health_free(sk_cluster_state *st)
{
    sk_health *h = st->health;
    if (!h) return;
    for (size_t j = 0; j < h->n; j++) probe_free(h->probes[j]);
    free(h->probes);
    free(h->request);
    free(h);
    st->health = NULL;
}

static const sk_health_hooks hooks = {.sync = health_sync, .free = health_free};

/* Starts the checks of cfg's clusters (see health.h). */
int sk_clusters_health_start(sk_config *cfg, struct ev_loop *loop)
{
    int rc = 0;
    sk__health_hooks = &hooks;
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_cluster *cl = cfg->clusters[i];
        sk_cluster_state *st = cl->upstream;
        if (!cl->health_check || !st || st->health) continue;
        sk_health *h = calloc(1, sizeof(*h));
        const char *host = cl->tls && cl->tls->sni ? cl->tls->sni : cl->name;
        size_t cap = strlen(cl->health_check) + strlen(host) + 128;
        char *req = h ? malloc(cap) : NULL;
        if (!req) {
            free(h);
            sk_error("cluster %s: out of memory: no health checks", cl->name);
            rc = -1;
            continue;
        }
        int n = snprintf(
            req, cap,
            "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: sidekick-health-check\r\nConnection: close\r\n\r\n",
            cl->health_check, host);
        h->cl = cl;
        h->loop = loop;
        h->request = req;
        h->request_len = (size_t)n;
        h->rng = (sk_now_ns() ^ ((uint64_t)(uintptr_t)h << 16)) | 1;
        st->health = h;
        health_sync(cl);
    }
    return rc;
}

/* Stops the checks of cfg's clusters (see health.h). */
void sk_clusters_health_stop(sk_config *cfg)
{
    for (size_t i = 0; cfg && i < cfg->nclusters; i++)
        if (cfg->clusters[i]->upstream) health_free(cfg->clusters[i]->upstream);
}
