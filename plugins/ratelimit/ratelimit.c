/*
 * ratelimit.so — token-bucket rate limits per key, one limit for the whole
 * sidecar (every worker draws from the same buckets).
 *
 *     [plugin ratelimit]
 *     rate = 100/s          N/s, N/m or N/h (N a whole number, 1..1000000000)
 *     burst = 200           bucket size; default N of rate
 *     key = client_ip       client_ip | header:NAME | identity | meta:NAME | route | all
 *     scope = local         local only in this build (global/Redis: not yet)
 *     max_keys = 100000     buckets kept; the least recently used is dropped beyond
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
 * Decisions are counted in sidekick_plugin_ratelimit_decisions_total
 * {instance, result = allowed | limited}.
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

#define NIL            UINT32_MAX
#define MAX_RATE       1000000000ull
#define MAX_KEYS_LIMIT 10000000ull
#define SHARDS_BIG     64
#define SHARD_MIN_KEYS 4096 /* max_keys from which the table is sharded */

enum key_kind { KEY_CLIENT_IP, KEY_HEADER, KEY_IDENTITY, KEY_META, KEY_ROUTE, KEY_ALL };
enum { RESULT_ALLOWED = 0, RESULT_LIMITED = 1 };

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

/* A part of the table with its own lock. */
typedef struct shard {
    pthread_mutex_t mu;
    entry *e;       /* cap entries */
    uint32_t cap;   /* most keys kept */
    uint32_t used;  /* entries handed out so far (never shrinks) */
    uint32_t *slot; /* nslot heads of hash chains, NIL when empty */
    uint32_t mask;  /* nslot - 1 (nslot a power of two >= 2 * cap) */
    uint32_t head, tail; /* LRU: head most recent, tail next to drop */
} shard;

typedef struct ratelimit {
    const sk_host_api *host;
    sk_instance *self;
    int kind;         /* enum key_kind */
    char *key_name;   /* header or metadata name for KEY_HEADER / KEY_META */
    double rate;      /* tokens per second */
    double burst;     /* bucket size */
    uint64_t max_keys;
    int headers;      /* headers = on */
    char *policy;     /* RateLimit-Policy value */
    char *meta_key;   /* "ratelimit.NAME": the RateLimit value for on_response */
    char *pname;      /* the policy name as an sf-string, quotes included */
    uint64_t seed;    /* hash seed, random per instance */
    sk_metric *decisions;
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
    if (e->prev != NIL) s->e[e->prev].next = e->next;
    else s->head = e->next;
    if (e->next != NIL) s->e[e->next].prev = e->prev;
    else s->tail = e->prev;
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
    rl->shards = calloc(rl->nshards, sizeof(shard));
    if (!rl->shards) return -1;
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

static int parse_key(ratelimit *rl, const char *v)
{
    static const struct {
        const char *name;
        int kind;
    } plain[] = {{"client_ip", KEY_CLIENT_IP}, {"identity", KEY_IDENTITY}, {"route", KEY_ROUTE}, {"all", KEY_ALL}};
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

#define FAIL(...)                                  \
    do {                                           \
        snprintf(err, err_size, __VA_ARGS__);      \
        destroy(rl);                               \
        return NULL;                               \
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
    int have_rate = 0;
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
                FAIL("ratelimit: line %d: burst: expected a whole number in 1..%llu, not '%s'", line, MAX_RATE,
                     v);
        } else if (strcmp(k, "key") == 0) {
            if (parse_key(rl, v) < 0)
                FAIL("ratelimit: line %d: key: expected client_ip, header:NAME, identity, meta:NAME, route or "
                     "all, not '%s'",
                     line, v);
        } else if (strcmp(k, "max_keys") == 0) {
            unsigned long long m;
            if (parse_count(v, MAX_KEYS_LIMIT, &m) < 0)
                FAIL("ratelimit: line %d: max_keys: expected a whole number in 1..%llu, not '%s'", line,
                     MAX_KEYS_LIMIT, v);
            rl->max_keys = m;
        } else if (strcmp(k, "headers") == 0) {
            if (strcmp(v, "on") == 0) rl->headers = 1;
            else if (strcmp(v, "off") == 0) rl->headers = 0;
            else FAIL("ratelimit: line %d: headers: expected on or off, not '%s'", line, v);
        } else if (strcmp(k, "scope") == 0) {
            if (strcmp(v, "global") == 0)
                FAIL("ratelimit: line %d: scope: global (Redis) is not supported by this build yet", line);
            if (strcmp(v, "local") != 0)
                FAIL("ratelimit: line %d: scope: expected local or global, not '%s'", line, v);
        } else if (strcmp(k, "redis") == 0 || strcmp(k, "redis_timeout") == 0 ||
                   strcmp(k, "failure_mode") == 0) {
            FAIL("ratelimit: line %d: %s: only for scope = global, which this build does not support yet", line,
                 k);
        } else {
            FAIL("ratelimit: line %d: unknown key '%s' (known: rate, burst, key, scope, max_keys, headers)", line,
                 k);
        }
    }
    if (!have_rate) FAIL("ratelimit: rate is required (N/s, N/m or N/h)");
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

    static const char *const results[] = {"allowed", "limited"};
    rl->decisions = host->counter_labelled(self, "ratelimit_decisions_total", "Rate limit decisions by result.",
                                           "result", results, 2);
    if (!rl->decisions) FAIL("ratelimit: could not register ratelimit_decisions_total");
    if (getrandom(&rl->seed, sizeof(rl->seed), GRND_NONBLOCK) != sizeof(rl->seed))
        rl->seed = now_ns() * 0x9e3779b97f4a7c15ull;
    if (make_table(rl) < 0) FAIL("ratelimit: out of memory for max_keys = %llu", (unsigned long long)rl->max_keys);
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

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    ratelimit *rl = inst;
    const sk_host_api *h = rl->host;
    (void)wdata;
    sk_str key = request_key(rl, r);
    verdict v;
    if (decide(rl, key.ptr ? key.ptr : "", key.ptr ? key.len : 0, &v) < 0) {
        h->log(rl->self, SK_LOG_ERROR, "out of memory for a new bucket");
        return SK_ERROR;
    }
    char state[64];
    snprintf(state, sizeof state, ";r=%llu;t=%llu", (unsigned long long)v.remaining,
             (unsigned long long)(v.allowed ? v.reset_s : v.retry_s));
    char value[256];
    if (v.allowed) {
        h->metric_add_at(rl->decisions, RESULT_ALLOWED, 1);
        if (rl->headers) {
            snprintf(value, sizeof value, "%s%s", rl->pname, state);
            if (h->set_meta(r, rl->meta_key, value) != 0) {
                h->log(rl->self, SK_LOG_ERROR, "set_meta failed (out of memory?)");
                return SK_ERROR;
            }
        }
        return SK_CONTINUE;
    }
    h->metric_add_at(rl->decisions, RESULT_LIMITED, 1);
    char retry[24];
    snprintf(retry, sizeof retry, "%llu", (unsigned long long)v.retry_s);
    snprintf(value, sizeof value, "%s%s", rl->pname, state);
    const char *hdrs[] = {"content-type", "text/plain", "retry-after", retry,
                          rl->headers ? "ratelimit-policy" : NULL, rl->policy, "ratelimit", value, NULL};
    static const char body[] = "rate limited\n";
    if (h->respond(r, 429, "rate_limited", body, sizeof body - 1, hdrs) != 0) {
        h->log(rl->self, SK_LOG_ERROR, "respond failed");
        return SK_ERROR;
    }
    return SK_RESPOND;
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
    .description = "token-bucket rate limits per key, shared by all workers",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
    .on_response = on_response,
};
