/*
 * fx_discovery — test fixture: a tiny discovery plugin.
 *
 * Keys:
 *     cluster   = NAME         a cluster whose endpoints it sets (optional: the
 *                              clusters whose `discovery` names it are set too)
 *     endpoints = a:1, b:2 3   the new set ("address [weight]"); may be empty
 *     delay_ms  = 200          when, after create, the set is published (a main-loop
 *                              timer); "never": it never is
 *     source    = NAME         publish with set_endpoints_from (ABI 1.2) and this
 *                              source; without it set_endpoints (weights ignored)
 *     answer_file = PATH       instead of once after delay_ms: every delay_ms, the
 *                              timer looks for PATH, and publishes once it exists
 *
 * From create it starts a timer on the main loop; when it fires it calls
 * host->set_endpoints (or set_endpoints_from) for the `cluster` key's
 * cluster and for every cluster on_cluster told it, then
 * host->post_to_workers with a callback that counts, per worker, that the
 * post arrived. Each instance answers once: after a reload the new instance
 * answers delay_ms after its own create.
 *
 * Metrics: sidekick_plugin_fx_discovery_updates_total (set_endpoints* calls
 * that succeeded), sidekick_plugin_fx_discovery_posts_total (post callbacks run
 * on workers).
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_EPS      16
#define MAX_CLUSTERS 16

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char cluster[128];
    char list[1024];
    const char *eps[MAX_EPS];
    sk_weighted_endpoint weps[MAX_EPS];
    size_t neps;
    char source[32];
    char answer_file[512];
    char clusters[MAX_CLUSTERS][128]; /* told by on_cluster */
    size_t nclusters;
    unsigned delay_ms;
    int never;
    sk_timer *timer;
    sk_metric *updates, *posts;
} fx;

static void on_post(void *arg)
{
    fx *f = arg;
    f->host->metric_add(f->posts, 1);
}

static void answer(fx *f, const char *cluster)
{
    int rc = f->source[0] ? f->host->set_endpoints_from(f->self, cluster, f->weps, f->neps, f->source)
                          : f->host->set_endpoints(f->self, cluster, f->eps, f->neps);
    if (rc == 0) f->host->metric_add(f->updates, 1);
}

static void publish(void *arg)
{
    fx *f = arg;
    f->timer = NULL; /* fired: the host freed it */
    if (f->answer_file[0] && access(f->answer_file, F_OK) != 0) {
        f->timer = f->host->timer_start(f->host->main_loop(), f->delay_ms, publish, f);
        return;
    }
    if (f->cluster[0]) answer(f, f->cluster);
    for (size_t i = 0; i < f->nclusters; i++) answer(f, f->clusters[i]);
    if (f->host->post_to_workers(on_post, f) != 0)
        f->host->log(f->self, SK_LOG_ERROR, "post_to_workers failed");
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_discovery: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    f->delay_ms = 200;
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        if (strcmp(k, "cluster") == 0) {
            snprintf(f->cluster, sizeof f->cluster, "%s", v);
        } else if (strcmp(k, "endpoints") == 0) {
            snprintf(f->list, sizeof f->list, "%s", v);
        } else if (strcmp(k, "delay_ms") == 0) {
            f->never = strcmp(v, "never") == 0;
            f->delay_ms = (unsigned)strtoul(v, NULL, 10);
        } else if (strcmp(k, "source") == 0) {
            snprintf(f->source, sizeof f->source, "%s", v);
        } else if (strcmp(k, "answer_file") == 0) {
            snprintf(f->answer_file, sizeof f->answer_file, "%s", v);
        } else {
            snprintf(err, err_size,
                     "fx_discovery: unknown key '%s' (line %d); known: cluster, endpoints, delay_ms, source",
                     k, keys[i].line);
            free(f);
            return NULL;
        }
    }
    if (f->source[0] && host->abi_minor < 2) {
        snprintf(err, err_size, "fx_discovery: 'source' needs a host with plugin ABI 1.2");
        free(f);
        return NULL;
    }
    /* "a:1, b:2 3": comma-separated, each an address and an optional weight */
    for (char *save = NULL, *p = strtok_r(f->list, ",", &save); p && f->neps < MAX_EPS;
         p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ') p++;
        if (!*p) continue;
        char *sp = strchr(p, ' ');
        f->weps[f->neps].weight = sp ? (uint32_t)strtoul(sp + 1, NULL, 10) : 1;
        if (sp) *sp = 0;
        f->weps[f->neps].address = p;
        f->eps[f->neps++] = p;
    }
    f->updates = host->counter(self, "fx_discovery_updates_total", "set_endpoints calls that succeeded");
    f->posts = host->counter(self, "fx_discovery_posts_total", "post_to_workers callbacks run");
    sk_loop *main = host->main_loop();
    if (main && !f->never) f->timer = host->timer_start(main, f->delay_ms, publish, f);
    return f;
}

static int on_cluster(void *inst, const char *cluster, const char *arg, char *err, size_t err_size)
{
    fx *f = inst;
    (void)arg;
    if (f->nclusters == MAX_CLUSTERS) {
        snprintf(err, err_size, "fx_discovery: more than %d clusters", MAX_CLUSTERS);
        return -1;
    }
    snprintf(f->clusters[f->nclusters++], sizeof f->clusters[0], "%s", cluster);
    return 0;
}

static void destroy(void *inst)
{
    fx *f = inst;
    if (f->timer) f->host->timer_stop(f->timer);
    free(f);
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_discovery",
    .description = "test fixture: sets a cluster's endpoints from a main-loop timer",
    .create = create,
    .destroy = destroy,
    .on_cluster = on_cluster,
};
