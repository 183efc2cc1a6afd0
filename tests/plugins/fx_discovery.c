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
 *     endpoints_file = PATH    instead of `endpoints`: every delay_ms, the timer
 *                              reads PATH (the same "a:1, b:2 3" list) and publishes
 *                              it each time its content changed (a missing file:
 *                              nothing), so a test can change the set as often as
 *                              it likes within one generation
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
    char endpoints_file[512];
    char last[1024];                  /* endpoints_file: the content published last */
    int published;                    /* endpoints_file: something was published */
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

/* "a:1, b:2 3" in f->list: comma-separated, each an address and an optional weight. */
static void parse_list(fx *f)
{
    f->neps = 0;
    for (char *save = NULL, *p = strtok_r(f->list, ",", &save); p && f->neps < MAX_EPS;
         p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ' || *p == '\n') p++;
        char *end = p + strlen(p);
        while (end > p && (end[-1] == '\n' || end[-1] == ' ')) *--end = 0;
        if (!*p) continue;
        char *sp = strchr(p, ' ');
        f->weps[f->neps].weight = sp ? (uint32_t)strtoul(sp + 1, NULL, 10) : 1;
        if (sp) *sp = 0;
        f->weps[f->neps].address = p;
        f->eps[f->neps++] = p;
    }
}

/* endpoints_file: true when PATH holds a list other than the one published last (now in f->eps). */
static int read_endpoints_file(fx *f)
{
    char buf[sizeof f->list];
    FILE *fp = fopen(f->endpoints_file, "r");
    if (!fp) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    if (f->published && strcmp(buf, f->last) == 0) return 0;
    memcpy(f->last, buf, n + 1);
    memcpy(f->list, buf, n + 1);
    f->published = 1;
    parse_list(f);
    return 1;
}

static void publish(void *arg)
{
    fx *f = arg;
    f->timer = NULL; /* fired: the host freed it */
    if (f->endpoints_file[0]) {
        if (read_endpoints_file(f)) {
            if (f->cluster[0]) answer(f, f->cluster);
            for (size_t i = 0; i < f->nclusters; i++) answer(f, f->clusters[i]);
        }
        f->timer = f->host->timer_start(f->host->main_loop(), f->delay_ms, publish, f);
        return;
    }
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
        } else if (strcmp(k, "endpoints_file") == 0) {
            snprintf(f->endpoints_file, sizeof f->endpoints_file, "%s", v);
        } else {
            snprintf(err, err_size,
                     "fx_discovery: unknown key '%s' (line %d); known: cluster, endpoints, delay_ms, source, "
                     "answer_file, endpoints_file",
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
    parse_list(f);
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
