/*
 * dns.c — source = dns of discovery.so: a cluster's endpoints from DNS,
 * looked up with c-ares on the main loop.
 *
 *     [plugin dns]
 *     source = dns
 *     resolver = 127.0.0.1:5353     IP:PORT list (port required); default /etc/resolv.conf
 *     min_interval = 1s             refresh at the record TTL, at least this
 *     max_interval = 60s            ... and at most this; the failure backoff's cap too
 *     stale_after = 5m              NXDOMAIN this long in a row → cluster emptied
 *     family = any                  any (A and AAAA) | ipv4 (A) | ipv6 (AAAA)
 *
 *     [cluster api]
 *     discovery = dns api.shop.svc.cluster.local:8080     A/AAAA, this port
 *     discovery = dns _http._tcp.api.shop.svc.cluster.local  SRV
 *
 * ARG NAME:PORT looks up A and AAAA (per `family`); ARG starting with '_'
 * (_service._proto.name) looks up SRV, then A/AAAA of each target. Names
 * are queried as given (ares_query: no search domains, no /etc/hosts).
 *
 * SRV: a target "." (or an empty name) means "no service" and contributes
 * nothing; a record with port 0 is skipped with a log line; only the lowest
 * priority group with at least one resolved target serves (the next group
 * when none of its targets resolves); weights are mapped by dsc_srv_weight
 * (parse.c): the heaviest target of the group gets 10000, the others their
 * share of it, weight 0 the smallest share (1), never excluded; a target's
 * weight is divided among its addresses. Its port comes from the record.
 *
 * Rounds: each cluster has one lookup round at a time. A round succeeds when
 * every query of it got an answer (data or NODATA); a NODATA answer (or SRV
 * targets that all have no address) empties the cluster at once. The next
 * round starts after the smallest TTL seen, clamped to
 * min_interval..max_interval. A failed round (timeout, SERVFAIL, REFUSED,
 * connection refused, a malformed answer) keeps the last good endpoints
 * (dsc_stale) and retries after dsc_backoff_ms: min_interval doubled per
 * failure in a row up to max_interval. NXDOMAIN backs off the same way;
 * once the name has been NXDOMAIN for stale_after without a successful
 * answer between (failures do not end the run), the cluster is emptied (503
 * no_healthy_upstream); retries go on at the backoff.
 *
 * All clusters of an instance share one ares channel. Its sockets are
 * watched with watch_fd on the main loop (ARES_OPT_SOCK_STATE_CB) and its
 * timeouts driven by one main-loop timer set from ares_timeout(); nothing
 * blocks. Each query times out after DNS_TIMEOUT_MS and is tried DNS_TRIES
 * times per server (c-ares moves on to the next server on SERVFAIL/REFUSED).
 */
#include "discovery.h"

#include <ares.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define DNS_TIMEOUT_MS  1000 /* one try of a query */
#define DNS_TRIES       2    /* per server */
#define DNS_MAX_SERVERS 8
#define DNS_MAX_ADDRS   256 /* addresses kept from one A or AAAA answer */
#define DNS_MAX_TARGETS 64  /* SRV records of one answer */
#define MIN_INTERVAL_MS 100 /* the smallest min_interval accepted */

enum { FAM_ANY = 0, FAM_V4 = 4, FAM_V6 = 6 };

/* An fd of the channel and its watch. */
typedef struct dsock {
    int fd;
    int events; /* SK_EV_READ | SK_EV_WRITE */
    sk_watch *w;
} dsock;

/* The instance: one channel for every cluster. */
typedef struct dsrc {
    dsc_inst *in;
    ares_channel ch;
    int have_ch;
    int closing;
    dsock *socks;
    size_t nsocks, capsocks;
    sk_timer *tick; /* ares timeouts */
    uint64_t min_ms, max_ms, stale_ms;
    int family;
    dsc_hostport servers[DNS_MAX_SERVERS];
    size_t nservers;
} dsrc;

/* A target of an SRV answer and what its lookups found. */
typedef struct dtarget {
    char *name;
    unsigned priority, weight, port;
    dsc_eplist addrs; /* addresses with this target's port */
} dtarget;

/* Outcome of a round so far. */
enum { R_OK = 0, R_NXDOMAIN = 1, R_FAILED = 2 };

/* A cluster's lookups. */
typedef struct dcl {
    dsc_cluster *cl;
    char name[256]; /* NAME without the port (SRV: the whole ARG) */
    unsigned port;  /* NAME:PORT; 0 for SRV */
    int srv;
    sk_timer *timer; /* the next round */
    /* the round in progress */
    int pending;   /* queries in flight (+1 while queries are being started) */
    int outcome;   /* R_* (the worst so far: FAILED > NXDOMAIN > OK) */
    char why[320]; /* of the first failure */
    uint32_t ttl;  /* smallest TTL seen */
    int have_ttl;
    dsc_eplist acc; /* NAME:PORT: the addresses found */
    dtarget *targets;
    size_t ntargets;
    /* across rounds */
    unsigned failures; /* failed or NXDOMAIN rounds in a row */
    uint64_t nx_since; /* start of the NXDOMAIN run (ms), 0 = none */
    int emptied;       /* emptied by stale_after during this run */
    int logged_port0;  /* SRV port 0 logged (once per run of such answers) */
    uint64_t round_ms; /* when the round started */
} dcl;

/* One query's callback argument. */
typedef struct dq {
    dcl *c;
    int type;   /* T_A / T_AAAA / T_SRV (ns_t_*) */
    int target; /* index in c->targets, or -1 for the cluster's name */
} dq;

#define QT_A    1
#define QT_AAAA 28
#define QT_SRV  33
#define QC_IN   1

static void start_round(dcl *c);
static void arm_tick(dsrc *s);

static dsrc *src_of(dsc_inst *in)
{
    return in->priv;
}

/* ---- the channel's sockets and timeouts on the main loop ---- */

static void on_sock(void *arg, int fd, int events)
{
    dsrc *s = arg;
    ares_process_fd(s->ch, (events & SK_EV_READ) ? fd : ARES_SOCKET_BAD,
                    (events & SK_EV_WRITE) ? fd : ARES_SOCKET_BAD);
    arm_tick(s);
}

/* ARES_OPT_SOCK_STATE_CB: what c-ares wants to hear about fd. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    dsrc *s = data;
    const sk_host_api *h = s->in->host;
    int events = (readable ? SK_EV_READ : 0) | (writable ? SK_EV_WRITE : 0);
    size_t i = 0;
    while (i < s->nsocks && s->socks[i].fd != fd) i++;
    if (i < s->nsocks) {
        if (s->socks[i].events == events) return;
        h->unwatch_fd(s->socks[i].w);
        if (!events) {
            s->socks[i] = s->socks[--s->nsocks];
            return;
        }
    } else {
        if (!events) return;
        if (s->nsocks == s->capsocks) {
            size_t cap = s->capsocks ? 2 * s->capsocks : 8;
            dsock *n = realloc(s->socks, cap * sizeof *n);
            if (!n) {
                dsc_log(s->in, SK_LOG_ERROR, "dns: out of memory watching a resolver socket");
                return; /* the query times out (the tick still runs) */
            }
            s->socks = n;
            s->capsocks = cap;
        }
        i = s->nsocks++;
        s->socks[i].fd = fd;
    }
    s->socks[i].events = events;
    s->socks[i].w = h->watch_fd(h->main_loop(), fd, events, on_sock, s);
    if (!s->socks[i].w) {
        dsc_log(s->in, SK_LOG_ERROR, "dns: cannot watch a resolver socket");
        s->socks[i] = s->socks[--s->nsocks];
    }
}

static void on_tick(void *arg)
{
    dsrc *s = arg;
    s->tick = NULL; /* fired: freed by the host */
    ares_process_fd(s->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_tick(s);
}

/* (Re)arms the timer for c-ares' next timeout; none while nothing is in
 * flight. */
static void arm_tick(dsrc *s)
{
    const sk_host_api *h = s->in->host;
    if (s->closing) return;
    if (s->tick) {
        h->timer_stop(s->tick);
        s->tick = NULL;
    }
    struct timeval tv, *t = ares_timeout(s->ch, NULL, &tv);
    if (!t) return;
    uint64_t ms = (uint64_t)t->tv_sec * 1000 + (uint64_t)(t->tv_usec + 999) / 1000;
    s->tick = h->timer_start(h->main_loop(), ms ? ms : 1, on_tick, s);
    if (!s->tick) dsc_log(s->in, SK_LOG_ERROR, "dns: cannot start the resolver timer");
}

/* ---- rounds ---- */

static const char *status_text(int status)
{
    switch (status) {
    case ARES_ETIMEOUT: return "timeout";
    case ARES_ESERVFAIL: return "SERVFAIL";
    case ARES_EREFUSED: return "REFUSED";
    case ARES_ECONNREFUSED: return "connection refused";
    case ARES_EFORMERR: return "FORMERR";
    case ARES_ENOTIMP: return "NOTIMP";
    case ARES_EBADRESP: return "malformed answer";
    default: return ares_strerror(status);
    }
}

/* Notes a failed lookup (the first one of the round is the one told): the
 * message names the cluster's name or the SRV target, not the record type,
 * so that it reads the same whichever of A and AAAA failed first. */
static void fail(dcl *c, const char *name, int type, const char *what)
{
    if (c->outcome != R_FAILED)
        snprintf(c->why, sizeof c->why, "%s for %s%s%s", what, type == QT_SRV ? "SRV " : "", name,
                 c->srv && type != QT_SRV ? " (an SRV target)" : "");
    c->outcome = R_FAILED;
}

static void see_ttl(dcl *c, uint32_t ttl)
{
    if (!c->have_ttl || ttl < c->ttl) c->ttl = ttl;
    c->have_ttl = 1;
}

static void free_round(dcl *c)
{
    dsc_eplist_free(&c->acc);
    for (size_t i = 0; i < c->ntargets; i++) {
        free(c->targets[i].name);
        dsc_eplist_free(&c->targets[i].addrs);
    }
    free(c->targets);
    c->targets = NULL;
    c->ntargets = 0;
}

/* Appends one address to l (its eps[].address are set when the round ends). */
static int add_addr(dsc_eplist *l, int family, const void *addr, unsigned port, uint32_t weight)
{
    if (l->n >= DSC_MAX_ENDPOINTS) return 0; /* dsc_publish would cut them anyway */
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        sk_weighted_endpoint *e = realloc(l->eps, cap * sizeof *e);
        if (!e) return -1;
        l->eps = e;
        char(*a)[DSC_ADDR_LEN] = realloc(l->addrs, cap * sizeof *a);
        if (!a) return -1;
        l->addrs = a;
        l->cap = cap;
    }
    dsc_format_addr(family, addr, (uint16_t)port, l->addrs[l->n]);
    l->eps[l->n].weight = weight;
    l->n++;
    return 0;
}

static void fix_pointers(dsc_eplist *l)
{
    for (size_t i = 0; i < l->n; i++) l->eps[i].address = l->addrs[i];
}

/* The delay before the next round after `failures` bad rounds in a row. */
static uint64_t backoff(dsrc *s, dcl *c)
{
    return dsc_backoff_ms(c->failures, s->min_ms, s->max_ms);
}

static void on_round_timer(void *arg)
{
    dcl *c = arg;
    c->timer = NULL; /* fired: freed by the host */
    start_round(c);
}

static void next_round(dcl *c, uint64_t ms)
{
    const sk_host_api *h = c->cl->inst->host;
    c->timer = h->timer_start(h->main_loop(), ms, on_round_timer, c);
    if (!c->timer)
        dsc_log(c->cl->inst, SK_LOG_ERROR, "cluster %s: cannot start the refresh timer", c->cl->name);
}

/* The endpoints of an SRV round: the lowest priority group with an
 * address, weighted. Into out. */
static int srv_endpoints(dcl *c, dsc_eplist *out)
{
    int have = 0;
    unsigned best = 0;
    for (size_t i = 0; i < c->ntargets; i++)
        if (c->targets[i].addrs.n && (!have || c->targets[i].priority < best)) {
            best = c->targets[i].priority;
            have = 1;
        }
    if (!have) return 0;
    unsigned wmax = 0;
    for (size_t i = 0; i < c->ntargets; i++)
        if (c->targets[i].priority == best && c->targets[i].addrs.n && c->targets[i].weight > wmax)
            wmax = c->targets[i].weight;
    for (size_t i = 0; i < c->ntargets; i++) {
        dtarget *t = &c->targets[i];
        if (t->priority != best || !t->addrs.n) continue;
        uint32_t w = dsc_srv_weight(t->weight, wmax, t->addrs.n);
        for (size_t j = 0; j < t->addrs.n; j++) {
            dsc_hostport hp;
            unsigned char bin[16];
            const char *a = t->addrs.addrs[j];
            if (dsc_parse_hostport(a, strlen(a), 0, &hp) < 0 || inet_pton(hp.family, hp.host, bin) != 1)
                continue;
            if (add_addr(out, hp.family, bin, hp.port, w) < 0) return -1;
        }
    }
    return 0;
}

/* Every query of the round answered: apply it, and schedule the next. */
static void end_round(dcl *c)
{
    dsc_cluster *cl = c->cl;
    dsrc *s = src_of(cl->inst);
    uint64_t now = dsc_now_ms();
    const char *what = c->srv ? "SRV" : s->family == FAM_V4 ? "A" : s->family == FAM_V6 ? "AAAA" : "A/AAAA";
    if (c->outcome == R_FAILED) {
        c->failures++;
        dsc_stale(cl, "dns: %s", c->why);
        free_round(c);
        next_round(c, backoff(s, c));
        return;
    }
    if (c->outcome == R_NXDOMAIN && c->acc.n == 0) {
        c->failures++;
        if (!c->nx_since) c->nx_since = c->round_ms;
        uint64_t run = now - c->nx_since;
        uint64_t delay = backoff(s, c);
        if (run >= s->stale_ms) {
            if (!c->emptied || cl->neps)
                dsc_log(cl->inst, SK_LOG_WARN,
                        "cluster %s: %s: NXDOMAIN for %llu ms (stale_after %llu ms): no endpoints any more",
                        cl->name, c->name, (unsigned long long)run, (unsigned long long)s->stale_ms);
            c->emptied = 1;
            dsc_publish(cl, NULL, 0);
        } else {
            dsc_stale(cl, "dns: NXDOMAIN for %s (%s); emptied if it lasts %llu ms", c->name, what,
                      (unsigned long long)s->stale_ms);
            uint64_t left = s->stale_ms - run;
            if (delay > left) delay = left < s->min_ms ? s->min_ms : left;
        }
        free_round(c);
        next_round(c, delay);
        return;
    }
    /* a good answer: data or NODATA */
    c->failures = 0;
    c->nx_since = 0;
    c->emptied = 0;
    dsc_eplist set = {0};
    int rc = 0;
    if (c->srv) {
        rc = srv_endpoints(c, &set);
    } else {
        set = c->acc;
        memset(&c->acc, 0, sizeof c->acc);
    }
    if (rc < 0) {
        c->failures++;
        dsc_stale(cl, "dns: out of memory");
        dsc_eplist_free(&set);
        free_round(c);
        next_round(c, backoff(s, c));
        return;
    }
    fix_pointers(&set);
    if (dsc_publish(cl, set.eps, set.n) > 0)
        dsc_log(cl->inst, set.n ? SK_LOG_INFO : SK_LOG_WARN, "cluster %s: %s %s: %zu endpoint(s)%s", cl->name,
                what, c->name, cl->neps, set.n ? "" : " (an empty answer)");
    dsc_eplist_free(&set);
    uint64_t ms = c->have_ttl ? (uint64_t)c->ttl * 1000 : s->min_ms;
    if (ms < s->min_ms) ms = s->min_ms;
    if (ms > s->max_ms) ms = s->max_ms;
    free_round(c);
    next_round(c, ms);
}

/* One query done: pending drops; the last one ends the round. */
static void query_done(dcl *c)
{
    if (--c->pending == 0) end_round(c);
}

static void query(dcl *c, const char *name, int type, int target);

/* Classifies an answer: 1 data to read, 0 NODATA / NXDOMAIN noted, -1 a
 * failure noted. */
static int classify(dcl *c, const char *name, int type, int target, int status)
{
    if (status == ARES_SUCCESS) return 1;
    if (status == ARES_ENODATA) return 0;
    if (status == ARES_ENOTFOUND) {
        /* NXDOMAIN: for the cluster's own name it is the round's outcome; a
         * target that does not exist only has no address */
        if (target < 0 && c->outcome == R_OK) c->outcome = R_NXDOMAIN;
        return 0;
    }
    fail(c, name, type, status_text(status));
    return -1;
}

/* The answer to an A or AAAA query: addresses into c->acc or the target. */
static void got_addrs(dcl *c, int type, int target, const unsigned char *abuf, int alen)
{
    const char *name = target < 0 ? c->name : c->targets[target].name;
    dsc_eplist *l = target < 0 ? &c->acc : &c->targets[target].addrs;
    unsigned port = target < 0 ? c->port : c->targets[target].port;
    int n = DNS_MAX_ADDRS, rc;
    if (type == QT_A) {
        struct ares_addrttl a[DNS_MAX_ADDRS];
        rc = ares_parse_a_reply(abuf, alen, NULL, a, &n);
        if (rc == ARES_SUCCESS)
            for (int i = 0; i < n; i++) {
                see_ttl(c, a[i].ttl < 0 ? 0 : (uint32_t)a[i].ttl);
                if (add_addr(l, AF_INET, &a[i].ipaddr, port, 1) < 0) rc = ARES_ENOMEM;
            }
    } else {
        struct ares_addr6ttl a[DNS_MAX_ADDRS];
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, a, &n);
        if (rc == ARES_SUCCESS)
            for (int i = 0; i < n; i++) {
                see_ttl(c, a[i].ttl < 0 ? 0 : (uint32_t)a[i].ttl);
                if (add_addr(l, AF_INET6, &a[i].ip6addr, port, 1) < 0) rc = ARES_ENOMEM;
            }
    }
    if (rc != ARES_SUCCESS && rc != ARES_ENODATA) fail(c, name, type, status_text(rc));
}

/* The answer to the SRV query: the targets, then their A/AAAA queries. */
static void got_srv(dcl *c, const unsigned char *abuf, int alen)
{
    dsc_cluster *cl = c->cl;
    dsrc *s = src_of(cl->inst);
    struct ares_srv_reply *srv = NULL;
    int rc = ares_parse_srv_reply(abuf, alen, &srv);
    if (rc == ARES_ENODATA) return; /* no SRV record: an empty answer */
    if (rc != ARES_SUCCESS) {
        fail(c, c->name, QT_SRV, status_text(rc));
        return;
    }
    uint32_t ttl;
    if (dsc_dns_min_ttl(abuf, (size_t)alen, &ttl) > 0) see_ttl(c, ttl);
    size_t n = 0, port0 = 0, dots = 0;
    for (struct ares_srv_reply *r = srv; r; r = r->next) n++;
    c->targets = calloc(n < DNS_MAX_TARGETS ? (n ? n : 1) : DNS_MAX_TARGETS, sizeof *c->targets);
    if (!c->targets) {
        ares_free_data(srv);
        fail(c, c->name, QT_SRV, "out of memory");
        return;
    }
    for (struct ares_srv_reply *r = srv; r; r = r->next) {
        if (!r->host[0] || strcmp(r->host, ".") == 0) {
            dots++; /* "no service" */
            continue;
        }
        if (r->port == 0) {
            if (!c->logged_port0)
                dsc_log(cl->inst, SK_LOG_WARN, "cluster %s: SRV %s: target %s has port 0: skipped", cl->name,
                        c->name, r->host);
            port0++;
            continue;
        }
        if (c->ntargets == DNS_MAX_TARGETS) {
            dsc_log(cl->inst, SK_LOG_WARN, "cluster %s: SRV %s: more than %d records, the rest ignored",
                    cl->name, c->name, DNS_MAX_TARGETS);
            break;
        }
        dtarget *t = &c->targets[c->ntargets];
        if (!(t->name = strdup(r->host))) {
            fail(c, c->name, QT_SRV, "out of memory");
            break;
        }
        t->priority = r->priority;
        t->weight = r->weight;
        t->port = r->port;
        c->ntargets++;
    }
    c->logged_port0 = port0 > 0;
    ares_free_data(srv);
    if (c->outcome == R_FAILED) return;
    for (size_t i = 0; i < c->ntargets; i++) {
        if (s->family != FAM_V6) query(c, c->targets[i].name, QT_A, (int)i);
        if (s->family != FAM_V4) query(c, c->targets[i].name, QT_AAAA, (int)i);
    }
    (void)dots;
}

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dq *q = arg;
    dcl *c = q->c;
    (void)timeouts;
    int type = q->type, target = q->target;
    free(q);
    dsrc *s = src_of(c->cl->inst);
    if (s->closing || status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) return;
    const char *name = target < 0 ? c->name : c->targets[target].name;
    if (classify(c, name, type, target, status) > 0) {
        if (type == QT_SRV) {
            c->pending++; /* target queries may end synchronously */
            got_srv(c, abuf, alen);
            c->pending--;
        } else {
            got_addrs(c, type, target, abuf, alen);
        }
    }
    query_done(c);
}

/* Starts one query of the round (its answer may come at once). */
static void query(dcl *c, const char *name, int type, int target)
{
    dsrc *s = src_of(c->cl->inst);
    dq *q = malloc(sizeof *q);
    if (!q) {
        fail(c, name, type, "out of memory");
        return;
    }
    q->c = c;
    q->type = type;
    q->target = target;
    c->pending++;
    ares_query(s->ch, name, QC_IN, type, on_answer, q);
}

static void start_round(dcl *c)
{
    dsrc *s = src_of(c->cl->inst);
    c->outcome = R_OK;
    c->why[0] = 0;
    c->have_ttl = 0;
    c->ttl = 0;
    c->round_ms = dsc_now_ms();
    c->pending = 1; /* held while the queries start */
    if (c->srv) {
        query(c, c->name, QT_SRV, -1);
    } else {
        if (s->family != FAM_V6) query(c, c->name, QT_A, -1);
        if (s->family != FAM_V4) query(c, c->name, QT_AAAA, -1);
    }
    arm_tick(s);
    query_done(c);
}

/* ---- the ops ---- */

static int dns_create(dsc_inst *in, const sk_kv *keys, size_t n, char *err, size_t errsz)
{
    dsrc *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errsz, "dns: out of memory");
        return -1;
    }
    in->priv = s;
    s->in = in;
    s->min_ms = 1000;
    s->max_ms = 60000;
    s->stale_ms = 300000;
    int min_line = 0;
    for (size_t i = 0; i < n; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        int line = keys[i].line;
        char why[200];
        if (strcmp(k, "resolver") == 0) {
            if (dsc_parse_hostports(v, 0, s->servers, DNS_MAX_SERVERS, &s->nservers, why, sizeof why) < 0) {
                snprintf(err, errsz, "dns: line %d: resolver: %s", line, why);
                return -1;
            }
        } else if (strcmp(k, "min_interval") == 0) {
            if (dsc_parse_duration(v, MIN_INTERVAL_MS, 43200000, &s->min_ms) < 0) {
                snprintf(err, errsz,
                         "dns: line %d: min_interval: expected a duration of 100ms..43200m, not '%s'", line,
                         v);
                return -1;
            }
            min_line = line;
        } else if (strcmp(k, "max_interval") == 0) {
            if (dsc_parse_duration(v, MIN_INTERVAL_MS, 43200000, &s->max_ms) < 0) {
                snprintf(err, errsz,
                         "dns: line %d: max_interval: expected a duration of 100ms..43200m, not '%s'", line,
                         v);
                return -1;
            }
        } else if (strcmp(k, "stale_after") == 0) {
            if (dsc_parse_duration(v, 0, 43200000, &s->stale_ms) < 0) {
                snprintf(err, errsz, "dns: line %d: stale_after: expected a duration of 0..43200m, not '%s'",
                         line, v);
                return -1;
            }
        } else if (strcmp(k, "family") == 0) {
            if (strcmp(v, "any") == 0)
                s->family = FAM_ANY;
            else if (strcmp(v, "ipv4") == 0)
                s->family = FAM_V4;
            else if (strcmp(v, "ipv6") == 0)
                s->family = FAM_V6;
            else {
                snprintf(err, errsz, "dns: line %d: family: expected any, ipv4 or ipv6, not '%s'", line, v);
                return -1;
            }
        } else {
            snprintf(err, errsz,
                     "dns: line %d: unknown key '%s' (known: source, resolver, min_interval, max_interval, "
                     "stale_after, family)",
                     line, k);
            return -1;
        }
    }
    if (s->min_ms > s->max_ms) {
        snprintf(err, errsz, "dns: line %d: min_interval (%llu ms) is above max_interval (%llu ms)", min_line,
                 (unsigned long long)s->min_ms, (unsigned long long)s->max_ms);
        return -1;
    }
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errsz, "dns: c-ares: %s", ares_strerror(rc));
        return -1;
    }
    struct ares_options o;
    memset(&o, 0, sizeof o);
    o.sock_state_cb = sock_state;
    o.sock_state_cb_data = s;
    o.timeout = DNS_TIMEOUT_MS;
    o.tries = DNS_TRIES;
    rc = ares_init_options(&s->ch, &o, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        ares_library_cleanup();
        snprintf(err, errsz, "dns: c-ares: %s", ares_strerror(rc));
        return -1;
    }
    s->have_ch = 1;
    if (s->nservers) {
        struct ares_addr_port_node nodes[DNS_MAX_SERVERS];
        memset(nodes, 0, sizeof nodes);
        for (size_t i = 0; i < s->nservers; i++) {
            nodes[i].next = i + 1 < s->nservers ? &nodes[i + 1] : NULL;
            nodes[i].family = s->servers[i].family;
            inet_pton(s->servers[i].family, s->servers[i].host, &nodes[i].addr);
            nodes[i].udp_port = nodes[i].tcp_port = s->servers[i].port;
        }
        rc = ares_set_servers_ports(s->ch, nodes);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errsz, "dns: resolver: %s", ares_strerror(rc));
            return -1;
        }
    }
    return 0;
}

/* A DNS name: letters, digits, '-', '_', '.', labels of 1..63, at most 253
 * (a final dot allowed). */
static int dns_name_ok(const char *n)
{
    size_t len = strlen(n), label = 0;
    if (len == 0 || len > 254 || (len == 254 && n[253] != '.')) return 0;
    for (const char *p = n; *p; p++) {
        if (*p == '.') {
            if (label == 0) return 0;
            label = 0;
        } else if (isalnum((unsigned char)*p) || *p == '-' || *p == '_') {
            if (++label > 63) return 0;
        } else {
            return 0;
        }
    }
    return 1;
}

static int dns_add_cluster(dsc_inst *in, dsc_cluster *cl, const char *arg, char *err, size_t errsz)
{
    dcl *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errsz, "dns: out of memory");
        return -1;
    }
    cl->priv = c;
    c->cl = cl;
    if (arg[0] == '_') {
        if (!dns_name_ok(arg) || strchr(arg, ':')) {
            snprintf(err, errsz, "dns: '%s' is not an SRV name (_service._proto.name, no port)", arg);
            return -1;
        }
        snprintf(c->name, sizeof c->name, "%s", arg);
        c->srv = 1;
    } else {
        dsc_hostport hp;
        if (dsc_parse_hostport(arg, strlen(arg), 1, &hp) < 0 || (!hp.family && !dns_name_ok(hp.host))) {
            snprintf(err, errsz, "dns: '%s' is not NAME:PORT (port 1..65535) or _service._proto.NAME for SRV",
                     arg);
            return -1;
        }
        if (hp.family) {
            /* a numeric address: nothing to look up */
            unsigned char bin[16];
            char a[DSC_ADDR_LEN];
            inet_pton(hp.family, hp.host, bin);
            dsc_format_addr(hp.family, bin, hp.port, a);
            sk_weighted_endpoint e = {a, 1};
            dsc_publish(cl, &e, 1);
            return 0;
        }
        snprintf(c->name, sizeof c->name, "%s", hp.host);
        c->port = hp.port;
    }
    start_round(c);
    return 0;
}

static void dns_destroy(dsc_inst *in)
{
    dsrc *s = src_of(in);
    if (!s) return;
    const sk_host_api *h = in->host;
    s->closing = 1;
    if (s->have_ch) {
        ares_destroy(s->ch); /* pending queries: on_answer(ARES_EDESTRUCTION) */
        ares_library_cleanup();
    }
    for (size_t i = 0; i < s->nsocks; i++) h->unwatch_fd(s->socks[i].w);
    free(s->socks);
    if (s->tick) h->timer_stop(s->tick);
    for (dsc_cluster *cl = in->clusters; cl; cl = cl->next) {
        dcl *c = cl->priv;
        if (!c) continue;
        if (c->timer) h->timer_stop(c->timer);
        free_round(c);
        free(c);
        cl->priv = NULL;
    }
    free(s);
    in->priv = NULL;
}

const dsc_source_ops dsc_dns_ops = {
    .name = "dns",
    .create = dns_create,
    .add_cluster = dns_add_cluster,
    .destroy = dns_destroy,
};
