/*
 * worker.h — worker threads (worker.c): one libev loop each, their
 * listening sockets, the connections accepted on them, the generations
 * they hold (with their pools), reload switches, drain, posted work. The
 * data-path types live in their layers: sk_msg (http/message.h), sk_conn
 * (http/h1_server.h), sk_upconn (http/h1_client.h), sk_pool
 * (upstream/pool.h), sk_request (proxy/request.h).
 */
#ifndef SK_WORKER_H
#define SK_WORKER_H

#include <ev.h>
#include <pthread.h>

#include "config.h"
#include "h1_server.h"
#include "list.h"
#include "metrics.h"
#include "pool.h"
#include "wctx.h"

typedef struct sk_worker sk_worker;

/* A generation as one worker holds it: a reference and its clusters'
 * state (pools). The current one, and retired ones that connections or
 * requests of this worker still use. */
typedef struct sk_wgen {
    struct sk_wgen *next;  /* next retired generation */
    sk_config *config;     /* reference */
    sk_wcluster *clusters; /* config->nclusters entries */
    uint64_t retired_ms;   /* when it stopped being current (sk_now_ms), 0 = current */
} sk_wgen;

/* Iterates a worker's generations, current first: for (g = w->gen; g; g = sk_wgen_next(w, g)). */
#define sk_wgen_next(w, g) ((g) == (w)->gen ? (w)->retired : (g)->next)

/* One listening socket of a worker. */
typedef struct sk_wlistener {
    sk_worker *worker;
    const sk_listener *listener;
    int fd; /* SO_REUSEPORT socket, -1 when closed */
    ev_io io;
} sk_wlistener;

/* A worker thread: one libev loop, its listeners, connections and pools.
 * It starts with the sk_wctx the layers below see (loop, metrics, rng,
 * buffers, deferred frees, drain flag). */
struct sk_worker {
    union {
        sk_wctx ctx; /* what the layers below see of this worker */
        struct {
            SK_WCTX_FIELDS
        };
    };
    pthread_t thread;
    sk_config *config;       /* current generation (= gen->config) */
    sk_wgen *gen;            /* current generation: reference and pools */
    sk_wgen *retired;        /* older generations still in use here */
    ev_timer retire_timer;   /* frees retired generations once unused */
    sk_wlistener *listeners; /* nlisteners entries, for config->listeners */
    size_t nlisteners;
    sk_link conns;            /* open downstream HTTP connections (sk_conn.link) */
    sk_link tcp_conns;        /* open downstream connections of tcp listeners */
    size_t nconns;            /* both kinds */
    ev_async wake;            /* main → worker: drain */
    ev_async post;            /* main → worker: posted work (sk_workers_post) */
    struct post_item *posted; /* posted work, newest first (under a lock) */
    ev_timer drain_timer;     /* periodic drain check */
    ev_prepare reap;          /* runs deferred frees at a safe point */
};

/* Starts n workers on cfg; binds every listener in each (SO_REUSEPORT).
 * Returns 0 or -1 with *err (malloc'd). */
int sk_workers_start(sk_config *cfg, sk_metrics **metrics, int n, int accesslog_fd, char **err);
/* Runs cb(arg) on every worker's loop soon (thread-safe). Returns the number
 * of workers that will run it (> 0), or -1. */
int sk_workers_post(void (*cb)(void *), void *arg);
/* Asks every worker to drain (thread-safe). */
void sk_workers_drain(void);
/*
 * Publishes generation `next` (main thread): binds the listeners that `cur`
 * does not have (one socket per worker), then each worker switches at its
 * next loop iteration: listeners with an unchanged address keep their
 * sockets, removed ones close, idle keep-alive connections move over, and
 * in-flight work finishes on `cur`. next's metric rows are assigned.
 * Returns 0, or -1 with *err (malloc'd) and nothing changed.
 */
int sk_workers_reload(sk_config *cur, sk_config *next, char **err);
/* Waits (main thread, bounded) until every worker applied the reloads
 * posted so far. false when timeout_ms passed first. */
bool sk_workers_wait_switched(uint64_t timeout_ms);
/* Number of workers still running (thread-safe). */
int sk_workers_running(void);

/*
 * Sets up w as a worker on generation cfg on the calling thread without
 * listening sockets or a thread of its own (tests and fuzz targets drive
 * its loop by hand): loop, metrics m, access log fd, its generation.
 * Returns 0 or -1 with *err (malloc'd).
 */
int sk_worker_init_local(sk_worker *w, int id, sk_config *cfg, sk_metrics *m, int logfd, char **err);
/* Takes over an accepted socket of HTTP listener l on worker w. */
void sk_worker_accept_http(sk_worker *w, const sk_listener *l, int fd, const struct sockaddr *sa);
/* Closes every idle pooled upstream connection of w (drain, exit). */
void sk_worker_close_idle_upstreams(sk_worker *w);

#endif
