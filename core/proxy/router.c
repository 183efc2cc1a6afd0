/*
 * router.c — picks the route of a request and the cluster of a route.
 *
 * Routes of a listener are tried in file order and the first match wins
 * (the order of sk_listener.routes). Every condition a route sets must hold:
 * host (exact or "*.suffix", case-insensitive), prefix or exact path,
 * method, and each header condition. Nothing here allocates.
 */
#include <string.h>
#include <strings.h>

#include "config.h"

/* Does the request host (any case, no port) satisfy the route's `host`? */
static bool host_matches(const char *want, const char *host, size_t host_len)
{
    if (!want) return true;
    if (!host) return false;
    if (want[0] == '*' && want[1] == '.') {
        /* "*.example.com": any host ending in ".example.com" with at least one
         * character before the dot; "example.com" itself does not match. */
        size_t sl = strlen(want + 1);
        return host_len > sl && strncasecmp(host + host_len - sl, want + 1, sl) == 0;
    }
    return sk_streq_nocase(host, host_len, want);
}

static bool path_matches(const sk_route *r, const char *path, size_t path_len)
{
    if (r->path) return path_len == strlen(r->path) && memcmp(path, r->path, path_len) == 0;
    if (r->prefix) {
        size_t pl = strlen(r->prefix);
        return path_len >= pl && memcmp(path, r->prefix, pl) == 0;
    }
    return true;
}

static bool method_matches(const sk_route *r, const char *method, size_t method_len)
{
    if (r->nmethods == 0) return true;
    for (size_t i = 0; i < r->nmethods; i++)
        if (strlen(r->methods[i]) == method_len && memcmp(r->methods[i], method, method_len) == 0)
            return true;
    return false;
}

static bool headers_match(const sk_route *r, const sk_header *headers, size_t nheaders)
{
    for (size_t i = 0; i < r->nheaders; i++) {
        const sk_header_match *m = &r->headers[i];
        bool found = false;
        for (size_t j = 0; j < nheaders && !found; j++) {
            const sk_header *h = &headers[j];
            if (!sk_streq_nocase(h->name, h->name_len, m->name)) continue;
            found = !m->value ||
                    (h->value_len == strlen(m->value) && memcmp(h->value, m->value, h->value_len) == 0);
        }
        if (!found) return false;
    }
    return true;
}

/*
 * Returns the first route of `l` (file order) whose conditions all hold for
 * the request, or NULL (the caller answers 404 no_route). `host` may be NULL
 * when the request has none; then only routes without `host` match. The
 * returned route is owned by the listener's config.
 */
const sk_route *sk_route_match(const sk_listener *l, const char *method, size_t method_len, const char *host,
                               size_t host_len, const char *path, size_t path_len, const sk_header *headers,
                               size_t nheaders)
{
    if (!l) return NULL;
    if (!path) path_len = 0;
    if (!method) method_len = 0;
    for (size_t i = 0; i < l->nroutes; i++) {
        const sk_route *r = l->routes[i];
        if (!host_matches(r->host, host, host_len)) continue;
        if (!path_matches(r, path ? path : "", path_len)) continue;
        if (!method_matches(r, method ? method : "", method_len)) continue;
        if (!headers_match(r, headers, nheaders)) continue;
        return r;
    }
    return NULL;
}

/*
 * Picks one of the route's clusters with probability weight / total_weight,
 * using `rnd % total_weight` (so any uniform 32-bit value will do). Returns
 * NULL for a route without clusters (a `respond` route).
 */
sk_cluster *sk_route_pick_cluster(const sk_route *r, uint32_t rnd)
{
    if (!r || r->nclusters == 0) return NULL;
    if (r->nclusters == 1 || r->total_weight == 0) return r->clusters[0].cluster;
    uint32_t x = rnd % r->total_weight;
    for (size_t i = 0; i < r->nclusters; i++) {
        if (x < r->clusters[i].weight) return r->clusters[i].cluster;
        x -= r->clusters[i].weight;
    }
    return r->clusters[r->nclusters - 1].cluster; /* not reached: weights add up to total */
}
