/*
 * fuzz_config.c — libFuzzer target for the config loader (config.c and the
 * inih parser under it): the input is written to a file and loaded with
 * sk_config_load(); a loaded config must be freeable, a refused one must
 * come with a message. Nothing is bound or started: loading only validates.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "generation.h"
#include "server.h"

/* main.c is not part of sidekick_core: admin.c needs these two. */
sk_server sk_srv;
void sk_server_drain(void) {}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[] = "/tmp/sk-fuzz-config-XXXXXX";
static char path[sizeof(dir) + 16];

static void cleanup(void)
{
    unlink(path);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (path[0]) return 0;
    if (!mkdtemp(dir)) {
        fprintf(stderr, "fuzz_config: mkdtemp: %s\n", strerror(errno));
        abort();
    }
    snprintf(path, sizeof(path), "%s/fuzz.ini", dir);
    atexit(cleanup);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LLVMFuzzerInitialize(NULL, NULL);
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (size && fwrite(data, 1, size, f) != size) abort();
    if (fclose(f) != 0) abort();

    char *err = NULL;
    sk_config *cfg = sk_config_load(path, &err);
    if (cfg) {
        if (err) abort(); /* success leaves no message */
        /* Touch what a loaded config promises: every listed object exists. */
        for (size_t i = 0; i < cfg->nlisteners; i++)
            if (!cfg->listeners[i] || !cfg->listeners[i]->name) abort();
        for (size_t i = 0; i < cfg->nroutes; i++)
            if (!cfg->routes[i] || !cfg->routes[i]->listener) abort();
        for (size_t i = 0; i < cfg->nclusters; i++)
            if (!cfg->clusters[i] || cfg->clusters[i]->nendpoints == 0) abort();
        /* And route with it: the router sees exactly what the loader built. */
        static const sk_header hdrs[] = {{"X-Fuzz", 6, "yes", 3}, {"host", 4, "a.example.com", 13}};
        for (size_t i = 0; i < cfg->nlisteners; i++) {
            const sk_listener *l = cfg->listeners[i];
            sk_route_match(l, "GET", 3, "a.example.com", 13, "/api/x", 6, hdrs, 2);
            sk_route_match(l, "POST", 4, "", 0, "/", 1, NULL, 0);
        }
        for (size_t i = 0; i < cfg->nroutes; i++) {
            const sk_route *r = cfg->routes[i];
            if (r->nclusters == 0) continue;
            if (!sk_route_pick_cluster(r, 0) || !sk_route_pick_cluster(r, UINT32_MAX)) abort();
        }
        sk_config_ref(cfg);
        sk_config_unref(cfg);
        sk_config_unref(cfg);
    } else {
        if (!err) abort(); /* a refusal always says why */
        if (getenv("SK_FUZZ_VERBOSE")) fprintf(stderr, "refused: %s\n", err);
        free(err);
    }
    return 0;
}
