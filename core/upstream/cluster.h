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

/* Health of an endpoint (active checks come with the traffic issue). */
enum sk_health {
    SK_HEALTH_UNKNOWN = 0, /* never checked: counts as healthy */
    SK_HEALTH_HEALTHY,     /* passed its checks */
    SK_HEALTH_UNHEALTHY,   /* failed its checks */
};

#define SK_SOURCE_MAX        17  /* bytes of a set's source name, NUL included */
#define SK_STATE_MESSAGE_MAX 256 /* bytes of a discovery state message kept */

/* One endpoint of a cluster, shared by every worker. Its weight and source
 * belong to the sets that name it (a set is immutable, an endpoint object
 * is shared by consecutive sets). */
typedef struct sk_endpoint {
    sk_addr address;           /* where to connect (immutable) */
    int health;                /* enum sk_health (atomic) */
    bool ejected;              /* ejected by outlier detection (atomic) */
    uint64_t ejected_until_ms; /* sk_now_ms() at which the ejection ends, 0 = none (atomic) */
    unsigned ejections;        /* times ejected so far (atomic) */
    unsigned active;           /* requests in flight to it, across workers (atomic) */
    int refcnt;                /* references (atomic); freed at 0 */
    size_t metrics_row;        /* its (cluster, address) row of upstream counters (obs/metrics.h),
                                * held while the object lives (immutable) */
} sk_endpoint;

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

/* The upstream layer's state of one cluster (sk_cluster.upstream). */
typedef struct sk_cluster_state {
    pthread_mutex_t lock;         /* guards `set` for the swap and for taking a reference */
    sk_endpoint_set *set;         /* the set in force (reference) */
    uint64_t version;             /* set->version, readable without the lock (atomic) */
    sk_discovery_state discovery; /* main thread only */
} sk_cluster_state;

/* Takes a reference on an endpoint. Thread-safe. */
void sk_endpoint_ref(sk_endpoint *e);
/* Drops a reference; frees the endpoint at zero. Thread-safe. NULL is ignored. */
void sk_endpoint_unref(sk_endpoint *e);
/* Whether the balancers may send to e: not unhealthy and not ejected. */
bool sk_endpoint_healthy(const sk_endpoint *e);

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

/* Appends the clusters' series of cfg in Prometheus text format:
 * sidekick_cluster_endpoints{cluster,source} (every cluster) and
 * sidekick_cluster_discovery_age_seconds{cluster} (discovery clusters with
 * an answer). Main thread. 0, or -1 on OOM. */
int sk_clusters_render_prometheus(sk_buf *out, const sk_config *cfg);

/* The set in force of cl with a reference the caller drops with
 * sk_endpoint_set_unref(), or NULL when cl has no upstream state yet.
 * Thread-safe (a short lock). */
sk_endpoint_set *sk_cluster_endpoints(const sk_cluster *cl);

/* The version of cl's set in force, without a lock; 0 when cl has no
 * upstream state. A worker compares it with the set it holds. */
uint64_t sk_cluster_version(const sk_cluster *cl);

#endif
