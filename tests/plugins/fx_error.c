/*
 * fx_error — test fixture: fails requests with SK_ERROR.
 *
 * Keys (optional):
 *
 *     path = /prefix    on_request returns SK_ERROR when the path starts with
 *                       this (default "/": every request); others continue
 *
 * The host answers 500 with x-sidekick-reason: filter_error and counts the
 * error in sidekick_plugin_errors_total{instance="<name>"}. Any other key
 * is refused in create().
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char *path;
} fx;

static void destroy(void *inst)
{
    fx *f = inst;
    if (!f) return;
    free(f->path);
    free(f);
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_error: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    const char *path = "/";
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, "path") == 0) {
            path = keys[i].value;
        } else {
            snprintf(err, err_size, "fx_error: unknown key '%s' (line %d); known: path",
                     keys[i].key, keys[i].line);
            destroy(f);
            return NULL;
        }
    }
    size_t n = strlen(path) + 1;
    if (!(f->path = malloc(n))) {
        snprintf(err, err_size, "fx_error: out of memory");
        destroy(f);
        return NULL;
    }
    memcpy(f->path, path, n);
    return f;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    sk_str p = f->host->path(r);
    size_t n = strlen(f->path);
    if (p.ptr && p.len >= n && memcmp(p.ptr, f->path, n) == 0) return SK_ERROR;
    return SK_CONTINUE;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_error",
    .description = "test fixture: returns SK_ERROR for a path prefix",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
};
