/*
 * server.h — process-wide state owned by the main thread (main.c) and read
 * by the admin endpoint and the workers.
 */
#ifndef SK_SERVER_H
#define SK_SERVER_H

#include <ev.h>

#include "config.h"
#include "metrics.h"

typedef struct sk_server {
    sk_config *config;    /* the running generation (main thread owns the reference) */
    struct ev_loop *loop; /* the main loop: signals, admin */
    sk_metrics **metrics; /* one per worker, index = worker id */
    size_t nworkers;      /* number of workers */
    int ready;            /* 1 once every listener is bound (atomic) */
    int draining;         /* 1 once a drain started (atomic) */
    time_t started_at;    /* process start, wall clock */
} sk_server;

extern sk_server sk_srv;

/* Starts a graceful drain (as SIGTERM does): stop accepting, finish in-flight
 * work up to drain_timeout, exit 0. Main thread only; idempotent. */
void sk_server_drain(void);

/* Reloads the config file into a new generation and publishes it (SIGHUP,
 * POST /reload). Main thread. 0, or -1 with *err (malloc'd): nothing changed. */
int sk_server_reload(char **err);

/*
 * Starts the admin HTTP endpoint on cfg->admin, served on `loop` (main
 * thread). Returns 0, or -1 with *err set (malloc'd) when it cannot bind.
 */
int sk_admin_start(struct ev_loop *loop, const sk_config *cfg, char **err);
/* Closes the admin listener and its connections. */
void sk_admin_stop(void);

#endif
