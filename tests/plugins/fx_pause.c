/*
 * fx_pause — test fixture: pauses every request on a timer of its worker's
 * loop, then resumes it.
 *
 * Keys (optional):
 *
 *     delay_ms = 50     how long each request stays paused (0..600000)
 *     result = continue how the request resumes: continue (default),
 *                       respond (a local reply: 403, body "paused then
 *                       refused\n", header x-fx: pause), or error
 *
 * on_request starts a one-shot timer on host->request_loop(r) and returns
 * SK_PAUSE. When the timer fires, the request header `x-paused: <delay_ms>`
 * is set and the request is resumed with SK_CONTINUE (or as `result` says:
 * host->respond() then SK_RESPOND, or SK_ERROR). If the request goes
 * away first (client closed), on_cancel stops the timer and forgets the
 * request; resume is never called for it.
 *
 * Per-request state: a `pending` struct allocated on pause, kept in a list
 * owned by the worker (wdata, made by worker_init; only that worker's
 * thread touches it, so no lock), freed on resume or on cancel.
 *
 * Metrics (labelled {instance="<name>"} by the host):
 *     sidekick_plugin_fx_pause_resumes_total   requests resumed by the timer
 *     sidekick_plugin_fx_pause_cancels_total   paused requests cancelled
 *     sidekick_plugin_fx_pause_pending         requests paused right now
 *
 * Any other key is refused in create().
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    unsigned long delay_ms;
    sk_status result; /* SK_CONTINUE, SK_RESPOND or SK_ERROR */
    sk_metric *resumes;
    sk_metric *cancels;
    sk_metric *pending;
} fx;

typedef struct pending pending;

/* Per worker: the requests this worker has paused. */
typedef struct worker {
    pending *head;
} worker;

/* One paused request. */
struct pending {
    fx *f;
    worker *w;
    sk_req *r;
    sk_timer *timer; /* the host's; freed by it once fired or stopped */
    pending *prev, *next;
};

static void unlink_pending(pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->w->head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_pause: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    f->delay_ms = 50;
    f->result = SK_CONTINUE;
    for (size_t i = 0; i < nkeys; i++) {
        const sk_kv *kv = &keys[i];
        if (strcmp(kv->key, "delay_ms") == 0) {
            char *end;
            unsigned long v = strtoul(kv->value, &end, 10);
            if (end == kv->value || *end || kv->value[0] == '-' || v > 600000) {
                snprintf(err, err_size, "fx_pause: key 'delay_ms' (line %d): '%s' is not 0..600000",
                         kv->line, kv->value);
                free(f);
                return NULL;
            }
            f->delay_ms = v;
        } else if (strcmp(kv->key, "result") == 0) {
            if (strcmp(kv->value, "continue") == 0) {
                f->result = SK_CONTINUE;
            } else if (strcmp(kv->value, "respond") == 0) {
                f->result = SK_RESPOND;
            } else if (strcmp(kv->value, "error") == 0) {
                f->result = SK_ERROR;
            } else {
                snprintf(err, err_size,
                         "fx_pause: key 'result' (line %d): '%s' is not continue, respond or error",
                         kv->line, kv->value);
                free(f);
                return NULL;
            }
        } else {
            snprintf(err, err_size, "fx_pause: unknown key '%s' (line %d); known: delay_ms, result",
                     kv->key, kv->line);
            free(f);
            return NULL;
        }
    }
    f->resumes = host->counter(self, "fx_pause_resumes_total", "Requests resumed by fx_pause");
    f->cancels = host->counter(self, "fx_pause_cancels_total",
                               "Requests paused by fx_pause that went away before resume");
    f->pending = host->gauge(self, "fx_pause_pending", "Requests paused by fx_pause right now");
    if (!f->resumes || !f->cancels || !f->pending) {
        snprintf(err, err_size, "fx_pause: cannot register metrics");
        free(f);
        return NULL;
    }
    return f;
}

static void destroy(void *inst)
{
    free(inst);
}

static int worker_init(void *inst, sk_loop *loop, void **wdata)
{
    (void)inst;
    (void)loop;
    worker *w = calloc(1, sizeof *w);
    if (!w) return -1;
    *wdata = w;
    return 0;
}

static void worker_fini(void *inst, void *wdata)
{
    fx *f = inst;
    worker *w = wdata;
    if (!w) return;
    /* Nothing should be left: the host cancels paused requests first. */
    while (w->head) {
        pending *p = w->head;
        f->host->log(f->self, SK_LOG_WARN, "worker_fini: request still paused");
        f->host->timer_stop(p->timer);
        unlink_pending(p);
        free(p);
    }
    free(w);
}

/* The timer fired: the request is still paused (else on_cancel would have
 * stopped the timer). */
static void on_timer(void *arg)
{
    pending *p = arg;
    fx *f = p->f;
    const sk_host_api *h = f->host;
    sk_req *r = p->r;
    char buf[32];
    sk_status st = f->result;

    unlink_pending(p);
    free(p);
    snprintf(buf, sizeof buf, "%lu", f->delay_ms);
    if (h->set_header(r, "x-paused", buf) < 0) {
        h->log(f->self, SK_LOG_ERROR, "set_header(x-paused) failed after pause");
        st = SK_ERROR;
    }
    if (st == SK_RESPOND) {
        static const char body[] = "paused then refused\n";
        static const char *const headers[] = {"x-fx", "pause", NULL};
        if (h->respond(r, 403, NULL, body, sizeof body - 1, headers) < 0) {
            h->log(f->self, SK_LOG_ERROR, "respond() failed after pause");
            st = SK_ERROR;
        }
    }
    h->metric_add(f->pending, -1);
    h->metric_add(f->resumes, 1);
    h->resume(r, st);
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    worker *w = wdata;
    const sk_host_api *h = f->host;

    if (!w) {
        h->log(f->self, SK_LOG_ERROR, "no per-worker data: worker_init was not called");
        return SK_ERROR;
    }
    pending *p = calloc(1, sizeof *p);
    if (!p) return SK_ERROR;
    p->f = f;
    p->w = w;
    p->r = r;
    p->timer = h->timer_start(h->request_loop(r), f->delay_ms, on_timer, p);
    if (!p->timer) {
        free(p);
        h->log(f->self, SK_LOG_ERROR, "timer_start failed");
        return SK_ERROR;
    }
    p->next = w->head;
    if (w->head) w->head->prev = p;
    w->head = p;
    h->metric_add(f->pending, 1);
    return SK_PAUSE;
}

static void on_cancel(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    worker *w = wdata;
    const sk_host_api *h = f->host;

    for (pending *p = w ? w->head : NULL; p; p = p->next) {
        if (p->r == r) {
            h->timer_stop(p->timer);
            unlink_pending(p);
            free(p);
            h->metric_add(f->pending, -1);
            h->metric_add(f->cancels, 1);
            return;
        }
    }
    h->log(f->self, SK_LOG_ERROR, "on_cancel for a request this plugin did not pause");
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_pause",
    .description = "test fixture: pauses each request on a timer, then resumes it",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .on_request = on_request,
    .on_cancel = on_cancel,
};
