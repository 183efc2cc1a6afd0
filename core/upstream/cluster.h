/*
 * cluster.h — the upstream layer's model of a cluster: endpoints as shared,
 * reference-counted objects, and the endpoint set in force as an immutable,
 * reference-counted snapshot.
 *
 * The config parser (config/config.c) only turns `endpoints =` into
 * addresses; the objects here are made from them by sk_clusters_init() (the
 * runtime calls it after a load) and replaced by discovery through
 * sk_cluster_set_endpoints() (main thread). Workers take a reference on the
 * set in force when its version changed (a short lock) and then balance over
 * it without any lock. An endpoint that stays across a replacement (same
 * address) keeps its object, so its health, ejection state and counters
 * survive; one that leaves is freed when the last set or pool holding it
 * lets go.
 *
 * Reference holders of an sk_endpoint: every set that contains it, and every
 * worker pool (upstream/pool.h) that serves it. Of an sk_endpoint_set: the
 * cluster while it is in force, and every worker that adopted it.
 */
#ifndef SK_CLUSTER_H
#define SK_CLUSTER_H

#include <pthread.h>
#include <stdint.h>

#include "config.h"

/* Health of an endpoint by its active checks (upstream/health.c). */
enum sk_health {
    SK_HEALTH_UNKNOWN = 0, /* not checked (yet, or no health_check): counts as healthy */
    SK_HEALTH_HEALTHY,     /* passed healthy_threshold checks in a row (or its first one) */
    SK_HEALTH_UNHEALTHY,   /* failed unhealthy_threshold checks in a row, or health_initial = unhealthy
                            * and not passed yet */
};

#define SK_SOURCE_MAX        17     /* bytes of a set's source name, NUL included */
#define SK_STATE_MESSAGE_MAX 256    /* bytes of a discovery state message kept */
#define SK_EJECTION_MAX_MS   300000 /* an outlier ejection lasts at most this long */

/* One endpoint of a cluster, shared by every worker. Its weight and source
 * belong to the sets that name it (a set is immutable, an endpoint object
 * is shared by consecutive sets). Fields marked atomic are read and
 * written with __atomic builtins from any thread. */
typedef struct sk_endpoint {
    sk_addr address;           /* where to connect (immutable) */
    int health;                /* enum sk_health (atomic; the main thread's checks write it) */
    uint64_t ejected_until_ms; /* sk_now_ms() at which the current ejection ends: ejected while the
                                * clock is below it; 0 = never ejected (atomic) */
    uint64_t ejection_ms;      /* length of the current (or last) ejection (atomic) */
    unsigned ejections;        /* times ejected so far (atomic) */
    unsigned eject_level;      /* multiplier of the next ejection's length, less one (under the cluster's
                                * eject_lock) */
    unsigned failures;         /* consecutive failed attempts (outlier detection; atomic) */
    unsigned hc_passes;        /* active checks passed in a row (atomic; the main thread writes) */
    unsigned hc_failures;      /* active checks failed in a row (atomic; the main thread writes) */
    uint64_t added_ms;         /* sk_now_ms() when it joined a cluster that already had endpoints (slow
                                * start counts from here); 0 = one of the cluster's first (immutable) */
    uint64_t ewma_ns;          /* lb = ewma: peak EWMA of its attempts' latency, in ns (atomic) */
    uint64_t ewma_stamp_ns;    /* sk_now_ns() of the estimate's last update, 0 = none (atomic) */
    unsigned active;           /* requests in flight to it, across workers (atomic) */
    int refcnt;                /* references (atomic); freed at 0 */
    size_t metrics_row;        /* its (cluster, address) row of upstream counters (obs/metrics.h),
                                * held while the object lives (immutable) */
} sk_endpoint;

struct sk_ring;
struct sk_health_checks;

/* An immutable endpoint set: what the cluster balances over at one
 * version, with the weights the balancers use. */
typedef struct sk_endpoint_set {
    int refcnt;                 /* references (atomic); freed at 0, dropping its endpoints */
    uint64_t version;           /* 1 for the first set of a cluster, +1 per replacement */
    uint64_t total_weight;      /* sum of the weights */
    bool uniform;               /* every endpoint has the same weight (or the set is empty) */
    char source[SK_SOURCE_MAX]; /* where the set came from: "static", "plugin", or what
                                 * set_endpoints_from said ("dns", "file", ...) */
    const uint32_t *weights;    /* weights[i] of eps[i], 1..SK_WEIGHT_MAX (same allocation) */
    const uint64_t *cum;        /* cum[i] = weights[0] + ... + weights[i], for weighted draws */
    const struct sk_ring *ring; /* lb = ring_hash: the hash ring of these endpoints (ring_hash.c), NULL
                                 * otherwise (or on OOM: round robin then) */
    size_t n;                   /* number of endpoints (may be 0) */
    sk_endpoint *eps[];         /* the endpoints (references), distinct addresses, in the given order */
} sk_endpoint_set;

/* What a cluster's discovery instance said last (main thread only: the
 * plugin host writes it, the admin endpoint reads it). */
typedef struct sk_discovery_state {
    bool answered;                          /* a set was published since the load, or carried over */
    bool carried;                           /* the set and this state come from the previous
                                             * generation; the instance has not answered yet */
    bool stale;                             /* the last sk_cluster_set_state said "not current" */
    char message[SK_STATE_MESSAGE_MAX + 1]; /* the last state message, "" = none */
    int64_t last_update;                    /* wall clock (unix seconds) of the last set, 0 = none */
    uint64_t last_update_ms;                /* sk_now_ms() of it */
} sk_discovery_state;

/* What a cluster counted since the process started, kept by cluster name
 * across reloads (the generation's state points at it). Atomics. */
typedef struct sk_cluster_stats {
    uint64_t ejections;        /* outlier ejections (the series is obs/metrics.c's SK_MC_EJECTIONS) */
    uint64_t checks_passed;    /* active health checks that passed */
    uint64_t checks_failed;    /* ... that failed */
    uint64_t became_healthy;   /* endpoints that became healthy by their checks */
    uint64_t became_unhealthy; /* endpoints that became unhealthy by their checks */
    uint64_t panics;           /* times the cluster went into panic (panic_threshold) */
    char name[];               /* the cluster's name */
} sk_cluster_stats;

/* The upstream layer's state of one cluster (sk_cluster.upstream). */
typedef struct sk_cluster_state {
    pthread_mutex_t lock;            /* guards `set` for the swap and for taking a reference */
    sk_endpoint_set *set;            /* the set in force (reference) */
    uint64_t version;                /* set->version, readable without the lock (atomic) */
    uint64_t health_gen;             /* +1 at every change of an endpoint's health or ejection, so workers
                                      * know to look again (atomic) */
    pthread_mutex_t eject_lock;      /* one ejection decision at a time (max_ejection_percent) */
    int panic;                       /* the cluster is in panic: the last state a worker saw (atomic) */
    sk_cluster_stats *stats;         /* its counters (never freed; NULL on OOM) */
    struct sk_health_checks *health; /* its active checks (main thread), NULL when not running */
    sk_discovery_state discovery;    /* main thread only */
} sk_cluster_state;

/* How the active checks (health.c) follow a cluster's set and stop; set
 * by health.c when it starts checks, so this file needs none of it. */
typedef struct sk_health_hooks {
    void (*sync)(sk_cluster *cl);       /* the set in force changed (main thread) */
    void (*free)(sk_cluster_state *st); /* the cluster's state is freed */
} sk_health_hooks;
extern const sk_health_hooks *sk__health_hooks;

/* Takes a reference on an endpoint. Thread-safe. */
void sk_endpoint_ref(sk_endpoint *e);
/* Drops a reference; frees the endpoint at zero. Thread-safe. NULL is ignored. */
void sk_endpoint_unref(sk_endpoint *e);
/* Whether the balancers may send to e: not unhealthy and not ejected. */
bool sk_endpoint_healthy(const sk_endpoint *e);
/* The same at time now_ms (sk_now_ms()). */
bool sk_endpoint_usable(const sk_endpoint *e, uint64_t now_ms);
/* Whether e is ejected by outlier detection at now_ms. */
bool sk_endpoint_ejected(const sk_endpoint *e, uint64_t now_ms);

/* Takes a reference on a set. Thread-safe. */
void sk_endpoint_set_ref(sk_endpoint_set *s);
/* Drops a reference; frees the set and drops its endpoints at zero.
 * Thread-safe. NULL is ignored. */
void sk_endpoint_set_unref(sk_endpoint_set *s);

/*
 * Gives every cluster of a freshly loaded cfg its upstream state, with the
 * static endpoints as its first set (source "static"), unless discovery
 * already set one during the load. Main thread, before cfg is published to
 * workers. The state is freed with the config. 0, or -1 on OOM.
 */
int sk_clusters_init(sk_config *cfg);

/*
 * Replaces the endpoint set of cl (main thread): n addresses with their
 * weights (NULL: every weight 1), from `source` (see sk_endpoint_set;
 * NULL = "static"). An address of the set in force keeps its object; a
 * repeated address counts once (the first, with its weight). Workers adopt
 * the new set at their next pick. This is the cluster's answer from
 * discovery: its state becomes answered and current (not stale, no
 * message), stamped with the time (sk_discovery_state). 0, or -1 on OOM
 * (the set and state in force stay).
 */
int sk_cluster_set_endpoints(sk_cluster *cl, const sk_addr *addrs, const uint32_t *weights, size_t n,
                             const char *source);

/* Records what discovery says of cl's set (main thread): current (ok) or
 * stale, with a message (NULL = none; at most SK_STATE_MESSAGE_MAX bytes
 * kept, bytes outside printable ASCII become '?'). The set stays. 0, or -1
 * when cl has no upstream state (OOM at its creation). */
int sk_cluster_set_state(sk_cluster *cl, bool ok, const char *message);

/* cl's discovery state, or NULL without upstream state. Main thread. */
const sk_discovery_state *sk_cluster_discovery(const sk_cluster *cl);

/*
 * A reload keeps discovery's answers (main thread, after `next` was loaded,
 * before it is published): each cluster of next whose `discovery = NAME
 * ARG` line equals that of the cluster of the same name in prev, and whose
 * new instance has not answered during the load, starts with a copy of
 * prev's set in force (addresses, weights, source) and discovery state,
 * provided prev's cluster had an answer (its own or carried). Until the new
 * instance answers, the state says `carried`. Returns the number of
 * clusters carried over, or -1 on OOM (what was carried stays).
 */
int sk_clusters_carry_over(sk_config *next, const sk_config *prev);

/*
 * A reload keeps what was learnt of the endpoints (main thread, after
 * sk_clusters_carry_over, before next is published): each endpoint of a
 * cluster of next whose cluster of the same name in prev has an endpoint
 * at the same address takes over its health and checks in a row (when both
 * clusters check the same health_check path), its ejection and failure
 * count (when both do outlier detection), its ewma estimate (both ewma)
 * and its slow-start arrival. So a reload neither sends traffic to an
 * endpoint known to be down nor forgets an ejection.
 */
void sk_clusters_inherit(sk_config *next, const sk_config *prev);

/* Appends the clusters' series of cfg in Prometheus text format:
 * sidekick_cluster_endpoints{cluster,source} (every cluster),
 * sidekick_cluster_discovery_age_seconds{cluster} (discovery clusters with
 * an answer), sidekick_cluster_panic{cluster} and
 * sidekick_cluster_panics_total{cluster} (every cluster),
 * sidekick_health_checks_total{cluster,result} and
 * sidekick_health_transitions_total{cluster,to} (clusters with
 * health_check). Main thread. 0, or -1 on OOM. */
int sk_clusters_render_prometheus(sk_buf *out, const sk_config *cfg);

/* The set in force of cl with a reference the caller drops with
 * sk_endpoint_set_unref(), or NULL when cl has no upstream state yet.
 * Thread-safe (a short lock). */
sk_endpoint_set *sk_cluster_endpoints(const sk_cluster *cl);

/* The version of cl's set in force, without a lock; 0 when cl has no
 * upstream state. A worker compares it with the set it holds. */
uint64_t sk_cluster_version(const sk_cluster *cl);

/* ---- outlier detection and what balancers learn (outlier.c) ---- */

/*
 * One attempt of a request to e (an endpoint of cl) is over: `failed` when
 * it was a gateway failure (connect failure, reset, timeout, invalid
 * response, 5xx), else it got a response; latency_ns from the attempt's
 * start to the response head (or the failure). Feeds lb = ewma's latency
 * estimate and outlier detection: outlier_failures failures in a row eject
 * e (within max_ejection_percent), a response resets the count. Any
 * thread; lock-free unless an ejection is decided. Returns true when this
 * report ejected e (the caller counts it in its thread's metrics).
 */
bool sk_cluster_report(sk_cluster *cl, sk_endpoint *e, bool failed, uint64_t latency_ns);

/* Ends e's ejection at once (an active check passed). Main thread. */
void sk__endpoint_uneject(sk_cluster *cl, sk_endpoint *e);

/* Marks that an endpoint's health or ejection of cl changed (workers
 * recompute which endpoints may get traffic). Any thread. */
void sk__cluster_health_changed(sk_cluster *cl);

/* Whether cl is in panic with `set` at now_ms: fewer than panic_threshold
 * percent of its endpoints usable (or none, with a threshold above 0).
 * *usable gets their number. Records a change of state (logged and counted
 * once per transition, whichever thread sees it first). Any thread. */
bool sk_cluster_check_panic(sk_cluster *cl, const sk_endpoint_set *set, uint64_t now_ms, size_t *usable);

/* What /clusters shows of one endpoint (see docs/operations.md). */
typedef struct sk_endpoint_status {
    const char *health;        /* "unknown", "healthy" or "unhealthy" */
    bool usable;               /* healthy and not ejected */
    bool ejected;              /* ejected now */
    uint64_t ejected_until_ms; /* sk_now_ms() at which the ejection ends, 0 = not ejected */
    uint64_t ejection_ms;      /* length of the current or last ejection, 0 = never */
    unsigned ejections;        /* ejections so far */
    unsigned failures;         /* consecutive failed attempts */
    unsigned hc_passes;        /* checks passed in a row */
    unsigned hc_failures;      /* checks failed in a row */
    unsigned active;           /* requests in flight */
    uint32_t weight;           /* weight in the set */
    double effective_weight;   /* weight × slow-start ramp (equal to weight when not ramping) */
    double ewma_ms;            /* lb = ewma: the decayed latency estimate, ms (-1 = no sample yet) */
    double ewma_score;         /* lb = ewma: estimate × (active + 1) / weight, what the balancer compares */
} sk_endpoint_status;

/* Fills *out for set->eps[i] of cl at now_ms. Any thread. */
void sk_endpoint_status_of(const sk_cluster *cl, const sk_endpoint_set *set, size_t i, uint64_t now_ms,
                           sk_endpoint_status *out);

/* The slow-start factor of e at now_ms: 1 when not ramping, else from
 * SK_SLOW_START_MIN up to 1 linearly over cl's slow_start. */
double sk_endpoint_ramp(const sk_cluster *cl, const sk_endpoint *e, uint64_t now_ms);
#define SK_SLOW_START_MIN 0.1

#endif
