/*
 * keys.c — the keys of every section kind: one table per kind (name,
 * handler, flags, field, range) and the handlers that check and store a
 * value, naming file, line, section and key when it is refused.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <unistd.h>

#include "config_internal.h"

/* ---- generic key handlers ----------------------------------------------------------------- */

static void *field(sect *s, const keydef *k)
{
    return (char *)s->obj + k->off;
}

static int k_duration(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t ms;
    if (sk_parse_duration(v, &ms) < 0) return sk__cfg_bad(x, "bad duration '%s'", v);
    if (ms < k->min)
        return k->min <= 1 ? sk__cfg_bad(x, "duration '%s' must be greater than 0", v)
                           : sk__cfg_bad(x, "duration '%s' is too short (at least %llums)", v,
                                         (unsigned long long)k->min);
    if (ms > k->max)
        return k->max < 60000 ? sk__cfg_bad(x, "duration '%s' is too long (at most %llums)", v,
                                            (unsigned long long)k->max)
                              : sk__cfg_bad(x, "duration '%s' is too long (at most %llum)", v,
                                            (unsigned long long)(k->max / 60000));
    *(uint64_t *)field(s, k) = ms;
    return 0;
}

static int k_uint(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t n;
    if (sk__cfg_parse_u64(v, &n) < 0) return sk__cfg_bad(x, "bad number '%s'", v);
    if (n < k->min || n > k->max)
        return sk__cfg_bad(x, "%s out of range (%llu..%llu)", v, (unsigned long long)k->min,
                           (unsigned long long)k->max);
    *(unsigned *)field(s, k) = (unsigned)n;
    return 0;
}

static int k_size(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t n;
    if (sk_parse_size(v, &n) < 0) return sk__cfg_bad(x, "bad size '%s'", v);
    if (n < k->min || n > k->max)
        return sk__cfg_bad(x, "size %s out of range (%llu..%llu bytes)", v, (unsigned long long)k->min,
                           (unsigned long long)k->max);
    *(uint64_t *)field(s, k) = n;
    return 0;
}

static int k_addr(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (sk_parse_addr(v, field(s, k)) < 0)
        return sk__cfg_bad(x, "bad address '%s' (expected ip:port, [ipv6]:port or localhost:port)", v);
    return 0;
}

/* ---- [sidekick] --------------------------------------------------------------------------- */

static int k_workers(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t n;
    if (strcmp(v, "auto") == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        x->cfg->workers = (int)(cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
        return 0;
    }
    if (sk__cfg_parse_u64(v, &n) < 0 || n < 1 || n > 256)
        return sk__cfg_bad(x, "bad value '%s' (expected auto or 1..256)", v);
    x->cfg->workers = (int)n;
    return 0;
}

static int k_admin(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (strcmp(v, "off") == 0) {
        x->cfg->admin_enabled = false;
        memset(&x->cfg->admin, 0, sizeof(x->cfg->admin));
        return 0;
    }
    if (sk_parse_addr(v, &x->cfg->admin) < 0)
        return sk__cfg_bad(x, "bad address '%s' (expected ip:port, [ipv6]:port, localhost:port or off)", v);
    x->cfg->admin_enabled = true;
    return 0;
}

static int k_dir(ctx *x, sect *s, const keydef *k, const char *v)
{
    return sk__cfg_set_str(x, (char **)field(s, k), sk__cfg_resolve_path(x, v));
}

static int k_log_level(ctx *x, sect *s, const keydef *k, const char *v)
{
    static const char *const levels[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < (int)SK_ARRAY_LEN(levels); i++) {
        if (strcmp(v, levels[i]) == 0) {
            x->cfg->log_level = i;
            return 0;
        }
    }
    return sk__cfg_bad(x, "bad value '%s' (expected error, warn, info or debug)", v);
}

static int k_access_log(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (strcmp(v, "stdout") == 0 || strcmp(v, "stderr") == 0 || strcmp(v, "off") == 0)
        return sk__cfg_set_str(x, &x->cfg->access_log, sk__cfg_strdup(x, v));
    return sk__cfg_set_str(x, &x->cfg->access_log, sk__cfg_resolve_path(x, v));
}

#define CFG(f)  offsetof(sk_config, f)
#define DUR_MAX (30ull * 24 * 3600 * 1000) /* 30 days: no timeout here needs more */

static const keydef sidekick_keys[] = {
    {"workers", k_workers, 0, 0, 0, 0},
    {"admin", k_admin, 0, 0, 0, 0},
    {"plugin_dir", k_dir, 0, CFG(plugin_dir), 0, 0},
    {"lua_dir", k_dir, 0, CFG(lua_dir), 0, 0},
    {"log_level", k_log_level, 0, 0, 0, 0},
    {"access_log", k_access_log, 0, 0, 0, 0},
    {"drain_timeout", k_duration, 0, CFG(drain_timeout_ms), 0, DUR_MAX},
    {"lua_memory", k_size, 0, CFG(lua_memory), 1024 * 1024, 1ull << 40},
    {"http_client_ca", k_dir, 0, CFG(http_client_ca), 0, 0},
    {"http_client_cert", k_dir, 0, CFG(http_client_cert), 0, 0},
    {"http_client_key", k_dir, 0, CFG(http_client_key), 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

/* ---- [listener NAME] ---------------------------------------------------------------------- */

static int k_protocol(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_listener *l = s->obj;
    if (strcmp(v, "http") == 0)
        l->protocol = SK_PROTO_HTTP;
    else if (strcmp(v, "tcp") == 0)
        l->protocol = SK_PROTO_TCP;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected http or tcp)", v);
    return 0;
}

static int k_merge_slashes(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_listener *l = s->obj;
    if (strcmp(v, "on") == 0)
        l->merge_slashes = true;
    else if (strcmp(v, "off") == 0)
        l->merge_slashes = false;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected on or off)", v);
    return 0;
}

static int k_escaped_slashes(ctx *x, sect *s, const keydef *k, const char *v)
{
    static const char *const names[] = {"reject", "keep", "decode"};
    for (int i = 0; i < (int)SK_ARRAY_LEN(names); i++) {
        if (strcmp(v, names[i]) == 0) {
            ((sk_listener *)s->obj)->escaped_slashes = i;
            return 0;
        }
    }
    return sk__cfg_bad(x, "bad value '%s' (expected reject, keep or decode)", v);
}

/* `cluster` of a listener or `listener` of a route: a name resolved in pass 3. */
static int k_ref(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (!sk__cfg_is_name(v)) return sk__cfg_bad(x, "bad name '%s'", v);
    return sk__cfg_set_str(x, &s->ref, sk__cfg_strdup(x, v));
}

/* `tls = NAME` of a listener or cluster: resolved in pass 3. */
static int k_tls_ref(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (!sk__cfg_is_name(v)) return sk__cfg_bad(x, "bad name '%s'", v);
    return sk__cfg_set_str(x, &s->tls_ref, sk__cfg_strdup(x, v));
}

/* `plugins = a, b` of a listener or route: names resolved in pass 3. */
static int k_plugins(ctx *x, sect *s, const keydef *k, const char *v)
{
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sk__cfg_is_name(items[i])) rc = sk__cfg_bad(x, "bad plugin name '%s'", items[i]);
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(items[i], items[j]) == 0) rc = sk__cfg_bad(x, "plugin '%s' is listed twice", items[i]);
        char *nm = rc == 0 ? sk__cfg_strdup(x, items[i]) : NULL;
        if (rc == 0 && (!nm || sk__cfg_push(x, &s->pnames, &s->npnames, nm) < 0)) {
            free(nm);
            rc = -1;
        }
    }
    free(items);
    free(copy);
    return rc;
}

#define LST(f) offsetof(sk_listener, f)

static const keydef listener_keys[] = {
    {"address", k_addr, 0, LST(address), 0, 0},
    {"protocol", k_protocol, 0, 0, 0, 0},
    {"cluster", k_ref, 0, 0, 0, 0},
    {"tls", k_tls_ref, 0, 0, 0, 0},
    {"plugins", k_plugins, 0, 0, 0, 0},
    {"max_connections", k_uint, 0, LST(max_connections), 1, 10000000},
    {"header_timeout", k_duration, 0, LST(header_timeout_ms), 1, DUR_MAX},
    {"idle_timeout", k_duration, 0, LST(idle_timeout_ms), 1, DUR_MAX},
    {"max_header_bytes", k_size, 0, LST(max_header_bytes), 1024, 1024 * 1024},
    {"max_headers", k_uint, 0, LST(max_headers), 1, 10000},
    {"max_body_bytes", k_size, 0, LST(max_body_bytes), 0, UINT64_MAX},
    {"merge_slashes", k_merge_slashes, 0, 0, 0, 0},
    {"escaped_slashes", k_escaped_slashes, 0, 0, 0, 0},
    {"max_concurrent_streams", k_uint, 0, LST(h2_max_streams), 1, 10000},
    {"http2_max_frame_size", k_size, 0, LST(h2_frame_size), 16384, 16777215},
    {"http2_initial_window_size", k_size, 0, LST(h2_stream_window), 1024, 2147483647},
    {"http2_connection_window_size", k_size, 0, LST(h2_conn_window), 65535, 2147483647},
    {NULL, NULL, 0, 0, 0, 0},
};

/* ---- [route NAME] ------------------------------------------------------------------------- */

static int k_host(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    const char *p = v;
    if (strncmp(p, "*.", 2) == 0) p += 2;
    bool ok = *p != '\0';
    for (; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-._", *p)) ok = false;
    if (!ok) return sk__cfg_bad(x, "bad host '%s' (expected a name or *.suffix)", v);
    char *h = sk__cfg_strdup(x, v);
    if (!h) return -1;
    for (char *q = h; *q; q++) *q = (char)tolower((unsigned char)*q);
    return sk__cfg_set_str(x, &r->host, h);
}

static int k_prefix(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (v[0] != '/') return sk__cfg_bad(x, "'%s' must start with '/'", v);
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p)) return sk__cfg_bad(x, "'%s' contains whitespace", v);
    return sk__cfg_set_str(x, (char **)field(s, k), sk__cfg_strdup(x, v));
}

static int k_method(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!sk__cfg_is_token(items[i])) {
            rc = sk__cfg_bad(x, "bad method '%s'", items[i]);
            break;
        }
        for (char *q = items[i]; *q; q++) *q = (char)toupper((unsigned char)*q);
        for (int j = 0; j < i; j++)
            if (strcmp(items[i], items[j]) == 0) rc = sk__cfg_bad(x, "duplicate method '%s'", items[i]);
    }
    if (rc == 0) {
        r->methods = calloc((size_t)n, sizeof(char *));
        if (!r->methods) rc = sk__cfg_oom(x);
        for (int i = 0; i < n && rc == 0; i++) {
            if (!(r->methods[i] = sk__cfg_strdup(x, items[i]))) rc = -1;
            r->nmethods = (size_t)i + 1; /* route_free releases what is there */
        }
    }
    free(items);
    free(copy);
    return rc;
}

static int k_header(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy = sk__cfg_strdup(x, v);
    if (!copy) return -1;
    char *name = copy, *value = NULL, *colon = strchr(copy, ':');
    if (colon) {
        *colon = '\0';
        value = sk__cfg_trim(colon + 1);
    }
    name = sk__cfg_trim(name);
    int rc = 0;
    if (!sk__cfg_is_token(name))
        rc = sk__cfg_bad(x, "bad header name in '%s' (expected 'name' or 'name: value')", v);
    else if (value && !*value)
        rc = sk__cfg_bad(x, "empty value in '%s' (write just the name to require presence)", v);
    if (rc == 0) {
        sk_header_match *h = realloc(r->headers, (r->nheaders + 1) * sizeof(*h));
        if (!h) {
            rc = sk__cfg_oom(x);
        } else {
            r->headers = h;
            h = &r->headers[r->nheaders];
            h->name = sk__cfg_strdup(x, name);
            h->value = value ? sk__cfg_strdup(x, value) : NULL;
            r->nheaders++;
            if (!h->name || (value && !h->value)) rc = -1;
            if (h->name)
                for (char *q = h->name; *q; q++) *q = (char)tolower((unsigned char)*q);
        }
    }
    free(copy);
    return rc;
}

/* `cluster = api` or `cluster = api-v1 90, api-v2 10`; names resolved in pass 3. */
static int k_route_cluster(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    r->clusters = calloc((size_t)n, sizeof(*r->clusters));
    s->names = calloc((size_t)n, sizeof(char *));
    if (!r->clusters || !s->names) rc = sk__cfg_oom(x);
    uint64_t total = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char *name = items[i], *w = name;
        while (*w && *w != ' ' && *w != '\t') w++;
        if (*w) *w++ = '\0';
        w = sk__cfg_trim(w);
        uint64_t weight = 1;
        if (*name && !sk__cfg_is_name(name)) {
            rc = sk__cfg_bad(x, "bad cluster name '%s'", name);
        } else if (*w) {
            if (sk__cfg_parse_u64(w, &weight) < 0 || weight > 10000)
                rc = sk__cfg_bad(x, "bad weight '%s' for '%s' (expected 0..10000)", w, name);
        } else if (n > 1) {
            rc = sk__cfg_bad(x, "missing weight for '%s' (write 'NAME WEIGHT, NAME WEIGHT')", name);
        }
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(s->names[j], name) == 0) rc = sk__cfg_bad(x, "cluster '%s' named twice", name);
        if (rc == 0 && !(s->names[i] = sk__cfg_strdup(x, name))) rc = -1;
        if (rc == 0) {
            r->clusters[i].weight = (unsigned)weight;
            total += weight;
            s->nnames = r->nclusters = (size_t)i + 1;
        }
    }
    if (rc == 0 && total == 0) rc = sk__cfg_bad(x, "weights add up to 0");
    r->total_weight = (unsigned)total;
    free(items);
    free(copy);
    return rc;
}

static int k_respond(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    uint64_t status = 0;
    const char *p = v;
    if (sk__cfg_digits(&p, &status) < 0 || p - v != 3 || (*p && *p != ' ') || status < 200 || status > 599)
        return sk__cfg_bad(x, "bad value '%s' (expected 'STATUS [BODY]', status 200..599)", v);
    r->respond_status = (int)status;
    return sk__cfg_set_str(x, &r->respond_body, sk__cfg_strdup(x, *p ? p + 1 : ""));
}

/* `lua = FILE`: kept as written, resolved against lua_dir once the whole
 * file is read ([sidekick] may come later). */
static int k_lua(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    return sk__cfg_set_str(x, &r->lua, sk__cfg_strdup(x, v));
}

/* `lua.NAME = value`: configuration for the route's script. */
int sk__cfg_lua_key(ctx *x, sect *s, const char *name, const char *value)
{
    sk_route *r = s->obj;
    const char *n = name + 4;
    if (!s->lua_key_line) {
        s->lua_key_line = x->lineno;
        snprintf(s->lua_key, sizeof(s->lua_key), "%s", name);
    }
    if (!*n) return sk__cfg_bad(x, "empty name after 'lua.'");
    for (const char *p = n; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return sk__cfg_bad(x, "bad name '%s' (expected lua.NAME with NAME of [A-Za-z0-9_])", name);
    for (size_t i = 0; i < r->nlua_keys; i++)
        if (strcmp(r->lua_keys[i].key, n) == 0) return sk__cfg_bad(x, "duplicate key");
    sk_lua_kv *a = realloc(r->lua_keys, (r->nlua_keys + 1) * sizeof(*a));
    if (!a) return sk__cfg_oom(x);
    r->lua_keys = a;
    sk_lua_kv *kv = &a[r->nlua_keys];
    kv->key = strdup(n);
    kv->value = strdup(value);
    if (!kv->key || !kv->value) {
        free(kv->key);
        free(kv->value);
        return sk__cfg_oom(x);
    }
    r->nlua_keys++;
    return 0;
}

/* ---- traffic management of a route (docs/traffic.md) ---- */

/* The text of a retry cause (see config.h). */
const char *sk_retry_cond_name(int cond)
{
    static const char *const names[SK_RETRY_CONDS] = {
        [SK_RETRY_CONNECT_FAILURE] = "connect-failure",
        [SK_RETRY_RESET] = "reset",
        [SK_RETRY_502] = "502",
        [SK_RETRY_503] = "503",
        [SK_RETRY_504] = "504",
        [SK_RETRY_409] = "409",
        [SK_RETRY_PER_TRY_TIMEOUT] = "per-try-timeout",
    };
    return cond > SK_RETRY_NONE && cond < SK_RETRY_CONDS ? names[cond] : NULL;
}

/* `retry_on = connect-failure, reset, 502, 503, 504, retriable-4xx` */
static int k_retry_on(ctx *x, sect *s, const keydef *k, const char *v)
{
    static const struct {
        const char *name;
        int cond;
    } conds[] = {
        {"connect-failure", SK_RETRY_CONNECT_FAILURE},
        {"reset", SK_RETRY_RESET},
        {"502", SK_RETRY_502},
        {"503", SK_RETRY_503},
        {"504", SK_RETRY_504},
        {"retriable-4xx", SK_RETRY_409},
    };
    sk_route *r = s->obj;
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    unsigned bits = 0;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        size_t j = 0;
        while (j < SK_ARRAY_LEN(conds) && strcmp(items[i], conds[j].name) != 0) j++;
        if (j == SK_ARRAY_LEN(conds))
            rc = sk__cfg_bad(x,
                             "unknown condition '%s' (expected connect-failure, reset, 502, 503, 504 or "
                             "retriable-4xx)",
                             items[i]);
        else if (bits & SK_RETRY_BIT(conds[j].cond))
            rc = sk__cfg_bad(x, "'%s' is listed twice", items[i]);
        else
            bits |= SK_RETRY_BIT(conds[j].cond);
    }
    free(items);
    free(copy);
    if (rc == 0) r->retry_on = bits;
    return rc;
}

/* Splits "WORD [PCT%]" in place: *word and *pct (NULL when absent). -1 on
 * more than two words. */
static int split_rate(char *v, char **word, char **pct)
{
    char *p = v;
    while (*p && *p != ' ' && *p != '\t') p++;
    *word = v;
    *pct = NULL;
    if (!*p) return 0;
    *p++ = '\0';
    p = sk__cfg_trim(p);
    if (!*p) return 0;
    for (const char *q = p; *q; q++)
        if (*q == ' ' || *q == '\t') return -1;
    *pct = p;
    return 0;
}

/* Parses "WORD [PCT%]" (PCT defaults to 100%) into a copy the caller frees. */
static int rate_value(ctx *x, const char *v, const char *what, char **copy, char **word, uint32_t *ppm)
{
    char *pct;
    if (!(*copy = sk__cfg_strdup(x, v))) return -1;
    if (split_rate(*copy, word, &pct) < 0)
        return sk__cfg_bad(x, "bad value '%s' (expected '%s [PCT%%]')", v, what);
    *ppm = SK_PPM;
    if (pct && sk__cfg_parse_percent(pct, ppm) < 0)
        return sk__cfg_bad(x, "bad share '%s' (expected a percentage 0%%..100%%, e.g. 10%% or 0.5%%)", pct);
    return 0;
}

/* `mirror = CLUSTER [PCT%]`: the cluster is resolved in pass 3. */
static int k_mirror(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy = NULL, *name;
    int rc = rate_value(x, v, "CLUSTER", &copy, &name, &r->mirror_ppm);
    if (rc == 0 && !sk__cfg_is_name(name)) rc = sk__cfg_bad(x, "bad cluster name '%s'", name);
    if (rc == 0) rc = sk__cfg_set_str(x, &s->mirror_ref, sk__cfg_strdup(x, name));
    free(copy);
    return rc;
}

/* `fault_delay = DURATION [PCT%]` */
static int k_fault_delay(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy = NULL, *d;
    uint64_t ms = 0;
    int rc = rate_value(x, v, "DURATION", &copy, &d, &r->fault_delay_ppm);
    if (rc == 0 && (sk_parse_duration(d, &ms) < 0 || ms == 0 || ms > SK_FAULT_DELAY_MAX_MS))
        rc = sk__cfg_bad(x, "bad duration '%s' (1ms..%us)", d, SK_FAULT_DELAY_MAX_MS / 1000);
    if (rc == 0) r->fault_delay_ms = ms;
    free(copy);
    return rc;
}

/* `fault_abort = STATUS [PCT%]` */
static int k_fault_abort(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy = NULL, *st;
    uint64_t status = 0;
    int rc = rate_value(x, v, "STATUS", &copy, &st, &r->fault_abort_ppm);
    if (rc == 0 && (sk__cfg_parse_u64(st, &status) < 0 || status < 200 || status > 599))
        rc = sk__cfg_bad(x, "bad status '%s' (200..599)", st);
    if (rc == 0) r->fault_abort_status = (int)status;
    free(copy);
    return rc;
}

/* `fault_headers = on|off` */
static int k_fault_headers(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    if (strcmp(v, "on") == 0)
        r->fault_headers = true;
    else if (strcmp(v, "off") == 0)
        r->fault_headers = false;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected on or off)", v);
    return 0;
}

#define RT(f) offsetof(sk_route, f)

static const keydef route_keys[] = {
    {"listener", k_ref, 0, 0, 0, 0},
    {"host", k_host, 0, 0, 0, 0},
    {"prefix", k_prefix, 0, RT(prefix), 0, 0},
    {"path", k_prefix, 0, RT(path), 0, 0},
    {"method", k_method, 0, 0, 0, 0},
    {"header", k_header, KEY_REPEAT, 0, 0, 0},
    {"cluster", k_route_cluster, 0, 0, 0, 0},
    {"rewrite_prefix", k_prefix, 0, RT(rewrite_prefix), 0, 0},
    {"timeout", k_duration, 0, RT(timeout_ms), 0, DUR_MAX},
    {"retries", k_uint, 0, RT(retries), 0, 10},
    {"respond", k_respond, 0, 0, 0, 0},
    {"plugins", k_plugins, 0, 0, 0, 0},
    {"lua", k_lua, 0, 0, 0, 0},
    {"lua_budget", k_duration, 0, RT(lua_budget_ms), 1, 10000},
    {"retry_on", k_retry_on, 0, 0, 0, 0},
    {"per_try_timeout", k_duration, 0, RT(per_try_timeout_ms), 1, DUR_MAX},
    {"retry_backoff", k_duration, 0, RT(retry_backoff_ms), 0, 10000},
    {"mirror", k_mirror, 0, 0, 0, 0},
    {"fault_delay", k_fault_delay, 0, 0, 0, 0},
    {"fault_abort", k_fault_abort, 0, 0, 0, 0},
    {"fault_headers", k_fault_headers, 0, 0, 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

/* ---- [cluster NAME] ----------------------------------------------------------------------- */

static int k_endpoints(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    c->endpoints = calloc((size_t)n, sizeof(*c->endpoints));
    if (!c->endpoints) rc = sk__cfg_oom(x);
    for (int i = 0; i < n && rc == 0; i++) {
        sk_endpoint_conf *e = &c->endpoints[i];
        e->index = i;
        if (sk_parse_addr(items[i], &e->address) < 0)
            rc = sk__cfg_bad(x, "bad address '%s' (expected ip:port, [ipv6]:port or localhost:port)",
                             items[i]);
        else if (sk__cfg_addr_port(&e->address) == 0)
            rc = sk__cfg_bad(x, "bad address '%s': port 0", items[i]);
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(c->endpoints[j].address.text, e->address.text) == 0)
                rc = sk__cfg_bad(x, "duplicate endpoint '%s'", e->address.text);
    }
    if (rc == 0) c->nendpoints = (size_t)n;
    free(items);
    free(copy);
    return rc;
}

/* `discovery = NAME [ARG]`: NAME is a [plugin] instance (resolved in pass 3),
 * ARG the rest of the line, handed to its on_cluster hook. */
static int k_discovery(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    size_t n = strcspn(v, " \t");
    if (n == 0) return sk__cfg_bad(x, "expected 'NAME [ARG]' (NAME: a [plugin NAME] instance)");
    const char *arg = v + n;
    arg += strspn(arg, " \t");
    size_t alen = strlen(arg);
    while (alen && (arg[alen - 1] == ' ' || arg[alen - 1] == '\t')) alen--;
    if (sk__cfg_set_str(x, &c->discovery, strndup(v, n)) < 0) return sk__cfg_oom(x);
    if (alen && sk__cfg_set_str(x, &c->discovery_arg, strndup(arg, alen)) < 0) return sk__cfg_oom(x);
    return 0;
}

/* `retry_budget = PCT%` or `off` */
static int k_retry_budget(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    if (strcmp(v, "off") == 0) {
        c->retry_budget_ppm = SK_RETRY_BUDGET_OFF;
        return 0;
    }
    if (sk__cfg_parse_percent(v, &c->retry_budget_ppm) < 0)
        return sk__cfg_bad(x, "bad value '%s' (expected a percentage 0%%..100%%, e.g. 20%%, or off)", v);
    return 0;
}

static int k_lb(ctx *x, sect *s, const keydef *k, const char *v)
{
    static const char *const names[] = {"round_robin", "least_request", "random", "ring_hash", "ewma"};
    for (int i = 0; i < (int)SK_ARRAY_LEN(names); i++) {
        if (strcmp(v, names[i]) == 0) {
            ((sk_cluster *)s->obj)->lb = i; /* enum sk_lb, in this order */
            return 0;
        }
    }
    return sk__cfg_bad(x, "bad value '%s' (expected round_robin, least_request, random, ring_hash or ewma)",
                       v);
}

/* `hash_key = header:NAME | cookie:NAME | client_ip` (lb = ring_hash). */
static int k_hash_key(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    if (strcmp(v, "client_ip") == 0) {
        c->hash_key = SK_HASH_CLIENT_IP;
        return sk__cfg_set_str(x, &c->hash_key_name, NULL);
    }
    int kind = strncmp(v, "header:", 7) == 0   ? SK_HASH_HEADER
               : strncmp(v, "cookie:", 7) == 0 ? SK_HASH_COOKIE
                                               : 0;
    const char *name = v + 7;
    if (!kind) return sk__cfg_bad(x, "bad value '%s' (expected header:NAME, cookie:NAME or client_ip)", v);
    if (!sk__cfg_is_token(name) || strlen(name) > 256)
        return sk__cfg_bad(x, "bad %s name '%s'", kind == SK_HASH_HEADER ? "header" : "cookie", name);
    char *n = sk__cfg_strdup(x, name);
    if (!n) return -1;
    if (kind == SK_HASH_HEADER)
        for (char *q = n; *q; q++) *q = (char)tolower((unsigned char)*q);
    c->hash_key = kind;
    return sk__cfg_set_str(x, &c->hash_key_name, n);
}

/* `health_check = /path[?query]`: what the active check asks for. */
static int k_health_check(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (v[0] != '/') return sk__cfg_bad(x, "'%s' must start with '/'", v);
    if (strlen(v) > 1024) return sk__cfg_bad(x, "path too long (at most 1024 bytes)");
    for (const char *p = v; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '#')
            return sk__cfg_bad(x, "'%s': a path has no spaces, controls, '#' or bytes outside ASCII", v);
    return sk__cfg_set_str(x, &((sk_cluster *)s->obj)->health_check, sk__cfg_strdup(x, v));
}

static int k_health_initial(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    if (strcmp(v, "healthy") == 0)
        c->health_initial_unhealthy = false;
    else if (strcmp(v, "unhealthy") == 0)
        c->health_initial_unhealthy = true;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected healthy or unhealthy)", v);
    return 0;
}

#define CL(f) offsetof(sk_cluster, f)

static const keydef cluster_keys[] = {
    {"endpoints", k_endpoints, 0, 0, 0, 0},
    {"discovery", k_discovery, 0, 0, 0, 0},
    {"wait_for_endpoints", k_duration, 0, CL(wait_for_endpoints_ms), 0, DUR_MAX},
    {"lb", k_lb, 0, 0, 0, 0},
    {"hash_key", k_hash_key, 0, 0, 0, 0},
    {"slow_start", k_duration, 0, CL(slow_start_ms), 0, 3600000},
    {"ewma_decay", k_duration, 0, CL(ewma_decay_ms), 10, 600000},
    {"connect_timeout", k_duration, 0, CL(connect_timeout_ms), 1, DUR_MAX},
    {"max_connections", k_uint, 0, CL(max_connections), 1, 10000000},
    {"max_pending", k_uint, 0, CL(max_pending), 1, 10000000},
    {"max_requests", k_uint, 0, CL(max_requests), 1, 10000000},
    {"max_retries", k_uint, 0, CL(max_retries), 0, 10000000},
    {"retry_budget", k_retry_budget, 0, 0, 0, 0},
    {"retry_budget_min", k_uint, 0, CL(retry_budget_min), 0, 1000000},
    {"health_check", k_health_check, 0, 0, 0, 0},
    {"health_interval", k_duration, 0, CL(health_interval_ms), 10, 3600000},
    {"health_timeout", k_duration, 0, CL(health_timeout_ms), 10, 600000},
    {"healthy_threshold", k_uint, 0, CL(healthy_threshold), 1, 100},
    {"unhealthy_threshold", k_uint, 0, CL(unhealthy_threshold), 1, 100},
    {"health_initial", k_health_initial, 0, 0, 0, 0},
    {"outlier_failures", k_uint, 0, CL(outlier_failures), 0, 1000},
    {"outlier_ejection", k_duration, 0, CL(outlier_ejection_ms), 10, 300000},
    {"max_ejection_percent", k_uint, 0, CL(max_ejection_percent), 0, 100},
    {"panic_threshold", k_uint, 0, CL(panic_threshold), 0, 100},
    {"tls", k_tls_ref, 0, 0, 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

/* ---- [tls NAME] --------------------------------------------------------------------------- */

#define TLS(f) offsetof(sk_tls, f)

/* A file key (`cert`, `key`, `ca`): made absolute; read at load by the net layer. */
static int k_tls_file(ctx *x, sect *s, const keydef *k, const char *v)
{
    return sk__cfg_set_str(x, (char **)field(s, k), sk__cfg_resolve_path(x, v));
}

static int k_verify(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_tls *t = s->obj;
    if (strcmp(v, "none") == 0)
        t->verify = SK_VERIFY_NONE;
    else if (strcmp(v, "optional") == 0)
        t->verify = SK_VERIFY_OPTIONAL;
    else if (strcmp(v, "required") == 0)
        t->verify = SK_VERIFY_REQUIRED;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected none, optional or required)", v);
    return 0;
}

/* A SPIFFE ID by the SPIFFE rules, or a prefix pattern ending in "/" and a star. */
static bool spiffe_pattern(const char *v)
{
    size_t n = strlen(v);
    if (n > 2 && strcmp(v + n - 2, "/*") == 0) n -= 2;
    if (n < 10 || n > 2048 || strncmp(v, "spiffe://", 9) != 0) return false;
    size_t i = 9;
    for (; i < n && v[i] != '/'; i++)
        if (!(islower((unsigned char)v[i]) || isdigit((unsigned char)v[i]) || strchr(".-_", v[i])))
            return false;
    if (i == 9) return false;
    while (i < n) {
        size_t start = ++i;
        for (; i < n && v[i] != '/'; i++)
            if (!(isalnum((unsigned char)v[i]) || strchr(".-_", v[i]))) return false;
        size_t seg = i - start;
        if (seg == 0 || (seg == 1 && v[start] == '.') || (seg == 2 && v[start] == '.' && v[start + 1] == '.'))
            return false;
    }
    return true;
}

static int k_peer_identity(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_tls *t = s->obj;
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!spiffe_pattern(items[i]))
            rc = sk__cfg_bad(x, "bad SPIFFE ID '%s' (spiffe://trust-domain/path, or a prefix ending in /*)",
                             items[i]);
        char *id = rc == 0 ? sk__cfg_strdup(x, items[i]) : NULL;
        if (rc == 0 && (!id || sk__cfg_push(x, &t->peer_ids, &t->npeer_ids, id) < 0)) {
            free(id);
            rc = -1;
        }
    }
    free(items);
    free(copy);
    return rc;
}

static int k_sni(ctx *x, sect *s, const keydef *k, const char *v)
{
    for (const char *p = v; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.'))
            return sk__cfg_bad(x, "bad server name '%s' (a DNS name)", v);
    if (strlen(v) > 253) return sk__cfg_bad(x, "server name too long");
    char *low = sk__cfg_strdup(x, v);
    if (!low) return -1;
    for (char *p = low; *p; p++) *p = (char)tolower((unsigned char)*p);
    return sk__cfg_set_str(x, &((sk_tls *)s->obj)->sni, low);
}

static int k_alpn(ctx *x, sect *s, const keydef *k, const char *v)
{
    char *copy, **items;
    int n = sk__cfg_split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    bool h2 = false, h1 = false;
    for (int i = 0; i < n && rc == 0; i++) {
        if (strcmp(items[i], "h2") == 0)
            h2 = true;
        else if (strcmp(items[i], "http/1.1") == 0)
            h1 = true;
        else
            rc = sk__cfg_bad(x, "unknown protocol '%s' (expected h2 or http/1.1)", items[i]);
    }
    free(items);
    free(copy);
    if (rc < 0) return -1;
    if (!h2 && !h1) return sk__cfg_bad(x, "no protocol given (expected h2 and/or http/1.1)");
    /* stored in the order of preference sidekick uses, whatever the order written */
    const char *v2 = h2 && h1 ? "h2,http/1.1" : h2 ? "h2" : "http/1.1";
    return sk__cfg_set_str(x, &((sk_tls *)s->obj)->alpn, sk__cfg_strdup(x, v2));
}

static int k_min_version(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_tls *t = s->obj;
    if (strcmp(v, "1.2") == 0)
        t->min_version = 12;
    else if (strcmp(v, "1.3") == 0)
        t->min_version = 13;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected 1.2 or 1.3)", v);
    return 0;
}

static int k_ciphers(ctx *x, sect *s, const keydef *k, const char *v)
{
    for (const char *p = v; *p; p++)
        if (!(isalnum((unsigned char)*p) || strchr(":-_+!", *p))) return sk__cfg_bad(x, "bad cipher list '%s'", v);
    return sk__cfg_set_str(x, &((sk_tls *)s->obj)->ciphers, sk__cfg_strdup(x, v));
}

static int k_tickets(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_tls *t = s->obj;
    if (strcmp(v, "on") == 0)
        t->session_tickets = true;
    else if (strcmp(v, "off") == 0)
        t->session_tickets = false;
    else
        return sk__cfg_bad(x, "bad value '%s' (expected on or off)", v);
    return 0;
}

static const keydef tls_keys[] = {
    {"cert", k_tls_file, 0, TLS(cert), 0, 0},
    {"key", k_tls_file, 0, TLS(key), 0, 0},
    {"ca", k_tls_file, 0, TLS(ca), 0, 0},
    {"verify", k_verify, 0, 0, 0, 0},
    {"peer_identity", k_peer_identity, 0, 0, 0, 0},
    {"sni", k_sni, 0, 0, 0, 0},
    {"alpn", k_alpn, 0, 0, 0, 0},
    {"min_version", k_min_version, 0, 0, 0, 0},
    {"ciphers", k_ciphers, 0, 0, 0, 0},
    {"session_tickets", k_tickets, 0, 0, 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

/* [plugin NAME]: only `load` is the host's; every other key goes to the plugin. */
static const keydef plugin_keys[] = {
    {"load", NULL, 0, 0, 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

const keydef *const sk__cfg_key_tables[] = {sidekick_keys, listener_keys, route_keys,
                                            cluster_keys,  plugin_keys,   tls_keys};

/* Line of key `name` in section `s`, 0 when absent. */
int sk__cfg_key_line(const sect *s, const char *name)
{
    const keydef *t = sk__cfg_key_tables[s->kind];
    for (int i = 0; t[i].name; i++)
        if (strcmp(t[i].name, name) == 0) return s->key_line[i];
    return 0;
}
