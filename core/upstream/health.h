/*
 * health.h — active health checks of the endpoints of clusters with
 * `health_check` (health.c): an HTTP/1.1 GET of that path to every
 * endpoint of the set in force, from the main thread, on a new connection
 * each time (over the cluster's TLS when it has `tls`), every
 * health_interval with jitter. A 2xx answer within health_timeout passes;
 * anything else fails. healthy_threshold passes in a row make an unhealthy
 * endpoint healthy, unhealthy_threshold failures in a row make it
 * unhealthy; a pass also ends an outlier ejection. The result lives in the
 * shared endpoint object, so every worker sees it at its next pick.
 *
 * The runtime starts a generation's checks when it becomes the running one
 * and stops them when it is replaced (runtime/generation.c); the checks
 * follow the cluster's set: an endpoint that appears is checked at once,
 * one that leaves is no longer checked.
 */
#ifndef SK_HEALTH_H
#define SK_HEALTH_H

#include <ev.h>
#include <llhttp.h>

#include "cluster.h"

/* Starts the checks of every cluster of cfg with `health_check` on loop
 * (the main loop): each endpoint is checked at once. Main thread. 0, or -1
 * on OOM (the clusters without their checks are logged). */
int sk_clusters_health_start(sk_config *cfg, struct ev_loop *loop);
/* Stops them (checks in progress are abandoned, their results dropped). Main thread. */
void sk_clusters_health_stop(sk_config *cfg);

/* Reading a check's response: the status of the first final (non-1xx)
 * response head. */
typedef struct sk_health_parse {
    llhttp_t parser;
    llhttp_settings_t settings;
    int status;  /* the final status, 0 until known */
    size_t seen; /* bytes fed so far */
} sk_health_parse;

#define SK_HEALTH_HEAD_MAX 65536 /* bytes of response heads read at most */

/* Starts reading a response. */
void sk_health_parse_init(sk_health_parse *hp);
/* Feeds n bytes of the response: the final status (100..999) once known,
 * 0 when more is needed, -1 when the bytes are not an HTTP/1 response or
 * the heads pass SK_HEALTH_HEAD_MAX. */
int sk_health_parse_feed(sk_health_parse *hp, const char *p, size_t n);

#endif
