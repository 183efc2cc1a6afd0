/*
 * auth.so — who is calling, and may they: JWT (JWS) and API keys, then
 * allow/deny rules on identity, claims, consumer, method and path.
 *
 *     [plugin auth]
 *     jwt_algorithms = RS256, ES256
 *     jwks_file = keys/jwks.json        ; or jwt_key = FILE (PEM public key or HS secret)
 *     jwt_issuer = https://id.example
 *     jwt_audience = api, web
 *     jwt_from = header:authorization, cookie:token
 *     jwt_leeway = 60s
 *     jwt_require_exp = on
 *     claim_header = sub:x-user, tenant:x-tenant
 *     api_keys_file = keys/api-keys.txt
 *     api_key_from = header:x-api-key
 *     strip_credentials = on
 *     allow_missing = off
 *     rule = allow identity=spiffe://cluster.local/ns/shop/sa/frontend method=POST prefix=/orders
 *     rule = deny prefix=/admin
 *     default = deny
 *
 * See docs/plugins/auth.md. Built against <sidekick/plugin.h> alone; JWS
 * parsing and signatures are in jwt.c (wolfCrypt, jansson).
 */
#include <sidekick/plugin.h>

#include "jwt.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_LIST      16 /* sources, audiences, claim headers */
#define MAX_RULES     256
#define MAX_CONDS     8
#define MAX_TOKEN     8192       /* bytes of a token considered at all */
#define CACHE_SLOTS   1024       /* verified tokens per worker (direct-mapped) */
#define MAX_FILE      (4u << 20) /* bytes of a key file */
#define JWKS_MAX_BODY (1u << 20) /* bytes of a fetched JWK set */
#define KID_REFETCH_S 30         /* at most one unknown-kid refetch per this many seconds */
#define TICK_MS       1000       /* main-loop poll of refetch requests from workers */

enum src_kind { SRC_AUTHZ, SRC_HEADER, SRC_COOKIE, SRC_QUERY };
typedef struct source {
    int kind;
    char *name; /* lower case header name / cookie / query parameter */
} source;

enum cond_kind { C_IDENTITY, C_CLAIM, C_CONSUMER, C_METHOD, C_PREFIX, C_PATH };
typedef struct cond {
    int kind;
    char *claim; /* C_CLAIM: the claim name */
    char **alts; /* NULL-terminated alternatives (a|b) */
} cond;
typedef struct rule {
    int allow;
    cond c[MAX_CONDS];
    size_t n;
} rule;

typedef struct apikey {
    char *key, *consumer;
    size_t len;
} apikey;

/* Metric label values: results. */
enum result {
    R_ALLOWED,
    R_ANONYMOUS,
    R_MISSING,
    R_MALFORMED,
    R_BAD_ALG,
    R_UNKNOWN_KEY,
    R_BAD_SIGNATURE,
    R_EXPIRED,
    R_NOT_YET_VALID,
    R_BAD_ISSUER,
    R_BAD_AUDIENCE,
    R_NO_EXP,
    R_BAD_API_KEY,
    R_FORBIDDEN,
    R_ERROR,
    R_N
};
static const char *const result_names[R_N] = {"allowed",       "anonymous",   "missing",       "malformed",
                                              "bad_alg",       "unknown_key", "bad_signature", "expired",
                                              "not_yet_valid", "bad_issuer",  "bad_audience",  "no_exp",
                                              "bad_api_key",   "forbidden",   "error"};

typedef struct auth {
    const sk_host_api *host;
    sk_instance *self;
    jwt_keyset keys; /* swapped under lock (write: main, jwks_url) */
    pthread_rwlock_t lock;
    int lock_ok;
    atomic_uint gen; /* bumped at each swap: cached tokens of older sets are misses */
    int have_jwt;
    /* jwks_url */
    char *jwks_url;
    uint64_t refresh_s;
    sk_timer *timer;
    sk_http_call *call;
    char *body;
    size_t body_len;
    int status;
    atomic_int want_refetch; /* a worker saw an unknown kid */
    int64_t next_refresh, last_kid_fetch;
    int fetch_for_kid;
    sk_metric *fetches;
    unsigned algmask;
    char *issuer;
    char *aud[MAX_LIST + 1];
    source jwt_from[MAX_LIST];
    size_t njwt_from;
    int64_t leeway;
    int require_exp;
    char *claim[MAX_LIST], *claim_hdr[MAX_LIST], *claim_meta[MAX_LIST];
    size_t nclaims;
    apikey *apikeys;
    size_t napikeys;
    int have_apikeys;
    source key_from[MAX_LIST];
    size_t nkey_from;
    int strip, allow_missing;
    rule *rules;
    size_t nrules;
    int default_allow;
    sk_metric *decisions;
} auth;

typedef struct cache_entry {
    char *tok;
    size_t len;
    uint64_t hash;
    json_t *claims;
    unsigned gen;
} cache_entry;

typedef struct worker {
    cache_entry slot[CACHE_SLOTS];
} worker;

/* ---- small helpers ---- */

static char *dupn(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static char *trim_dup(const char *p, size_t n)
{
    while (n && isspace((unsigned char)*p)) p++, n--;
    while (n && isspace((unsigned char)p[n - 1])) n--;
    return dupn(p, n);
}

/* Splits v at `sep` into trimmed, non-empty items (at most max). -1 on too many/OOM. */
static int split(const char *v, char sep, char **out, size_t max, size_t *n)
{
    *n = 0;
    while (*v) {
        const char *e = strchr(v, sep);
        size_t len = e ? (size_t)(e - v) : strlen(v);
        char *it = trim_dup(v, len);
        if (!it) return -1;
        if (*it) {
            if (*n == max) {
                free(it);
                return -1;
            }
            out[(*n)++] = it;
        } else {
            free(it);
        }
        v += len;
        if (*v) v++;
    }
    return 0;
}

static void free_list(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++) free(l[i]);
}

static int parse_bool(const char *v, int *out)
{
    if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1")) return *out = 1, 0;
    if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0")) return *out = 0, 0;
    return -1;
}

/* "60", "60s", "2m", "1h" → seconds. */
static int parse_seconds(const char *v, int64_t *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno || end == v || n < 0) return -1;
    int64_t mul = 1;
    if (!strcmp(end, "") || !strcmp(end, "s"))
        mul = 1;
    else if (!strcmp(end, "m"))
        mul = 60;
    else if (!strcmp(end, "h"))
        mul = 3600;
    else
        return -1;
    if (n > 86400LL * 365) return -1;
    *out = n * mul;
    return 0;
}

static int read_file(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char *b = malloc(MAX_FILE + 1);
    size_t n = b ? fread(b, 1, MAX_FILE + 1, f) : 0;
    int bad = !b || ferror(f) || n > MAX_FILE;
    fclose(f);
    if (bad) {
        free(b);
        return -1;
    }
    b[n] = 0;
    *buf = b;
    *len = n;
    return 0;
}

/* header:NAME, cookie:NAME, query:NAME (jwt) — header:authorization means Bearer. */
static int parse_source(const char *item, int allow_cookie, source *s)
{
    const char *colon = strchr(item, ':');
    if (!colon || !colon[1]) return -1;
    size_t tl = (size_t)(colon - item);
    const char *name = colon + 1;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-_.", *p)) return -1;
    if (tl == 6 && !strncmp(item, "header", 6))
        s->kind = SRC_HEADER;
    else if (tl == 6 && !strncmp(item, "cookie", 6) && allow_cookie)
        s->kind = SRC_COOKIE;
    else if (tl == 5 && !strncmp(item, "query", 5))
        s->kind = SRC_QUERY;
    else
        return -1;
    s->name = strdup(name);
    if (!s->name) return -1;
    if (s->kind == SRC_HEADER) {
        for (char *p = s->name; *p; p++) *p = (char)tolower((unsigned char)*p);
        if (!strcmp(s->name, "authorization")) s->kind = SRC_AUTHZ;
    }
    return 0;
}

static void destroy(void *inst)
{
    auth *a = inst;
    if (!a) return;
    if (a->timer) a->host->timer_stop(a->timer);
    if (a->call) a->host->http_cancel(a->call);
    free(a->body);
    free(a->jwks_url);
    if (a->lock_ok) pthread_rwlock_destroy(&a->lock);
    jwt_keyset_free(&a->keys);
    free(a->issuer);
    for (size_t i = 0; a->aud[i]; i++) free(a->aud[i]);
    for (size_t i = 0; i < a->njwt_from; i++) free(a->jwt_from[i].name);
    for (size_t i = 0; i < a->nkey_from; i++) free(a->key_from[i].name);
    for (size_t i = 0; i < a->nclaims; i++) free(a->claim[i]), free(a->claim_hdr[i]), free(a->claim_meta[i]);
    for (size_t i = 0; i < a->napikeys; i++) {
        volatile char *k = a->apikeys[i].key;
        for (size_t j = 0; j < a->apikeys[i].len; j++) k[j] = 0;
        free(a->apikeys[i].key);
        free(a->apikeys[i].consumer);
    }
    free(a->apikeys);
    for (size_t i = 0; i < a->nrules; i++)
        for (size_t j = 0; j < a->rules[i].n; j++) {
            cond *c = &a->rules[i].c[j];
            free(c->claim);
            for (char **p = c->alts; p && *p; p++) free(*p);
            free(c->alts);
        }
    free(a->rules);
    free(a);
}

/* "allow method=GET prefix=/orders" */
static int parse_rule(const char *v, rule *r, char *err, size_t es)
{
    char *words[MAX_CONDS + 1];
    size_t n = 0;
    memset(r, 0, sizeof(*r));
    if (split(v, ' ', words, MAX_CONDS + 1, &n) != 0 || n == 0) {
        snprintf(err, es, "expected 'allow|deny COND...' with at most %d conditions", MAX_CONDS);
        free_list(words, n);
        return -1;
    }
    int rc = -1;
    if (!strcmp(words[0], "allow"))
        r->allow = 1;
    else if (!strcmp(words[0], "deny"))
        r->allow = 0;
    else {
        snprintf(err, es, "a rule starts with allow or deny, not '%s'", words[0]);
        goto out;
    }
    for (size_t i = 1; i < n; i++) {
        char *eq = strchr(words[i], '=');
        cond *c = &r->c[r->n];
        if (!eq || !eq[1]) {
            snprintf(err, es, "'%s': expected NAME=VALUE", words[i]);
            goto out;
        }
        *eq = 0;
        const char *k = words[i];
        if (!strcmp(k, "identity"))
            c->kind = C_IDENTITY;
        else if (!strncmp(k, "claim.", 6) && k[6])
            c->kind = C_CLAIM;
        else if (!strcmp(k, "consumer"))
            c->kind = C_CONSUMER;
        else if (!strcmp(k, "method"))
            c->kind = C_METHOD;
        else if (!strcmp(k, "prefix"))
            c->kind = C_PREFIX;
        else if (!strcmp(k, "path"))
            c->kind = C_PATH;
        else {
            snprintf(err, es, "unknown condition '%s' (identity, claim.NAME, consumer, method, prefix, path)",
                     k);
            goto out;
        }
        if ((c->kind == C_PREFIX || c->kind == C_PATH) && eq[1] != '/') {
            snprintf(err, es, "%s=%s: a path starts with /", k, eq + 1);
            goto out;
        }
        char *alts[MAX_LIST];
        size_t na;
        if (split(eq + 1, '|', alts, MAX_LIST, &na) != 0 || na == 0) {
            free_list(alts, na);
            snprintf(err, es, "%s: at most %d alternatives", k, MAX_LIST);
            goto out;
        }
        c->alts = calloc(na + 1, sizeof(char *));
        if (!c->alts || (c->kind == C_CLAIM && !(c->claim = strdup(k + 6)))) {
            free_list(alts, na);
            snprintf(err, es, "out of memory");
            r->n++;
            goto out;
        }
        memcpy(c->alts, alts, na * sizeof(char *));
        r->n++;
    }
    rc = 0;
out:
    free_list(words, n);
    return rc;
}

static int load_api_keys(auth *a, const char *path, char *err, size_t es)
{
    char *buf;
    size_t len;
    if (read_file(path, &buf, &len) != 0) {
        snprintf(err, es, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
        return -1;
    }
    int line = 0, rc = 0;
    for (char *p = buf, *nl; p && *p && rc == 0; p = nl ? nl + 1 : NULL) {
        nl = strchr(p, '\n');
        if (nl) *nl = 0;
        line++;
        char *words[3];
        size_t n = 0;
        for (char *t = p; *t; t++)
            if (*t == '\t' || *t == '\r') *t = ' ';
        if (*p == '#') continue;
        if (split(p, ' ', words, 3, &n) != 0 || (n != 0 && n != 2)) {
            free_list(words, n);
            snprintf(err, es, "%s:%d: expected 'KEY CONSUMER'", path, line);
            rc = -1;
            break;
        }
        if (n == 0) continue;
        apikey *nk = realloc(a->apikeys, (a->napikeys + 1) * sizeof(*nk));
        if (!nk) {
            free_list(words, n);
            snprintf(err, es, "out of memory");
            rc = -1;
            break;
        }
        a->apikeys = nk;
        a->apikeys[a->napikeys++] = (apikey){words[0], words[1], strlen(words[0])};
    }
    free(buf);
    return rc;
}

static int load_jwt_key(auth *a, const char *path, char *err, size_t es)
{
    char *buf, why[200];
    size_t len;
    if (read_file(path, &buf, &len) != 0) {
        snprintf(err, es, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
        return -1;
    }
    int rc;
    if (strstr(buf, "-----BEGIN")) {
        rc = jwt_keyset_from_pem(&a->keys, buf, len, why, sizeof(why));
        if (rc) snprintf(err, es, "%s: %s", path, why);
    } else {
        size_t n = len;
        if (n && buf[n - 1] == '\n') n--;
        if (n && buf[n - 1] == '\r') n--;
        rc = n < 32 ? -1 : jwt_keyset_from_secret(&a->keys, (unsigned char *)buf, n);
        if (rc) snprintf(err, es, "%s: an HS secret has at least 32 bytes", path);
    }
    volatile char *v = buf;
    for (size_t i = 0; i < len; i++) v[i] = 0;
    free(buf);
    return rc;
}

static int load_jwks(auth *a, const char *path, char *err, size_t es)
{
    char *buf, why[200];
    size_t len, skipped;
    if (read_file(path, &buf, &len) != 0) {
        snprintf(err, es, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
        return -1;
    }
    int rc = jwt_keyset_from_jwks(&a->keys, buf, len, &skipped, why, sizeof(why));
    free(buf);
    if (rc)
        snprintf(err, es, "%s: %s", path, why);
    else if (skipped)
        a->host->log(a->self, SK_LOG_WARN, "%s: %zu key(s) skipped (unsupported or malformed)", path,
                     skipped);
    return rc;
}

/* ---- jwks_url (main thread) ---- */

static int64_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec;
}

static void jwks_on_head(void *arg, int status, const sk_str *names, const sk_str *values, size_t n)
{
    ((auth *)arg)->status = status;
}

static void jwks_on_body(void *arg, const char *data, size_t len)
{
    auth *a = arg;
    char *nb = a->body_len + len <= JWKS_MAX_BODY ? realloc(a->body, a->body_len + len + 1) : NULL;
    if (!nb) return; /* max_body makes the call fail first */
    a->body = nb;
    memcpy(a->body + a->body_len, data, len);
    a->body_len += len;
}

/* The fetch is over: a good set replaces the keys; anything else keeps them. */
static void jwks_on_done(void *arg, int error, const char *message)
{
    auth *a = arg;
    char why[200];
    a->call = NULL;
    int64_t now = mono_s();
    jwt_keyset fresh;
    size_t skipped = 0;
    int ok = 0;
    if (error == SK_HTTP_ECANCELLED) {
        free(a->body), a->body = NULL, a->body_len = 0;
        return;
    }
    if (error)
        snprintf(why, sizeof(why), "%s", message);
    else if (a->status != 200)
        snprintf(why, sizeof(why), "status %d", a->status);
    else
        ok = jwt_keyset_from_jwks(&fresh, a->body ? a->body : "", a->body_len, &skipped, why, sizeof(why)) ==
             0;
    free(a->body), a->body = NULL, a->body_len = 0;
    if (ok) {
        pthread_rwlock_wrlock(&a->lock);
        jwt_keyset old = a->keys;
        a->keys = fresh;
        atomic_fetch_add(&a->gen, 1);
        pthread_rwlock_unlock(&a->lock);
        jwt_keyset_free(&old);
        a->host->metric_add_at(a->fetches, 0, 1);
        a->host->log(a->self, SK_LOG_INFO, "jwks_url %s: %zu key(s)%s", a->jwks_url, fresh.n,
                     skipped ? ", some skipped" : "");
        a->next_refresh = now + (int64_t)a->refresh_s;
    } else {
        a->host->metric_add_at(a->fetches, 1, 1);
        a->host->log(a->self, SK_LOG_WARN, "jwks_url %s: fetch failed (%s), keeping the last key set",
                     a->jwks_url, why);
        /* Without any key yet, try again soon; else at the next refresh. */
        int empty = a->keys.n == 0;
        a->next_refresh = now + (empty && a->refresh_s > 5 ? 5 : (int64_t)a->refresh_s);
    }
}

/* Starts a fetch unless one is in flight. */
static void jwks_fetch(auth *a, int for_kid)
{
    if (a->call) return;
    sk_http_request rq = {
        .method = "GET",
        .url = a->jwks_url,
        .timeout_ms = 10000,
        .connect_timeout_ms = 5000,
        .max_body = JWKS_MAX_BODY,
        .on_head = jwks_on_head,
        .on_body = jwks_on_body,
        .on_done = jwks_on_done,
        .arg = a,
    };
    static const char *const hdrs[] = {"accept", "application/json", NULL};
    rq.headers = hdrs;
    a->status = 0;
    a->fetch_for_kid = for_kid;
    int64_t now = mono_s();
    a->next_refresh = now + (int64_t)a->refresh_s;
    int rc = a->host->http_start(a->self, &rq, &a->call);
    if (rc != 0) {
        a->call = NULL;
        a->host->metric_add_at(a->fetches, 1, 1);
        a->next_refresh = now + 5;
    }
}

/* Every TICK_MS on the main loop: the periodic refresh, and the refetch a
 * worker asked for (an unknown kid), at most once per KID_REFETCH_S. */
static void jwks_tick(void *arg)
{
    auth *a = arg;
    a->timer = NULL;
    int64_t now = mono_s();
    if (!a->call) {
        if (atomic_load(&a->want_refetch) &&
            (a->last_kid_fetch == 0 || now - a->last_kid_fetch >= KID_REFETCH_S)) {
            atomic_store(&a->want_refetch, 0);
            a->last_kid_fetch = now;
            jwks_fetch(a, 1);
        } else if (now >= a->next_refresh) {
            jwks_fetch(a, 0);
        }
    }
    a->timer = a->host->timer_start(a->host->main_loop(), TICK_MS, jwks_tick, a);
    if (!a->timer)
        a->host->log(a->self, SK_LOG_ERROR, "jwks_url: cannot re-arm the refresh timer (out of memory)");
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    char msg[400];
    auth *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, err_size, "auth: out of memory");
        return NULL;
    }
    a->host = host;
    a->self = self;
    a->algmask = (1u << JWT_NALGS) - 1;
    a->leeway = 60;
    a->require_exp = 1;
    a->strip = 1;
    a->default_allow = -1;
    a->refresh_s = 600;
    if (pthread_rwlock_init(&a->lock, NULL) != 0) {
        snprintf(err, err_size, "auth: cannot create a lock");
        free(a);
        return NULL;
    }
    a->lock_ok = 1;
    int line = 0, have_keysrc = 0, strip_set = 0;
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        line = keys[i].line;
        msg[0] = 0;
        if (!strcmp(k, "jwt_algorithms")) {
            char *it[JWT_NALGS + 1];
            size_t n;
            a->algmask = 0;
            if (split(v, ',', it, JWT_NALGS + 1, &n) != 0 || n == 0)
                snprintf(msg, sizeof(msg), "a list of algorithms");
            for (size_t j = 0; j < n && !msg[0]; j++) {
                int alg = jwt_alg_from_name(it[j], strlen(it[j]));
                if (alg < 0)
                    snprintf(msg, sizeof(msg),
                             "unknown algorithm '%s' (HS256/384/512, RS256/384/512, "
                             "PS256/384/512, ES256/384, EdDSA; never none)",
                             it[j]);
                else
                    a->algmask |= 1u << alg;
            }
            free_list(it, n);
        } else if (!strcmp(k, "jwt_key") || !strcmp(k, "jwks_file")) {
            if (have_keysrc)
                snprintf(msg, sizeof(msg), "one of jwt_key, jwks_file");
            else if ((!strcmp(k, "jwt_key") ? load_jwt_key : load_jwks)(a, v, msg, sizeof(msg)) == 0)
                have_keysrc = a->have_jwt = 1;
        } else if (!strcmp(k, "jwks_url")) {
            if (have_keysrc)
                snprintf(msg, sizeof(msg), "one of jwt_key, jwks_file, jwks_url");
            else if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0)
                snprintf(msg, sizeof(msg), "an http:// or https:// URL");
            else if (strncmp(v, "https://", 8) == 0 && host->abi_minor < 2)
                snprintf(msg, sizeof(msg), "an http:// URL (this host's HTTP client has no https)");
            else if (!(a->jwks_url = strdup(v)))
                snprintf(msg, sizeof(msg), "out of memory");
            else
                have_keysrc = a->have_jwt = 1;
        } else if (!strcmp(k, "jwks_refresh")) {
            int64_t sec;
            if (parse_seconds(v, &sec) != 0 || sec < 1)
                snprintf(msg, sizeof(msg), "a duration of at least 1s (10m)");
            else
                a->refresh_s = (uint64_t)sec;
        } else if (!strcmp(k, "jwt_issuer")) {
            free(a->issuer);
            if (!(a->issuer = strdup(v))) snprintf(msg, sizeof(msg), "out of memory");
        } else if (!strcmp(k, "jwt_audience")) {
            size_t n;
            for (size_t j = 0; a->aud[j]; j++) free(a->aud[j]), a->aud[j] = NULL;
            if (split(v, ',', a->aud, MAX_LIST, &n) != 0 || n == 0)
                snprintf(msg, sizeof(msg), "1..%d audiences", MAX_LIST);
        } else if (!strcmp(k, "jwt_from") || !strcmp(k, "api_key_from")) {
            int jwt = !strcmp(k, "jwt_from");
            source *s = jwt ? a->jwt_from : a->key_from;
            size_t *ns = jwt ? &a->njwt_from : &a->nkey_from;
            char *it[MAX_LIST];
            size_t n;
            for (size_t j = 0; j < *ns; j++) free(s[j].name);
            *ns = 0;
            if (split(v, ',', it, MAX_LIST, &n) != 0 || n == 0)
                snprintf(msg, sizeof(msg), "1..%d sources", MAX_LIST);
            for (size_t j = 0; j < n && !msg[0]; j++) {
                if (parse_source(it[j], jwt, &s[*ns]) != 0)
                    snprintf(msg, sizeof(msg), "'%s': expected header:NAME%s or query:NAME", it[j],
                             jwt ? ", cookie:NAME" : "");
                else
                    (*ns)++;
            }
            free_list(it, n);
        } else if (!strcmp(k, "jwt_leeway")) {
            if (parse_seconds(v, &a->leeway) != 0) snprintf(msg, sizeof(msg), "a duration (60s, 2m)");
        } else if (!strcmp(k, "jwt_require_exp")) {
            if (parse_bool(v, &a->require_exp) != 0) snprintf(msg, sizeof(msg), "on or off");
        } else if (!strcmp(k, "strip_credentials")) {
            if (parse_bool(v, &a->strip) != 0) snprintf(msg, sizeof(msg), "on or off");
            strip_set = 1;
        } else if (!strcmp(k, "allow_missing")) {
            if (parse_bool(v, &a->allow_missing) != 0) snprintf(msg, sizeof(msg), "on or off");
        } else if (!strcmp(k, "claim_header")) {
            char *it[MAX_LIST];
            size_t n;
            if (split(v, ',', it, MAX_LIST, &n) != 0 || a->nclaims + n > MAX_LIST)
                snprintf(msg, sizeof(msg), "at most %d claim:header pairs", MAX_LIST);
            for (size_t j = 0; j < n && !msg[0]; j++) {
                char *c = strchr(it[j], ':');
                int ok = c && c != it[j] && c[1];
                for (char *p = c ? c + 1 : NULL; ok && *p; p++) {
                    if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') ok = 0;
                    *p = (char)tolower((unsigned char)*p);
                }
                if (!ok) {
                    snprintf(msg, sizeof(msg), "'%s': expected CLAIM:HEADER", it[j]);
                    break;
                }
                size_t m = a->nclaims++;
                a->claim[m] = dupn(it[j], (size_t)(c - it[j]));
                a->claim_hdr[m] = strdup(c + 1);
                a->claim_meta[m] = malloc(strlen(a->claim[m] ? a->claim[m] : "") + 5);
                if (!a->claim[m] || !a->claim_hdr[m] || !a->claim_meta[m])
                    snprintf(msg, sizeof(msg), "out of memory");
                else
                    sprintf(a->claim_meta[m], "jwt.%s", a->claim[m]);
            }
            free_list(it, n);
        } else if (!strcmp(k, "api_keys_file")) {
            if (a->have_apikeys)
                snprintf(msg, sizeof(msg), "given twice");
            else if (load_api_keys(a, v, msg, sizeof(msg)) == 0)
                a->have_apikeys = 1;
        } else if (!strcmp(k, "rule")) {
            rule *nr = a->nrules < MAX_RULES ? realloc(a->rules, (a->nrules + 1) * sizeof(*nr)) : NULL;
            if (!nr)
                snprintf(msg, sizeof(msg), "at most %d rules", MAX_RULES);
            else {
                a->rules = nr;
                int rc = parse_rule(v, &a->rules[a->nrules], msg, sizeof(msg));
                a->nrules++; /* freed by destroy, even half-parsed */
                (void)rc;
            }
        } else if (!strcmp(k, "default")) {
            if (!strcmp(v, "allow"))
                a->default_allow = 1;
            else if (!strcmp(v, "deny"))
                a->default_allow = 0;
            else
                snprintf(msg, sizeof(msg), "allow or deny");
        } else {
            snprintf(
                msg, sizeof(msg),
                "unknown key (known: jwt_algorithms, jwt_key, jwks_file, jwks_url, jwks_refresh, jwt_issuer, "
                "jwt_audience, jwt_from, "
                "jwt_leeway, jwt_require_exp, claim_header, api_keys_file, api_key_from, strip_credentials, "
                "allow_missing, rule, default)");
        }
        if (msg[0]) {
            snprintf(err, err_size, "auth: line %d: %s: %s", line, k, msg);
            destroy(a);
            return NULL;
        }
    }
    if (!a->njwt_from) {
        a->jwt_from[0] = (source){SRC_AUTHZ, strdup("authorization")};
        a->njwt_from = a->jwt_from[0].name ? 1 : 0;
    }
    if (!a->nkey_from) {
        a->key_from[0] = (source){SRC_HEADER, strdup("x-api-key")};
        a->nkey_from = a->key_from[0].name ? 1 : 0;
    }
    if (a->default_allow < 0) a->default_allow = a->nrules ? 0 : 1;
    const char *problem = NULL;
    if (!a->have_jwt && !a->have_apikeys && !a->nrules)
        problem = "nothing to check: give jwt_key, jwks_file, api_keys_file or a rule";
    else if (!a->njwt_from || !a->nkey_from)
        problem = "out of memory";
    else if (a->algmask == 0)
        problem = "jwt_algorithms is empty";
    for (size_t i = 0; !problem && a->strip && i < a->njwt_from + a->nkey_from; i++) {
        const source *s = i < a->njwt_from ? &a->jwt_from[i] : &a->key_from[i - a->njwt_from];
        int used = i < a->njwt_from ? a->have_jwt : a->have_apikeys;
        if (used && s->kind == SRC_QUERY)
            problem = strip_set ? "strip_credentials = on cannot remove a query parameter (the plugin ABI "
                                  "cannot rewrite the query): set strip_credentials = off"
                                : "a query:NAME source needs strip_credentials = off (the plugin ABI cannot "
                                  "rewrite the query)";
    }
    if (problem) {
        snprintf(err, err_size, "auth: %s", problem);
        destroy(a);
        return NULL;
    }
    a->decisions = host->counter_labelled(self, "auth_decisions_total", "auth decisions by result", "result",
                                          result_names, R_N);
    if (a->jwks_url) {
        static const char *const fr[] = {"ok", "failed"};
        a->fetches = host->counter_labelled(self, "auth_jwks_fetches_total", "jwks_url fetches by result",
                                            "result", fr, 2);
        if (host->abi_minor < 1 || !host->http_start) {
            snprintf(err, err_size, "auth: jwks_url needs a host with the HTTP client (ABI 1.1)");
            destroy(a);
            return NULL;
        }
        jwks_fetch(a, 0);
        a->timer = host->timer_start(host->main_loop(), TICK_MS, jwks_tick, a);
        if (!a->timer) {
            snprintf(err, err_size, "auth: out of memory (timer)");
            destroy(a);
            return NULL;
        }
    }
    return a;
}

/* ---- per worker ---- */

static int worker_init(void *inst, sk_loop *loop, void **wdata)
{
    *wdata = calloc(1, sizeof(worker));
    return *wdata ? 0 : -1;
}

static void worker_fini(void *inst, void *wdata)
{
    worker *w = wdata;
    if (!w) return;
    for (size_t i = 0; i < CACHE_SLOTS; i++) {
        free(w->slot[i].tok);
        json_decref(w->slot[i].claims);
    }
    free(w);
}

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int ct_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return 0;
    unsigned char d = 0;
    for (size_t i = 0; i < alen; i++) d |= (unsigned char)(a[i] ^ b[i]);
    return d == 0;
}

/* ---- credentials ---- */

/* The value of cookie `name` in the Cookie headers, or ptr NULL. */
static sk_str find_cookie(auth *a, sk_req *r, const char *name)
{
    size_t nl = strlen(name), n = a->host->header_count(r);
    for (size_t i = 0; i < n; i++) {
        sk_str hn, hv;
        if (!a->host->header_at(r, i, &hn, &hv) || hn.len != 6 || strncasecmp(hn.ptr, "cookie", 6) || !hv.ptr)
            continue;
        const char *p = hv.ptr, *end = hv.ptr + hv.len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';')) p++;
            if (p >= end) break;
            const char *e = memchr(p, ';', (size_t)(end - p));
            if (!e) e = end;
            const char *eq = memchr(p, '=', (size_t)(e - p));
            if (eq && (size_t)(eq - p) == nl && !memcmp(p, name, nl))
                return (sk_str){eq + 1, (size_t)(e - eq - 1)};
            p = e;
        }
    }
    return (sk_str){NULL, 0};
}

static sk_str find_query(sk_str q, const char *name)
{
    size_t nl = strlen(name);
    const char *p = q.ptr, *end = q.ptr ? q.ptr + q.len : NULL;
    while (p && p < end) {
        const char *e = memchr(p, '&', (size_t)(end - p));
        if (!e) e = end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        if (eq && (size_t)(eq - p) == nl && !memcmp(p, name, nl))
            return (sk_str){eq + 1, (size_t)(e - eq - 1)};
        p = e + 1;
    }
    return (sk_str){NULL, 0};
}

/* The first credential of the sources; *which its index. */
static sk_str find_cred(auth *a, sk_req *r, const source *s, size_t n, size_t *which)
{
    for (size_t i = 0; i < n; i++) {
        sk_str v = {NULL, 0};
        if (s[i].kind == SRC_AUTHZ) {
            if (a->host->header(r, "authorization", &v) && v.len > 7 && !strncasecmp(v.ptr, "bearer ", 7)) {
                v.ptr += 7, v.len -= 7;
                while (v.len && *v.ptr == ' ') v.ptr++, v.len--;
            } else {
                v.ptr = NULL;
            }
        } else if (s[i].kind == SRC_HEADER) {
            if (!a->host->header(r, s[i].name, &v)) v.ptr = NULL;
        } else if (s[i].kind == SRC_COOKIE) {
            v = find_cookie(a, r, s[i].name);
        } else {
            v = find_query(a->host->query(r), s[i].name);
        }
        while (v.ptr && v.len && (v.ptr[v.len - 1] == ' ' || v.ptr[v.len - 1] == '\t')) v.len--;
        if (v.ptr && v.len) {
            *which = i;
            return v;
        }
    }
    return (sk_str){NULL, 0};
}

/* Removes the credential of source s (header or cookie). 0 or -1. */
static int strip_cred(auth *a, sk_req *r, const source *s)
{
    if (s->kind == SRC_AUTHZ || s->kind == SRC_HEADER) return a->host->remove_header(r, s->name);
    if (s->kind != SRC_COOKIE) return 0;
    /* Rebuild the Cookie headers without that cookie. */
    size_t nl = strlen(s->name), n = a->host->header_count(r), cap = 0, len = 0;
    char *out = NULL;
    for (size_t i = 0; i < n; i++) {
        sk_str hn, hv;
        if (!a->host->header_at(r, i, &hn, &hv) || hn.len != 6 || strncasecmp(hn.ptr, "cookie", 6) || !hv.ptr)
            continue;
        const char *p = hv.ptr, *end = hv.ptr + hv.len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';')) p++;
            if (p >= end) break;
            const char *e = memchr(p, ';', (size_t)(end - p));
            if (!e) e = end;
            const char *eq = memchr(p, '=', (size_t)(e - p));
            if (e > p && !(eq && (size_t)(eq - p) == nl && !memcmp(p, s->name, nl))) {
                size_t pl = (size_t)(e - p);
                if (len + pl + 3 > cap) {
                    cap = (len + pl + 3) * 2;
                    char *nb = realloc(out, cap);
                    if (!nb) return free(out), -1;
                    out = nb;
                }
                if (len) out[len++] = ';', out[len++] = ' ';
                memcpy(out + len, p, pl);
                len += pl;
            }
            p = e;
        }
    }
    int rc;
    if (len) {
        out[len] = 0;
        rc = a->host->set_header(r, "cookie", out);
    } else {
        rc = a->host->remove_header(r, "cookie");
    }
    free(out);
    return rc;
}

/* ---- rules ---- */

/* A SPIFFE ID pattern, as the core's peer_identity: exact, or PREFIX followed by "/" and "*"
 * for any ID below PREFIX/ (at least one more byte). */
static int id_match(const char *p, sk_str id)
{
    size_t pl = strlen(p);
    if (pl >= 2 && p[pl - 1] == '*' && p[pl - 2] == '/') return id.len > pl - 1 && !memcmp(id.ptr, p, pl - 1);
    return id.len == pl && !memcmp(id.ptr, p, pl);
}

static int str_is(sk_str s, const char *v)
{
    return s.ptr && s.len == strlen(v) && !memcmp(s.ptr, v, s.len);
}

/* A claim matches v: equal string, an array holding v, a space-separated word (scope), or the number/bool. */
static int claim_match(json_t *c, const char *v)
{
    if (json_is_string(c)) {
        const char *s = json_string_value(c);
        size_t vl = strlen(v);
        if (!strcmp(s, v)) return 1;
        for (const char *p = s; *p;) {
            const char *e = strchr(p, ' ');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            if (l == vl && !memcmp(p, v, vl)) return 1;
            p += l;
            while (*p == ' ') p++;
        }
        return 0;
    }
    if (json_is_array(c)) {
        size_t i;
        json_t *e;
        json_array_foreach(c, i, e) if (json_is_string(e) && !strcmp(json_string_value(e), v)) return 1;
        return 0;
    }
    if (json_is_true(c)) return !strcmp(v, "true");
    if (json_is_false(c)) return !strcmp(v, "false");
    if (json_is_integer(c)) {
        char b[32];
        snprintf(b, sizeof(b), "%lld", (long long)json_integer_value(c));
        return !strcmp(b, v);
    }
    return 0;
}

static int cond_match(auth *a, sk_req *r, const cond *c, json_t *claims, const char *consumer)
{
    sk_str s = {NULL, 0};
    if (c->kind == C_IDENTITY)
        s = a->host->identity(r);
    else if (c->kind == C_METHOD)
        s = a->host->method(r);
    else if (c->kind == C_PREFIX || c->kind == C_PATH)
        s = a->host->path(r);
    for (char **alt = c->alts; *alt; alt++) {
        const char *v = *alt;
        size_t vl = strlen(v);
        switch (c->kind) {
        case C_IDENTITY:
            if (s.ptr && id_match(v, s)) return 1;
            break;
        case C_METHOD:
        case C_PATH:
            if (str_is(s, v)) return 1;
            break;
        case C_PREFIX:
            /* segment-aware: /orders matches /orders and /orders/..., not /ordersX */
            if (s.ptr && s.len >= vl && !memcmp(s.ptr, v, vl) &&
                (s.len == vl || v[vl - 1] == '/' || s.ptr[vl] == '/'))
                return 1;
            break;
        case C_CONSUMER:
            if (consumer && !strcmp(consumer, v)) return 1;
            break;
        case C_CLAIM:
            if (claims && claim_match(json_object_get(claims, c->claim), v)) return 1;
            break;
        }
    }
    return 0;
}

static int rules_allow(auth *a, sk_req *r, json_t *claims, const char *consumer)
{
    for (size_t i = 0; i < a->nrules; i++) {
        const rule *ru = &a->rules[i];
        size_t j = 0;
        while (j < ru->n && cond_match(a, r, &ru->c[j], claims, consumer)) j++;
        if (j == ru->n) return ru->allow;
    }
    return a->default_allow;
}

/* ---- the hook ---- */

static sk_status deny(auth *a, sk_req *r, int result)
{
    a->host->metric_add_at(a->decisions, (size_t)result, 1);
    if (result == R_FORBIDDEN) {
        static const char body[] = "forbidden\n";
        return a->host->respond(r, 403, "forbidden", body, sizeof(body) - 1, NULL) == 0 ? SK_RESPOND
                                                                                        : SK_ERROR;
    }
    char www[160];
    if (result == R_MISSING)
        snprintf(www, sizeof(www), "Bearer");
    else
        snprintf(www, sizeof(www), "Bearer error=\"invalid_token\", error_description=\"%s\"",
                 result_names[result]);
    const char *hdrs[] = {"www-authenticate", www, NULL};
    static const char body[] = "unauthenticated\n";
    return a->host->respond(r, 401, "unauthenticated", body, sizeof(body) - 1, hdrs) == 0 ? SK_RESPOND
                                                                                          : SK_ERROR;
}

static int jwt_result(int e)
{
    switch (e) {
    case JWT_EMALFORMED: return R_MALFORMED;
    case JWT_EALG: return R_BAD_ALG;
    case JWT_ENOKEY: return R_UNKNOWN_KEY;
    case JWT_ESIGNATURE: return R_BAD_SIGNATURE;
    case JWT_EEXPIRED: return R_EXPIRED;
    case JWT_ENOTYET: return R_NOT_YET_VALID;
    case JWT_EISSUER: return R_BAD_ISSUER;
    case JWT_EAUDIENCE: return R_BAD_AUDIENCE;
    case JWT_ENOEXP: return R_NO_EXP;
    }
    return R_ERROR;
}

/* Verifies tok (cache first). JWT_OK and *claims (borrowed from the cache, or owned: *owned). */
static int check_token(auth *a, worker *w, sk_str tok, json_t **claims, int *owned)
{
    /* CLOCK_REALTIME, not time(): glibc's time() reads the coarse clock, which
     * may still show the last second for a tick after a second begins. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec;
    *owned = 0;
    *claims = NULL;
    if (tok.len > MAX_TOKEN) return JWT_EMALFORMED;
    uint64_t h = fnv(tok.ptr, tok.len);
    cache_entry *e = w ? &w->slot[h % CACHE_SLOTS] : NULL;
    unsigned gen = atomic_load(&a->gen);
    if (e && e->tok && e->hash == h && e->gen == gen && ct_eq(e->tok, e->len, tok.ptr, tok.len)) {
        *claims = e->claims;
        return jwt_check_claims(e->claims, a->issuer, a->aud[0] ? a->aud : NULL, a->leeway, a->require_exp,
                                now);
    }
    int kid_unknown;
    json_t *c;
    pthread_rwlock_rdlock(&a->lock);
    gen = atomic_load(&a->gen);
    int rc = jwt_verify(&a->keys, tok.ptr, tok.len, a->algmask, &c, &kid_unknown);
    int empty = a->keys.n == 0;
    pthread_rwlock_unlock(&a->lock);
    if (rc == JWT_ENOKEY && a->jwks_url && (kid_unknown || empty)) atomic_store(&a->want_refetch, 1);
    if (rc != JWT_OK) return rc;
    rc = jwt_check_claims(c, a->issuer, a->aud[0] ? a->aud : NULL, a->leeway, a->require_exp, now);
    if (rc != JWT_OK) {
        json_decref(c);
        return rc;
    }
    char *copy = e ? dupn(tok.ptr, tok.len) : NULL;
    if (copy) {
        free(e->tok);
        json_decref(e->claims);
        *e = (cache_entry){copy, tok.len, h, c, gen};
        *claims = c;
    } else {
        *claims = c;
        *owned = 1;
    }
    return JWT_OK;
}

/* The claim as header text into b (n bytes): strings as is, numbers and
 * bools printed (into b); NULL for other types or control characters. */
static const char *claim_text(json_t *v, char *b, size_t n)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);
        if (len > MAX_TOKEN) return NULL;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return NULL;
        return s;
    }
    if (json_is_integer(v))
        snprintf(b, n, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(b, n, "%.17g", json_real_value(v));
    else if (json_is_boolean(v))
        snprintf(b, n, "%s", json_is_true(v) ? "true" : "false");
    else
        return NULL;
    return b;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    auth *a = inst;
    worker *w = wdata;
    const sk_host_api *h = a->host;
    /* Client-sent copies of the claim headers never reach the upstream. */
    for (size_t i = 0; i < a->nclaims; i++)
        if (h->remove_header(r, a->claim_hdr[i]) != 0) return SK_ERROR;

    size_t jw = 0, kw = 0;
    sk_str tok = a->have_jwt ? find_cred(a, r, a->jwt_from, a->njwt_from, &jw) : (sk_str){NULL, 0};
    sk_str key = a->have_apikeys ? find_cred(a, r, a->key_from, a->nkey_from, &kw) : (sk_str){NULL, 0};
    json_t *claims = NULL;
    int owned = 0;
    const char *consumer = NULL;
    sk_status st = SK_CONTINUE;

    if ((a->have_jwt || a->have_apikeys) && !tok.ptr && !key.ptr && !a->allow_missing)
        return deny(a, r, R_MISSING);
    if (tok.ptr) {
        int rc = check_token(a, w, tok, &claims, &owned);
        if (rc != JWT_OK) {
            if (owned) json_decref(claims);
            return deny(a, r, jwt_result(rc));
        }
    }
    if (key.ptr) {
        /* Every key is compared, in constant time each: no early exit. */
        const apikey *hit = NULL;
        for (size_t i = 0; i < a->napikeys; i++)
            if (ct_eq(a->apikeys[i].key, a->apikeys[i].len, key.ptr, key.len) && !hit) hit = &a->apikeys[i];
        if (!hit) {
            st = deny(a, r, R_BAD_API_KEY);
            goto out;
        }
        consumer = hit->consumer;
    }
    if (!rules_allow(a, r, claims, consumer)) {
        st = deny(a, r, R_FORBIDDEN);
        goto out;
    }
    if (consumer && h->set_meta(r, "consumer", consumer) != 0) goto fail;
    if (claims) {
        char buf[64];
        for (size_t i = 0; i < a->nclaims; i++) {
            const char *t = claim_text(json_object_get(claims, a->claim[i]), buf, sizeof(buf));
            if (t && (h->set_header(r, a->claim_hdr[i], t) != 0 || h->set_meta(r, a->claim_meta[i], t) != 0))
                goto fail;
        }
        const char *sub = claim_text(json_object_get(claims, "sub"), buf, sizeof(buf));
        if (sub && h->set_meta(r, "jwt.sub", sub) != 0) goto fail;
    }
    if (a->strip && tok.ptr && strip_cred(a, r, &a->jwt_from[jw]) != 0) goto fail;
    if (a->strip && key.ptr && strip_cred(a, r, &a->key_from[kw]) != 0) goto fail;
    h->metric_add_at(a->decisions, (tok.ptr || key.ptr) ? R_ALLOWED : R_ANONYMOUS, 1);
    goto out;
fail:
    h->log(a->self, SK_LOG_ERROR, "a header or metadata edit failed (out of memory?)");
    h->metric_add_at(a->decisions, R_ERROR, 1);
    st = SK_ERROR;
out:
    if (owned) json_decref(claims);
    return st;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "auth",
    .description = "JWT and API key authentication, allow/deny rules",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .worker_fini = worker_fini,
    .on_request = on_request,
};
