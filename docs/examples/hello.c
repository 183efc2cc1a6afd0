/*
 * hello.c — a small, complete sidekick plugin, walked through in docs/plugins.md.
 *
 * It adds one header to every response it sees (by default `x-hello: world`)
 * and counts the requests it logged in the counter
 * sidekick_plugin_hello_requests_total{instance="..."}.
 *
 * Configuration (all keys optional):
 *
 *     [plugin hello]
 *     header = x-hello     ; name of the response header to add
 *     value = world        ; its value
 *
 *     [route api]
 *     plugins = hello
 *
 * Build, after `cmake --install build --prefix /usr/local`:
 *
 *     cc -shared -fPIC $(pkg-config --cflags sidekick-plugin) -o hello.so hello.c
 *
 * or, from the root of the source tree:
 *
 *     cc -shared -fPIC -Wall -Wextra -Werror -I core/include -o hello.so docs/examples/hello.c
 *
 * A plugin includes <sidekick/plugin.h> and standard headers only, and never
 * links against sidekick: everything it calls comes through the `sk_host_api`
 * table handed to create().
 */
#include <sidekick/plugin.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * One instance: one [plugin NAME] section. Created and destroyed on the main
 * thread, then only read by the workers, so it needs no lock. The metric is
 * updated from every worker; metric_add() is thread-safe.
 */
typedef struct hello {
    const sk_host_api *host; /* the host's function table: valid until the process exits */
    sk_instance *self;       /* this instance as the host knows it: valid until destroy returns */
    char *header;            /* response header name, owned by us */
    char *value;             /* response header value, owned by us */
    sk_metric *requests;     /* hello_requests_total, owned by the host */
} hello;

/*
 * Per-worker data: one per worker thread, touched only by that thread, so it
 * needs no lock either. It is trivial here (a plain count, reported when the
 * worker stops); a real plugin keeps connections, caches or buffers here.
 */
typedef struct hello_worker {
    uint64_t requests; /* requests this worker logged */
} hello_worker;

/* A copy of the NUL-terminated string s, or NULL when out of memory. The
 * host's key and value strings are valid only during create(): keep copies. */
static char *copy(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* 1 if s is a valid header name (an RFC 9110 token), else 0. */
static int is_token(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) continue;
        if (!strchr("!#$%&'*+-.^_`|~", c)) return 0;
    }
    return 1;
}

/* 1 if s is a valid header value (no control characters but tab), else 0. */
static int is_value(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
    }
    return 1;
}

static void destroy(void *inst)
{
    hello *h = inst;
    free(h->header);
    free(h->value);
    free(h);
    /* h->requests belongs to the host, which frees it with the instance. */
}

/*
 * create: main thread, at config load (and on `sidekick -t`). Checks every key,
 * copies what it keeps, registers the metrics. On any problem it writes one
 * line into err and returns NULL: sidekick then refuses the configuration,
 * naming the file and the [plugin NAME] section.
 */
static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    const char *header = "x-hello", *value = "world"; /* defaults */
    int have_header = 0, have_value = 0;

    for (size_t i = 0; i < nkeys; i++) {
        const sk_kv *kv = &keys[i];
        if (strcmp(kv->key, "header") == 0) {
            if (have_header++) {
                snprintf(err, err_size, "line %d: header: given twice", kv->line);
                return NULL;
            }
            if (!is_token(kv->value)) {
                snprintf(err, err_size, "line %d: header: '%s' is not a valid header name", kv->line,
                         kv->value);
                return NULL;
            }
            header = kv->value;
        } else if (strcmp(kv->key, "value") == 0) {
            if (have_value++) {
                snprintf(err, err_size, "line %d: value: given twice", kv->line);
                return NULL;
            }
            if (!is_value(kv->value)) {
                snprintf(err, err_size, "line %d: value: control characters are not allowed", kv->line);
                return NULL;
            }
            value = kv->value;
        } else {
            /* Unknown keys must be refused: a typo must not be silently ignored. */
            snprintf(err, err_size, "line %d: %s: unknown key (known keys: header, value)", kv->line,
                     kv->key);
            return NULL;
        }
    }

    hello *h = calloc(1, sizeof *h);
    if (!h) goto oom;
    h->host = host;
    h->self = self;
    h->header = copy(header);
    h->value = copy(value);
    if (!h->header || !h->value) goto oom;

    /* Metrics are registered in create only. This one appears in /metrics as
     * sidekick_plugin_hello_requests_total{instance="NAME"}. */
    h->requests = host->counter(self, "hello_requests_total", "Requests seen by the hello plugin.");
    if (!h->requests) {
        snprintf(err, err_size, "cannot register metric hello_requests_total");
        destroy(h);
        return NULL;
    }

    host->log(self, SK_LOG_DEBUG, "adding '%s: %s' to responses", h->header, h->value);
    return h;

oom:
    snprintf(err, err_size, "out of memory");
    if (h) destroy(h);
    return NULL;
}

/* worker_init: on each worker thread, before its first request. Whatever is
 * stored in *wdata comes back as `wdata` in every hook on that worker.
 * Returns 0, or -1 on failure. */
static int worker_init(void *inst, sk_loop *worker_loop, void **wdata)
{
    (void)inst;
    (void)worker_loop; /* a plugin that pauses starts its timers on this loop */
    hello_worker *w = calloc(1, sizeof *w);
    if (!w) return -1;
    *wdata = w;
    return 0;
}

/* worker_fini: on each worker thread, after its last request. */
static void worker_fini(void *inst, void *wdata)
{
    hello *h = inst;
    hello_worker *w = wdata;
    h->host->log(h->self, SK_LOG_DEBUG, "worker done after %llu requests", (unsigned long long)w->requests);
    free(w);
}

/* on_response: on the request's worker, when the upstream's response head
 * arrived and before it is sent to the client. Runs in reverse chain order. */
static sk_status on_response(void *inst, void *wdata, sk_req *r)
{
    hello *h = inst;
    (void)wdata;
    /* The name and value were checked in create, so a failure here means the
     * host ran out of memory. SK_ERROR answers 500 filter_error and counts it in
     * sidekick_plugin_errors_total; a plugin whose header is optional could log
     * and return SK_CONTINUE instead. */
    if (h->host->add_response_header(r, h->header, h->value) != 0) return SK_ERROR;
    return SK_CONTINUE;
}

/* on_log: on the request's worker, once the request is complete (or aborted). */
static void on_log(void *inst, void *wdata, sk_req *r)
{
    hello *h = inst;
    hello_worker *w = wdata;
    (void)r;
    w->requests++;                       /* this worker only: no lock needed */
    h->host->metric_add(h->requests, 1); /* shared by all workers: thread-safe */
}

/*
 * The one symbol sidekick looks for. Hooks left out (here on_request and
 * on_cancel) are NULL and skipped. The ABI version is the one of the header
 * this file was compiled with.
 */
SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "hello",
    .description = "adds a fixed header to every response",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .on_response = on_response,
    .on_log = on_log,
};
