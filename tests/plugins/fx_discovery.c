/*
 * fx_discovery — test fixture: a tiny discovery plugin.
 *
 * Keys:
 *     cluster   = NAME         the cluster whose endpoints it sets (required)
 *     endpoints = a:1, b:2     the new set; may be empty (no endpoint at all)
 *     delay_ms  = 200          when, after start, the set is published
 *
 * From create it starts a timer on the main loop; when it fires it calls
 * host->set_endpoints, then host->post_to_workers with a callback that
 * counts, per worker, that the post arrived.
 *
 * Metrics: sidekick_plugin_fx_discovery_updates_total (set_endpoints that
 * succeeded), sidekick_plugin_fx_discovery_posts_total (post callbacks run
 * on workers).
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EPS 16

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char cluster[128];
    char list[1024];
    const char *eps[MAX_EPS];
    size_t neps;
    unsigned delay_ms;
    sk_timer *timer;
    sk_metric *updates, *posts;
} fx;

static void on_post(void *arg)
{
    fx *f = arg;
    f->host->metric_add(f->posts, 1);
}

static void publish(void *arg)
{
    fx *f = arg;
    f->timer = NULL; /* fired: the host freed it */
    if (f->host->set_endpoints(f->self, f->cluster, f->eps, f->neps) == 0) f->host->metric_add(f->updates, 1);
    if (f->host->post_to_workers(on_post, f) != 0) f->host->log(f->self, SK_LOG_ERROR, "post_to_workers failed");
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
            f->delay_ms = (unsigned)strtoul(v, NULL, 10);
        } else {
            snprintf(err, err_size, "fx_discovery: unknown key '%s' (line %d); known: cluster, endpoints, delay_ms",
                     k, keys[i].line);
            free(f);
            return NULL;
        }
    }
    if (!f->cluster[0]) {
        snprintf(err, err_size, "fx_discovery: 'cluster' is required");
        free(f);
        return NULL;
    }
    for (char *p = strtok(f->list, ", "); p && f->neps < MAX_EPS; p = strtok(NULL, ", ")) f->eps[f->neps++] = p;
    f->updates = host->counter(self, "fx_discovery_updates_total", "set_endpoints calls that succeeded");
    f->posts = host->counter(self, "fx_discovery_posts_total", "post_to_workers callbacks run");
    sk_loop *main = host->main_loop();
    if (main) f->timer = host->timer_start(main, f->delay_ms, publish, f);
    return f;
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
};
