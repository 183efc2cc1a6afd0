/*
 * retry.c — the retry budget of a cluster and the backoff between tries.
 *
 * The budget (Finagle's RetryBudget, Linkerd's retry budget) keeps a
 * failing upstream from a retry storm: over a sliding window of
 * SK_RETRY_BUDGET_WINDOW seconds, retries may be `retry_budget` of the
 * requests sent to the cluster, plus `retry_budget_min` per second so that
 * a quiet cluster can still retry. Its counters live in the cluster (one
 * generation; a reload starts a fresh window) and are shared by every
 * worker: each slot of the window is one 64-bit word, the second in the
 * high half and the count in the low half, updated with compare-and-swap,
 * so no lock is taken and a slot of an old second restarts at 1.
 */
#include "traffic.h"

static uint32_t now_s(void)
{
    return (uint32_t)(sk_now_ms() / 1000);
}

static uint64_t pack(uint32_t sec, uint32_t n)
{
    return ((uint64_t)sec << 32) | n;
}

/* The count of slot value v if it belongs to second `sec`, else 0. */
static uint32_t count_at(uint64_t v, uint32_t sec)
{
    return (uint32_t)(v >> 32) == sec ? (uint32_t)v : 0;
}

/* Sum of the window's slots other than `skip` (SK_RETRY_BUDGET_WINDOW = none) still inside the window at
 * `now`. */
static uint64_t window_sum(const uint64_t *slots, uint32_t now, unsigned skip)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < SK_RETRY_BUDGET_WINDOW; i++) {
        if (i == skip) continue;
        uint64_t v = __atomic_load_n(&slots[i], __ATOMIC_RELAXED);
        if (now - (uint32_t)(v >> 32) < SK_RETRY_BUDGET_WINDOW) sum += (uint32_t)v;
    }
    return sum;
}

/* Adds one to the slot of second `now` when `others` + its count + 1 stays
 * within `limit`. True when added. */
static bool slot_take(uint64_t *slot, uint32_t now, uint64_t others, uint64_t limit)
{
    uint64_t v = __atomic_load_n(slot, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t cur = count_at(v, now);
        if (others + cur + 1 > limit || cur == UINT32_MAX) return false;
        if (__atomic_compare_exchange_n(slot, &v, pack(now, cur + 1), true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return true;
    }
}

/* A request goes to cl (see traffic.h). */
void sk__retry_budget_deposit(sk_cluster *cl)
{
    if (cl->retry_budget_ppm == SK_RETRY_BUDGET_OFF) return;
    uint32_t now = now_s();
    slot_take(&cl->budget_requests[now % SK_RETRY_BUDGET_WINDOW], now, 0, UINT64_MAX);
}

/* A retry wants to go to cl (see traffic.h). */
bool sk__retry_budget_take(sk_cluster *cl)
{
    if (cl->retry_budget_ppm == SK_RETRY_BUDGET_OFF) return true;
    uint32_t now = now_s();
    unsigned i = now % SK_RETRY_BUDGET_WINDOW;
    uint64_t requests = window_sum(cl->budget_requests, now, SK_RETRY_BUDGET_WINDOW);
    uint64_t allowed = requests * cl->retry_budget_ppm / SK_PPM;
    if (allowed && slot_take(&cl->budget_retries[i], now, window_sum(cl->budget_retries, now, i), allowed))
        return true;
    return slot_take(&cl->budget_min_used, now, 0, cl->retry_budget_min);
}

/* The wait before a retry (see traffic.h): "equal jitter", so that every
 * retry waits at least half its step while those of many requests spread. */
uint64_t sk__retry_backoff_ms(const sk_route *rt, unsigned retry, uint32_t rnd)
{
    uint64_t base = rt->retry_backoff_ms;
    if (!base) return 0;
    uint64_t cap = base * 10, step = base;
    for (unsigned i = 1; i < retry && step < cap; i++) step *= 2;
    if (step > cap) step = cap;
    return step / 2 + rnd % (step - step / 2 + 1);
}
