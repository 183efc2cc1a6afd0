/*
 * traffic.h — what the request layer's traffic management files share
 * (docs/traffic.md): the retry budget and backoff (retry.c) and request
 * mirroring (mirror.c), used by proxy.c. Internal to proxy/.
 */
#ifndef SK_TRAFFIC_H
#define SK_TRAFFIC_H

#include "codec.h"
#include "request.h"

/* Request body bytes kept for a retry or the mirror; a body that grows
 * past this is not replayed (and not mirrored). */
#define SK_REPLAY_MAX (64 * 1024)

/* Can r's body so far be sent again? Nothing of it was handed over yet, or
 * all of it is kept in r->replay. */
static inline bool sk__can_replay(const sk_request *r)
{
    return r->body_seen == 0 || (r->replay_keep && r->replay.len == r->body_seen);
}

/* --- retry.c --- */
/* A request that may be retried (its route has `retries`) goes to cl: a
 * deposit in its retry budget. Any worker. */
void sk__retry_budget_deposit(sk_cluster *cl);
/* A retry wants to go to cl: true (and counted) when its budget allows it —
 * retries over the last SK_RETRY_BUDGET_WINDOW seconds within
 * retry_budget of the requests, or one of retry_budget_min this second.
 * Any worker (lock-free). */
bool sk__retry_budget_take(sk_cluster *cl);
/* The wait before retry number `retry` (1 = the first) of route rt, in ms:
 * base × 2^(retry-1), capped at 10 × base, of which a random half
 * (rnd); 0 when rt has no retry_backoff. */
uint64_t sk__retry_backoff_ms(const sk_route *rt, unsigned retry, uint32_t rnd);

/* --- mirror.c --- */
/* Sends a copy of r (its head as built for the upstream in q, with
 * "-shadow" appended to the host, and its body from r->replay) to the
 * route's mirror cluster, on a connection of its own; its answer is read
 * and dropped. Counts the copy (sent, dropped, failed). Never fails r. */
void sk__mirror_send(sk_request *r, const sk_out_request *q);

#endif
