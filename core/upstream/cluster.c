/*
 * cluster.c — shared endpoint objects and immutable endpoint sets of a
 * cluster (see cluster.h): made from the static endpoints after a load,
 * replaced by discovery on the main thread, adopted by workers with one
 * short lock per change.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balancer.h"
#include "cluster.h"
#include "metrics.h"

/* Set by health.c once it runs checks (see cluster.h). */
const sk_health_hooks *sk__health_hooks;

/* Takes a reference on e. */
void sk_endpoint_ref(sk_endpoint *e)
{
    __atomic_add_fetch(&e->refcnt, 1, __ATOMIC_RELAXED);
}

/* Drops a reference on e; the last one frees it. */
void sk_endpoint_unref(sk_endpoint *e)
{
    if (e && __atomic_sub_fetch(&e->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
        sk_metrics_row_release(e->metrics_row);
        free(e);
    }
}

/* Ejected while the clock is below the ejection's end. */
bool sk_endpoint_ejected(const sk_endpoint *e, uint64_t now_ms)
{
    return __atomic_load_n(&e->ejected_until_ms, __ATOMIC_ACQUIRE) > now_ms;
}

/* Usable by the balancers: not failing its checks and not ejected. */
bool sk_endpoint_usable(const sk_endpoint *e, uint64_t now_ms)
{
    return __atomic_load_n(&e->health, __ATOMIC_RELAXED) != SK_HEALTH_UNHEALTHY &&
           !sk_endpoint_ejected(e, now_ms);
}

/* Healthy for the balancers, now. */
bool sk_endpoint_healthy(const sk_endpoint *e)
{
    return sk_endpoint_usable(e, sk_now_ms());
}

/* Takes a reference on s. */
void sk_endpoint_set_ref(sk_endpoint_set *s)
{
    __atomic_add_fetch(&s->refcnt, 1, __ATOMIC_RELAXED);
}

/* Drops a reference on s; the last one frees it and drops its endpoints. */
void sk_endpoint_set_unref(sk_endpoint_set *s)
{
    if (!s || __atomic_sub_fetch(&s->refcnt, 1, __ATOMIC_ACQ_REL) != 0) return;
    for (size_t i = 0; i < s->n; i++) sk_endpoint_unref(s->eps[i]);
    sk__ring_free(s->ring);
    free(s);
}

/* sk_cluster.upstream_free: the config that owns the cluster is freed. */
static void state_free(sk_cluster_state *st)
{
    if (st->health && sk__health_hooks) sk__health_hooks->free(st); /* checks still running */
    sk_endpoint_set_unref(st->set);
    pthread_mutex_destroy(&st->lock);
    pthread_mutex_destroy(&st->eject_lock);
    free(st);
}

/* The process's counters of each cluster name: made at a cluster's first
 * state, kept across reloads (a new generation's cluster of the same name
 * counts on), never freed. */
static struct {
    pthread_mutex_t lock;
    sk_cluster_stats **all;
    size_t n, cap;
} registry = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The counters of cluster `name`, made at first use; NULL on OOM. */
static sk_cluster_stats *stats_of(const char *name)
{
    sk_cluster_stats *found = NULL;
    pthread_mutex_lock(&registry.lock);
    for (size_t i = 0; i < registry.n && !found; i++)
        if (strcmp(registry.all[i]->name, name) == 0) found = registry.all[i];
    if (!found && registry.n == registry.cap) {
        size_t cap = registry.cap ? registry.cap * 2 : 16;
        sk_cluster_stats **a = realloc(registry.all, cap * sizeof(*a));
        if (a) {
            registry.all = a;
            registry.cap = cap;
        }
    }
    if (!found && registry.n < registry.cap &&
        (found = calloc(1, sizeof(*found) + strlen(name) + 1)) != NULL) {
        strcpy(found->name, name);
        registry.all[registry.n++] = found;
    }
    pthread_mutex_unlock(&registry.lock);
    return found;
}

/* The median of the decayed latency estimates of the endpoints of `old`
 * that have one (0 when none does): what a new endpoint of an ewma
 * cluster starts with, so it neither draws all traffic nor none. */
static uint64_t ewma_median(const sk_endpoint_set *old, uint64_t now_ns, uint64_t decay_ns)
{
    size_t n = 0;
    uint64_t *v = old && old->n ? calloc(old->n, sizeof(*v)) : NULL;
    for (size_t i = 0; v && i < old->n; i++)
        if (__atomic_load_n(&old->eps[i]->ewma_stamp_ns, __ATOMIC_RELAXED))
            v[n++] = sk_ewma_estimate(old->eps[i], now_ns, decay_ns);
    for (size_t i = 1; i < n; i++) /* insertion sort: a few endpoints */
        for (size_t j = i; j > 0 && v[j - 1] > v[j]; j--) {
            uint64_t t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    uint64_t m = n ? (n % 2 ? v[n / 2] : v[n / 2 - 1] / 2 + v[n / 2] / 2) : 0;
    free(v);
    return m;
}

static int cmp_endpoint(const void *a, const void *b)
{
    return strcmp((*(sk_endpoint *const *)a)->address.text, (*(sk_endpoint *const *)b)->address.text);
}

/* Orders indices into an sk_addr array by address text, equal texts by index. */
static int cmp_index(const void *a, const void *b, void *arg)
{
    const sk_addr *addrs = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(addrs[i].text, addrs[j].text);
    return c ? c : (i > j) - (i < j);
}

/* The endpoint of `sorted` (n, by address) with address text `text`, or NULL. */
static sk_endpoint *find_endpoint(sk_endpoint **sorted, size_t n, const char *text)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(text, sorted[mid]->address.text);
        if (c == 0) return sorted[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/*
 * Makes the set of cl that replaces `old` (NULL for the first): endpoints
 * of old with an address of addrs are taken over, the others are new
 * objects (each with its metrics row); repeated addresses count once (the
 * first, with its weight). The weights and their running sums live in the
 * same allocation as the set. New objects are "added" (slow start, a neutral ewma estimate) unless
 * `initial` (the cluster's first endpoints, or a reload's carried set) or
 * old was empty. Builds the hash ring of a ring_hash cluster. Main thread,
 * with old held. Returns the set (refcnt 1) or NULL on OOM.
 */
static sk_endpoint_set *make_set(const sk_cluster *cl, const sk_endpoint_set *old, const sk_addr *addrs,
                                 const uint32_t *weights, size_t n, const char *source, bool initial)
{
    bool added = !initial && old && old->n > 0;
    uint64_t now_ms = sk_now_ms(), now_ns = sk_now_ns(), start_ns = 0;
    if (added && cl->lb == SK_LB_EWMA) start_ns = ewma_median(old, now_ns, cl->ewma_decay_ms * 1000000);
    size_t nold = old ? old->n : 0;
    /* eps[n], then cum[n] (8-byte aligned after pointers), then weights[n] */
    sk_endpoint_set *s =
        calloc(1, sizeof(*s) + n * (sizeof(s->eps[0]) + sizeof(uint64_t) + sizeof(uint32_t)));
    sk_endpoint **sorted = calloc(nold ? nold : 1, sizeof(*sorted));
    size_t *order = calloc(n ? n : 1, sizeof(*order));
    bool *dup = calloc(n ? n : 1, sizeof(*dup));
    bool ok = s && sorted && order && dup;
    uint64_t *cum = NULL;
    uint32_t *w = NULL;
    if (ok) {
        cum = (uint64_t *)(void *)(s->eps + n);
        w = (uint32_t *)(void *)(cum + n);
        s->cum = cum;
        s->weights = w;
        s->uniform = true;
        snprintf(s->source, sizeof(s->source), "%s", source ? source : "static");
        if (nold) memcpy(sorted, old->eps, nold * sizeof(*sorted));
        qsort(sorted, nold, sizeof(*sorted), cmp_endpoint);
        for (size_t i = 0; i < n; i++) order[i] = i;
        qsort_r(order, n, sizeof(*order), cmp_index, (void *)addrs);
        for (size_t i = 1; i < n; i++)
            if (strcmp(addrs[order[i]].text, addrs[order[i - 1]].text) == 0) dup[order[i]] = true;
        s->refcnt = 1;
        s->version = old ? old->version + 1 : 1;
    }
    for (size_t i = 0; ok && i < n; i++) {
        if (dup[i]) continue;
        uint32_t wi = weights ? weights[i] : 1;
        sk_endpoint *e = find_endpoint(sorted, nold, addrs[i].text);
        if (e) {
            sk_endpoint_ref(e);
        } else if ((e = calloc(1, sizeof(*e))) != NULL) {
            e->address = addrs[i];
            e->refcnt = 1;
            e->metrics_row = sk_metrics_row_acquire('e', cl->name, e->address.text);
            if (cl->health_check && cl->health_initial_unhealthy) e->health = SK_HEALTH_UNHEALTHY;
            if (added) {
                e->added_ms = now_ms ? now_ms : 1;
                if (start_ns) {
                    e->ewma_ns = start_ns;
                    e->ewma_stamp_ns = now_ns;
                }
            }
        } else {
            ok = false;
            break;
        }
        if (s->n && wi != w[0]) s->uniform = false;
        w[s->n] = wi;
        s->total_weight += wi;
        cum[s->n] = s->total_weight;
        s->eps[s->n++] = e;
    }
    if (ok && cl->lb == SK_LB_RING_HASH && s->n) {
        s->ring = sk__ring_build(s);
        if (!s->ring)
            sk_warn("cluster %s: out of memory building its hash ring; round robin until the next set",
                    cl->name);
    }
    if (!ok && s) {
        s->refcnt = 1;
        sk_endpoint_set_unref(s);
        s = NULL;
    }
    free(sorted);
    free(order);
    free(dup);
    return s;
}

/* Publishes `set` (its reference moves to the cluster) as cl's set in
 * force; the active checks follow it. */
static void publish(sk_cluster *cl, sk_cluster_state *st, sk_endpoint_set *set)
{
    pthread_mutex_lock(&st->lock);
    sk_endpoint_set *old = st->set;
    st->set = set;
    __atomic_store_n(&st->version, set->version, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&st->lock);
    sk_endpoint_set_unref(old);
    if (st->health && sk__health_hooks) sk__health_hooks->sync(cl);
}

/* The upstream state of cl, made with the static endpoints as its first
 * set when it has none. NULL on OOM. */
static sk_cluster_state *state_of(sk_cluster *cl)
{
    if (cl->upstream) return cl->upstream;
    sk_cluster_state *st = calloc(1, sizeof(*st));
    sk_addr *addrs = calloc(cl->nendpoints ? cl->nendpoints : 1, sizeof(*addrs));
    sk_endpoint_set *set = NULL;
    if (st && addrs) {
        for (size_t i = 0; i < cl->nendpoints; i++) addrs[i] = cl->endpoints[i].address;
        set = make_set(cl, NULL, addrs, NULL, cl->nendpoints, "static", true);
    }
    free(addrs);
    if (!set) {
        free(st);
        return NULL;
    }
    st->stats = stats_of(cl->name);
    pthread_mutex_init(&st->lock, NULL);
    pthread_mutex_init(&st->eject_lock, NULL);
    st->set = set;
    st->version = set->version;
    cl->upstream = st;
    cl->upstream_free = state_free;
    return st;
}

/* Gives each cluster of cfg its upstream state (see cluster.h). */
int sk_clusters_init(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->nclusters; i++)
        if (!state_of(cfg->clusters[i])) return -1;
    return 0;
}

/* Replaces the set in force of cl (see cluster.h). */
int sk_cluster_set_endpoints(sk_cluster *cl, const sk_addr *addrs, const uint32_t *weights, size_t n,
                             const char *source)
{
    sk_cluster_state *st = state_of(cl);
    if (!st) return -1;
    /* The main thread is the only writer: st->set cannot change under us. */
    sk_endpoint_set *set = make_set(cl, st->set, addrs, weights, n, source, false);
    if (!set) return -1;
    publish(cl, st, set);
    sk_discovery_state *d = &st->discovery;
    d->answered = true;
    d->carried = false;
    d->stale = false;
    d->message[0] = 0;
    d->last_update = (int64_t)time(NULL);
    d->last_update_ms = sk_now_ms();
    return 0;
}

/* Records discovery's word on cl's set (see cluster.h). */
int sk_cluster_set_state(sk_cluster *cl, bool ok, const char *message)
{
    sk_cluster_state *st = state_of(cl);
    if (!st) return -1;
    sk_discovery_state *d = &st->discovery;
    d->stale = !ok;
    if (ok && d->answered && !d->carried) {
        /* "still current": the instance's refresh found its set unchanged,
         * which is a good answer as fresh as a new set (the age counts from
         * here) */
        d->last_update = (int64_t)time(NULL);
        d->last_update_ms = sk_now_ms();
    }
    size_t k = 0;
    for (; message && message[k] && k < SK_STATE_MESSAGE_MAX; k++) {
        unsigned char c = (unsigned char)message[k];
        d->message[k] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    d->message[k] = 0;
    return 0;
}

/* cl's discovery state (see cluster.h). */
const sk_discovery_state *sk_cluster_discovery(const sk_cluster *cl)
{
    const sk_cluster_state *st = cl->upstream;
    return st ? &st->discovery : NULL;
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Carries discovery's answers over a reload (see cluster.h). */
int sk_clusters_carry_over(sk_config *next, const sk_config *prev)
{
    int carried = 0;
    for (size_t i = 0; prev && i < next->nclusters; i++) {
        sk_cluster *cl = next->clusters[i];
        if (!cl->discovery) continue;
        const sk_cluster *old = NULL;
        for (size_t k = 0; k < prev->nclusters && !old; k++)
            if (strcmp(prev->clusters[k]->name, cl->name) == 0) old = prev->clusters[k];
        if (!old || !same_str(old->discovery, cl->discovery) ||
            !same_str(old->discovery_arg, cl->discovery_arg))
            continue;
        const sk_discovery_state *od = sk_cluster_discovery(old);
        sk_cluster_state *st = state_of(cl);
        if (!st) return -1;
        if (!od || !od->answered || st->discovery.answered)
            continue; /* nothing to carry, or answered at load */
        sk_endpoint_set *from = sk_cluster_endpoints(old);
        if (!from) continue;
        sk_addr *addrs = calloc(from->n ? from->n : 1, sizeof(*addrs));
        sk_endpoint_set *set = NULL;
        if (addrs) {
            for (size_t k = 0; k < from->n; k++) addrs[k] = from->eps[k]->address;
            set = make_set(cl, st->set, addrs, from->weights, from->n, from->source, true);
        }
        free(addrs);
        sk_endpoint_set_unref(from);
        if (!set) return -1;
        publish(cl, st, set);
        st->discovery = *od;
        st->discovery.carried = true;
        sk_info("cluster %s: keeping its %zu endpoint(s) from the previous generation until [plugin %s] sets "
                "them",
                cl->name, set->n, cl->discovery);
        carried++;
    }
    return carried;
}

/* What an endpoint of the next generation takes over from its
 * predecessor (see sk_clusters_inherit). */
static void inherit_endpoint(const sk_cluster *cl, sk_endpoint *e, const sk_cluster *old,
                             const sk_endpoint *o)
{
    if (cl->health_check && old->health_check && strcmp(cl->health_check, old->health_check) == 0) {
        __atomic_store_n(&e->health, __atomic_load_n(&o->health, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
        __atomic_store_n(&e->hc_passes, __atomic_load_n(&o->hc_passes, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
        __atomic_store_n(&e->hc_failures, __atomic_load_n(&o->hc_failures, __ATOMIC_RELAXED),
                         __ATOMIC_RELAXED);
    }
    if (cl->outlier_failures && old->outlier_failures) {
        __atomic_store_n(&e->ejected_until_ms, __atomic_load_n(&o->ejected_until_ms, __ATOMIC_ACQUIRE),
                         __ATOMIC_RELEASE);
        __atomic_store_n(&e->ejection_ms, __atomic_load_n(&o->ejection_ms, __ATOMIC_RELAXED),
                         __ATOMIC_RELAXED);
        __atomic_store_n(&e->ejections, __atomic_load_n(&o->ejections, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
        __atomic_store_n(&e->failures, __atomic_load_n(&o->failures, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
        e->eject_level = o->eject_level; /* read without prev's eject_lock: at worst one level off */
    }
    if (cl->lb == SK_LB_EWMA && old->lb == SK_LB_EWMA) {
        __atomic_store_n(&e->ewma_ns, __atomic_load_n(&o->ewma_ns, __ATOMIC_RELAXED), __ATOMIC_RELAXED);
        __atomic_store_n(&e->ewma_stamp_ns, __atomic_load_n(&o->ewma_stamp_ns, __ATOMIC_RELAXED),
                         __ATOMIC_RELAXED);
    }
    if (!e->added_ms) e->added_ms = o->added_ms;
}

/* Keeps what was learnt of the endpoints over a reload (see cluster.h). */
void sk_clusters_inherit(sk_config *next, const sk_config *prev)
{
    for (size_t i = 0; prev && i < next->nclusters; i++) {
        sk_cluster *cl = next->clusters[i];
        const sk_cluster *old = NULL;
        for (size_t k = 0; k < prev->nclusters && !old; k++)
            if (strcmp(prev->clusters[k]->name, cl->name) == 0) old = prev->clusters[k];
        if (!old) continue;
        sk_endpoint_set *s = sk_cluster_endpoints(cl), *os = sk_cluster_endpoints(old);
        size_t kept = 0;
        for (size_t k = 0; s && os && k < s->n; k++)
            for (size_t j = 0; j < os->n; j++)
                if (strcmp(s->eps[k]->address.text, os->eps[j]->address.text) == 0) {
                    inherit_endpoint(cl, s->eps[k], old, os->eps[j]);
                    kept++;
                    break;
                }
        if (kept)
            sk_debug("cluster %s: %zu endpoint(s) keep their health and ejection state", cl->name, kept);
        sk_endpoint_set_unref(s);
        sk_endpoint_set_unref(os);
    }
}

/* One counter of the stats of every cluster of cfg (offset into sk_cluster_stats). */
static int render_counter(sk_buf *out, const sk_config *cfg, const char *name, const char *help, size_t off,
                          const char *label)
{
    int rc = sk_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster_state *st = cfg->clusters[i]->upstream;
        if (!st || !st->stats) continue;
        uint64_t v = __atomic_load_n((const uint64_t *)(const void *)((const char *)st->stats + off),
                                     __ATOMIC_RELAXED);
        rc |= sk_buf_printf(out, "%s{cluster=\"%s\"%s} %llu\n", name, cfg->clusters[i]->name,
                            label ? label : "", (unsigned long long)v);
    }
    return rc;
}

/* The traffic series: the clusters' panic state, checks and health
 * transitions (see docs/operations.md). */
static int render_traffic(sk_buf *out, const sk_config *cfg, uint64_t now)
{
    /* sidekick_endpoint_healthy, _ejected and sidekick_outlier_ejections_total are
     * obs/metrics.c's (its endpoint and cluster rows) */
    int rc = 0;
    rc |=
        sk_buf_printf(out, "# HELP sidekick_cluster_panic Whether a cluster balances over all its endpoints "
                           "because fewer than panic_threshold percent are healthy.\n"
                           "# TYPE sidekick_cluster_panic gauge\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_endpoint_set *s = sk_cluster_endpoints(cfg->clusters[i]);
        size_t usable;
        if (s)
            rc |= sk_buf_printf(out, "sidekick_cluster_panic{cluster=\"%s\"} %d\n", cfg->clusters[i]->name,
                                sk_cluster_check_panic(cfg->clusters[i], s, now, &usable) ? 1 : 0);
        sk_endpoint_set_unref(s);
    }
    rc |= render_counter(out, cfg, "sidekick_cluster_panics_total",
                         "Times a cluster went into panic (fewer than panic_threshold percent healthy).",
                         offsetof(sk_cluster_stats, panics), NULL);
    rc |= sk_buf_printf(out, "# HELP sidekick_health_checks_total Active health checks by result.\n"
                             "# TYPE sidekick_health_checks_total counter\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster *cl = cfg->clusters[i];
        const sk_cluster_state *st = cl->upstream;
        if (!cl->health_check || !st || !st->stats) continue;
        rc |= sk_buf_printf(out,
                            "sidekick_health_checks_total{cluster=\"%s\",result=\"pass\"} %llu\n"
                            "sidekick_health_checks_total{cluster=\"%s\",result=\"fail\"} %llu\n",
                            cl->name, (unsigned long long)SK_LOAD(st->stats->checks_passed), cl->name,
                            (unsigned long long)SK_LOAD(st->stats->checks_failed));
    }
    rc |= sk_buf_printf(out, "# HELP sidekick_health_transitions_total Endpoints that became healthy or "
                             "unhealthy by their active checks.\n"
                             "# TYPE sidekick_health_transitions_total counter\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster *cl = cfg->clusters[i];
        const sk_cluster_state *st = cl->upstream;
        if (!cl->health_check || !st || !st->stats) continue;
        rc |= sk_buf_printf(out,
                            "sidekick_health_transitions_total{cluster=\"%s\",to=\"healthy\"} %llu\n"
                            "sidekick_health_transitions_total{cluster=\"%s\",to=\"unhealthy\"} %llu\n",
                            cl->name, (unsigned long long)SK_LOAD(st->stats->became_healthy), cl->name,
                            (unsigned long long)SK_LOAD(st->stats->became_unhealthy));
    }
    return rc;
}

/* Prometheus text of the clusters' endpoint counts and discovery ages (see cluster.h). */
int sk_clusters_render_prometheus(sk_buf *out, const sk_config *cfg)
{
    int rc = 0;
    if (!cfg || cfg->nclusters == 0) return 0;
    rc |=
        sk_buf_printf(out, "# HELP sidekick_cluster_endpoints Endpoints in the set in force of each cluster, "
                           "by where the set came from (static, plugin, or the discovery source).\n"
                           "# TYPE sidekick_cluster_endpoints gauge\n");
    for (size_t i = 0; i < cfg->nclusters; i++) {
        sk_endpoint_set *s = sk_cluster_endpoints(cfg->clusters[i]);
        if (!s) continue;
        rc |= sk_buf_printf(out, "sidekick_cluster_endpoints{cluster=\"%s\",source=\"%s\"} %zu\n",
                            cfg->clusters[i]->name, s->source, s->n);
        sk_endpoint_set_unref(s);
    }
    bool any = false;
    uint64_t now = sk_now_ms();
    for (size_t i = 0; i < cfg->nclusters; i++) {
        const sk_cluster *cl = cfg->clusters[i];
        const sk_discovery_state *d = sk_cluster_discovery(cl);
        if (!cl->discovery || !d || !d->answered) continue;
        if (!any)
            rc |= sk_buf_printf(out,
                                "# HELP sidekick_cluster_discovery_age_seconds Seconds since the discovery "
                                "instance of each cluster last set its endpoints.\n"
                                "# TYPE sidekick_cluster_discovery_age_seconds gauge\n");
        any = true;
        uint64_t age = now >= d->last_update_ms ? now - d->last_update_ms : 0;
        rc |= sk_buf_printf(out, "sidekick_cluster_discovery_age_seconds{cluster=\"%s\"} %llu.%03llu\n",
                            cl->name, (unsigned long long)(age / 1000), (unsigned long long)(age % 1000));
    }
    rc |= render_traffic(out, cfg, now);
    return rc ? -1 : 0;
}

/* The set in force of cl, with a reference (see cluster.h). */
sk_endpoint_set *sk_cluster_endpoints(const sk_cluster *cl)
{
    sk_cluster_state *st = cl->upstream;
    if (!st) return NULL;
    pthread_mutex_lock(&st->lock);
    sk_endpoint_set *s = st->set;
    sk_endpoint_set_ref(s);
    pthread_mutex_unlock(&st->lock);
    return s;
}

/* The version of the set in force of cl, 0 without upstream state. */
uint64_t sk_cluster_version(const sk_cluster *cl)
{
    const sk_cluster_state *st = cl->upstream;
    return st ? __atomic_load_n(&st->version, __ATOMIC_ACQUIRE) : 0;
}
