/*
 * fx_abi10 — test fixture: a plugin built for ABI 1.0, loaded by a 1.1 host.
 *
 * Its descriptor is written with the 1.0 layout of sk_plugin (which ended
 * at on_cancel) and says abi_minor = 0 explicitly, not SK_PLUGIN_ABI_MINOR.
 * Right after on_cancel, where a 1.1 descriptor has on_cluster, it carries
 * a poison pointer: a host that read a 1.1 member of a 1.0 plugin would
 * call address 0x1 and crash.
 *
 * It uses only 1.0 host members: on_request sets the request header
 * x-abi10: 1; on_log counts into sidekick_plugin_fx_abi10_logs_total.
 * It takes no keys.
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>

typedef struct fx {
    const sk_host_api *host;
    sk_metric *logs;
} fx;

/* sk_plugin as ABI 1.0 defined it, then the poison. */
struct plugin_1_0 {
    uint16_t abi_major;
    uint16_t abi_minor;
    const char *name;
    const char *description;
    void *(*create)(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size);
    void (*destroy)(void *inst);
    int (*worker_init)(void *inst, sk_loop *worker_loop, void **wdata);
    void (*worker_fini)(void *inst, void *wdata);
    sk_status (*on_request)(void *inst, void *wdata, sk_req *r);
    sk_status (*on_response)(void *inst, void *wdata, sk_req *r);
    void (*on_log)(void *inst, void *wdata, sk_req *r);
    void (*on_cancel)(void *inst, void *wdata, sk_req *r);
    const void *poison; /* not part of 1.0: where 1.1 has on_cluster */
};

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    if (nkeys) {
        snprintf(err, err_size, "fx_abi10: unknown key '%s' (line %d); it takes none", keys[0].key, keys[0].line);
        return NULL;
    }
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_abi10: out of memory");
        return NULL;
    }
    f->host = host;
    f->logs = host->counter(self, "fx_abi10_logs_total", "on_log calls of the 1.0 fixture");
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
    return f->host->set_header(r, "x-abi10", "1") == 0 ? SK_CONTINUE : SK_ERROR;
}

static void on_log(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    (void)r;
    f->host->metric_add(f->logs, 1);
}

SK_PLUGIN_EXPORT const struct plugin_1_0 sidekick_plugin = {
    .abi_major = 1,
    .abi_minor = 0,
    .name = "fx_abi10",
    .description = "test fixture: an ABI 1.0 plugin under a newer host",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
    .on_log = on_log,
    .poison = (const void *)1,
};
