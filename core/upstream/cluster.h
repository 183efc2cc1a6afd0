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

#define SK_SOURCE_MAX 64 /* bytes of an endpoint's source name, NUL included */

/* One endpoint of a cluster, shared by every worker. */
typedef struct sk_endpoint {
    sk_addr address;            /* where to connect (immutable) */
    uint32_t weight;            /* 1..SK_WEIGHT_MAX, from the latest set naming it (atomic) */
    int health;                 /* enum sk_health (atomic) */
    bool ejected;               /* ejected by outlier detection (atomic) */
    uint64_t ejected_until_ms;  /* sk_now_ms() at which the ejection ends, 0 = none (atomic) */
    unsigned ejections;         /* times ejected so far (atomic) */
    unsigned active;            /* requests in flight to it, across workers (atomic) */
    char source[SK_SOURCE_MAX]; /* "static" or the discovery instance's name (main thread only) */
    int refcnt;                 /* references (atomic); freed at 0 */
} sk_endpoint;

/* An immutable endpoint set: what the cluster balances over at one version. */
typedef struct sk_endpoint_set {
    int refcnt;            /* references (atomic); freed at 0, dropping its endpoints */
    uint64_t version;      /* 1 for the first set of a cluster, +1 per replacement */
    uint64_t total_weight; /* sum of the endpoints' weights when the set was made */
    size_t n;              /* number of endpoints (may be 0) */
    sk_endpoint *eps[];    /* the endpoints (references), distinct addresses, in the given order */
} sk_endpoint_set;

/* The upstream layer's state of one cluster (sk_cluster.upstream). */
typedef struct sk_cluster_state {
    pthread_mutex_t lock; /* guards `set` for the swap and for taking a reference */
    sk_endpoint_set *set; /* the set in force (reference) */
    uint64_t version;     /* set->version, readable without the lock (atomic) */
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
 * weights (NULL: every weight 1), from `source` ("static" or an instance
 * name; NULL = "static"). An address of the set in force keeps its object
 * (its weight and source are updated); a repeated address counts once (the
 * first). Workers adopt the new set at their next pick. 0, or -1 on OOM
 * (the set in force stays).
 */
int sk_cluster_set_endpoints(sk_cluster *cl, const sk_addr *addrs, const uint32_t *weights, size_t n,
                             const char *source);

/* The set in force of cl with a reference the caller drops with
 * sk_endpoint_set_unref(), or NULL when cl has no upstream state yet.
 * Thread-safe (a short lock). */
sk_endpoint_set *sk_cluster_endpoints(const sk_cluster *cl);

/* The version of cl's set in force, without a lock; 0 when cl has no
 * upstream state. A worker compares it with the set it holds. */
uint64_t sk_cluster_version(const sk_cluster *cl);

#endif
