/*
 * fx_count — test fixture: counts request hooks.
 *
 * No keys; any key is refused in create().
 *
 * Metrics (labelled {instance="<name>"} by the host):
 *     sidekick_plugin_fx_count_request_total   on_request calls
 *     sidekick_plugin_fx_count_log_total       on_log calls
 *
 * on_request also logs "request <method> <path>" at debug level through
 * host->log.
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    sk_metric *requests;
    sk_metric *logs;
} fx;

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    if (nkeys > 0) {
        snprintf(err, err_size, "fx_count: unknown key '%s' (line %d); this plugin takes no keys",
                 keys[0].key, keys[0].line);
        return NULL;
    }
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_count: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    f->requests = host->counter(self, "fx_count_request_total", "on_request calls of fx_count");
    f->logs = host->counter(self, "fx_count_log_total", "on_log calls of fx_count");
    if (!f->requests || !f->logs) {
        snprintf(err, err_size, "fx_count: cannot register metrics");
        free(f);
        return NULL;
    }
    return f;
}

static void destroy(void *inst)
{
    free(inst);
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    sk_str m = f->host->method(r);
    sk_str p = f->host->path(r);
    f->host->log(f->self, SK_LOG_DEBUG, "request %.*s %.*s", (int)m.len, m.ptr ? m.ptr : "",
                 (int)p.len, p.ptr ? p.ptr : "");
    f->host->metric_add(f->requests, 1);
    return SK_CONTINUE;
}

static void on_log(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    (void)r;
    f->host->metric_add(f->logs, 1);
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_count",
    .description = "test fixture: counts on_request and on_log calls",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
    .on_log = on_log,
};
