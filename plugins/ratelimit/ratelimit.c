/*
 * ratelimit.so — token-bucket rate limits per key, one limit for the whole
 * sidecar (every worker draws from the same buckets).
 *
 *     [plugin ratelimit]
 *     rate = 100/s          N/s, N/m or N/h (N a whole number, 1..1000000000)
 *     burst = 200           bucket size; default N of rate
 *     key = client_ip       client_ip | header:NAME | identity | meta:NAME | route | all
 *     scope = local         local: this sidecar; global: every sidecar sharing `redis`
 *     redis = 127.0.0.1:6379   global: numeric IP:PORT or [IPv6]:PORT
 *     redis_timeout = 50ms  global: longest wait for a decision (1ms..60s)
 *     failure_mode = allow  global: allow | deny when Redis is down, slow or wrong
 *     max_keys = 100000     local: buckets kept; the least recently used is dropped beyond
 *     headers = off         on: RateLimit-Policy and RateLimit on every response
 *
 * A request whose bucket has a token takes it and goes on; otherwise it gets
 * 429 with x-sidekick-reason rate_limited and Retry-After (whole seconds until
 * the next token, rounded up). Requests that lack the key (no such header, no
 * peer identity, metadata unset) share one bucket of their own: leaving the
 * header out does not escape the limit.
 *
 * The bucket table is made in create() and shared by every worker. It is cut
 * into shards (64 when max_keys >= 4096, else 1), each an open hash table
 * with its own LRU list and a mutex held only for one lookup-and-update, so
 * workers contend only when they hit the same shard at the same moment. With
 * one shard the LRU order is exact; with 64 each shard keeps max_keys/64 keys
 * in its own LRU order. A reload makes a new instance, with fresh buckets.
 *
 * scope = global keeps the buckets in Redis instead (see the section below).
 *
 * Decisions are counted in sidekick_plugin_ratelimit_decisions_total
 * {instance, result = allowed | limited | failure_allowed | failure_denied},
 * Redis trouble in sidekick_plugin_ratelimit_redis_errors_total.
 *
 * Built against <sidekick/plugin.h> alone (see plugins/CMakeLists.txt).
 */
#include <sidekick/plugin.h>

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define NIL            UINT32_MAX
#define MAX_RATE       1000000000ull
#define MAX_KEYS_LIMIT 10000000ull
#define SHARDS_BIG     64
#define SHARD_MIN_KEYS 4096 /* max_keys from which the table is sharded */

enum key_kind { KEY_CLIENT_IP, KEY_HEADER, KEY_IDENTITY, KEY_META, KEY_ROUTE, KEY_ALL };
enum { RESULT_ALLOWED = 0, RESULT_LIMITED = 1, RESULT_FAIL_ALLOWED = 2, RESULT_FAIL_DENIED = 3 };

/* One bucket: its key, its tokens, and its links in the hash chain and the
 * LRU list of its shard (indices into the shard's entries). */
typedef struct entry {
    uint64_t hash;
    char *key; /* malloc'd copy, klen bytes (NULL for the empty key) */
    uint32_t klen;
    uint32_t chain;      /* next entry in the same hash slot, or NIL */
    uint32_t prev, next; /* LRU list: prev = more recently used */
    double tokens;
    uint64_t last_ns; /* when tokens was last brought up to date */
} entry;

/* A part of the table with its own lock, on cache lines of its own (no
 * false sharing between workers on neighbouring shards). */
typedef struct __attribute__((aligned(64))) shard {
    pthread_mutex_t mu;
    entry *e;            /* cap entries */
    uint32_t cap;        /* most keys kept */
    uint32_t used;       /* entries handed out so far (never shrinks) */
    uint32_t *slot;      /* nslot heads of hash chains, NIL when empty */
    uint32_t mask;       /* nslot - 1 (nslot a power of two >= 2 * cap) */
    uint32_t head, tail; /* LRU: head most recent, tail next to drop */
} shard;

typedef struct ratelimit {
    const sk_host_api *host;
    sk_instance *self;
    int kind;       /* enum key_kind */
    char *key_name; /* header or metadata name for KEY_HEADER / KEY_META */
    double rate;    /* tokens per second */
    double burst;   /* bucket size */
    uint64_t max_keys;
    int headers;    /* headers = on */
    char *policy;   /* RateLimit-Policy value */
    char *meta_key; /* "ratelimit.NAME": the RateLimit value for on_response */
    char *pname;    /* the policy name as an sf-string, quotes included */
    uint64_t seed;  /* hash seed, random per instance */
    sk_metric *decisions;
    /* scope = global */
    int global;
    int fail_deny;    /* failure_mode = deny */
    char *redis_addr; /* as configured, for logs */
    char redis_ip[INET6_ADDRSTRLEN];
    int redis_port;
    uint64_t redis_timeout_ms;
    uint64_t ttl_ms;    /* of every key written: the time to fill an empty bucket, + 1 s */
    char *redis_prefix; /* "sidekick:ratelimit:NAME:" */
    sk_metric *redis_errors;
    shard *shards;
    uint32_t nshards;
} ratelimit;

/* The outcome of one decision. */
typedef struct verdict {
    int allowed;
    uint64_t remaining; /* whole tokens left after this request */
    uint64_t reset_s;   /* seconds until the bucket is full again */
    uint64_t retry_s;   /* limited only: seconds until the next token, >= 1 */
} verdict;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* FNV-1a over the key, started from a per-instance random seed. */
static uint64_t hash_key(uint64_t seed, const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ seed;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

/* ---- the shared table ---- */

static void lru_unlink(shard *s, uint32_t i)
{
    entry *e = &s->e[i];
    if (e->prev != NIL)
        s->e[e->prev].next = e->next;
    else
        s->head = e->next;
    if (e->next != NIL)
        s->e[e->next].prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NIL;
}

static void lru_push_front(shard *s, uint32_t i)
{
    entry *e = &s->e[i];
    e->prev = NIL;
    e->next = s->head;
    if (s->head != NIL) s->e[s->head].prev = i;
    s->head = i;
    if (s->tail == NIL) s->tail = i;
}

/* Removes entry i from its hash chain. */
static void chain_unlink(shard *s, uint32_t i)
{
    uint32_t *p = &s->slot[s->e[i].hash & s->mask];
    while (*p != i) p = &s->e[*p].chain;
    *p = s->e[i].chain;
}

/* Finds the bucket of key in s, or makes one (full), dropping the least
 * recently used bucket when the shard is full. NIL on OOM. Lock held. */
static uint32_t lookup(ratelimit *rl, shard *s, uint64_t h, const char *key, size_t klen, uint64_t now)
{
    for (uint32_t i = s->slot[h & s->mask]; i != NIL; i = s->e[i].chain) {
        entry *e = &s->e[i];
        if (e->hash == h && e->klen == klen && (klen == 0 || memcmp(e->key, key, klen) == 0)) return i;
    }
    char *copy = NULL;
    if (klen) {
        copy = malloc(klen);
        if (!copy) return NIL;
        memcpy(copy, key, klen);
    }
    uint32_t i;
    if (s->used < s->cap) {
        i = s->used++;
    } else {
        i = s->tail;
        lru_unlink(s, i);
        chain_unlink(s, i);
        free(s->e[i].key);
    }
    entry *e = &s->e[i];
    e->hash = h;
    e->key = copy;
    e->klen = (uint32_t)klen;
    e->tokens = rl->burst;
    e->last_ns = now;
    e->chain = s->slot[h & s->mask];
    s->slot[h & s->mask] = i;
    lru_push_front(s, i);
    return i;
}

/* Takes a token from the bucket of key, if it has one. 0, or -1 on OOM. */
static int decide(ratelimit *rl, const char *key, size_t klen, verdict *v)
{
    uint64_t h = hash_key(rl->seed, key, klen);
    shard *s = &rl->shards[rl->nshards > 1 ? (h >> 58) % rl->nshards : 0];
    uint64_t now = now_ns();
    pthread_mutex_lock(&s->mu);
    uint32_t i = lookup(rl, s, h, key, klen, now);
    if (i == NIL) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    entry *e = &s->e[i];
    if (now > e->last_ns) {
        e->tokens += (double)(now - e->last_ns) * 1e-9 * rl->rate;
        if (e->tokens > rl->burst) e->tokens = rl->burst;
        e->last_ns = now;
    }
    v->allowed = e->tokens >= 1.0;
    if (v->allowed) e->tokens -= 1.0;
    double tokens = e->tokens;
    if (s->head != i) {
        lru_unlink(s, i);
        lru_push_front(s, i);
    }
    pthread_mutex_unlock(&s->mu);

    v->remaining = (uint64_t)floor(tokens);
    v->reset_s = (uint64_t)ceil((rl->burst - tokens) / rl->rate);
    v->retry_s = 0;
    if (!v->allowed) {
        v->retry_s = (uint64_t)ceil((1.0 - tokens) / rl->rate);
        if (v->retry_s < 1) v->retry_s = 1;
    }
    return 0;
}

static void free_table(ratelimit *rl)
{
    for (uint32_t k = 0; rl->shards && k < rl->nshards; k++) {
        shard *s = &rl->shards[k];
        for (uint32_t i = 0; s->e && i < s->used; i++) free(s->e[i].key);
        free(s->e);
        free(s->slot);
        pthread_mutex_destroy(&s->mu);
    }
    free(rl->shards);
}

/* Allocates the shards for max_keys buckets. 0, or -1 on OOM. */
static int make_table(ratelimit *rl)
{
    rl->nshards = rl->max_keys >= SHARD_MIN_KEYS ? SHARDS_BIG : 1;
    rl->shards = aligned_alloc(64, rl->nshards * sizeof(shard));
    if (!rl->shards) return -1;
    memset(rl->shards, 0, rl->nshards * sizeof(shard));
    uint32_t cap = (uint32_t)((rl->max_keys + rl->nshards - 1) / rl->nshards);
    uint32_t nslot = 2;
    while (nslot < 2 * cap) nslot <<= 1;
    for (uint32_t k = 0; k < rl->nshards; k++) {
        shard *s = &rl->shards[k];
        pthread_mutex_init(&s->mu, NULL);
        s->cap = cap;
        s->e = calloc(cap, sizeof(entry));
        s->slot = malloc(nslot * sizeof(uint32_t));
        if (!s->e || !s->slot) {
            rl->nshards = k + 1;
            return -1;
        }
        memset(s->slot, 0xff, nslot * sizeof(uint32_t));
        s->mask = nslot - 1;
        s->head = s->tail = NIL;
    }
    return 0;
}

/* ---- config ---- */

static void destroy(void *inst)
{
    ratelimit *rl = inst;
    if (!rl) return;
    free_table(rl);
    free(rl->key_name);
    free(rl->policy);
    free(rl->meta_key);
    free(rl->pname);
    free(rl->redis_addr);
    free(rl->redis_prefix);
    free(rl);
}

/* RFC 9110 token characters. */
static int tchar(int c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A whole number in 1..max, nothing else. 0, or -1. */
static int parse_count(const char *s, unsigned long long max, unsigned long long *out)
{
    if (!isdigit((unsigned char)*s)) return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < 1 || v > max) return -1;
    *out = v;
    return 0;
}

/* "N/s", "N/m", "N/h": tokens per second in *rate, N in *n. 0, or -1. */
static int parse_rate(const char *s, double *rate, unsigned long long *n)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || slash - s > 20 || strlen(slash) != 2) return -1;
    char num[24];
    memcpy(num, s, (size_t)(slash - s));
    num[slash - s] = 0;
    if (parse_count(num, MAX_RATE, n) < 0) return -1;
    double unit = slash[1] == 's' ? 1 : slash[1] == 'm' ? 60 : slash[1] == 'h' ? 3600 : 0;
    if (unit == 0) return -1;
    *rate = (double)*n / unit;
    return 0;
}

/* "IP:PORT" or "[IPv6]:PORT", numeric (no name lookup on a worker). */
static int parse_addr(ratelimit *rl, const char *v)
{
    const char *host = v, *colon;
    size_t hlen;
    if (*v == '[') {
        const char *end = strchr(v, ']');
        if (!end || end[1] != ':') return -1;
        host = v + 1;
        hlen = (size_t)(end - host);
        colon = end + 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon) return -1;
        hlen = (size_t)(colon - v);
    }
    if (hlen == 0 || hlen >= sizeof rl->redis_ip) return -1;
    char ip[INET6_ADDRSTRLEN];
    memcpy(ip, host, hlen);
    ip[hlen] = 0;
    unsigned char buf[16];
    if (inet_pton(AF_INET, ip, buf) != 1 && inet_pton(AF_INET6, ip, buf) != 1) return -1;
    unsigned long long port;
    if (parse_count(colon + 1, 65535, &port) < 0) return -1;
    memcpy(rl->redis_ip, ip, hlen + 1);
    rl->redis_port = (int)port;
    free(rl->redis_addr);
    rl->redis_addr = strdup(v);
    return rl->redis_addr ? 0 : -1;
}

/* "50ms", "1s": 1 ms .. 60 s. 0, or -1. */
static int parse_ms(const char *v, uint64_t *ms)
{
    char num[24];
    size_t d = 0;
    while (isdigit((unsigned char)v[d]) && d < sizeof num - 1) num[d] = v[d], d++;
    num[d] = 0;
    unsigned long long n;
    if (d == 0 || parse_count(num, 60000, &n) < 0) return -1;
    if (strcmp(v + d, "ms") == 0)
        *ms = n;
    else if (strcmp(v + d, "s") == 0)
        *ms = n * 1000;
    else
        return -1;
    return *ms <= 60000 ? 0 : -1;
}

static int parse_key(ratelimit *rl, const char *v)
{
    static const struct {
        const char *name;
        int kind;
    } plain[] = {
        {"client_ip", KEY_CLIENT_IP}, {"identity", KEY_IDENTITY}, {"route", KEY_ROUTE}, {"all", KEY_ALL}};
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        if (strcmp(v, plain[i].name) == 0) {
            rl->kind = plain[i].kind;
            return 0;
        }
    const char *name;
    if (strncmp(v, "header:", 7) == 0) {
        rl->kind = KEY_HEADER;
        name = v + 7;
        if (!*name) return -1;
        for (const char *p = name; *p; p++)
            if (!tchar((unsigned char)*p)) return -1;
    } else if (strncmp(v, "meta:", 5) == 0) {
        rl->kind = KEY_META;
        name = v + 5;
        if (!*name) return -1;
        for (const char *p = name; *p; p++)
            if ((unsigned char)*p <= 0x20 || *p == 0x7f) return -1;
    } else {
        return -1;
    }
    free(rl->key_name);
    rl->key_name = strdup(name);
    if (!rl->key_name) return -1;
    if (rl->kind == KEY_HEADER)
        for (char *p = rl->key_name; *p; p++) *p = (char)tolower((unsigned char)*p);
    return 0;
}

/* The instance name as a structured-field string (RFC 8941 sf-string). */
static char *sf_string(const char *s)
{
    size_t n = strlen(s);
    char *out = malloc(2 * n + 3), *o = out;
    if (!out) return NULL;
    *o++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c > 0x7e) c = '_';
        if (c == '"' || c == '\\') *o++ = '\\';
        *o++ = (char)c;
    }
    *o++ = '"';
    *o = 0;
    return out;
}

#define FAIL(...)                             \
    do {                                      \
        snprintf(err, err_size, __VA_ARGS__); \
        destroy(rl);                          \
        return NULL;                          \
    } while (0)

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl) {
        snprintf(err, err_size, "ratelimit: out of memory");
        return NULL;
    }
    rl->host = host;
    rl->self = self;
    rl->kind = KEY_CLIENT_IP;
    rl->max_keys = 100000;
    unsigned long long n = 0, burst = 0;
    int have_rate = 0, redis_line = 0;
    rl->redis_timeout_ms = 50;
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        int line = keys[i].line;
        if (strcmp(k, "rate") == 0) {
            if (parse_rate(v, &rl->rate, &n) < 0)
                FAIL("ratelimit: line %d: rate: expected N/s, N/m or N/h with N in 1..%llu, not '%s'", line,
                     MAX_RATE, v);
            have_rate = 1;
        } else if (strcmp(k, "burst") == 0) {
            if (parse_count(v, MAX_RATE, &burst) < 0)
                FAIL("ratelimit: line %d: burst: expected a whole number in 1..%llu, not '%s'", line,
                     MAX_RATE, v);
        } else if (strcmp(k, "key") == 0) {
            if (parse_key(rl, v) < 0)
                FAIL(
                    "ratelimit: line %d: key: expected client_ip, header:NAME, identity, meta:NAME, route or "
                    "all, not '%s'",
                    line, v);
        } else if (strcmp(k, "max_keys") == 0) {
            unsigned long long m;
            if (parse_count(v, MAX_KEYS_LIMIT, &m) < 0)
                FAIL("ratelimit: line %d: max_keys: expected a whole number in 1..%llu, not '%s'", line,
                     MAX_KEYS_LIMIT, v);
            rl->max_keys = m;
        } else if (strcmp(k, "headers") == 0) {
            if (strcmp(v, "on") == 0)
                rl->headers = 1;
            else if (strcmp(v, "off") == 0)
                rl->headers = 0;
            else
                FAIL("ratelimit: line %d: headers: expected on or off, not '%s'", line, v);
        } else if (strcmp(k, "scope") == 0) {
            if (strcmp(v, "global") == 0)
                rl->global = 1;
            else if (strcmp(v, "local") == 0)
                rl->global = 0;
            else
                FAIL("ratelimit: line %d: scope: expected local or global, not '%s'", line, v);
        } else if (strcmp(k, "redis") == 0) {
            if (parse_addr(rl, v) < 0)
                FAIL("ratelimit: line %d: redis: expected IP:PORT or [IPv6]:PORT (numeric), not '%s'", line,
                     v);
            redis_line = line;
        } else if (strcmp(k, "redis_timeout") == 0) {
            if (parse_ms(v, &rl->redis_timeout_ms) < 0)
                FAIL("ratelimit: line %d: redis_timeout: expected a duration 1ms..60s (ms, s), not '%s'",
                     line, v);
            redis_line = redis_line ? redis_line : line;
        } else if (strcmp(k, "failure_mode") == 0) {
            if (strcmp(v, "allow") == 0)
                rl->fail_deny = 0;
            else if (strcmp(v, "deny") == 0)
                rl->fail_deny = 1;
            else
                FAIL("ratelimit: line %d: failure_mode: expected allow or deny, not '%s'", line, v);
            redis_line = redis_line ? redis_line : line;
        } else {
            FAIL(
                "ratelimit: line %d: unknown key '%s' (known: rate, burst, key, scope, redis, redis_timeout, "
                "failure_mode, max_keys, headers)",
                line, k);
        }
    }
    if (!have_rate) FAIL("ratelimit: rate is required (N/s, N/m or N/h)");
    if (rl->global && !rl->redis_addr) FAIL("ratelimit: scope = global needs redis = IP:PORT");
    if (!rl->global && redis_line)
        FAIL("ratelimit: line %d: redis, redis_timeout and failure_mode are for scope = global only",
             redis_line);
    rl->burst = (double)(burst ? burst : n);

    const char *name = host->instance_name(self);
    rl->pname = sf_string(name);
    size_t mlen = strlen(name) + sizeof("ratelimit.");
    rl->meta_key = malloc(mlen);
    size_t plen = strlen(rl->pname ? rl->pname : "") + 64;
    rl->policy = malloc(plen);
    if (!rl->pname || !rl->meta_key || !rl->policy) FAIL("ratelimit: out of memory");
    snprintf(rl->meta_key, mlen, "ratelimit.%s", name);
    /* The quota is the bucket, the window the time it takes to fill up. */
    snprintf(rl->policy, plen, "%s;q=%llu;w=%llu", rl->pname, (unsigned long long)rl->burst,
             (unsigned long long)ceil(rl->burst / rl->rate));

    static const char *const results[] = {"allowed", "limited", "failure_allowed", "failure_denied"};
    rl->decisions = host->counter_labelled(self, "ratelimit_decisions_total",
                                           "Rate limit decisions by result.", "result", results, 4);
    if (!rl->decisions) FAIL("ratelimit: could not register ratelimit_decisions_total");
    rl->redis_errors = host->counter(self, "ratelimit_redis_errors_total",
                                     "scope = global: Redis connects, losses, errors and timeouts.");
    if (!rl->redis_errors) FAIL("ratelimit: could not register ratelimit_redis_errors_total");
    if (rl->global) {
        rl->ttl_ms = (uint64_t)ceil(rl->burst / rl->rate * 1000.0) + 1000;
        size_t len = strlen(name) + sizeof("sidekick:ratelimit::");
        rl->redis_prefix = malloc(len);
        if (!rl->redis_prefix) FAIL("ratelimit: out of memory");
        snprintf(rl->redis_prefix, len, "sidekick:ratelimit:%s:", name);
        return rl; /* no local table */
    }
    if (getrandom(&rl->seed, sizeof(rl->seed), GRND_NONBLOCK) != sizeof(rl->seed))
        rl->seed = now_ns() * 0x9e3779b97f4a7c15ull;
    if (make_table(rl) < 0)
        FAIL("ratelimit: out of memory for max_keys = %llu", (unsigned long long)rl->max_keys);
    return rl;
}

/* ---- request hooks ---- */

/* The request's key; ptr NULL (or len 0) when the request lacks it. */
static sk_str request_key(ratelimit *rl, sk_req *r)
{
    const sk_host_api *h = rl->host;
    sk_str s = {NULL, 0};
    switch (rl->kind) {
    case KEY_CLIENT_IP: return h->client_ip(r);
    case KEY_IDENTITY: return h->identity(r);
    case KEY_ROUTE: return h->route(r);
    case KEY_HEADER:
        if (!h->header(r, rl->key_name, &s)) s.ptr = NULL, s.len = 0;
        return s;
    case KEY_META: {
        const char *m = h->meta(r, rl->key_name);
        if (m) s.ptr = m, s.len = strlen(m);
        return s;
    }
    default: return s;
    }
}

/* Answers a request from its verdict: SK_CONTINUE (and the state for
 * on_response with headers = on) or a 429. `result` is the counter's index. */
static sk_status answer(ratelimit *rl, sk_req *r, const verdict *v, int result)
{
    const sk_host_api *h = rl->host;
    h->metric_add_at(rl->decisions, (size_t)result, 1);
    if (v->allowed && !rl->headers) return SK_CONTINUE; /* nothing to say: no formatting */
    char value[256];
    snprintf(value, sizeof value, "%s;r=%llu;t=%llu", rl->pname, (unsigned long long)v->remaining,
             (unsigned long long)(v->allowed ? v->reset_s : v->retry_s));
    if (v->allowed) {
        if (rl->headers && h->set_meta(r, rl->meta_key, value) != 0) {
            h->log(rl->self, SK_LOG_ERROR, "set_meta failed (out of memory?)");
            return SK_ERROR;
        }
        return SK_CONTINUE;
    }
    char retry[24];
    snprintf(retry, sizeof retry, "%llu", (unsigned long long)v->retry_s);
    const char *hdrs[] = {
        "content-type", "text/plain", "retry-after", retry, rl->headers ? "ratelimit-policy" : NULL,
        rl->policy,     "ratelimit",  value,         NULL};
    static const char body[] = "rate limited\n";
    if (h->respond(r, 429, "rate_limited", body, sizeof body - 1, hdrs) != 0) {
        h->log(rl->self, SK_LOG_ERROR, "respond failed");
        return SK_ERROR;
    }
    return SK_RESPOND;
}

/* ---- scope = global: Redis through hiredis, driven by the host's loop ----
 *
 * Each worker has its own asynchronous Redis connection (made in
 * worker_init, on the worker's loop). hiredis' own libev adapter needs the
 * `struct ev_loop *`, which plugin.h does not hand out (sk_loop is opaque),
 * so a small adapter maps hiredis' addRead/delRead/addWrite/delWrite/cleanup
 * hooks onto host->watch_fd/unwatch_fd. A decision is one EVALSHA of
 * SCRIPT (loaded with SCRIPT LOAD when the connection is up; NOSCRIPT after a
 * Redis restart falls back to EVAL and loads it again). The request pauses;
 * a redis_timeout timer decides by failure_mode if no reply came in time. */

/* KEYS[1] bucket; ARGV rate (tokens/s), burst, ttl (ms). Redis' own clock
 * (TIME) so that sidecars with skewed clocks share one bucket correctly.
 * Returns {allowed, milli-tokens left}. */
static const char SCRIPT[] =
    "local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2])\n"
    "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    "local v = redis.call('HMGET', KEYS[1], 't', 'k')\n"
    "local tokens = tonumber(v[2]) or burst local last = tonumber(v[1]) or now\n"
    "if now > last then tokens = math.min(burst, tokens + (now - last) * rate / 1000) end\n"
    "local ok = 0 if tokens >= 1 then tokens = tokens - 1 ok = 1 end\n"
    "redis.call('HSET', KEYS[1], 't', now, 'k', tostring(tokens))\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return {ok, math.floor(tokens * 1000)}\n";

typedef struct worker worker;

/* One request waiting for Redis. */
typedef struct pending {
    worker *w;
    sk_req *r;       /* NULL once decided (timeout, cancel, shutdown) */
    sk_timer *timer; /* redis_timeout; NULL once fired or stopped */
    int replied;     /* hiredis called back (it frees nothing of ours) */
    char *key;       /* the Redis key (prefix + request key), stored after the struct */
    size_t klen;
    struct pending *prev, *next;
} pending;

struct worker {
    ratelimit *rl;
    sk_loop *loop;
    redisAsyncContext *ac; /* NULL while disconnected */
    int connected;         /* connect callback said OK */
    int events;            /* SK_EV_* hiredis wants */
    sk_watch *watch;
    sk_timer *retry; /* reconnect timer */
    uint64_t backoff_ms;
    int closing;   /* worker_fini */
    char sha[41];  /* the script's SHA1 once loaded, else "" */
    pending *head; /* requests in flight */
};

static void w_fd(void *arg, int fd, int events);

static void w_update(worker *w)
{
    const sk_host_api *h = w->rl->host;
    if (w->watch) {
        h->unwatch_fd(w->watch);
        w->watch = NULL;
    }
    if (w->ac && w->events) w->watch = h->watch_fd(w->loop, w->ac->c.fd, w->events, w_fd, w);
}
static void ad_add_read(void *p)
{
    worker *w = p;
    if (!(w->events & SK_EV_READ)) {
        w->events |= SK_EV_READ;
        w_update(w);
    }
}
static void ad_del_read(void *p)
{
    worker *w = p;
    if (w->events & SK_EV_READ) {
        w->events &= ~SK_EV_READ;
        w_update(w);
    }
}
static void ad_add_write(void *p)
{
    worker *w = p;
    if (!(w->events & SK_EV_WRITE)) {
        w->events |= SK_EV_WRITE;
        w_update(w);
    }
}
static void ad_del_write(void *p)
{
    worker *w = p;
    if (w->events & SK_EV_WRITE) {
        w->events &= ~SK_EV_WRITE;
        w_update(w);
    }
}
static void ad_cleanup(void *p)
{
    worker *w = p;
    w->events = 0;
    if (w->watch) w->rl->host->unwatch_fd(w->watch);
    w->watch = NULL;
}

/* One event at a time: redisAsyncHandleRead may free the context (a
 * disconnect), so a write is never handled after it in the same call; the
 * level-triggered watcher calls again while the fd stays writable. */
static void w_fd(void *arg, int fd, int events)
{
    worker *w = arg;
    (void)fd;
    if (!w->ac) return;
    if (events & SK_EV_READ)
        redisAsyncHandleRead(w->ac);
    else if (events & SK_EV_WRITE)
        redisAsyncHandleWrite(w->ac);
}

static void w_connect(worker *w);

static void w_retry_cb(void *arg)
{
    worker *w = arg;
    w->retry = NULL;
    w_connect(w);
}

/* The connection is gone (or never came): try again after a backoff of
 * 100 ms doubling to 5 s. */
static void w_lost(worker *w)
{
    w->ac = NULL;
    w->connected = 0;
    w->events = 0;
    w->sha[0] = 0;
    if (w->watch) w->rl->host->unwatch_fd(w->watch);
    w->watch = NULL;
    if (w->closing || w->retry) return;
    w->rl->host->metric_add(w->rl->redis_errors, 1);
    w->retry = w->rl->host->timer_start(w->loop, w->backoff_ms, w_retry_cb, w);
    w->backoff_ms = w->backoff_ms * 2 > 5000 ? 5000 : w->backoff_ms * 2;
}

static void on_loaded(redisAsyncContext *ac, void *reply, void *priv)
{
    worker *w = priv;
    redisReply *rep = reply;
    (void)ac;
    if (rep && rep->type == REDIS_REPLY_STRING && rep->len == 40) {
        memcpy(w->sha, rep->str, 40);
        w->sha[40] = 0;
    }
}

static void on_connected(const redisAsyncContext *ac, int status)
{
    worker *w = ac->data;
    if (status != REDIS_OK) {
        w->rl->host->log(w->rl->self, SK_LOG_WARN, "redis %s: connect failed: %s", w->rl->redis_addr,
                         ac->errstr);
        w_lost(w); /* hiredis frees the context after this callback */
        return;
    }
    w->connected = 1;
    w->backoff_ms = 100;
    redisAsyncCommand(w->ac, on_loaded, w, "SCRIPT LOAD %s", SCRIPT);
}

static void on_disconnected(const redisAsyncContext *ac, int status)
{
    worker *w = ac->data;
    if (status != REDIS_OK && !w->closing)
        w->rl->host->log(w->rl->self, SK_LOG_WARN, "redis %s: connection lost: %s", w->rl->redis_addr,
                         ac->errstr);
    w_lost(w);
}

static void w_connect(worker *w)
{
    ratelimit *rl = w->rl;
    redisAsyncContext *ac = redisAsyncConnect(rl->redis_ip, rl->redis_port);
    if (!ac || ac->err) {
        if (ac) redisAsyncFree(ac);
        w_lost(w);
        return;
    }
    w->ac = ac;
    ac->data = w;
    ac->ev.data = w;
    ac->ev.addRead = ad_add_read;
    ac->ev.delRead = ad_del_read;
    ac->ev.addWrite = ad_add_write;
    ac->ev.delWrite = ad_del_write;
    ac->ev.cleanup = ad_cleanup;
    redisAsyncSetConnectCallback(ac, on_connected);
    redisAsyncSetDisconnectCallback(ac, on_disconnected);
    ad_add_write(w); /* the connect completes when the socket is writable */
}

static void p_unlink(pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        p->w->head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
}

/* Frees p once both sides are done with it: the request is decided (r NULL,
 * no timer) and hiredis has called back. */
static void p_maybe_free(pending *p)
{
    if (p->r || p->timer || !p->replied) return;
    free(p);
}

/* Decides a paused request and resumes it. */
static void p_finish(pending *p, const verdict *v, int result)
{
    sk_req *r = p->r;
    ratelimit *rl = p->w->rl;
    p->r = NULL;
    p_unlink(p);
    if (p->timer) {
        rl->host->timer_stop(p->timer);
        p->timer = NULL;
    }
    sk_status st = answer(rl, r, v, result);
    rl->host->resume(r, st);
}

/* The verdict of failure_mode when Redis did not decide. */
static void failure_verdict(ratelimit *rl, verdict *v, int *result)
{
    memset(v, 0, sizeof *v);
    v->allowed = !rl->fail_deny;
    v->retry_s = 1;
    v->reset_s = 1;
    *result = rl->fail_deny ? RESULT_FAIL_DENIED : RESULT_FAIL_ALLOWED;
}

static void p_timeout(void *arg)
{
    pending *p = arg;
    p->timer = NULL;
    if (!p->r) return;
    verdict v;
    int result;
    failure_verdict(p->w->rl, &v, &result);
    p->w->rl->host->metric_add(p->w->rl->redis_errors, 1);
    p_finish(p, &v, result);
    p_maybe_free(p);
}

static int send_eval(worker *w, pending *p, const char *key, size_t klen, int by_sha);

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    pending *p = priv;
    redisReply *rep = reply;
    worker *w = p->w;
    ratelimit *rl = w->rl;
    (void)ac;
    if (p->r && !w->closing && rep && rep->type == REDIS_REPLY_ERROR &&
        strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        /* Redis lost the script (restart, SCRIPT FLUSH): once more with EVAL */
        w->sha[0] = 0;
        redisAsyncCommand(w->ac, on_loaded, w, "SCRIPT LOAD %s", SCRIPT);
        if (send_eval(w, p, p->key, p->klen, 0) == 0) return; /* on_reply again */
    }
    p->replied = 1;
    if (p->r && !w->closing) {
        verdict v;
        int result;
        if (rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
            rep->element[0]->type == REDIS_REPLY_INTEGER && rep->element[1]->type == REDIS_REPLY_INTEGER) {
            double tokens = (double)rep->element[1]->integer / 1000.0;
            memset(&v, 0, sizeof v);
            v.allowed = rep->element[0]->integer == 1;
            v.remaining = (uint64_t)floor(tokens);
            v.reset_s = (uint64_t)ceil((rl->burst - tokens) / rl->rate);
            if (!v.allowed) {
                v.retry_s = (uint64_t)ceil((1.0 - tokens) / rl->rate);
                if (v.retry_s < 1) v.retry_s = 1;
            }
            result = v.allowed ? RESULT_ALLOWED : RESULT_LIMITED;
        } else {
            if (rep && rep->type == REDIS_REPLY_ERROR)
                rl->host->log(rl->self, SK_LOG_WARN, "redis: %s", rep->str);
            rl->host->metric_add(rl->redis_errors, 1);
            failure_verdict(rl, &v, &result);
        }
        p_finish(p, &v, result);
    }
    p_maybe_free(p);
}

/* Sends the decision for p's key. 0, or -1 (nothing sent). */
static int send_eval(worker *w, pending *p, const char *key, size_t klen, int by_sha)
{
    ratelimit *rl = w->rl;
    char rate[32], burst[32], ttl[32];
    snprintf(rate, sizeof rate, "%.17g", rl->rate);
    snprintf(burst, sizeof burst, "%.17g", rl->burst);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)rl->ttl_ms);
    const char *argv[7] = {by_sha ? "EVALSHA" : "EVAL", by_sha ? w->sha : SCRIPT, "1", key, rate, burst, ttl};
    size_t len[7];
    for (int i = 0; i < 7; i++) len[i] = strlen(argv[i]);
    len[3] = klen;
    return redisAsyncCommandArgv(w->ac, on_reply, p, 7, argv, len) == REDIS_OK ? 0 : -1;
}

static sk_status decide_global(ratelimit *rl, worker *w, sk_req *r, sk_str key)
{
    verdict v;
    int result;
    if (!w || !w->ac || !w->connected) { /* counted when the connection failed */
        failure_verdict(rl, &v, &result);
        return answer(rl, r, &v, result);
    }
    size_t plen = strlen(rl->redis_prefix);
    pending *p = malloc(sizeof(*p) + plen + key.len + 1);
    if (!p) {
        rl->host->log(rl->self, SK_LOG_ERROR, "out of memory");
        return SK_ERROR;
    }
    memset(p, 0, sizeof *p);
    p->w = w;
    p->r = r;
    p->key = (char *)(p + 1);
    memcpy(p->key, rl->redis_prefix, plen);
    if (key.len) memcpy(p->key + plen, key.ptr, key.len);
    p->klen = plen + key.len;
    p->key[p->klen] = 0;
    if (send_eval(w, p, p->key, p->klen, w->sha[0] != 0) != 0) {
        free(p);
        rl->host->metric_add(rl->redis_errors, 1);
        failure_verdict(rl, &v, &result);
        return answer(rl, r, &v, result);
    }
    p->timer = rl->host->timer_start(w->loop, rl->redis_timeout_ms, p_timeout, p);
    if (!p->timer) {
        /* no timer: decide now by failure_mode, let the reply be dropped */
        p->r = NULL;
        failure_verdict(rl, &v, &result);
        return answer(rl, r, &v, result);
    }
    p->next = w->head;
    if (w->head) w->head->prev = p;
    w->head = p;
    return SK_PAUSE;
}

static int worker_init(void *inst, sk_loop *loop, void **wdata)
{
    ratelimit *rl = inst;
    *wdata = NULL;
    if (!rl->global) return 0;
    worker *w = calloc(1, sizeof(*w));
    if (!w) return -1;
    w->rl = rl;
    w->loop = loop;
    w->backoff_ms = 100;
    *wdata = w;
    w_connect(w);
    return 0;
}

static void worker_fini(void *inst, void *wdata)
{
    ratelimit *rl = inst;
    worker *w = wdata;
    if (!w) return;
    w->closing = 1;
    if (w->retry) rl->host->timer_stop(w->retry);
    w->retry = NULL;
    /* requests still paused here were cancelled by the host already */
    for (pending *p = w->head; p; p = p->next) {
        p->r = NULL;
        if (p->timer) rl->host->timer_stop(p->timer);
        p->timer = NULL;
    }
    w->head = NULL;
    if (w->ac) redisAsyncFree(w->ac); /* calls on_reply(NULL) for what is in flight */
    free(w);
}

static void on_cancel(void *inst, void *wdata, sk_req *r)
{
    ratelimit *rl = inst;
    worker *w = wdata;
    if (!w) return;
    for (pending *p = w->head; p; p = p->next) {
        if (p->r != r) continue;
        p->r = NULL;
        p_unlink(p);
        if (p->timer) rl->host->timer_stop(p->timer);
        p->timer = NULL;
        p_maybe_free(p);
        return;
    }
}

/* ---- request hooks ---- */

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    ratelimit *rl = inst;
    sk_str key = request_key(rl, r);
    if (!key.ptr) key.len = 0;
    if (rl->global) return decide_global(rl, wdata, r, key);
    verdict v;
    if (decide(rl, key.ptr ? key.ptr : "", key.len, &v) < 0) {
        rl->host->log(rl->self, SK_LOG_ERROR, "out of memory for a new bucket");
        return SK_ERROR;
    }
    return answer(rl, r, &v, v.allowed ? RESULT_ALLOWED : RESULT_LIMITED);
}

/* headers = on: the upstream's response gets the policy and the state the
 * request's decision left (saved in metadata by on_request). */
static sk_status on_response(void *inst, void *wdata, sk_req *r)
{
    ratelimit *rl = inst;
    const sk_host_api *h = rl->host;
    (void)wdata;
    if (!rl->headers) return SK_CONTINUE;
    const char *v = h->meta(r, rl->meta_key);
    if (!v) return SK_CONTINUE;
    if (h->add_response_header(r, "ratelimit-policy", rl->policy) != 0 ||
        h->add_response_header(r, "ratelimit", v) != 0) {
        h->log(rl->self, SK_LOG_ERROR, "adding the RateLimit headers failed");
        return SK_ERROR;
    }
    return SK_CONTINUE;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "ratelimit",
    .description = "token-bucket rate limits per key, for the sidecar or shared through Redis",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .on_request = on_request,
    .on_response = on_response,
    .on_cancel = on_cancel,
};
