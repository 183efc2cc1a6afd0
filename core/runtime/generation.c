/*
 * generation.c — a configuration generation is the config layer's parse
 * plus the extension layer's plugins and scripts, and the upstream layer's
 * endpoint objects of every cluster; the runtime, above all three, puts
 * them together. Once published, a generation's clusters may wait for
 * their discovery instance (`wait_for_endpoints`): /ready asks
 * sk_generation_waiting(), and a main-loop timer logs the waits that run out.
 */
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "generation.h"
#include "health.h"
#include "loader.h"
#include "tls.h"

/* Loads a generation (see generation.h). */
sk_config *sk_config_load(const char *path, char **err)
{
    /* the extension layer's loaders, and the net layer's for [tls] sections */
    static sk_config_ext ops;
    if (!ops.instance_new) {
        ops = sk_ext_config_ops;
        ops.tls_load = sk_tls_load;
    }
    sk_config *c = sk_config_parse(path, &ops, err);
    if (!c) return NULL;
    /* A cluster that checks its upstream's chain and nothing else accepts any
     * certificate that ca signed: worth a word, not an error. */
    for (size_t i = 0; i < c->nclusters; i++) {
        const sk_tls *t = c->clusters[i]->tls;
        if (t && t->verify_client != SK_VERIFY_NONE && t->npeer_ids == 0 && !t->sni)
            sk_warn("%s: [cluster %s] checks its upstream's certificate against ca only: any certificate ca "
                    "signed is accepted (set peer_identity or sni in [tls %s])",
                    c->file, c->clusters[i]->name, t->name);
    }
    /* Each cluster's endpoint objects and first set, before any worker sees it. */
    if (sk_clusters_init(c) < 0) {
        sk_config_unref(c);
        if (err) *err = strdup("out of memory");
        return NULL;
    }
    return c;
}

/* The generation whose waits the timer watches (not a reference: it is the
 * running one, replaced here before any reload can retire it), and the
 * time up to which its run-out waits were logged. */
static struct {
    ev_timer timer;
    bool init;
    sk_config *cfg;
    uint64_t logged_until_ms;
} waits;

/* Whether cl waits for its first answer, and its deadline (sk_now_ms()). */
static bool waits_for(const sk_config *cfg, const sk_cluster *cl, uint64_t *deadline)
{
    if (!cl->discovery || !cl->wait_for_endpoints_ms || !cfg->started_ms) return false;
    const sk_discovery_state *d = sk_cluster_discovery(cl);
    if (d && d->answered) return false;
    *deadline = cfg->started_ms + cl->wait_for_endpoints_ms;
    return true;
}

/* Arms the timer for the next deadline after those logged, if any. */
static void waits_arm(struct ev_loop *loop)
{
    ev_timer_stop(loop, &waits.timer);
    uint64_t next = 0, dl;
    for (size_t i = 0; waits.cfg && i < waits.cfg->nclusters; i++)
        if (waits_for(waits.cfg, waits.cfg->clusters[i], &dl) && dl > waits.logged_until_ms &&
            (!next || dl < next))
            next = dl;
    if (!next) return;
    uint64_t now = sk_now_ms();
    ev_timer_set(&waits.timer, next > now ? (double)(next - now) / 1e3 : 0., 0.);
    ev_timer_start(loop, &waits.timer);
}

/* A wait ran out: one line for each cluster whose deadline passed without an answer. */
static void on_wait_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    SK_UNUSED(t);
    SK_UNUSED(revents);
    uint64_t now = sk_now_ms(), dl;
    for (size_t i = 0; waits.cfg && i < waits.cfg->nclusters; i++) {
        const sk_cluster *cl = waits.cfg->clusters[i];
        if (!waits_for(waits.cfg, cl, &dl) || dl <= waits.logged_until_ms || dl > now) continue;
        sk_endpoint_set *s = sk_cluster_endpoints(cl);
        sk_warn("cluster %s: no answer from [plugin %s] within wait_for_endpoints = %llums; /ready no longer "
                "waits for it (serving its %zu endpoint(s) until one comes)",
                cl->name, cl->discovery, (unsigned long long)cl->wait_for_endpoints_ms, s ? s->n : 0);
        sk_endpoint_set_unref(s);
    }
    waits.logged_until_ms = now;
    waits_arm(loop);
}

/* Starts cfg's waits (see generation.h). */
void sk_generation_started(sk_config *cfg, struct ev_loop *loop)
{
    cfg->started_ms = sk_now_ms();
    /* the active health checks are the running generation's */
    if (waits.cfg && waits.cfg != cfg) sk_clusters_health_stop(waits.cfg);
    if (sk_clusters_health_start(cfg, loop) < 0) sk_error("out of memory starting health checks");
    if (!waits.init) {
        ev_init(&waits.timer, on_wait_timer);
        waits.init = true;
    }
    waits.cfg = cfg;
    waits.logged_until_ms = 0;
    waits_arm(loop);
}

/* Whether cl holds /ready back (see generation.h). */
bool sk_generation_cluster_waits(const sk_config *cfg, const sk_cluster *cl, uint64_t *left_ms)
{
    uint64_t now = sk_now_ms(), dl;
    if (!cfg || !waits_for(cfg, cl, &dl) || now >= dl) return false;
    if (left_ms) *left_ms = dl - now;
    return true;
}

/* The first cluster holding /ready back (see generation.h). */
const sk_cluster *sk_generation_waiting(const sk_config *cfg, uint64_t *left_ms)
{
    for (size_t i = 0; cfg && i < cfg->nclusters; i++)
        if (sk_generation_cluster_waits(cfg, cfg->clusters[i], left_ms)) return cfg->clusters[i];
    return NULL;
}
