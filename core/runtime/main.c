/*
 * main.c — command line, start-up, signals and shutdown.
 *
 * The main thread loads the config, binds every listener (so a bad address
 * fails start-up with a clear message), starts the workers and then runs its
 * own loop: signals and the admin endpoint. SIGTERM/SIGINT (or POST /drain)
 * drain: workers stop accepting, finish in-flight requests, and the process
 * exits 0 when they are done or at drain_timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "certs.h"
#include "cluster.h"
#include "generation.h"
#include "health.h"
#include "plugin_host.h"
#include "lua_filter.h"
#include "server.h"
#include "tls.h"
#include "worker.h"

sk_server sk_srv;

static ev_signal sig_term, sig_int, sig_hup, sig_usr1;
/* The config file as named on the command line. Reloads read this name, not
 * the resolved cfg->file: a Kubernetes ConfigMap volume swaps a symlink
 * (..data) on update, and the old target directory disappears. */
static const char *config_path;
static ev_timer drain_poll;
static uint64_t drain_deadline_ms;
static int accesslog_fd = -1;
static char *accesslog_path;

static void usage(FILE *f)
{
    fprintf(f, "usage: sidekick -c FILE        run with this config (foreground)\n"
               "       sidekick -t -c FILE     check the config and exit 0 (valid) or 1\n"
               "       sidekick lua-test FILE_test.lua...  run offline Lua filter tests\n"
               "       sidekick --version      print the version\n");
}

/* --help: usage, then what a running process answers to. */
static void help(void)
{
    usage(stdout);
    printf("\n"
           "Exit status: 0 on a clean shutdown, 1 on a config error, 2 on a usage error.\n"
           "\n"
           "Signals:\n"
           "  SIGHUP           reload the config file (a bad one is refused, the running one stays)\n"
           "  SIGTERM, SIGINT  drain: stop accepting, finish in-flight requests, then exit\n"
           "  SIGUSR1          reopen the access log file (after log rotation)\n"
           "\n"
           "Admin endpoint ([sidekick] admin, default 127.0.0.1:15000; GET / lists it):\n"
           "  GET /healthz /ready /metrics /stats /config /clusters\n"
           "  POST /reload (as SIGHUP)   POST /drain (as SIGTERM)\n"
           "\n"
           "Docs: README.md and docs/ in the source tree: configuration.md (every key),\n"
           "operations.md (reload, drain, signals, Kubernetes), lua.md, plugins.md.\n");
}

static sk_config *retired[1024];
static size_t nretired;

/* HTTP calls in flight of the plugin instances of every generation. */
static size_t plugin_calls(void)
{
    size_t n = sk_plugins_http_calls(sk_srv.config);
    for (size_t i = 0; i < nretired; i++) n += sk_plugins_http_calls(retired[i]);
    return n;
}

static void on_drain_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    static bool plugins_drained;
    bool late = sk_now_ms() >= drain_deadline_ms;
    if (sk_workers_running() == 0) {
        /* No request any more: the plugins' last calls (a span export)
         * may finish, within the drain deadline. */
        if (!plugins_drained) {
            plugins_drained = true;
            sk_plugins_drain(sk_srv.config);
            for (size_t i = 0; i < nretired; i++) sk_plugins_drain(retired[i]);
        }
        size_t calls = plugin_calls();
        if (calls == 0 || late) {
            if (calls)
                sk_warn("drain_timeout reached with %zu plugin HTTP call(s) in flight, exiting", calls);
            else
                sk_info("drained, exiting");
            ev_break(loop, EVBREAK_ALL);
        }
        return;
    }
    if (late) {
        sk_warn("drain_timeout reached with requests in flight, exiting");
        ev_break(loop, EVBREAK_ALL);
    }
}

/* Starts the graceful drain (idempotent). */
void sk_server_drain(void)
{
    if (__atomic_exchange_n(&sk_srv.draining, 1, __ATOMIC_RELAXED)) return;
    sk_info("draining: no new connections, finishing in-flight requests (up to %llums)",
            (unsigned long long)sk_srv.config->drain_timeout_ms);
    drain_deadline_ms = sk_now_ms() + sk_srv.config->drain_timeout_ms;
    sk_workers_drain();
    ev_timer_init(&drain_poll, on_drain_poll, 0.01, 0.01);
    ev_timer_start(sk_srv.loop, &drain_poll);
}

/* Generations replaced by a reload (retired[], above): main keeps a
 * reference to each until it is the last holder, so that plugin destroy()
 * and dlclose() run here. Once it is, the plugins' on_drain runs and the
 * generation is kept while their HTTP calls are in flight, at most
 * drain_timeout (retired_drain_ms: when on_drain ran, 0 before). */
static uint64_t retired_drain_ms[1024];
static ev_timer retire_poll;

static void on_retire_poll(struct ev_loop *loop, ev_timer *t, int revents)
{
    size_t k = 0;
    uint64_t now = sk_now_ms();
    for (size_t i = 0; i < nretired; i++) {
        sk_config *c = retired[i];
        uint64_t drained = retired_drain_ms[i];
        if (__atomic_load_n(&c->refcnt, __ATOMIC_ACQUIRE) == 1) {
            if (!drained) {
                sk_plugins_drain(c);
                drained = now ? now : 1;
            }
            size_t calls = sk_plugins_http_calls(c);
            if (calls == 0 || now - drained >= c->drain_timeout_ms) {
                if (calls)
                    sk_warn("generation %llu: drain_timeout reached with %zu plugin HTTP call(s) in flight",
                            (unsigned long long)c->generation, calls);
                sk_info("generation %llu released", (unsigned long long)c->generation);
                sk_config_unref(c);
                continue;
            }
        }
        retired_drain_ms[k] = drained;
        retired[k++] = c;
    }
    nretired = k;
    if (nretired == 0) ev_timer_stop(loop, t);
}

/* Is a key that needs a restart different? Writes the message if so. */
static bool needs_restart(const sk_config *a, const sk_config *b, char *msg, size_t n)
{
    const char *what = NULL;
    if (a->workers != b->workers)
        what = "workers";
    else if (a->admin_enabled != b->admin_enabled || strcmp(a->admin.text, b->admin.text) != 0)
        what = "admin";
    else if (strcmp(a->access_log, b->access_log) != 0)
        what = "access_log";
    if (what) snprintf(msg, n, "%s: [sidekick] %s: cannot change on reload (restart needed)", b->file, what);
    return what != NULL;
}

int sk_server_reload(char **errp)
{
    sk_config *cur = sk_srv.config;
    char *err = NULL;
    char msg[512];
    sk_config *next = NULL;
    if (SK_LOAD(sk_srv.draining)) {
        err = strdup("draining: reload refused");
    } else if (nretired == SK_ARRAY_LEN(retired)) {
        err = strdup("too many generations still draining: reload refused");
    } else if ((next = sk_config_load(config_path, &err)) != NULL) {
        next->generation = cur->generation + 1;
        if (needs_restart(cur, next, msg, sizeof(msg))) {
            err = strdup(msg);
        } else {
            /* discovery clusters asked the same question keep the answers
             * until the new instances give theirs */
            if (sk_clusters_carry_over(next, cur) < 0)
                sk_warn("reload: out of memory keeping the discovered endpoints; clusters start afresh");
            sk_clusters_inherit(next, cur); /* health, ejections, ewma of endpoints that stay */
            sk_metrics_assign_rows(next);
            char *berr = NULL;
            if (sk_workers_reload(cur, next, &berr) < 0) {
                snprintf(msg, sizeof(msg), "%s: %s", next->file, berr ? berr : "out of memory");
                err = strdup(msg);
            }
            free(berr);
        }
    }
    if (err || !next) {
        if (!err) err = strdup("cannot load the configuration");
        __atomic_add_fetch(&sk_config_reload_failures, 1, __ATOMIC_RELAXED);
        sk_error("reload refused, generation %llu keeps running: %s", (unsigned long long)cur->generation,
                 err ? err : "out of memory");
        sk_config_unref(next);
        *errp = err;
        return -1;
    }
    retired_drain_ms[nretired] = 0;
    retired[nretired++] = cur;
    if (!ev_is_active(&retire_poll)) {
        ev_timer_init(&retire_poll, on_retire_poll, 0.05, 0.05);
        ev_timer_start(sk_srv.loop, &retire_poll);
    }
    sk_srv.config = next;
    sk_generation_started(next, sk_srv.loop);
    sk_certs_watch(sk_srv.loop, next);
    __atomic_add_fetch(&sk_config_reloads, 1, __ATOMIC_RELAXED);
    /* Answer once the workers are on it (normally well under a millisecond);
     * a worker busy in a long call (a Lua C call) switches when it is done. */
    if (!sk_workers_wait_switched(1000))
        sk_warn("reload: a worker has not switched to generation %llu after 1 s; it will when its loop runs",
                (unsigned long long)next->generation);
    sk_log_level = next->log_level;
    sk_info("reloaded %s: generation %llu (%zu listeners, %zu routes, %zu clusters, %zu plugins)", next->file,
            (unsigned long long)next->generation, next->nlisteners, next->nroutes, next->nclusters,
            next->nplugins);
    return 0;
}

static void on_signal(struct ev_loop *loop, ev_signal *s, int revents)
{
    switch (s->signum) {
    case SIGTERM:
    case SIGINT: sk_server_drain(); break;
    case SIGHUP: {
        char *err = NULL;
        sk_info("SIGHUP: reloading %s", config_path);
        if (sk_server_reload(&err) < 0) free(err);
        break;
    }
    case SIGUSR1:
        if (accesslog_path) {
            int fd = open(accesslog_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
            if (fd < 0) {
                sk_error("reopen access log %s: %s", accesslog_path, strerror(errno));
            } else {
                /* dup2 swaps the file under the workers' fd atomically. */
                dup2(fd, accesslog_fd);
                close(fd);
                sk_info("reopened access log %s", accesslog_path);
            }
        }
        break;
    }
}

static int open_accesslog(const sk_config *cfg)
{
    const char *a = cfg->access_log;
    if (!a || strcmp(a, "stdout") == 0) return STDOUT_FILENO;
    if (strcmp(a, "stderr") == 0) return STDERR_FILENO;
    if (strcmp(a, "off") == 0) return -1;
    int fd = open(a, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "sidekick: %s: [sidekick] access_log: cannot open %s: %s\n", cfg->file, a,
                strerror(errno));
        return -2;
    }
    accesslog_path = strdup(a);
    return fd;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {"config", required_argument, NULL, 'c'},
        {"test", no_argument, NULL, 't'},
        {NULL, 0, NULL, 0},
    };
    if (argc >= 2 && strcmp(argv[1], "lua-test") == 0) return sk_lua_test_main(argc - 2, argv + 2);
    const char *file = NULL;
    bool test = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:thV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': file = optarg; break;
        case 't': test = true; break;
        case 'V': printf("sidekick %s\n", SK_VERSION); return 0;
        case 'h': help(); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!file || optind != argc) {
        usage(stderr);
        return 2;
    }

    /* Plugins may start main-loop timers from create(), at config load. */
    sk_srv.loop = ev_default_loop(EVBACKEND_EPOLL);
    sk_plugins_set_process(sk_srv.loop, 0, sk_workers_post, sk_workers_running);

    char *err = NULL;
    config_path = file;
    sk_config *cfg = sk_config_load(file, &err);
    if (!cfg) {
        fprintf(stderr, "sidekick: %s\n", err ? err : "cannot load the configuration");
        free(err);
        sk_tls_thread_exit();
        return 1;
    }
    if (test) {
        printf("sidekick: %s: configuration OK\n", cfg->file);
        sk_config_unref(cfg);
        sk_tls_thread_exit();
        return 0;
    }
    sk_log_level = cfg->log_level;
    signal(SIGPIPE, SIG_IGN);

    accesslog_fd = open_accesslog(cfg);
    if (accesslog_fd == -2) {
        sk_config_unref(cfg);
        return 1;
    }

    sk_srv.config = cfg;
    sk_generation_started(cfg, sk_srv.loop);
    sk_srv.started_at = time(NULL);
    sk_srv.nworkers = (size_t)cfg->workers;
    sk_plugins_set_process(sk_srv.loop, cfg->workers, sk_workers_post, sk_workers_running);
    sk_metrics_assign_rows(cfg);
    sk_srv.metrics = calloc(sk_srv.nworkers, sizeof(*sk_srv.metrics));
    if (!sk_srv.metrics) return 1;
    for (size_t i = 0; i < sk_srv.nworkers; i++) {
        sk_srv.metrics[i] = sk_metrics_new();
        if (!sk_srv.metrics[i]) {
            fprintf(stderr, "sidekick: out of memory\n");
            return 1;
        }
    }

    /* Block the signals we handle in every thread; only the main loop takes them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if ((cfg->admin_enabled && sk_admin_start(sk_srv.loop, cfg, &err) < 0) ||
        sk_workers_start(cfg, sk_srv.metrics, cfg->workers, accesslog_fd, &err) < 0) {
        fprintf(stderr, "sidekick: %s: %s\n", cfg->file, err ? err : "start-up failed");
        free(err);
        return 1;
    }
    ev_signal_init(&sig_term, on_signal, SIGTERM);
    ev_signal_init(&sig_int, on_signal, SIGINT);
    ev_signal_init(&sig_hup, on_signal, SIGHUP);
    ev_signal_init(&sig_usr1, on_signal, SIGUSR1);
    ev_signal_start(sk_srv.loop, &sig_term);
    ev_signal_start(sk_srv.loop, &sig_int);
    ev_signal_start(sk_srv.loop, &sig_hup);
    ev_signal_start(sk_srv.loop, &sig_usr1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);

    sk_certs_watch(sk_srv.loop, cfg);
    __atomic_store_n(&sk_srv.ready, 1, __ATOMIC_RELAXED);
    for (size_t i = 0; i < cfg->nlisteners; i++)
        sk_info("listener %s on %s (%s)", cfg->listeners[i]->name, cfg->listeners[i]->address.text,
                cfg->listeners[i]->protocol == SK_PROTO_TCP ? "tcp" : "http");
    sk_info("sidekick %s started: %d worker%s, admin %s", SK_VERSION, cfg->workers,
            cfg->workers == 1 ? "" : "s", cfg->admin_enabled ? cfg->admin.text : "off");

    ev_run(sk_srv.loop, 0);

    sk_clusters_health_stop(sk_srv.config);
    sk_admin_stop();
    sk_certs_stop();
    /* After a clean drain every worker released the generation: drop ours so
     * plugins are destroyed (their destroy() may flush state). Workers still
     * running past drain_timeout are abandoned: exit ends them. */
    if (sk_workers_running() == 0) {
        sk_config *cfg_done = sk_srv.config;
        sk_srv.config = NULL;
        sk_config_unref(cfg_done);
        for (size_t i = 0; i < nretired; i++) sk_config_unref(retired[i]);
        nretired = 0;
    }
    sk_tls_thread_exit();
    fflush(stdout);
    return 0;
}
