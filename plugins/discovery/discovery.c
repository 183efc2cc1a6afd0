/*
 * discovery.so — a cluster's endpoints from DNS, from a watched file, or
 * from etcd, without a restart and without ever blocking a worker.
 *
 *     [plugin dns]
 *     source = dns                 dns | file | etcd
 *     ...                          the source's keys (dns.c, file.c, etcd.c)
 *
 *     [cluster api]
 *     discovery = dns api.shop.svc.cluster.local:8080
 *
 * This file is the registry: the instance (`source =` picks the table of
 * operations of dns.c, file.c or etcd.c), the clusters that name it
 * (on_cluster), and what every source shares: publishing an endpoint set
 * to the host (deduped, skipped when unchanged, with its source on an ABI
 * 1.2 host), the stale state of a cluster, logging and the metric
 * sidekick_plugin_discovery_updates_total{instance,source,result}.
 *
 * Everything runs on the main thread (see the contract in discovery.h).
 * See docs/plugins/discovery.md. Built against <sidekick/plugin.h> alone.
 */
#include "discovery.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char *const result_names[DSC_NRESULTS] = {"applied", "unchanged", "failed"};

/* ---- small helpers ---- */

void dsc_log(dsc_inst *inst, int level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    inst->host->log(inst->self, level, "%s", buf);
}

void dsc_count(dsc_inst *inst, dsc_result result)
{
    if (inst->updates && result >= 0 && result < DSC_NRESULTS)
        inst->host->metric_add_at(inst->updates, (size_t)result, 1);
}

uint64_t dsc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t dsc_backoff_ms(unsigned attempt, uint64_t base_ms, uint64_t max_ms)
{
    if (base_ms == 0) base_ms = 1;
    uint64_t d = base_ms;
    for (unsigned i = 1; i < attempt && d < max_ms; i++) d *= 2;
    if (d > max_ms) d = max_ms;
    unsigned r = 0;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) r = (unsigned)dsc_now_ms() * 2654435761u;
    d -= (d / 4) * (r % 1001) / 1000;
    return d ? d : 1;
}

dsc_cluster *dsc_cluster_find(dsc_inst *inst, const char *name)
{
    for (dsc_cluster *c = inst->clusters; c; c = c->next)
        if (strcmp(c->name, name) == 0) return c;
    return NULL;
}

/* ---- the host's endpoint and state calls, whatever its minor ---- */

/* Sends cl's endpoint set: set_endpoints_from (ABI 1.2, with the source's
 * name) when the host has it, else set_endpoints_weighted. 0 or -1. */
static int host_set(dsc_cluster *cl, const sk_weighted_endpoint *eps, size_t n)
{
    dsc_inst *in = cl->inst;
    const sk_host_api *h = in->host;
    if (in->has_from) return h->set_endpoints_from(in->self, cl->name, eps, n, in->source->name);
    return h->set_endpoints_weighted(in->self, cl->name, eps, n);
}

/* Tells the host whether cl is current (ABI 1.2; nothing before). */
static void host_state(dsc_cluster *cl, int ok, const char *message)
{
    dsc_inst *in = cl->inst;
    if (in->has_from) in->host->cluster_state(in->self, cl->name, ok, message);
}

/* ---- publishing ---- */

static int ep_cmp(const void *a, const void *b)
{
    const sk_weighted_endpoint *x = a, *y = b;
    return strcmp(x->address, y->address);
}

int dsc_publish(dsc_cluster *cl, const sk_weighted_endpoint *eps, size_t n)
{
    dsc_inst *in = cl->inst;
    if (n > DSC_MAX_ENDPOINTS) {
        dsc_log(in, SK_LOG_WARN, "cluster %s: %zu endpoints, only the first %d are used", cl->name, n,
                DSC_MAX_ENDPOINTS);
        n = DSC_MAX_ENDPOINTS;
    }
    sk_weighted_endpoint *set = calloc(n ? n : 1, sizeof *set);
    char(*addrs)[DSC_ADDR_LEN] = calloc(n ? n : 1, sizeof *addrs);
    if (!set || !addrs) {
        free(set);
        free(addrs);
        dsc_log(in, SK_LOG_ERROR, "cluster %s: out of memory, keeping the previous endpoints", cl->name);
        dsc_count(in, DSC_FAILED);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(addrs[i], DSC_ADDR_LEN, "%s", eps[i].address ? eps[i].address : "");
        set[i].address = addrs[i];
        set[i].weight = eps[i].weight < 1                ? 1
                        : eps[i].weight > DSC_MAX_WEIGHT ? DSC_MAX_WEIGHT
                                                         : eps[i].weight;
    }
    /* sorted by address; the entries point into addrs, which do not move:
     * sort the pairs, then re-point them at a compacted addrs copy below */
    qsort(set, n, sizeof *set, ep_cmp);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && strcmp(set[m - 1].address, set[i].address) == 0) {
            uint32_t w = set[m - 1].weight + set[i].weight;
            set[m - 1].weight = w > DSC_MAX_WEIGHT ? DSC_MAX_WEIGHT : w;
        } else {
            set[m++] = set[i];
        }
    }
    char(*own)[DSC_ADDR_LEN] = calloc(m ? m : 1, sizeof *own);
    if (!own) {
        free(set);
        free(addrs);
        dsc_log(in, SK_LOG_ERROR, "cluster %s: out of memory, keeping the previous endpoints", cl->name);
        dsc_count(in, DSC_FAILED);
        return -1;
    }
    for (size_t i = 0; i < m; i++) {
        memcpy(own[i], set[i].address, DSC_ADDR_LEN);
        set[i].address = own[i];
    }
    free(addrs);

    int same = cl->published && m == cl->neps;
    for (size_t i = 0; same && i < m; i++)
        same = set[i].weight == cl->eps[i].weight && strcmp(set[i].address, cl->eps[i].address) == 0;
    cl->good_unix = (int64_t)time(NULL);
    if (same) {
        free(set);
        free(own);
        host_state(cl, 1, NULL); /* a good answer: the host's age of the set restarts */
        if (cl->stale) {
            dsc_log(in, SK_LOG_INFO, "cluster %s: %s answers again, %zu endpoint(s) unchanged", cl->name,
                    in->source->name, m);
        }
        cl->stale = 0;
        cl->state[0] = 0;
        dsc_count(in, DSC_UNCHANGED);
        return 0;
    }
    if (host_set(cl, set, m) != 0) {
        free(set);
        free(own);
        dsc_count(in, DSC_FAILED);
        return -1; /* the host logged why */
    }
    if (cl->stale && cl->published)
        dsc_log(in, SK_LOG_INFO, "cluster %s: %s answers again", cl->name, in->source->name);
    free(cl->eps);
    free(cl->addrs);
    cl->eps = set;
    cl->addrs = own;
    cl->neps = m;
    cl->published = 1;
    cl->stale = 0;
    cl->state[0] = 0;
    dsc_count(in, DSC_APPLIED);
    return 1;
}

void dsc_stale(dsc_cluster *cl, const char *fmt, ...)
{
    dsc_inst *in = cl->inst;
    char why[200], msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (cl->good_unix) {
        struct tm tm;
        time_t t = (time_t)cl->good_unix;
        gmtime_r(&t, &tm);
        snprintf(msg, sizeof msg, "%s; keeping %zu endpoint(s) from %02d:%02d:%02dZ", why, cl->neps,
                 tm.tm_hour, tm.tm_min, tm.tm_sec);
    } else {
        snprintf(msg, sizeof msg, "%s; no answer yet", why);
    }
    /* "keeping ... from" stays the same while the failure lasts: a repeated
     * message is only logged at debug level */
    int repeated = cl->stale && strcmp(cl->state, msg) == 0;
    dsc_log(in, repeated ? SK_LOG_DEBUG : SK_LOG_WARN, "cluster %s: %s", cl->name, msg);
    if (!repeated) host_state(cl, 0, msg);
    snprintf(cl->state, sizeof cl->state, "%s", msg);
    cl->stale = 1;
    dsc_count(in, DSC_FAILED);
}

/* ---- the plugin ---- */

static void destroy(void *p)
{
    dsc_inst *in = p;
    if (!in) return;
    if (in->source) in->source->destroy(in);
    for (dsc_cluster *c = in->clusters, *next; c; c = next) {
        next = c->next;
        free(c->name);
        free(c->arg);
        free(c->eps);
        free(c->addrs);
        free(c);
    }
    free(in);
}

static const dsc_source_ops *const sources[] = {&dsc_dns_ops, &dsc_file_ops, &dsc_etcd_ops};

/* The metric, with the labels the host can do. 0 or -1. */
static int register_metric(dsc_inst *in)
{
    const sk_host_api *h = in->host;
    static const char help[] = "Discovery answers by result: applied (a new endpoint set), unchanged, "
                               "failed (a refresh failed or did not parse; the last good set stays).";
    if (h->abi_minor >= 2 && h->counter_vec) {
        static const char *const labels[] = {"source", "result"};
        const char *values[2 * DSC_NRESULTS];
        for (int i = 0; i < DSC_NRESULTS; i++) {
            values[2 * i] = in->source->name;
            values[2 * i + 1] = result_names[i];
        }
        in->updates =
            h->counter_vec(in->self, "discovery_updates_total", help, labels, 2, values, DSC_NRESULTS);
        in->updates_vec = in->updates != NULL;
    }
    if (!in->updates)
        in->updates = h->counter_labelled(in->self, "discovery_updates_total", help, "result", result_names,
                                          DSC_NRESULTS);
    return in->updates ? 0 : -1;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    if (host->abi_minor < 1) {
        snprintf(err, err_size, "discovery: the host's plugin ABI 1.%u is too old (1.1 needed)",
                 (unsigned)host->abi_minor);
        return NULL;
    }
    dsc_inst *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(err, err_size, "discovery: out of memory");
        return NULL;
    }
    in->host = host;
    in->self = self;
    in->name = host->instance_name(self);
    in->has_from = host->abi_minor >= 2 && host->set_endpoints_from && host->cluster_state;

    /* `source` first; every other key goes to the source */
    const sk_kv *src = NULL;
    sk_kv *rest = calloc(nkeys ? nkeys : 1, sizeof *rest);
    if (!rest) {
        snprintf(err, err_size, "discovery: out of memory");
        free(in);
        return NULL;
    }
    size_t nrest = 0;
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, "source") != 0) {
            rest[nrest++] = keys[i];
        } else if (src) {
            snprintf(err, err_size, "discovery: line %d: source given twice (first on line %d)", keys[i].line,
                     src->line);
            goto fail;
        } else {
            src = &keys[i];
        }
    }
    if (!src) {
        snprintf(err, err_size, "discovery: source is required (dns, file or etcd)");
        goto fail;
    }
    for (size_t i = 0; i < sizeof sources / sizeof sources[0]; i++)
        if (strcmp(src->value, sources[i]->name) == 0) in->source = sources[i];
    if (!in->source) {
        snprintf(err, err_size, "discovery: line %d: source: expected dns, file or etcd, not '%s'", src->line,
                 src->value);
        goto fail;
    }
    if (register_metric(in) < 0) {
        snprintf(err, err_size, "discovery: could not register discovery_updates_total");
        in->source = NULL; /* its create did not run: nothing to destroy */
        goto fail;
    }
    if (in->source->create(in, rest, nrest, err, err_size) != 0) goto fail;
    free(rest);
    dsc_log(in, SK_LOG_DEBUG, "source %s%s", in->source->name,
            in->has_from ? "" : " (host without set_endpoints_from: endpoints without a source)");
    return in;
fail:
    free(rest);
    destroy(in);
    return NULL;
}

/* Trims ARG (the host trims it already; this also refuses what is left
 * empty). */
static int on_cluster(void *p, const char *cluster, const char *arg, char *err, size_t err_size)
{
    dsc_inst *in = p;
    if (!arg || !*arg) {
        snprintf(err, err_size, "discovery = %s needs an argument: %s", in->name,
                 strcmp(in->source->name, "dns") == 0    ? "NAME:PORT or _service._proto.NAME"
                 : strcmp(in->source->name, "file") == 0 ? "the path of an endpoint file"
                                                         : "the name under the prefix");
        return -1;
    }
    if (dsc_cluster_find(in, cluster)) {
        snprintf(err, err_size, "cluster %s is already fed by %s", cluster, in->name);
        return -1;
    }
    dsc_cluster *cl = calloc(1, sizeof *cl);
    if (!cl || !(cl->name = strdup(cluster)) || !(cl->arg = strdup(arg))) {
        if (cl) free(cl->name);
        free(cl);
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    cl->inst = in;
    dsc_cluster **tail = &in->clusters;
    while (*tail) tail = &(*tail)->next;
    *tail = cl;
    in->nclusters++;
    return in->source->add_cluster(in, cl, cl->arg, err, err_size);
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR, /* the 1.2 members are used only when the host fills them */
    .name = "discovery",
    .description = "cluster endpoints from DNS (A/AAAA, SRV), watched files and etcd",
    .create = create,
    .destroy = destroy,
    .on_cluster = on_cluster,
};
