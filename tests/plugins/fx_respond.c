/*
 * fx_respond — test fixture: answers requests locally with host->respond().
 *
 * Keys (all optional):
 *
 *     status = 200      status of the local reply (200..599; default 200)
 *     body = text       body of the reply (default empty)
 *     path = /prefix    only answer requests whose path starts with this;
 *                       others continue down the chain (default: answer all)
 *     reason = text     x-sidekick-reason of the reply (default none)
 *
 * The reply carries the header `x-fx: respond`; on_request returns
 * SK_RESPOND. Any other key is refused in create().
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    int status;
    char *body;   /* never NULL */
    char *path;   /* NULL: every path */
    char *reason; /* NULL: none */
} fx;

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static void destroy(void *inst)
{
    fx *f = inst;
    if (!f) return;
    free(f->body);
    free(f->path);
    free(f->reason);
    free(f);
}

/* Replaces *slot with a copy of v. 0 or -1 (OOM). */
static int set_str(char **slot, const char *v)
{
    char *p = dup_str(v);
    if (!p) return -1;
    free(*slot);
    *slot = p;
    return 0;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    fx *f = calloc(1, sizeof *f);
    if (!f || !(f->body = dup_str(""))) {
        free(f);
        snprintf(err, err_size, "fx_respond: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    f->status = 200;
    for (size_t i = 0; i < nkeys; i++) {
        const sk_kv *kv = &keys[i];
        int rc = 0;
        if (strcmp(kv->key, "status") == 0) {
            char *end;
            long v = strtol(kv->value, &end, 10);
            if (end == kv->value || *end || v < 200 || v > 599) {
                snprintf(err, err_size, "fx_respond: key 'status' (line %d): '%s' is not 200..599",
                         kv->line, kv->value);
                destroy(f);
                return NULL;
            }
            f->status = (int)v;
        } else if (strcmp(kv->key, "body") == 0) {
            rc = set_str(&f->body, kv->value);
        } else if (strcmp(kv->key, "path") == 0) {
            rc = set_str(&f->path, kv->value);
        } else if (strcmp(kv->key, "reason") == 0) {
            rc = set_str(&f->reason, kv->value);
        } else {
            snprintf(err, err_size,
                     "fx_respond: unknown key '%s' (line %d); known: status, body, path, reason",
                     kv->key, kv->line);
            destroy(f);
            return NULL;
        }
        if (rc < 0) {
            snprintf(err, err_size, "fx_respond: out of memory");
            destroy(f);
            return NULL;
        }
    }
    return f;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    const sk_host_api *h = f->host;
    (void)wdata;

    if (f->path) {
        sk_str p = h->path(r);
        size_t n = strlen(f->path);
        if (!p.ptr || p.len < n || memcmp(p.ptr, f->path, n) != 0) return SK_CONTINUE;
    }
    static const char *const headers[] = {"x-fx", "respond", NULL};
    if (h->respond(r, f->status, f->reason, f->body, strlen(f->body), headers) < 0) {
        h->log(f->self, SK_LOG_ERROR, "respond(%d) failed", f->status);
        return SK_ERROR;
    }
    return SK_RESPOND;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_respond",
    .description = "test fixture: answers locally",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
};
