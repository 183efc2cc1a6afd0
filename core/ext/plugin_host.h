/*
 * plugin_host.h — the host side of the plugin ABI: loading .so files into
 * instances that belong to a config generation, per-worker init, the host
 * service table, running hooks, and plugin metrics.
 */
#ifndef SK_PLUGIN_HOST_H
#define SK_PLUGIN_HOST_H

#include <sidekick/plugin.h>

#include "sk.h"

typedef struct sk_config sk_config;
typedef struct sk_cluster sk_cluster;
typedef struct sk_request sk_request;
typedef struct sk_worker sk_worker;

/* A metric registered by a plugin instance. */
typedef struct sk_metric {
    struct sk_metric *next; /* next metric of the same instance */
    int type;               /* 0 counter, 1 gauge, 2 histogram */
    char *name;             /* full name, "sidekick_plugin_..." */
    char *help;             /* help text */
    int64_t value;          /* counter / gauge (atomic) */
    /* Labelled counters and gauges: counter_labelled (ABI 1.1, one label)
     * and counter_vec (ABI 1.2, up to SK_METRIC_MAX_LABELS). */
    char **labels;        /* the label names, [nlabels], or NULL when unlabelled */
    size_t nlabels;       /* 1..SK_METRIC_MAX_LABELS, 0 when unlabelled */
    char **values;        /* series i has values[i * nlabels + j] for labels[j], [nseries * nlabels] */
    size_t nseries;       /* 1..SK_METRIC_MAX_SERIES, 0 when unlabelled */
    int64_t *lvalues;     /* the value of each series, [nseries] (atomic) */
    uint64_t buckets[15]; /* histogram: non-cumulative counts by SK_HIST_BOUNDS_US (atomic) */
    uint64_t sum_us;      /* histogram sum in microseconds (atomic) */
    uint64_t count;       /* histogram observations (atomic) */
} sk_metric;

/* Links the timers and fd watchers a plugin instance started on one loop
 * (plugin_host.c): those still there at worker_fini / destroy are stopped. */
typedef struct sk_hlink {
    struct sk_hlink *prev, *next;
} sk_hlink;

/* One [plugin NAME] section: a loaded .so and the instance it created.
 * Owned by its config generation. */
struct sk_instance {
    char *name;               /* section name */
    int index;                /* position in sk_config.plugins */
    int line;                 /* line of the section header */
    char *load;               /* `load` as written, or NULL (NAME.so) */
    int load_line;            /* line of `load`, 0 if absent */
    sk_kv *keys;              /* the other keys (strings owned here), for create */
    size_t nkeys;             /* number of keys */
    char *path;               /* resolved path of the .so */
    void *dl;                 /* dlopen handle, or NULL */
    const sk_plugin *def;     /* the plugin's exported descriptor */
    void *inst;               /* what create returned, or NULL */
    void **wdata;             /* per-worker data from worker_init, [nworkers] */
    int nworkers;             /* size of wdata */
    uint64_t errors;          /* hooks that failed (atomic) */
    sk_metric *metrics;       /* registered metrics */
    sk_config *config;        /* the generation owning it (not a reference) */
    sk_hlink main_handles;    /* its timers and watchers on the main loop (main thread only) */
    sk_hlink *worker_handles; /* the same per worker, [nworkers] (each list: its worker only) */
    bool drained;             /* sk_plugins_drain reached it (on_drain ran, if it has one) */
};

/* Allocates an instance for section `name`; NULL on OOM. */
sk_instance *sk_instance_new(const char *name, int index, int line);
/* Adds a key for create (copied). 0 or -1. */
int sk_instance_add_key(sk_instance *pi, const char *key, const char *value, int line);
/*
 * Loads the .so (from plugin_dir unless `load` is absolute), checks the ABI
 * and calls create with the keys. Main thread. Returns 0, -1 when the .so
 * cannot be used, or -2 when create refused its keys; err holds the message
 * (no file/line prefix: the caller adds it).
 */
int sk_instance_load(sk_instance *pi, const char *plugin_dir, int nworkers, char *err, size_t err_size);
/*
 * Calls the instance's on_cluster hook (ABI 1.1) for cluster cl, whose
 * `discovery` names it (main thread, after every create of the generation).
 * Returns 0, or -1 with err set (no file/line prefix): the plugin refused,
 * or it has no on_cluster hook (or was built for ABI 1.0).
 */
int sk_instance_on_cluster(sk_instance *pi, sk_cluster *cl, char *err, size_t err_size);
/* Calls destroy (if created), stops the instance's leftover main-loop
 * timers and watchers, frees metrics, dlcloses, frees pi. */
void sk_instance_free(sk_instance *pi);

/* worker_init / worker_fini of every instance of cfg, on worker `w`'s
 * thread; after worker_fini, the timers and watchers an instance left on
 * that worker's loop are stopped and freed (with a warning). */
int sk_plugins_worker_init(sk_config *cfg, int worker_id, void *loop);
void sk_plugins_worker_fini(sk_config *cfg, int worker_id);

/* Calls on_drain (ABI 1.2) of every instance of cfg that has it, once per
 * instance: cfg will serve no more requests (every worker ran
 * worker_fini for it). Main thread, before cfg is released; the caller
 * then runs the main loop while sk_plugins_http_calls(cfg) > 0, within its
 * bound, before dropping cfg. */
void sk_plugins_drain(sk_config *cfg);
/* HTTP client calls in flight of the instances of cfg. Main thread. */
size_t sk_plugins_http_calls(const sk_config *cfg);

/* Runs one hook of instance pi for request r (worker thread). */
sk_status sk_plugin_on_request(sk_instance *pi, sk_request *r);
sk_status sk_plugin_on_response(sk_instance *pi, sk_request *r);
void sk_plugin_on_log(sk_instance *pi, sk_request *r);
void sk_plugin_on_cancel(sk_instance *pi, sk_request *r);

/* Appends the plugin metrics of cfg in Prometheus text format. 0 or -1. */
int sk_plugins_render_prometheus(sk_buf *out, const sk_config *cfg);

/* Tells the host table the main loop, the worker count, and the runtime's
 * way to post work to the workers and count those running (main thread,
 * at start). */
void sk_plugins_set_process(void *main_loop, int workers, int (*post)(void (*cb)(void *), void *arg),
                            int (*running)(void));

/* The host table handed to plugins (also used by tests). */
extern const sk_host_api sk_host;

#endif
