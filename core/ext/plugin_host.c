/*
 * plugin_host.c — the host side of the plugin ABI (sidekick/plugin.h):
 * loading a .so into an instance of a config generation, ABI checks,
 * per-worker init, the sk_host_api service table, hook invocation, and the
 * metrics plugins register.
 *
 * The request handle a plugin sees (sk_req) is the core's sk_request.
 */
#include <dlfcn.h>
#include <sys/stat.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "head.h"
#include "http_client.h"
#include "metrics.h"
#include "plugin_host.h"
#include "request.h"
#include "worker.h"

#define REQ(r) ((sk_request *)(r))

/* What the host table reports about the process, set by main(). */
static struct ev_loop *process_main_loop;
static int process_workers;

/* ---- instances ---- */

/* Allocates an empty instance for [plugin name]. */
sk_instance *sk_instance_new(const char *name, int index, int line)
{
    sk_instance *pi = calloc(1, sizeof(*pi));
    if (!pi || !(pi->name = strdup(name))) {
        free(pi);
        return NULL;
    }
    pi->index = index;
    pi->line = line;
    return pi;
}

/* Records one key of the section for create(). */
int sk_instance_add_key(sk_instance *pi, const char *key, const char *value, int line)
{
    sk_kv *k = realloc(pi->keys, (pi->nkeys + 1) * sizeof(*k));
    if (!k) return -1;
    pi->keys = k;
    k[pi->nkeys].key = strdup(key);
    k[pi->nkeys].value = strdup(value);
    k[pi->nkeys].line = line;
    if (!k[pi->nkeys].key || !k[pi->nkeys].value) {
        free((char *)k[pi->nkeys].key);
        free((char *)k[pi->nkeys].value);
        return -1;
    }
    pi->nkeys++;
    return 0;
}

/*
 * The file behind every .so loaded so far (main thread only). A name the
 * dynamic loader already has gives back the copy in memory, so a .so
 * replaced in place while a generation still uses it would silently keep
 * running the old code after a reload: such a load is refused instead.
 */
typedef struct loaded_so {
    char *path;
    dev_t dev;
    ino_t ino;
} loaded_so;
static loaded_so *loaded;
static size_t nloaded;

/* 0, or -1 with err set when path is loaded but the file changed since. */
static int check_replaced(const char *path, char *err, size_t err_size)
{
    struct stat st;
    if (stat(path, &st) < 0) return 0; /* dlopen reports it */
    for (size_t i = 0; i < nloaded; i++) {
        if (strcmp(loaded[i].path, path) != 0) continue;
        void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
        if (!h) { /* no longer loaded: this load reads the file afresh */
            loaded[i].dev = st.st_dev;
            loaded[i].ino = st.st_ino;
            return 0;
        }
        dlclose(h);
        if (loaded[i].dev != st.st_dev || loaded[i].ino != st.st_ino) {
            snprintf(err, err_size,
                     "cannot load %s: the file was replaced while a running generation uses the old one, "
                     "which stays in memory; install the new version under a new file name and point "
                     "'load' at it",
                     path);
            return -1;
        }
        return 0;
    }
    loaded_so *a = realloc(loaded, (nloaded + 1) * sizeof(*a));
    if (!a) return 0;
    loaded = a;
    if ((loaded[nloaded].path = strdup(path))) {
        loaded[nloaded].dev = st.st_dev;
        loaded[nloaded].ino = st.st_ino;
        nloaded++;
    }
    return 0;
}

/* dlopens the .so, checks the ABI, creates the instance. */
int sk_instance_load(sk_instance *pi, const char *plugin_dir, int nworkers, char *err, size_t err_size)
{
    char path[4096];
    const char *load = pi->load;
    if (load && load[0] == '/')
        snprintf(path, sizeof(path), "%s", load);
    else if (load)
        snprintf(path, sizeof(path), "%s/%s", plugin_dir, load);
    else
        snprintf(path, sizeof(path), "%s/%s.so", plugin_dir, pi->name);
    if (!(pi->path = strdup(path))) goto oom;
    if (check_replaced(path, err, err_size) < 0) return -1;
    pi->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!pi->dl) {
        snprintf(err, err_size, "cannot load %s: %s", path, dlerror());
        return -1;
    }
    const sk_plugin *def = dlsym(pi->dl, "sidekick_plugin");
    if (!def) {
        snprintf(err, err_size, "%s does not export the symbol sidekick_plugin (not a sidekick plugin?)",
                 path);
        return -1;
    }
    if (def->abi_major != SK_PLUGIN_ABI_MAJOR || def->abi_minor > SK_PLUGIN_ABI_MINOR) {
        snprintf(err, err_size,
                 "%s was built for plugin ABI %u.%u; this sidekick has ABI %d.%d (the major must be equal, "
                 "the minor not newer): rebuild it against this sidekick's plugin.h",
                 path, def->abi_major, def->abi_minor, SK_PLUGIN_ABI_MAJOR, SK_PLUGIN_ABI_MINOR);
        return -1;
    }
    if (!def->create) {
        snprintf(err, err_size, "%s: sidekick_plugin has no create hook", path);
        return -1;
    }
    pi->def = def;
    pi->nworkers = nworkers;
    if (!process_workers) process_workers = nworkers; /* worker_count() during create */
    if (!(pi->wdata = calloc((size_t)(nworkers > 0 ? nworkers : 1), sizeof(void *)))) goto oom;
    char perr[512] = "";
    pi->inst = def->create(&sk_host, pi, pi->keys, pi->nkeys, perr, sizeof(perr));
    if (!pi->inst) {
        perr[sizeof(perr) - 1] = 0;
        snprintf(err, err_size, "%s", perr[0] ? perr : "create failed (no message)");
        return -2;
    }
    return 0;
oom:
    snprintf(err, err_size, "out of memory");
    return -1;
}

/* Destroys the plugin's instance and releases everything. Main thread. */
void sk_instance_free(sk_instance *pi)
{
    if (!pi) return;
    sk_http_instance_closing(pi); /* its client calls end before destroy */
    if (pi->inst && pi->def->destroy) pi->def->destroy(pi->inst);
    sk_http_instance_closed(pi);
    for (sk_metric *m = pi->metrics, *next; m; m = next) {
        next = m->next;
        free(m->name);
        free(m->help);
        free(m);
    }
    if (pi->dl) dlclose(pi->dl);
    for (size_t i = 0; i < pi->nkeys; i++) {
        free((char *)pi->keys[i].key);
        free((char *)pi->keys[i].value);
    }
    free(pi->keys);
    free(pi->wdata);
    free(pi->path);
    free(pi->load);
    free(pi->name);
    free(pi);
}

/* worker_init of every instance on this worker thread. */
int sk_plugins_worker_init(sk_config *cfg, int worker_id, void *loop)
{
    int rc = 0;
    for (size_t i = 0; i < cfg->nplugins; i++) {
        sk_instance *pi = cfg->plugins[i];
        if (!pi->def->worker_init || worker_id >= pi->nworkers) continue;
        if (pi->def->worker_init(pi->inst, (sk_loop *)loop, &pi->wdata[worker_id]) != 0) {
            sk_error("plugin %s: worker_init failed on worker %d; its hooks get no worker data there",
                     pi->name, worker_id);
            pi->wdata[worker_id] = NULL;
            rc = -1;
        }
    }
    return rc;
}

/* worker_fini of every instance on this worker thread. */
void sk_plugins_worker_fini(sk_config *cfg, int worker_id)
{
    for (size_t i = 0; i < cfg->nplugins; i++) {
        sk_instance *pi = cfg->plugins[i];
        if (pi->def->worker_fini && worker_id < pi->nworkers)
            pi->def->worker_fini(pi->inst, pi->wdata[worker_id]);
    }
}

/* ---- hooks ---- */

static void *wdata_of(sk_instance *pi, sk_request *r)
{
    return r->worker->id < pi->nworkers ? pi->wdata[r->worker->id] : NULL;
}

/* Runs on_request; counts SK_ERROR and out-of-range results as errors. */
sk_status sk_plugin_on_request(sk_instance *pi, sk_request *r)
{
    if (!pi->def->on_request) return SK_CONTINUE;
    r->early_resume = 0;
    r->in_hook = true;
    sk_status st = pi->def->on_request(pi->inst, wdata_of(pi, r), (sk_req *)r);
    r->in_hook = false;
    if (st > SK_ERROR) {
        sk_warn("plugin %s: on_request returned %d, not a sk_status", pi->name, (int)st);
        st = SK_ERROR;
    }
    if (st == SK_ERROR) __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
    return st;
}

/* Runs on_response; SK_PAUSE is not allowed there and counts as an error. */
sk_status sk_plugin_on_response(sk_instance *pi, sk_request *r)
{
    if (!pi->def->on_response) return SK_CONTINUE;
    r->in_hook = true;
    sk_status st = pi->def->on_response(pi->inst, wdata_of(pi, r), (sk_req *)r);
    r->in_hook = false;
    if (st == SK_PAUSE || st > SK_ERROR) {
        sk_warn("plugin %s: on_response returned %d (only continue, respond or error are allowed)", pi->name,
                (int)st);
        st = SK_ERROR;
    }
    if (st == SK_ERROR) __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
    return st;
}

/* Runs on_log. */
void sk_plugin_on_log(sk_instance *pi, sk_request *r)
{
    if (!pi->def->on_log) return;
    r->in_hook = true;
    pi->def->on_log(pi->inst, wdata_of(pi, r), (sk_req *)r);
    r->in_hook = false;
}

/* Runs on_cancel. */
void sk_plugin_on_cancel(sk_instance *pi, sk_request *r)
{
    if (!pi->def->on_cancel) return;
    r->in_hook = true;
    pi->def->on_cancel(pi->inst, wdata_of(pi, r), (sk_req *)r);
    r->in_hook = false;
}

/* ---- the host table: logging ---- */

static void h_log(sk_instance *self, int level, const char *fmt, ...)
{
    if (level > sk_log_level) return;
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sk_log(level, "plugin %s: %s", self ? self->name : "?", msg);
}

/* Tells the plugin host the main loop and the worker count (main thread, at start). */
void sk_plugins_set_process(void *main_loop, int workers)
{
    process_main_loop = main_loop;
    process_workers = workers;
}

static const char *h_instance_name(sk_instance *self)
{
    return self->name;
}
static int h_worker_count(void)
{
    return process_workers;
}

/* ---- the request ---- */

static sk_str mkstr(const char *p, size_t n)
{
    sk_str s = {p, p ? n : 0};
    return s;
}

static sk_str h_method(sk_req *r)
{
    return mkstr(REQ(r)->method, REQ(r)->method ? strlen(REQ(r)->method) : 0);
}
static sk_str h_path(sk_req *r)
{
    return mkstr(REQ(r)->path, REQ(r)->path_len);
}
static sk_str h_query(sk_req *r)
{
    return mkstr(REQ(r)->query, REQ(r)->query_len);
}
static sk_str h_authority(sk_req *r)
{
    return mkstr(REQ(r)->host, REQ(r)->host_len);
}
static sk_str h_client_ip(sk_req *r)
{
    const char *ip = REQ(r)->client_ip;
    return mkstr(ip, strlen(ip));
}
static sk_str h_identity(sk_req *r)
{
    return mkstr(NULL, 0);
}
static sk_str h_route(sk_req *r)
{
    const sk_route *rt = REQ(r)->route;
    return rt ? mkstr(rt->name, strlen(rt->name)) : mkstr(NULL, 0);
}

static int get_header(const sk_head *h, const char *name, sk_str *value)
{
    const sk_header *x = h->views ? sk_head_get(h, name) : NULL;
    if (!x) return 0;
    if (value) *value = mkstr(x->value, x->value_len);
    return 1;
}

static int h_header(sk_req *r, const char *name, sk_str *value)
{
    return get_header(&REQ(r)->head, name, value);
}
static size_t h_header_count(sk_req *r)
{
    return REQ(r)->head.nhdrs;
}
static int h_header_at(sk_req *r, size_t i, sk_str *name, sk_str *value)
{
    const sk_head *h = &REQ(r)->head;
    if (i >= h->nhdrs) return 0;
    if (name) *name = mkstr(h->views[i].name, h->views[i].name_len);
    if (value) *value = mkstr(h->views[i].value, h->views[i].value_len);
    return 1;
}

/* Request header edits are allowed until the request goes upstream. */
static bool request_editable(sk_request *r)
{
    return r->state != SK_REQ_DONE && !r->up && !r->upstream_start_ns;
}

static int h_set_header(sk_req *r, const char *name, const char *value)
{
    sk_request *q = REQ(r);
    if (!request_editable(q)) return -1;
    return sk_head_edit(&q->head, &q->arena, name, value, true);
}
static int h_add_header(sk_req *r, const char *name, const char *value)
{
    sk_request *q = REQ(r);
    if (!request_editable(q)) return -1;
    return sk_head_edit(&q->head, &q->arena, name, value, false);
}
static int h_remove_header(sk_req *r, const char *name)
{
    sk_request *q = REQ(r);
    if (!request_editable(q)) return -1;
    return sk_head_edit(&q->head, &q->arena, name, NULL, true);
}

static int h_set_cluster(sk_req *r, const char *name)
{
    sk_request *q = REQ(r);
    sk_cluster *c = name ? sk_config_cluster(q->config, name) : NULL;
    if (!c || q->up) return -1;
    q->cluster_override = c;
    return 0;
}

/* ---- the response ---- */

static int h_status(sk_req *r)
{
    return REQ(r)->status;
}
static int h_response_header(sk_req *r, const char *name, sk_str *value)
{
    sk_request *q = REQ(r);
    if (!q->rhead.done) return 0;
    return get_header(&q->rhead, name, value);
}
static int h_set_response_header(sk_req *r, const char *name, const char *value)
{
    sk_request *q = REQ(r);
    if (!q->in_response_hooks) return -1;
    return sk_head_edit(&q->rhead, &q->arena, name, value, true);
}
static int h_add_response_header(sk_req *r, const char *name, const char *value)
{
    sk_request *q = REQ(r);
    if (!q->in_response_hooks) return -1;
    return sk_head_edit(&q->rhead, &q->arena, name, value, false);
}
static int h_remove_response_header(sk_req *r, const char *name)
{
    sk_request *q = REQ(r);
    if (!q->in_response_hooks) return -1;
    return sk_head_edit(&q->rhead, &q->arena, name, NULL, true);
}

/* ---- local replies ---- */

static int h_respond(sk_req *r, int status, const char *reason, const char *body, size_t body_len,
                     const char *const *headers)
{
    sk_request *q = REQ(r);
    if (status < 200 || status > 599 || q->response_started) return -1;
    if (reason && !sk_header_field_ok(reason, true)) return -1;
    size_t n = 0;
    if (headers)
        for (; headers[n]; n += 2)
            if (!headers[n + 1] || !sk_header_field_ok(headers[n], true) ||
                !sk_header_field_ok(headers[n + 1], false))
                return -1;
    const char **hs = NULL;
    if (n) {
        hs = sk_arena_alloc(&q->arena, (n + 1) * sizeof(*hs));
        if (!hs) return -1;
        for (size_t i = 0; i < n; i++)
            if (!(hs[i] = sk_arena_strndup(&q->arena, headers[i], strlen(headers[i])))) return -1;
        hs[n] = NULL;
    }
    const char *b = sk_arena_strndup(&q->arena, body ? body : "", body ? body_len : 0);
    const char *rs = reason ? sk_arena_strndup(&q->arena, reason, strlen(reason)) : NULL;
    if (!b || (reason && !rs)) return -1;
    q->lr_status = status;
    q->lr_reason = rs;
    q->lr_body = b;
    q->lr_body_len = body ? body_len : 0;
    q->lr_headers = hs;
    return 0;
}

/* ---- metadata ---- */

static int h_set_meta(sk_req *r, const char *key, const char *value)
{
    sk_request *q = REQ(r);
    if (!key || !value) return -1;
    sk_meta *m = sk_arena_alloc(&q->arena, sizeof(*m));
    if (!m || !(m->key = sk_arena_strndup(&q->arena, key, strlen(key))) ||
        !(m->value = sk_arena_strndup(&q->arena, value, strlen(value))))
        return -1;
    m->next = q->meta;
    q->meta = m;
    return 0;
}

static const char *h_meta(sk_req *r, const char *key)
{
    for (sk_meta *m = REQ(r)->meta; m && key; m = m->next)
        if (strcmp(m->key, key) == 0) return m->value;
    return NULL;
}

/* ---- pausing ---- */

static void h_resume(sk_req *r, sk_status st)
{
    sk_proxy_resume(REQ(r), st);
}
static sk_loop *h_request_loop(sk_req *r)
{
    return (sk_loop *)REQ(r)->worker->loop;
}

/* ---- timers and watchers ---- */

struct sk_timer {
    ev_timer t;
    struct ev_loop *loop;
    sk_callback cb;
    void *arg;
};

struct sk_watch {
    ev_io io;
    struct ev_loop *loop;
    sk_fd_callback cb;
    void *arg;
};

static sk_loop *h_main_loop(void)
{
    return (sk_loop *)process_main_loop;
}

static void timer_fired(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_timer *tm = (sk_timer *)t;
    sk_callback cb = tm->cb;
    void *arg = tm->arg;
    free(tm); /* one-shot: gone before the callback, which may start another */
    cb(arg);
}

static sk_timer *h_timer_start(sk_loop *loop, uint64_t ms, sk_callback cb, void *arg)
{
    if (!loop || !cb) return NULL;
    sk_timer *tm = calloc(1, sizeof(*tm));
    if (!tm) return NULL;
    tm->loop = (struct ev_loop *)loop;
    tm->cb = cb;
    tm->arg = arg;
    ev_timer_init(&tm->t, timer_fired, (double)ms / 1000.0, 0.);
    ev_timer_start(tm->loop, &tm->t);
    return tm;
}

static void h_timer_stop(sk_timer *tm)
{
    if (!tm) return;
    ev_timer_stop(tm->loop, &tm->t);
    free(tm);
}

static void watch_fired(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_watch *w = (sk_watch *)io;
    w->cb(w->arg, io->fd, (revents & EV_READ ? SK_EV_READ : 0) | (revents & EV_WRITE ? SK_EV_WRITE : 0));
}

static sk_watch *h_watch_fd(sk_loop *loop, int fd, int events, sk_fd_callback cb, void *arg)
{
    if (!loop || !cb || fd < 0 || !(events & (SK_EV_READ | SK_EV_WRITE))) return NULL;
    sk_watch *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->loop = (struct ev_loop *)loop;
    w->cb = cb;
    w->arg = arg;
    ev_io_init(&w->io, watch_fired, fd,
               (events & SK_EV_READ ? EV_READ : 0) | (events & SK_EV_WRITE ? EV_WRITE : 0));
    ev_io_start(w->loop, &w->io);
    return w;
}

static void h_unwatch_fd(sk_watch *w)
{
    if (!w) return;
    ev_io_stop(w->loop, &w->io);
    free(w);
}

/* ---- main → workers, discovery ---- */

static int h_post_to_workers(sk_callback cb, void *arg)
{
    return cb ? sk_workers_post(cb, arg) : -1;
}

static int h_set_endpoints(sk_instance *self, const char *cluster, const char *const *endpoints, size_t n)
{
    sk_cluster *c = self && self->config && cluster ? sk_config_cluster(self->config, cluster) : NULL;
    if (!c) {
        sk_log(SK_LOG_ERROR, "plugin %s: set_endpoints: unknown cluster '%s'", self ? self->name : "?",
               cluster ? cluster : "(null)");
        return -1;
    }
    if (n > 65536 || (n && !endpoints)) {
        sk_log(SK_LOG_ERROR, "plugin %s: set_endpoints(%s): bad arguments (n = %zu)", self->name, cluster, n);
        return -1;
    }
    sk_addr *addrs = calloc(n ? n : 1, sizeof(*addrs));
    if (!addrs) {
        sk_log(SK_LOG_ERROR, "plugin %s: set_endpoints(%s): out of memory", self->name, cluster);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!endpoints[i] || sk_parse_addr(endpoints[i], &addrs[i]) < 0) {
            sk_log(SK_LOG_ERROR, "plugin %s: set_endpoints(%s): bad address '%s'", self->name, cluster,
                   endpoints[i] ? endpoints[i] : "(null)");
            free(addrs);
            return -1;
        }
    }
    int rc = sk_cluster_set_endpoints(c, addrs, n);
    free(addrs);
    if (rc < 0) sk_log(SK_LOG_ERROR, "plugin %s: set_endpoints(%s): out of memory", self->name, cluster);
    if (rc == 0) sk_log(SK_LOG_INFO, "plugin %s: cluster %s now has %zu endpoint(s)", self->name, cluster, n);
    return rc;
}

/* ---- metrics ---- */

static sk_metric *add_metric(sk_instance *self, int type, const char *name, const char *help)
{
    if (!self || !name || !*name) return NULL;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return NULL;
    for (sk_metric *m = self->metrics; m; m = m->next)
        if (strcmp(m->name + 16, name) == 0) return m->type == type ? m : NULL;
    sk_metric *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    size_t len = strlen(name) + 17;
    m->name = malloc(len);
    m->help = strdup(help ? help : "");
    if (!m->name || !m->help) {
        free(m->name);
        free(m->help);
        free(m);
        return NULL;
    }
    snprintf(m->name, len, "sidekick_plugin_%s", name);
    for (char *p = m->help; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    m->type = type;
    m->next = self->metrics;
    self->metrics = m;
    return m;
}

static sk_metric *h_counter(sk_instance *self, const char *name, const char *help)
{
    return add_metric(self, 0, name, help);
}
static sk_metric *h_gauge(sk_instance *self, const char *name, const char *help)
{
    return add_metric(self, 1, name, help);
}
static sk_metric *h_histogram(sk_instance *self, const char *name, const char *help)
{
    return add_metric(self, 2, name, help);
}

static void h_metric_add(sk_metric *m, int64_t delta)
{
    if (m && m->type != 2 && (m->type == 1 || delta >= 0))
        __atomic_add_fetch(&m->value, delta, __ATOMIC_RELAXED);
}
static void h_metric_set(sk_metric *m, int64_t v)
{
    if (m && m->type == 1) __atomic_store_n(&m->value, v, __ATOMIC_RELAXED);
}
static void h_metric_observe(sk_metric *m, double seconds)
{
    static const uint64_t bounds[] = SK_HIST_BOUNDS_US;
    if (!m || m->type != 2 || !(seconds >= 0)) return;
    uint64_t us = seconds > 1e9 ? (uint64_t)1e15 : (uint64_t)(seconds * 1e6);
    size_t b = 0;
    while (b < SK_ARRAY_LEN(bounds) && us > bounds[b]) b++;
    __atomic_add_fetch(&m->buckets[b], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->sum_us, us, __ATOMIC_RELAXED);
    __atomic_add_fetch(&m->count, 1, __ATOMIC_RELAXED);
}

/* Prometheus text of every plugin metric, grouped by name, labelled with the instance. */
int sk_plugins_render_prometheus(sk_buf *out, const sk_config *cfg)
{
    static const uint64_t bounds[] = SK_HIST_BOUNDS_US;
    static const char *const types[] = {"counter", "gauge", "histogram"};
    int rc = 0;
    if (cfg->nplugins) {
        rc |= sk_buf_printf(
            out, "# HELP sidekick_plugin_errors_total Plugin hooks that failed (500 filter_error).\n"
                 "# TYPE sidekick_plugin_errors_total counter\n");
        for (size_t i = 0; i < cfg->nplugins; i++)
            rc |= sk_buf_printf(
                out, "sidekick_plugin_errors_total{instance=\"%s\"} %llu\n", cfg->plugins[i]->name,
                (unsigned long long)__atomic_load_n(&cfg->plugins[i]->errors, __ATOMIC_RELAXED));
    }
    for (size_t i = 0; i < cfg->nplugins; i++) {
        for (sk_metric *m = cfg->plugins[i]->metrics; m; m = m->next) {
            /* print a family once: at its first instance */
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++)
                for (sk_metric *o = cfg->plugins[j]->metrics; o && !seen; o = o->next)
                    if (strcmp(o->name, m->name) == 0) seen = true;
            if (seen) continue;
            rc |=
                sk_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, types[m->type]);
            for (size_t j = i; j < cfg->nplugins; j++) {
                const char *inst = cfg->plugins[j]->name;
                for (sk_metric *o = cfg->plugins[j]->metrics; o; o = o->next) {
                    if (strcmp(o->name, m->name) != 0 || o->type != m->type) continue;
                    if (o->type != 2) {
                        rc |= sk_buf_printf(out, "%s{instance=\"%s\"} %lld\n", o->name, inst,
                                            (long long)__atomic_load_n(&o->value, __ATOMIC_RELAXED));
                        continue;
                    }
                    uint64_t cum = 0;
                    for (size_t b = 0; b < SK_HIST_BUCKETS; b++) {
                        cum += __atomic_load_n(&o->buckets[b], __ATOMIC_RELAXED);
                        if (b < SK_ARRAY_LEN(bounds))
                            rc |= sk_buf_printf(out, "%s_bucket{instance=\"%s\",le=\"%g\"} %llu\n", o->name,
                                                inst, (double)bounds[b] / 1e6, (unsigned long long)cum);
                        else
                            rc |= sk_buf_printf(out, "%s_bucket{instance=\"%s\",le=\"+Inf\"} %llu\n", o->name,
                                                inst, (unsigned long long)cum);
                    }
                    uint64_t sum = __atomic_load_n(&o->sum_us, __ATOMIC_RELAXED);
                    rc |= sk_buf_printf(
                        out, "%s_sum{instance=\"%s\"} %llu.%06llu\n%s_count{instance=\"%s\"} %llu\n", o->name,
                        inst, (unsigned long long)(sum / 1000000), (unsigned long long)(sum % 1000000),
                        o->name, inst, (unsigned long long)__atomic_load_n(&o->count, __ATOMIC_RELAXED));
                }
            }
        }
    }
    return rc ? -1 : 0;
}

/* The service table every plugin gets. */
const sk_host_api sk_host = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .log = h_log,
    .instance_name = h_instance_name,
    .worker_count = h_worker_count,
    .method = h_method,
    .path = h_path,
    .query = h_query,
    .authority = h_authority,
    .client_ip = h_client_ip,
    .identity = h_identity,
    .route = h_route,
    .header = h_header,
    .header_count = h_header_count,
    .header_at = h_header_at,
    .set_header = h_set_header,
    .add_header = h_add_header,
    .remove_header = h_remove_header,
    .set_cluster = h_set_cluster,
    .status = h_status,
    .response_header = h_response_header,
    .set_response_header = h_set_response_header,
    .add_response_header = h_add_response_header,
    .remove_response_header = h_remove_response_header,
    .respond = h_respond,
    .set_meta = h_set_meta,
    .meta = h_meta,
    .resume = h_resume,
    .request_loop = h_request_loop,
    .main_loop = h_main_loop,
    .timer_start = h_timer_start,
    .timer_stop = h_timer_stop,
    .watch_fd = h_watch_fd,
    .unwatch_fd = h_unwatch_fd,
    .post_to_workers = h_post_to_workers,
    .set_endpoints = h_set_endpoints,
    .counter = h_counter,
    .gauge = h_gauge,
    .histogram = h_histogram,
    .metric_add = h_metric_add,
    .metric_set = h_metric_set,
    .metric_observe = h_metric_observe,
    /* --- ABI 1.1: asynchronous HTTP client (main loop) --- */
    .http_start = sk_http_start,
    .http_cancel = sk_http_cancel,
    .http_strerror = sk_http_strerror,
};
