/*
 * fx_drain — test fixture for on_drain (ABI 1.2): from on_drain it starts
 * `calls` HTTP calls to `url` one after the other (each from the on_done of
 * the one before), and appends what happened, one JSON object per line, to
 * a file the test reads.
 *
 * Keys:
 *
 *     file = PATH     record file (required; O_APPEND, one write per line)
 *     url = URL       what on_drain fetches (required)
 *     calls = N       calls in a row from on_drain (default 1)
 *     timeout = MS    timeout_ms of each call (default 0: none)
 *
 * Records: {"ev":"create"} {"ev":"worker_fini","left":N} (N = workers still
 * holding the instance) {"ev":"drain","left":N} {"ev":"start","rc":RC}
 * {"ev":"done","error":E} {"ev":"destroy","open":0|1} (1 = a call still
 * held by the plugin).
 */
#include <sidekick/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char file[512], url[512];
    unsigned long calls, started;
    unsigned long timeout;
    sk_http_call *call;
    atomic_int workers;
} fx;

static void record(fx *f, const char *ev, const char *key, long long v)
{
    char line[256];
    int n = key ? snprintf(line, sizeof line, "{\"ev\":\"%s\",\"%s\":%lld}\n", ev, key, v)
                : snprintf(line, sizeof line, "{\"ev\":\"%s\"}\n", ev);
    int fd = open(f->file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t w;
    do {
        w = write(fd, line, (size_t)n);
    } while (w < 0 && errno == EINTR);
    close(fd);
}

static void start(fx *f);

static void on_done(void *arg, int error, const char *message)
{
    fx *f = arg;
    (void)message;
    f->call = NULL;
    record(f, "done", "error", error);
    if (error != SK_HTTP_ECANCELLED && f->started < f->calls) start(f);
}

static void start(fx *f)
{
    sk_http_request rq = {
        .method = "GET",
        .url = f->url,
        .timeout_ms = f->timeout,
        .on_done = on_done,
        .arg = f,
    };
    f->started++;
    int rc = f->host->http_start(f->self, &rq, &f->call);
    if (rc) f->call = NULL;
    record(f, "start", "rc", rc);
}

static void on_drain(void *inst)
{
    fx *f = inst;
    record(f, "drain", "left", atomic_load(&f->workers));
    start(f);
}

static int worker_init(void *inst, sk_loop *loop, void **wdata)
{
    fx *f = inst;
    (void)loop;
    atomic_fetch_add(&f->workers, 1);
    *wdata = NULL;
    return 0;
}

static void worker_fini(void *inst, void *wdata)
{
    fx *f = inst;
    (void)wdata;
    record(f, "worker_fini", "left", atomic_fetch_sub(&f->workers, 1) - 1);
}

static void destroy(void *inst)
{
    fx *f = inst;
    record(f, "destroy", "open", f->call != NULL);
    free(f);
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    fx *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->host = host;
    f->self = self;
    f->calls = 1;
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        if (!strcmp(k, "file"))
            snprintf(f->file, sizeof f->file, "%s", v);
        else if (!strcmp(k, "url"))
            snprintf(f->url, sizeof f->url, "%s", v);
        else if (!strcmp(k, "calls"))
            f->calls = strtoul(v, NULL, 10);
        else if (!strcmp(k, "timeout"))
            f->timeout = strtoul(v, NULL, 10);
        else {
            snprintf(err, err_size, "fx_drain: unknown key %s", k);
            free(f);
            return NULL;
        }
    }
    if (!f->file[0] || !f->url[0]) {
        snprintf(err, err_size, "fx_drain: file and url are required");
        free(f);
        return NULL;
    }
    record(f, "create", NULL, 0);
    return f;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = 2,
    .name = "fx_drain",
    .description = "test fixture: HTTP calls from on_drain, recorded in a file",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .on_drain = on_drain,
};
