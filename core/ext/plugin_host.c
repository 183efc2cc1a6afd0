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

#include "cluster.h"
#include "head.h"
#include "http_client.h"
#include "metrics.h"
#include "plugin_host.h"
#include "request.h"

#define REQ(r) ((sk_request *)(r))

/* What the host table reports about the process, set by main(). */
static struct ev_loop *process_main_loop;
static int process_workers;
/* The runtime's work posting (sk_workers_post) and count of running
 * workers, so that this layer never calls up into the runtime. */
static int (*process_post)(void (*cb)(void *), void *arg);
static int (*process_running)(void);

/* The instance whose code runs on this thread now (create, a hook, a timer
 * or watcher callback, a posted callback), so that the timers and watchers
 * it starts are its own; and the worker this thread is (-1: main thread). */
static __thread sk_instance *current;
static __thread int this_worker_id = -1;

/* Sets the current instance; returns the previous one for leave(). */
static sk_instance *enter(sk_instance *pi)
{
    sk_instance *prev = current;
    current = pi;
    return prev;
}
static void leave(sk_instance *prev)
{
    current = prev;
}

/* ---- timers and watchers a plugin started, by instance and loop ---- */

enum { H_TIMER = 0, H_WATCH = 1 };

/* The part of sk_timer and sk_watch that ties them to their instance. */
typedef struct handle {
    sk_hlink link;      /* in the owner's list of that loop; self-linked when untracked */
    sk_instance *owner; /* the instance that started it, or NULL */
    struct ev_loop *loop;
    int kind; /* H_TIMER or H_WATCH */
} handle;

struct sk_timer {
    handle h; /* first: a handle * is an sk_timer * */
    ev_timer t;
    sk_callback cb;
    void *arg;
};

struct sk_watch {
    handle h; /* first */
    ev_io io;
    sk_fd_callback cb;
    void *arg;
};

static void hlist_init(sk_hlink *l)
{
    l->prev = l->next = l;
}

/* Ties h to the current instance's list for `loop`. false when `loop` is not
 * this thread's (the main loop from a worker, a worker's loop from main). */
static bool handle_track(handle *h, struct ev_loop *loop)
{
    bool main_loop = loop == process_main_loop;
    h->loop = loop;
    hlist_init(&h->link);
    if (main_loop != (this_worker_id < 0)) return false;
    sk_instance *pi = current;
    sk_hlink *head = NULL;
    if (pi && main_loop)
        head = &pi->main_handles;
    else if (pi && pi->worker_handles && this_worker_id < pi->nworkers)
        head = &pi->worker_handles[this_worker_id];
    if (!head) return true; /* outside any instance (host tests): untracked */
    h->owner = pi;
    h->link.next = head->next;
    h->link.prev = head;
    head->next->prev = &h->link;
    head->next = &h->link;
    return true;
}

static void handle_untrack(handle *h)
{
    h->link.prev->next = h->link.next;
    h->link.next->prev = h->link.prev;
    hlist_init(&h->link);
}

/* Stops and frees what is left in one list (the owner is gone). */
static void handles_stop_all(sk_instance *pi, sk_hlink *head, const char *when)
{
    unsigned timers = 0, watches = 0;
    while (head->next != head) {
        handle *h = SK_CONTAINER(head->next, handle, link);
        handle_untrack(h);
        if (h->kind == H_TIMER) {
            ev_timer_stop(h->loop, &((sk_timer *)h)->t);
            timers++;
        } else {
            ev_io_stop(h->loop, &((sk_watch *)h)->io);
            watches++;
        }
        free(h);
    }
    if (timers || watches)
        sk_warn("plugin %s: %u timer(s) and %u fd watcher(s) still active after %s; stopped (fds left open)",
                pi->name, timers, watches, when);
}

static void metric_free(sk_metric *m);

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
    hlist_init(&pi->main_handles);
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
    if (!(pi->worker_handles = calloc((size_t)(nworkers > 0 ? nworkers : 1), sizeof(sk_hlink)))) goto oom;
    for (int i = 0; i < (nworkers > 0 ? nworkers : 1); i++) hlist_init(&pi->worker_handles[i]);
    char perr[512] = "";
    sk_instance *prev = enter(pi);
    pi->inst = def->create(&sk_host, pi, pi->keys, pi->nkeys, perr, sizeof(perr));
    leave(prev);
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

/* on_cluster of a 1.1 plugin for a cluster naming it in `discovery`. */
int sk_instance_on_cluster(sk_instance *pi, sk_cluster *cl, char *err, size_t err_size)
{
    if (!pi->def || pi->def->abi_minor < 1 || !pi->def->on_cluster) {
        snprintf(err, err_size,
                 "[plugin %s] (%s) cannot feed a cluster: it has no on_cluster hook (plugin ABI 1.1)",
                 pi->name, pi->path ? pi->path : "?");
        return -1;
    }
    char perr[512] = "";
    sk_instance *prev = enter(pi);
    int rc = pi->def->on_cluster(pi->inst, cl->name, cl->discovery_arg, perr, sizeof(perr));
    leave(prev);
    if (rc != 0) {
        perr[sizeof(perr) - 1] = 0;
        snprintf(err, err_size, "[plugin %s] refused the cluster: %s", pi->name,
                 perr[0] ? perr : "on_cluster failed (no message)");
        return -1;
    }
    return 0;
}

/* Destroys the plugin's instance and releases everything. Main thread. */
void sk_instance_free(sk_instance *pi)
{
    if (!pi) return;
    sk_http_instance_closing(pi); /* its client calls end before destroy */
    if (pi->inst && pi->def->destroy) {
        sk_instance *prev = enter(pi);
        pi->def->destroy(pi->inst);
        leave(prev);
    }
    sk_http_instance_closed(pi);
    /* The workers released the generation (worker_fini ran) before this. */
    handles_stop_all(pi, &pi->main_handles, "destroy");
    for (sk_metric *m = pi->metrics, *next; m; m = next) {
        next = m->next;
        metric_free(m);
    }
    if (pi->dl) dlclose(pi->dl);
    for (size_t i = 0; i < pi->nkeys; i++) {
        free((char *)pi->keys[i].key);
        free((char *)pi->keys[i].value);
    }
    free(pi->keys);
    free(pi->wdata);
    free(pi->worker_handles);
    free(pi->path);
    free(pi->load);
    free(pi->name);
    free(pi);
}

/* See plugin_host.h. */
void sk_plugins_drain(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->nplugins; i++) {
        sk_instance *pi = cfg->plugins[i];
        if (pi->drained || !pi->inst) continue;
        pi->drained = true;
        if (pi->def->abi_minor < 2 || !pi->def->on_drain) continue;
        sk_instance *prev = enter(pi);
        pi->def->on_drain(pi->inst);
        leave(prev);
    }
}

/* See plugin_host.h. */
size_t sk_plugins_http_calls(const sk_config *cfg)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->nplugins; i++) n += sk_http_instance_calls(cfg->plugins[i]);
    return n;
}

/* worker_init of every instance on this worker thread. */
int sk_plugins_worker_init(sk_config *cfg, int worker_id, void *loop)
{
    int rc = 0;
    this_worker_id = worker_id;
    for (size_t i = 0; i < cfg->nplugins; i++) {
        sk_instance *pi = cfg->plugins[i];
        if (!pi->def->worker_init || worker_id >= pi->nworkers) continue;
        sk_instance *prev = enter(pi);
        int wrc = pi->def->worker_init(pi->inst, (sk_loop *)loop, &pi->wdata[worker_id]);
        leave(prev);
        if (wrc != 0) {
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
        if (worker_id >= pi->nworkers) continue;
        if (pi->def->worker_fini) {
            sk_instance *prev = enter(pi);
            pi->def->worker_fini(pi->inst, pi->wdata[worker_id]);
            leave(prev);
        }
        handles_stop_all(pi, &pi->worker_handles[worker_id], "worker_fini");
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
    sk_instance *prev = enter(pi);
    sk_status st = pi->def->on_request(pi->inst, wdata_of(pi, r), (sk_req *)r);
    leave(prev);
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
    sk_instance *prev = enter(pi);
    sk_status st = pi->def->on_response(pi->inst, wdata_of(pi, r), (sk_req *)r);
    leave(prev);
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
    sk_instance *prev = enter(pi);
    pi->def->on_log(pi->inst, wdata_of(pi, r), (sk_req *)r);
    leave(prev);
    r->in_hook = false;
}

/* Runs on_cancel. */
void sk_plugin_on_cancel(sk_instance *pi, sk_request *r)
{
    if (!pi->def->on_cancel) return;
    r->in_hook = true;
    sk_instance *prev = enter(pi);
    pi->def->on_cancel(pi->inst, wdata_of(pi, r), (sk_req *)r);
    leave(prev);
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
void sk_plugins_set_process(void *main_loop, int workers, int (*post)(void (*cb)(void *), void *arg),
                            int (*running)(void))
{
    process_main_loop = main_loop;
    process_workers = workers;
    process_post = post;
    process_running = running;
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
    const char *id = REQ(r)->identity; /* the verified TLS peer's SPIFFE ID, or NULL */
    return id ? mkstr(id, strlen(id)) : mkstr(NULL, 0);
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

/* ---- ABI 1.1: request id and info ---- */

static sk_str h_request_id(sk_req *r)
{
    const char *id = REQ(r)->request_id;
    return id[0] ? mkstr(id, strlen(id)) : mkstr(NULL, 0);
}

static int h_request_info(sk_req *r, sk_req_info *info)
{
    if (!info || info->size < sizeof(info->size)) return -1;
    const sk_request *q = REQ(r);
    sk_req_info v;
    memset(&v, 0, sizeof(v));
    v.start_ns = q->start_ns;
    /* the upstream times of the last attempt only */
    if (q->upstream_start_ns && q->upstream_connect_ns >= q->upstream_start_ns) {
        v.upstream_connect_ns = q->upstream_connect_ns;
        if (q->upstream_first_byte_ns >= q->upstream_connect_ns)
            v.upstream_first_byte_ns = q->upstream_first_byte_ns;
    }
    v.end_ns = q->end_ns;
    v.bytes_received = q->bytes_received;
    v.bytes_sent = q->bytes_sent;
    v.endpoint = q->endpoint[0] ? mkstr(q->endpoint, strlen(q->endpoint)) : mkstr(NULL, 0);
    v.attempts = q->attempts;
    v.status = q->status;
    v.reason = q->reason ? mkstr(q->reason, strlen(q->reason)) : mkstr(NULL, 0);
    v.generation = q->config ? q->config->generation : 0;
    v.tls = q->secure ? 1 : 0;
    size_t n = info->size < sizeof(v) ? info->size : sizeof(v);
    v.size = n;
    memcpy(info, &v, n);
    return 0;
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

static sk_loop *h_main_loop(void)
{
    return (sk_loop *)process_main_loop;
}

static void timer_fired(struct ev_loop *loop, ev_timer *t, int revents)
{
    sk_timer *tm = SK_CONTAINER(t, sk_timer, t);
    sk_callback cb = tm->cb;
    void *arg = tm->arg;
    sk_instance *prev = enter(tm->h.owner);
    handle_untrack(&tm->h);
    free(tm); /* one-shot: gone before the callback, which may start another */
    cb(arg);
    leave(prev);
}

static sk_timer *h_timer_start(sk_loop *loop, uint64_t ms, sk_callback cb, void *arg)
{
    if (!loop || !cb) return NULL;
    sk_timer *tm = calloc(1, sizeof(*tm));
    if (!tm) return NULL;
    tm->h.kind = H_TIMER;
    if (!handle_track(&tm->h, (struct ev_loop *)loop)) {
        free(tm);
        return NULL;
    }
    tm->cb = cb;
    tm->arg = arg;
    ev_timer_init(&tm->t, timer_fired, (double)ms / 1000.0, 0.);
    ev_timer_start(tm->h.loop, &tm->t);
    return tm;
}

static void h_timer_stop(sk_timer *tm)
{
    if (!tm) return;
    ev_timer_stop(tm->h.loop, &tm->t);
    handle_untrack(&tm->h);
    free(tm);
}

static void watch_fired(struct ev_loop *loop, ev_io *io, int revents)
{
    sk_watch *w = SK_CONTAINER(io, sk_watch, io);
    sk_instance *prev = enter(w->h.owner);
    w->cb(w->arg, io->fd, (revents & EV_READ ? SK_EV_READ : 0) | (revents & EV_WRITE ? SK_EV_WRITE : 0));
    leave(prev); /* w may be gone: unwatched from its callback */
}

static sk_watch *h_watch_fd(sk_loop *loop, int fd, int events, sk_fd_callback cb, void *arg)
{
    if (!loop || !cb || fd < 0 || !(events & (SK_EV_READ | SK_EV_WRITE))) return NULL;
    sk_watch *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->h.kind = H_WATCH;
    if (!handle_track(&w->h, (struct ev_loop *)loop)) {
        free(w);
        return NULL;
    }
    w->cb = cb;
    w->arg = arg;
    ev_io_init(&w->io, watch_fired, fd,
               (events & SK_EV_READ ? EV_READ : 0) | (events & SK_EV_WRITE ? EV_WRITE : 0));
    ev_io_start(w->h.loop, &w->io);
    return w;
}

static void h_unwatch_fd(sk_watch *w)
{
    if (!w) return;
    ev_io_stop(w->h.loop, &w->io);
    handle_untrack(&w->h);
    free(w);
}

/* ---- main → workers, discovery ---- */

/* A post on its way to the workers: runs cb as its instance, freed by the
 * last worker that ran it. `left` starts high (POST_BIAS) because workers may
 * run it before sk_workers_post says how many got it. */
typedef struct post {
    sk_callback cb;
    void *arg;
    sk_instance *owner;
    int left; /* atomic */
} post;
#define POST_BIAS (1 << 30)

static void post_done(post *p, int n)
{
    if (__atomic_sub_fetch(&p->left, n, __ATOMIC_ACQ_REL) == 0) free(p);
}

static void posted(void *arg)
{
    post *p = arg;
    sk_instance *prev = enter(p->owner);
    p->cb(p->arg);
    leave(prev);
    post_done(p, 1);
}

static int h_post_to_workers(sk_callback cb, void *arg)
{
    /* before the start, or once a worker left its loop (shutdown): refused */
    if (!cb || process_workers <= 0 || !process_post || process_running() < process_workers) return -1;
    post *p = malloc(sizeof(*p));
    if (!p) return -1;
    p->cb = cb;
    p->arg = arg;
    p->owner = current;
    p->left = POST_BIAS;
    int n = process_post(posted, p);
    if (n < 0) {
        free(p);
        return -1;
    }
    post_done(p, POST_BIAS - n);
    return 0;
}

/* The cluster `cluster` of self's generation, or NULL with an error
 * logged (unknown cluster, or not on the main thread). */
static sk_cluster *main_cluster(sk_instance *self, const char *fn, const char *cluster)
{
    if (this_worker_id >= 0) {
        sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): refused on a worker thread (main thread only)",
               self ? self->name : "?", fn, cluster ? cluster : "(null)");
        return NULL;
    }
    sk_cluster *c = self && self->config && cluster ? sk_config_cluster(self->config, cluster) : NULL;
    if (!c)
        sk_log(SK_LOG_ERROR, "plugin %s: %s: unknown cluster '%s'", self ? self->name : "?", fn,
               cluster ? cluster : "(null)");
    return c;
}

/* Is s a source name set_endpoints_from takes: 1..16 of [a-z0-9_-]? */
static bool source_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '_' || s[n] == '-'))
            return false;
    return n >= 1 && n < SK_SOURCE_MAX;
}

/* set_endpoints, set_endpoints_weighted and set_endpoints_from: n
 * addresses (and weights, or NULL for 1) for a cluster of self's
 * generation, from `source`. 0, or -1 logged. */
static int set_endpoints(sk_instance *self, const char *fn, const char *cluster, const char *const *endpoints,
                         const sk_weighted_endpoint *weighted, size_t n, const char *source)
{
    sk_cluster *c = main_cluster(self, fn, cluster);
    if (!c) return -1;
    if (n > 65536 || (n && !endpoints && !weighted)) {
        sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): bad arguments (n = %zu)", self->name, fn, cluster, n);
        return -1;
    }
    if (!source_ok(source)) {
        sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): bad source '%.32s' (1..16 of a-z, 0-9, '_', '-')",
               self->name, fn, cluster, source);
        return -1;
    }
    sk_addr *addrs = calloc(n ? n : 1, sizeof(*addrs));
    uint32_t *weights = weighted ? calloc(n ? n : 1, sizeof(*weights)) : NULL;
    if (!addrs || (weighted && !weights)) {
        sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): out of memory", self->name, fn, cluster);
        free(addrs);
        free(weights);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *a = weighted ? weighted[i].address : endpoints[i];
        if (!a || sk_parse_addr(a, &addrs[i]) < 0) {
            sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): bad address '%s'", self->name, fn, cluster,
                   a ? a : "(null)");
            rc = -1;
        } else if (weighted && (weighted[i].weight < 1 || weighted[i].weight > SK_WEIGHT_MAX)) {
            sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): endpoint %s: weight %u out of range 1..%d", self->name,
                   fn, cluster, addrs[i].text, (unsigned)weighted[i].weight, SK_WEIGHT_MAX);
            rc = -1;
        } else if (weighted) {
            weights[i] = weighted[i].weight;
        }
    }
    if (rc == 0 && (rc = sk_cluster_set_endpoints(c, addrs, weights, n, source)) < 0)
        sk_log(SK_LOG_ERROR, "plugin %s: %s(%s): out of memory", self->name, fn, cluster);
    free(addrs);
    free(weights);
    if (rc == 0) sk_log(SK_LOG_INFO, "plugin %s: cluster %s now has %zu endpoint(s)", self->name, cluster, n);
    return rc;
}

static int h_set_endpoints(sk_instance *self, const char *cluster, const char *const *endpoints, size_t n)
{
    return set_endpoints(self, "set_endpoints", cluster, endpoints, NULL, n, "plugin");
}

static int h_set_endpoints_weighted(sk_instance *self, const char *cluster,
                                    const sk_weighted_endpoint *endpoints, size_t n)
{
    return set_endpoints(self, "set_endpoints_weighted", cluster, NULL, endpoints, n, "plugin");
}

static int h_set_endpoints_from(sk_instance *self, const char *cluster, const sk_weighted_endpoint *endpoints,
                                size_t n, const char *source)
{
    return set_endpoints(self, "set_endpoints_from", cluster, NULL, endpoints, n, source ? source : "plugin");
}

/* cluster_state: only for a cluster whose `discovery` names self. */
static int h_cluster_state(sk_instance *self, const char *cluster, int ok, const char *message)
{
    sk_cluster *c = main_cluster(self, "cluster_state", cluster);
    if (!c) return -1;
    if (c->discovery_inst != self) {
        sk_log(SK_LOG_ERROR,
               "plugin %s: cluster_state(%s): the cluster's discovery does not name this instance",
               self->name, cluster);
        return -1;
    }
    if (sk_cluster_set_state(c, ok != 0, message) < 0) {
        sk_log(SK_LOG_ERROR, "plugin %s: cluster_state(%s): out of memory", self->name, cluster);
        return -1;
    }
    return 0;
}

/* ---- metrics ---- */

static bool name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!first && c >= '0' && c <= '9');
}

/* Why a label name cannot be used, or NULL when it can. */
static const char *label_name_problem(const char *label)
{
    if (!label || !*label) return "no label name";
    for (const char *p = label; *p; p++)
        if (!name_char(*p, p == label)) return "the label name is not [A-Za-z_][A-Za-z0-9_]*";
    if (strcmp(label, "instance") == 0 || strcmp(label, "le") == 0 || strncmp(label, "__", 2) == 0)
        return "the label name is reserved (instance, le, __*)";
    return NULL;
}

/* Why a label value cannot be used, or NULL when it can. */
static const char *label_value_problem(const char *v)
{
    size_t len = v ? strlen(v) : 0;
    if (len == 0 || len > 128) return "a label value is empty or longer than 128 bytes";
    for (const char *p = v; *p; p++)
        if (*p < 0x20 || *p > 0x7e || *p == '"' || *p == '\\')
            return "a label value has a control character, a quote or a backslash";
    return NULL;
}

/* Why nlabels labels and nseries series of values cannot be used, or NULL
 * when they can. `vec`: counter_vec's limits and words, else
 * counter_labelled's (one label, up to SK_METRIC_MAX_LABEL_VALUES values). */
static const char *labels_problem(const char *const *labels, size_t nlabels, const char *const *values,
                                  size_t nseries, bool vec)
{
    if (vec && (nlabels == 0 || !labels)) return "no labels";
    if (vec && nlabels > SK_METRIC_MAX_LABELS) return "more than 4 labels";
    for (size_t j = 0; j < nlabels; j++) {
        const char *p = label_name_problem(labels[j]);
        if (p) return p;
        for (size_t k = 0; k < j; k++)
            if (strcmp(labels[j], labels[k]) == 0) return "a label name is repeated";
    }
    if (nseries == 0 || !values) return vec ? "no series" : "no label values";
    if (!vec && nseries > SK_METRIC_MAX_LABEL_VALUES) return "more than 32 label values";
    if (vec && nseries > SK_METRIC_MAX_SERIES) return "more than 256 series";
    for (size_t i = 0; i < nseries * nlabels; i++) {
        const char *p = label_value_problem(values[i]);
        if (p) return p;
    }
    for (size_t i = 0; i < nseries; i++)
        for (size_t k = 0; k < i; k++) {
            bool same = true;
            for (size_t j = 0; j < nlabels && same; j++)
                same = strcmp(values[i * nlabels + j], values[k * nlabels + j]) == 0;
            if (same) return vec ? "a series is repeated" : "a label value is repeated";
        }
    return NULL;
}

/* Does m have exactly these labels and series? */
static bool same_labels(const sk_metric *m, const char *const *labels, size_t nlabels,
                        const char *const *values, size_t nseries)
{
    if (m->nlabels != nlabels || m->nseries != nseries) return false;
    for (size_t j = 0; j < nlabels; j++)
        if (strcmp(m->labels[j], labels[j]) != 0) return false;
    for (size_t i = 0; i < nseries * nlabels; i++)
        if (strcmp(m->values[i], values[i]) != 0) return false;
    return true;
}

static void metric_free(sk_metric *m)
{
    free(m->name);
    free(m->help);
    for (size_t j = 0; m->labels && j < m->nlabels; j++) free(m->labels[j]);
    free(m->labels);
    for (size_t i = 0; m->values && i < m->nseries * m->nlabels; i++) free(m->values[i]);
    free(m->values);
    free(m->lvalues);
    free(m);
}

/* Registers a metric (nlabels 0: unlabelled). NULL, logged, when refused. */
static sk_metric *add_metric(sk_instance *self, int type, const char *name, const char *help,
                             const char *const *labels, size_t nlabels, const char *const *values,
                             size_t nseries, bool vec)
{
    if (!self) return NULL;
    const char *problem = NULL;
    if (!name || !*name) problem = "no name";
    for (const char *p = name; !problem && *p; p++)
        if (!name_char(*p, false)) problem = "the name is not [A-Za-z0-9_]+";
    if (!problem && (nlabels || vec)) problem = labels_problem(labels, nlabels, values, nseries, vec);
    if (!nlabels) nseries = 0;
    for (sk_metric *m = self->metrics; !problem && m; m = m->next) {
        if (strcmp(m->name + 16, name) != 0) continue;
        if (m->type == type && same_labels(m, labels, nlabels, values, nseries)) return m;
        problem = "the name is registered already with another type or labels";
    }
    if (problem) {
        sk_log(SK_LOG_ERROR, "plugin %s: metric '%s' refused: %s", self->name, name ? name : "(null)",
               problem);
        return NULL;
    }
    sk_metric *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    if (nlabels) {
        m->labels = calloc(nlabels, sizeof(*m->labels));
        m->values = calloc(nseries * nlabels, sizeof(*m->values));
        m->lvalues = calloc(nseries, sizeof(*m->lvalues));
        bool ok = m->labels && m->values && m->lvalues;
        if (ok) {
            m->nlabels = nlabels;
            m->nseries = nseries;
        }
        for (size_t j = 0; ok && j < nlabels; j++) ok = (m->labels[j] = strdup(labels[j])) != NULL;
        for (size_t i = 0; ok && i < nseries * nlabels; i++) ok = (m->values[i] = strdup(values[i])) != NULL;
        if (!ok) {
            metric_free(m);
            return NULL;
        }
    }
    size_t len = strlen(name) + 17;
    m->name = malloc(len);
    m->help = strdup(help ? help : "");
    if (!m->name || !m->help) {
        metric_free(m);
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
    return add_metric(self, 0, name, help, NULL, 0, NULL, 0, false);
}
static sk_metric *h_gauge(sk_instance *self, const char *name, const char *help)
{
    return add_metric(self, 1, name, help, NULL, 0, NULL, 0, false);
}
static sk_metric *h_histogram(sk_instance *self, const char *name, const char *help)
{
    return add_metric(self, 2, name, help, NULL, 0, NULL, 0, false);
}
static sk_metric *h_counter_labelled(sk_instance *self, const char *name, const char *help, const char *label,
                                     const char *const *values, size_t nvalues)
{
    return add_metric(self, 0, name, help, &label, 1, values, nvalues, false);
}
static sk_metric *h_gauge_labelled(sk_instance *self, const char *name, const char *help, const char *label,
                                   const char *const *values, size_t nvalues)
{
    return add_metric(self, 1, name, help, &label, 1, values, nvalues, false);
}
static sk_metric *h_counter_vec(sk_instance *self, const char *name, const char *help,
                                const char *const *labels, size_t nlabels, const char *const *values,
                                size_t nseries)
{
    return add_metric(self, 0, name, help, labels, nlabels, values, nseries, true);
}
static sk_metric *h_gauge_vec(sk_instance *self, const char *name, const char *help,
                              const char *const *labels, size_t nlabels, const char *const *values,
                              size_t nseries)
{
    return add_metric(self, 1, name, help, labels, nlabels, values, nseries, true);
}

static void h_metric_add(sk_metric *m, int64_t delta)
{
    if (m && !m->nseries && m->type != 2 && (m->type == 1 || delta >= 0))
        __atomic_add_fetch(&m->value, delta, __ATOMIC_RELAXED);
}
static void h_metric_set(sk_metric *m, int64_t v)
{
    if (m && !m->nseries && m->type == 1) __atomic_store_n(&m->value, v, __ATOMIC_RELAXED);
}
static void h_metric_add_at(sk_metric *m, size_t i, int64_t delta)
{
    if (m && i < m->nseries && (m->type == 1 || delta >= 0))
        __atomic_add_fetch(&m->lvalues[i], delta, __ATOMIC_RELAXED);
}
static void h_metric_set_at(sk_metric *m, size_t i, int64_t v)
{
    if (m && i < m->nseries && m->type == 1) __atomic_store_n(&m->lvalues[i], v, __ATOMIC_RELAXED);
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
                    if (o->type != 2 && o->nseries) {
                        for (size_t v = 0; v < o->nseries; v++) {
                            rc |= sk_buf_printf(out, "%s{instance=\"%s\"", o->name, inst);
                            for (size_t l = 0; l < o->nlabels; l++)
                                rc |= sk_buf_printf(out, ",%s=\"%s\"", o->labels[l],
                                                    o->values[v * o->nlabels + l]);
                            rc |= sk_buf_printf(out, "} %lld\n",
                                                (long long)__atomic_load_n(&o->lvalues[v], __ATOMIC_RELAXED));
                        }
                        continue;
                    }
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
    .request_id = h_request_id,
    .request_info = h_request_info,
    .set_endpoints_weighted = h_set_endpoints_weighted,
    .counter_labelled = h_counter_labelled,
    .gauge_labelled = h_gauge_labelled,
    .metric_add_at = h_metric_add_at,
    .metric_set_at = h_metric_set_at,
    /* --- end of ABI 1.1 core members --- */
    /* --- ABI 1.1: asynchronous HTTP client (main loop) --- */
    .http_start = sk_http_start,
    .http_cancel = sk_http_cancel,
    .http_strerror = sk_http_strerror,
    /* --- end of ABI 1.1 --- */
    /* --- ABI 1.2 --- */
    .set_endpoints_from = h_set_endpoints_from,
    .cluster_state = h_cluster_state,
    .counter_vec = h_counter_vec,
    .gauge_vec = h_gauge_vec,
};
