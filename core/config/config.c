/*
 * config.c — loads one INI file into a validated, immutable sk_config.
 *
 * inih does the "key = value" splitting; everything else is ours. inih's
 * handler is not told the line number, so the file is fed to
 * ini_parse_stream() through our own line reader, which counts lines (inih
 * asks for exactly one line per call) and also recognises section headers
 * itself: that gives every message a line, and it lets empty sections be
 * validated too (inih never calls the handler for a section without keys).
 *
 * The reader strips leading whitespace, so keys may be indented; in exchange
 * inih's continuation lines (an indented line continuing the previous value)
 * are not supported: such a line is a syntax error.
 *
 * Loading runs in three passes: parse (per key: syntax and range), section
 * checks (required keys, exclusive keys), then cross references (routes and
 * listeners naming listeners and clusters). The first error stops the load;
 * the message names file, line, section and key.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf */
#endif
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <net/if.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

/* ---- number, duration, size and address syntax ------------------------------------------ */

/* Consumes decimal digits at *sp into *out; -1 when there are none or on overflow. */
static int digits(const char **sp, uint64_t *out)
{
    const char *s = *sp;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*s)) return -1;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *sp = s;
    *out = v;
    return 0;
}

/* A plain non-negative integer, nothing else. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || digits(&s, out) < 0 || *s) return -1;
    return 0;
}

static int mul_ok(uint64_t v, uint64_t m, uint64_t *out)
{
    if (m && v > UINT64_MAX / m) return -1;
    *out = v * m;
    return 0;
}

/*
 * Parses a duration: digits followed by "ms", "s", "m" or nothing (seconds).
 * No sign, no spaces, no fractions. Returns 0 with *ms set, or -1.
 */
int sk_parse_duration(const char *s, uint64_t *ms)
{
    uint64_t v, mult;
    if (!s || digits(&s, &v) < 0) return -1;
    if (*s == '\0' || strcmp(s, "s") == 0)
        mult = 1000;
    else if (strcmp(s, "ms") == 0)
        mult = 1;
    else if (strcmp(s, "m") == 0)
        mult = 60000;
    else
        return -1;
    return mul_ok(v, mult, ms);
}

/*
 * Parses a size: digits followed by nothing, "k" or "m" (any case; 1024
 * multipliers). Returns 0 with *bytes set, or -1.
 */
int sk_parse_size(const char *s, uint64_t *bytes)
{
    uint64_t v, mult;
    if (!s || digits(&s, &v) < 0) return -1;
    if (*s == '\0')
        mult = 1;
    else if ((s[0] == 'k' || s[0] == 'K') && s[1] == '\0')
        mult = 1024;
    else if ((s[0] == 'm' || s[0] == 'M') && s[1] == '\0')
        mult = 1024 * 1024;
    else
        return -1;
    return mul_ok(v, mult, bytes);
}

/*
 * Parses "a.b.c.d:port", "[v6]:port" or "localhost:port" (= 127.0.0.1).
 * Hosts must be numeric (no DNS at load time); the port is required, 0..65535.
 * Fills out->ss, out->len and the canonical out->text. Returns 0 or -1
 * (out is zeroed then).
 */
int sk_parse_addr(const char *s, sk_addr *out)
{
    char host[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    const char *port;
    int family;
    uint64_t portnum;

    memset(out, 0, sizeof(*out));
    if (!s) return -1;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host)) return -1;
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        port = close + 2;
        family = AF_INET6;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host)) return -1;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        if (strchr(host, ':')) return -1; /* IPv6 needs brackets */
        port = colon + 1;
        family = AF_INET;
    }
    if (!host[0] || strlen(port) > 5 || parse_u64(port, &portnum) < 0 || portnum > 65535) return -1;

    if (family == AF_INET) {
        struct in_addr a;
        if (strcasecmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
        /* inet_pton is strict dotted-quad; getaddrinfo would take "1" or "0x7f.1". */
        if (inet_pton(AF_INET, host, &a) != 1) return -1;
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) return -1;
    if (ai->ai_addrlen > sizeof(out->ss)) {
        freeaddrinfo(ai);
        return -1;
    }
    memcpy(&out->ss, ai->ai_addr, ai->ai_addrlen);
    out->len = ai->ai_addrlen;
    freeaddrinfo(ai);

    char num[INET6_ADDRSTRLEN + IF_NAMESIZE + 2];
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
        sin->sin_port = htons((uint16_t)portnum);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        sin6->sin6_port = htons((uint16_t)portnum);
    }
    if (getnameinfo((struct sockaddr *)&out->ss, out->len, num, sizeof(num), NULL, 0, NI_NUMERICHOST) != 0) {
        memset(out, 0, sizeof(*out));
        return -1;
    }
    snprintf(out->text, sizeof(out->text), family == AF_INET6 ? "[%s]:%u" : "%s:%u", num, (unsigned)portnum);
    return 0;
}

static unsigned addr_port(const sk_addr *a)
{
    if (a->ss.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

/* ---- reference counting and release ------------------------------------------------------ */

static void route_free(sk_route *r)
{
    if (!r) return;
    free(r->name);
    free(r->host);
    free(r->prefix);
    free(r->path);
    for (size_t i = 0; i < r->nmethods; i++) free(r->methods[i]);
    free(r->methods);
    for (size_t i = 0; i < r->nheaders; i++) {
        free(r->headers[i].name);
        free(r->headers[i].value);
    }
    free(r->headers);
    free(r->clusters);
    free(r->plugins);
    free(r->rewrite_prefix);
    free(r->respond_body);
    free(r->lua);
    for (size_t i = 0; i < r->nlua_keys; i++) {
        free(r->lua_keys[i].key);
        free(r->lua_keys[i].value);
    }
    free(r->lua_keys);
    free(r->lua_src);
    free(r);
}

static void config_free(sk_config *c)
{
    if (!c) return;
    if (c->ext) c->ext->lua_free(c->lua); /* the Lua states may hold nothing of what follows, but go first */
    for (size_t i = 0; i < c->nlisteners; i++) {
        free(c->listeners[i]->name);
        free(c->listeners[i]->routes);
        free(c->listeners[i]->plugins);
        free(c->listeners[i]);
    }
    for (size_t i = 0; i < c->nroutes; i++) route_free(c->routes[i]);
    for (size_t i = 0; i < c->nclusters; i++) {
        free(c->clusters[i]->name);
        free(c->clusters[i]->endpoints);
        free(c->clusters[i]->discovery);
        free(c->clusters[i]->discovery_arg);
        if (c->clusters[i]->upstream) c->clusters[i]->upstream_free(c->clusters[i]->upstream);
        free(c->clusters[i]);
    }
    /* Plugins last: destroy() may still look at nothing but its own state,
     * yet nothing above points into a plugin. */
    for (size_t i = 0; c->ext && i < c->nplugins; i++) c->ext->instance_free(c->plugins[i]);
    free(c->plugins);
    free(c->listeners);
    free(c->routes);
    free(c->clusters);
    free(c->file);
    free(c->plugin_dir);
    free(c->lua_dir);
    free(c->access_log);
    free(c);
}

/* Takes one more reference on `c`; the matching sk_config_unref() releases it. */
void sk_config_ref(sk_config *c)
{
    __atomic_fetch_add(&c->refcnt, 1, __ATOMIC_RELAXED);
}

/*
 * Drops one reference; the last one frees the config and every object it
 * owns (listeners, routes, clusters and their strings). NULL is ignored.
 */
void sk_config_unref(sk_config *c)
{
    if (!c) return;
    if (__atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0) config_free(c);
}

/* ---- load context and error messages ----------------------------------------------------- */

enum { SEC_SIDEKICK = 0, SEC_LISTENER, SEC_ROUTE, SEC_CLUSTER, SEC_PLUGIN };
static const char *const kind_names[] = {"sidekick", "listener", "route", "cluster", "plugin"};

#define MAX_KEYS   16
#define KEY_REPEAT 1u /* the key may appear more than once in a section */

/* One section of the file, with what pass 2 and 3 need to know about it. */
typedef struct sect {
    int kind;               /* SEC_* */
    int line;               /* line of the section header */
    const char *name;       /* the object's name ("" for [sidekick]), not owned */
    void *obj;              /* sk_listener, sk_route, sk_cluster, or the sk_config */
    int key_line[MAX_KEYS]; /* line of each key of the kind's table, 0 = absent */
    char *ref;              /* listener: `cluster` name; route: `listener` name */
    char **names;           /* route: the cluster names of `cluster`, parallel to clusters */
    size_t nnames;          /* number of names */
    char **pnames;          /* listener, route: the instance names of `plugins` */
    size_t npnames;         /* number of them */
    int lua_key_line;       /* route: line of the first `lua.NAME` key, 0 if none */
    char lua_key[64];       /* its name */
} sect;

typedef struct ctx ctx;
typedef struct keydef keydef;
typedef int (*key_fn)(ctx *x, sect *s, const keydef *k, const char *v);

/* One key of a section kind. `fn` NULL = in the design, not implemented yet. */
struct keydef {
    const char *name;
    key_fn fn;
    unsigned flags;    /* KEY_* */
    size_t off;        /* generic handlers: offset of the field in the object */
    uint64_t min, max; /* generic handlers: accepted range */
};

struct ctx {
    sk_config *cfg;   /* being built */
    const char *path; /* the file as named by the caller, for messages */
    char *dir;        /* absolute directory of the file */
    FILE *fp;         /* the file (a memory stream over snapshot) */
    char *snapshot;   /* the file's bytes, read at once */
    char *buf;        /* getline buffer */
    size_t bufcap;    /* its size */
    int lineno;       /* line last handed to inih */
    bool failed;      /* an error was recorded: stop parsing */
    char *err;        /* first error, malloc'd (NULL if even that failed) */
    int err_line;     /* its line, 0 for file-level errors */
    sect **sects;     /* every section, in file order */
    size_t nsects;    /* number of sections */
    sect *cur;        /* the section keys currently belong to, or NULL */
    const char *key;  /* the key being handled, for messages */
};

static int vfail(ctx *x, int line, const sect *s, const char *key, const char *fmt, va_list ap)
{
    char msg[512], where[300];
    if (x->failed) return -1;
    x->failed = true;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = 0;
    where[0] = '\0';
    if (s) {
        if (s->name[0])
            n = (size_t)snprintf(where, sizeof(where), "[%s %s] ", kind_names[s->kind], s->name);
        else
            n = (size_t)snprintf(where, sizeof(where), "[%s] ", kind_names[s->kind]);
    }
    if (key && n < sizeof(where)) snprintf(where + n, sizeof(where) - n, "%s: ", key);
    int r;
    if (line > 0)
        r = asprintf(&x->err, "%s:%d: %s%s", x->path, line, where, msg);
    else
        r = asprintf(&x->err, "%s: %s%s", x->path, where, msg);
    x->err_line = line;
    if (r < 0) x->err = strdup("out of memory"); /* NULL is possible: the caller copes */
    return -1;
}

/* Records an error at `line` about section `s` (may be NULL) and `key` (may be NULL). */
static int fail_at(ctx *x, int line, const sect *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail_at(ctx *x, int line, const sect *s, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(x, line, s, key, fmt, ap);
    va_end(ap);
    return -1;
}

/* Records an error about the key being parsed, at the current line. */
static int bad(ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(x, x->lineno, x->cur, x->key, fmt, ap);
    va_end(ap);
    return -1;
}

static int oom(ctx *x)
{
    return fail_at(x, 0, NULL, NULL, "out of memory");
}

static char *xstrdup(ctx *x, const char *s)
{
    char *p = strdup(s);
    if (!p) oom(x);
    return p;
}

/* Appends `p` to the pointer array *arr of *n elements. */
static int push(ctx *x, void *arrp, size_t *n, void *p)
{
    void ***arr = arrp;
    void **a = realloc(*arr, (*n + 1) * sizeof(void *));
    if (!a) return oom(x);
    a[(*n)++] = p;
    *arr = a;
    return 0;
}

/* ---- small string helpers ---------------------------------------------------------------- */

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    return s;
}

static bool is_tchar(int c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool is_token(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s)) return false;
    return true;
}

static bool is_name(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("-_.", *s)) return false;
    return true;
}

/*
 * Splits a comma list into trimmed, non-empty items. Returns the number of
 * items (stored in the malloc'd *items, pointing into the malloc'd *copy), or
 * -1 with an error recorded.
 */
static int split_list(ctx *x, const char *v, char **copy, char ***items)
{
    *items = NULL;
    *copy = xstrdup(x, v);
    if (!*copy) return -1;
    size_t n = 1;
    for (const char *p = v; *p; p++) n += *p == ',';
    char **a = calloc(n, sizeof(char *));
    if (!a) {
        free(*copy);
        *copy = NULL;
        return oom(x);
    }
    size_t i = 0;
    char *p = *copy;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        a[i] = trim(p);
        if (!a[i][0]) {
            free(a);
            free(*copy);
            *copy = NULL;
            return bad(x, "empty entry in list '%s'", v);
        }
        i++;
        if (!comma) break;
        p = comma + 1;
    }
    *items = a;
    return (int)i;
}

/*
 * Makes `v` absolute against `dir` and removes "." and ".." components
 * lexically (the path need not exist yet). Returns a malloc'd path or NULL.
 */
static char *resolve_path(ctx *x, const char *v)
{
    size_t dl = strlen(x->dir), vl = strlen(v);
    char *joined = malloc(dl + vl + 2);
    if (!joined) {
        oom(x);
        return NULL;
    }
    if (v[0] == '/')
        memcpy(joined, v, vl + 1);
    else
        snprintf(joined, dl + vl + 2, "%s/%s", x->dir, v);

    char *out = malloc(strlen(joined) + 2);
    if (!out) {
        free(joined);
        oom(x);
        return NULL;
    }
    size_t o = 0;
    char *save = NULL;
    for (char *c = strtok_r(joined, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (strcmp(c, ".") == 0) continue;
        if (strcmp(c, "..") == 0) {
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--; /* the slash */
            continue;
        }
        out[o++] = '/';
        size_t cl = strlen(c);
        memcpy(out + o, c, cl);
        o += cl;
    }
    if (o == 0) out[o++] = '/';
    out[o] = '\0';
    free(joined);
    return out;
}

static int set_str(ctx *x, char **field, char *p)
{
    if (!p) return -1;
    free(*field);
    *field = p;
    return 0;
}

/* ---- generic key handlers ----------------------------------------------------------------- */

static void *field(sect *s, const keydef *k)
{
    return (char *)s->obj + k->off;
}

static int k_duration(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t ms;
    if (sk_parse_duration(v, &ms) < 0) return bad(x, "bad duration '%s'", v);
    if (ms < k->min) return bad(x, "duration '%s' must be greater than 0", v);
    if (ms > k->max)
        return k->max < 60000
                   ? bad(x, "duration '%s' is too long (at most %llums)", v, (unsigned long long)k->max)
                   : bad(x, "duration '%s' is too long (at most %llum)", v,
                         (unsigned long long)(k->max / 60000));
    *(uint64_t *)field(s, k) = ms;
    return 0;
}

static int k_uint(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t n;
    if (parse_u64(v, &n) < 0) return bad(x, "bad number '%s'", v);
    if (n < k->min || n > k->max)
        return bad(x, "%s out of range (%llu..%llu)", v, (unsigned long long)k->min,
                   (unsigned long long)k->max);
    *(unsigned *)field(s, k) = (unsigned)n;
    return 0;
}

static int k_size(ctx *x, sect *s, const keydef *k, const char *v)
{
    uint64_t n;
    if (sk_parse_size(v, &n) < 0) return bad(x, "bad size '%s'", v);
    if (n < k->min || n > k->max)
        return bad(x, "size %s out of range (%llu..%llu bytes)", v, (unsigned long long)k->min,
                   (unsigned long long)k->max);
    *(uint64_t *)field(s, k) = n;
    return 0;
}

static int k_addr(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (sk_parse_addr(v, field(s, k)) < 0)
        return bad(x, "bad address '%s' (expected ip:port, [ipv6]:port or localhost:port)", v);
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
    if (parse_u64(v, &n) < 0 || n < 1 || n > 256)
        return bad(x, "bad value '%s' (expected auto or 1..256)", v);
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
        return bad(x, "bad address '%s' (expected ip:port, [ipv6]:port, localhost:port or off)", v);
    x->cfg->admin_enabled = true;
    return 0;
}

static int k_dir(ctx *x, sect *s, const keydef *k, const char *v)
{
    return set_str(x, (char **)field(s, k), resolve_path(x, v));
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
    return bad(x, "bad value '%s' (expected error, warn, info or debug)", v);
}

static int k_access_log(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (strcmp(v, "stdout") == 0 || strcmp(v, "stderr") == 0 || strcmp(v, "off") == 0)
        return set_str(x, &x->cfg->access_log, xstrdup(x, v));
    return set_str(x, &x->cfg->access_log, resolve_path(x, v));
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
        return bad(x, "bad value '%s' (expected http or tcp)", v);
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
        return bad(x, "bad value '%s' (expected on or off)", v);
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
    return bad(x, "bad value '%s' (expected reject, keep or decode)", v);
}

/* `cluster` of a listener or `listener` of a route: a name resolved in pass 3. */
static int k_ref(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (!is_name(v)) return bad(x, "bad name '%s'", v);
    return set_str(x, &s->ref, xstrdup(x, v));
}

/* `plugins = a, b` of a listener or route: names resolved in pass 3. */
static int k_plugins(ctx *x, sect *s, const keydef *k, const char *v)
{
    char *copy, **items;
    int n = split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!is_name(items[i])) rc = bad(x, "bad plugin name '%s'", items[i]);
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(items[i], items[j]) == 0) rc = bad(x, "plugin '%s' is listed twice", items[i]);
        char *nm = rc == 0 ? xstrdup(x, items[i]) : NULL;
        if (rc == 0 && (!nm || push(x, &s->pnames, &s->npnames, nm) < 0)) {
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
    {"tls", NULL, 0, 0, 0, 0},
    {"plugins", k_plugins, 0, 0, 0, 0},
    {"max_connections", k_uint, 0, LST(max_connections), 1, 10000000},
    {"header_timeout", k_duration, 0, LST(header_timeout_ms), 1, DUR_MAX},
    {"idle_timeout", k_duration, 0, LST(idle_timeout_ms), 1, DUR_MAX},
    {"max_header_bytes", k_size, 0, LST(max_header_bytes), 1024, 1024 * 1024},
    {"max_headers", k_uint, 0, LST(max_headers), 1, 10000},
    {"max_body_bytes", k_size, 0, LST(max_body_bytes), 0, UINT64_MAX},
    {"merge_slashes", k_merge_slashes, 0, 0, 0, 0},
    {"escaped_slashes", k_escaped_slashes, 0, 0, 0, 0},
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
    if (!ok) return bad(x, "bad host '%s' (expected a name or *.suffix)", v);
    char *h = xstrdup(x, v);
    if (!h) return -1;
    for (char *q = h; *q; q++) *q = (char)tolower((unsigned char)*q);
    return set_str(x, &r->host, h);
}

static int k_prefix(ctx *x, sect *s, const keydef *k, const char *v)
{
    if (v[0] != '/') return bad(x, "'%s' must start with '/'", v);
    for (const char *p = v; *p; p++)
        if (isspace((unsigned char)*p)) return bad(x, "'%s' contains whitespace", v);
    return set_str(x, (char **)field(s, k), xstrdup(x, v));
}

static int k_method(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    char *copy, **items;
    int n = split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if (!is_token(items[i])) {
            rc = bad(x, "bad method '%s'", items[i]);
            break;
        }
        for (char *q = items[i]; *q; q++) *q = (char)toupper((unsigned char)*q);
        for (int j = 0; j < i; j++)
            if (strcmp(items[i], items[j]) == 0) rc = bad(x, "duplicate method '%s'", items[i]);
    }
    if (rc == 0) {
        r->methods = calloc((size_t)n, sizeof(char *));
        if (!r->methods) rc = oom(x);
        for (int i = 0; i < n && rc == 0; i++) {
            if (!(r->methods[i] = xstrdup(x, items[i]))) rc = -1;
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
    char *copy = xstrdup(x, v);
    if (!copy) return -1;
    char *name = copy, *value = NULL, *colon = strchr(copy, ':');
    if (colon) {
        *colon = '\0';
        value = trim(colon + 1);
    }
    name = trim(name);
    int rc = 0;
    if (!is_token(name))
        rc = bad(x, "bad header name in '%s' (expected 'name' or 'name: value')", v);
    else if (value && !*value)
        rc = bad(x, "empty value in '%s' (write just the name to require presence)", v);
    if (rc == 0) {
        sk_header_match *h = realloc(r->headers, (r->nheaders + 1) * sizeof(*h));
        if (!h) {
            rc = oom(x);
        } else {
            r->headers = h;
            h = &r->headers[r->nheaders];
            h->name = xstrdup(x, name);
            h->value = value ? xstrdup(x, value) : NULL;
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
    int n = split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    r->clusters = calloc((size_t)n, sizeof(*r->clusters));
    s->names = calloc((size_t)n, sizeof(char *));
    if (!r->clusters || !s->names) rc = oom(x);
    uint64_t total = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char *name = items[i], *w = name;
        while (*w && *w != ' ' && *w != '\t') w++;
        if (*w) *w++ = '\0';
        w = trim(w);
        uint64_t weight = 1;
        if (*name && !is_name(name)) {
            rc = bad(x, "bad cluster name '%s'", name);
        } else if (*w) {
            if (parse_u64(w, &weight) < 0 || weight > 10000)
                rc = bad(x, "bad weight '%s' for '%s' (expected 0..10000)", w, name);
        } else if (n > 1) {
            rc = bad(x, "missing weight for '%s' (write 'NAME WEIGHT, NAME WEIGHT')", name);
        }
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(s->names[j], name) == 0) rc = bad(x, "cluster '%s' named twice", name);
        if (rc == 0 && !(s->names[i] = xstrdup(x, name))) rc = -1;
        if (rc == 0) {
            r->clusters[i].weight = (unsigned)weight;
            total += weight;
            s->nnames = r->nclusters = (size_t)i + 1;
        }
    }
    if (rc == 0 && total == 0) rc = bad(x, "weights add up to 0");
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
    if (digits(&p, &status) < 0 || p - v != 3 || (*p && *p != ' ') || status < 200 || status > 599)
        return bad(x, "bad value '%s' (expected 'STATUS [BODY]', status 200..599)", v);
    r->respond_status = (int)status;
    return set_str(x, &r->respond_body, xstrdup(x, *p ? p + 1 : ""));
}

/* `lua = FILE`: kept as written, resolved against lua_dir once the whole
 * file is read ([sidekick] may come later). */
static int k_lua(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_route *r = s->obj;
    return set_str(x, &r->lua, xstrdup(x, v));
}

/* `lua.NAME = value`: configuration for the route's script. */
static int k_lua_key(ctx *x, sect *s, const char *name, const char *value)
{
    sk_route *r = s->obj;
    const char *n = name + 4;
    if (!s->lua_key_line) {
        s->lua_key_line = x->lineno;
        snprintf(s->lua_key, sizeof(s->lua_key), "%s", name);
    }
    if (!*n) return bad(x, "empty name after 'lua.'");
    for (const char *p = n; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return bad(x, "bad name '%s' (expected lua.NAME with NAME of [A-Za-z0-9_])", name);
    for (size_t i = 0; i < r->nlua_keys; i++)
        if (strcmp(r->lua_keys[i].key, n) == 0) return bad(x, "duplicate key");
    sk_lua_kv *a = realloc(r->lua_keys, (r->nlua_keys + 1) * sizeof(*a));
    if (!a) return oom(x);
    r->lua_keys = a;
    sk_lua_kv *kv = &a[r->nlua_keys];
    kv->key = strdup(n);
    kv->value = strdup(value);
    if (!kv->key || !kv->value) {
        free(kv->key);
        free(kv->value);
        return oom(x);
    }
    r->nlua_keys++;
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
    {NULL, NULL, 0, 0, 0, 0},
};

/* ---- [cluster NAME] ----------------------------------------------------------------------- */

static int k_endpoints(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    char *copy, **items;
    int n = split_list(x, v, &copy, &items);
    if (n < 0) return -1;
    int rc = 0;
    c->endpoints = calloc((size_t)n, sizeof(*c->endpoints));
    if (!c->endpoints) rc = oom(x);
    for (int i = 0; i < n && rc == 0; i++) {
        sk_endpoint_conf *e = &c->endpoints[i];
        e->index = i;
        if (sk_parse_addr(items[i], &e->address) < 0)
            rc = bad(x, "bad address '%s' (expected ip:port, [ipv6]:port or localhost:port)", items[i]);
        else if (addr_port(&e->address) == 0)
            rc = bad(x, "bad address '%s': port 0", items[i]);
        for (int j = 0; j < i && rc == 0; j++)
            if (strcmp(c->endpoints[j].address.text, e->address.text) == 0)
                rc = bad(x, "duplicate endpoint '%s'", e->address.text);
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
    if (n == 0) return bad(x, "expected 'NAME [ARG]' (NAME: a [plugin NAME] instance)");
    const char *arg = v + n;
    arg += strspn(arg, " \t");
    size_t alen = strlen(arg);
    while (alen && (arg[alen - 1] == ' ' || arg[alen - 1] == '\t')) alen--;
    if (set_str(x, &c->discovery, strndup(v, n)) < 0) return oom(x);
    if (alen && set_str(x, &c->discovery_arg, strndup(arg, alen)) < 0) return oom(x);
    return 0;
}

static int k_lb(ctx *x, sect *s, const keydef *k, const char *v)
{
    sk_cluster *c = s->obj;
    if (strcmp(v, "round_robin") == 0)
        c->lb = SK_LB_ROUND_ROBIN;
    else if (strcmp(v, "least_request") == 0)
        c->lb = SK_LB_LEAST_REQUEST;
    else if (strcmp(v, "random") == 0)
        c->lb = SK_LB_RANDOM;
    else if (strcmp(v, "ring_hash") == 0)
        return bad(x, "ring_hash is not supported yet in this version");
    else
        return bad(x, "bad value '%s' (expected round_robin, least_request or random)", v);
    return 0;
}

#define CL(f) offsetof(sk_cluster, f)

static const keydef cluster_keys[] = {
    {"endpoints", k_endpoints, 0, 0, 0, 0},
    {"discovery", k_discovery, 0, 0, 0, 0},
    {"lb", k_lb, 0, 0, 0, 0},
    {"hash_key", NULL, 0, 0, 0, 0},
    {"connect_timeout", k_duration, 0, CL(connect_timeout_ms), 1, DUR_MAX},
    {"max_connections", k_uint, 0, CL(max_connections), 1, 10000000},
    {"max_pending", k_uint, 0, CL(max_pending), 1, 10000000},
    {"max_requests", k_uint, 0, CL(max_requests), 1, 10000000},
    {"health_check", NULL, 0, 0, 0, 0},
    {"health_interval", NULL, 0, 0, 0, 0},
    {"outlier_failures", NULL, 0, 0, 0, 0},
    {"outlier_ejection", NULL, 0, 0, 0, 0},
    {"tls", NULL, 0, 0, 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

/* [plugin NAME]: only `load` is the host's; every other key goes to the plugin. */
static const keydef plugin_keys[] = {
    {"load", NULL, 0, 0, 0, 0},
    {NULL, NULL, 0, 0, 0, 0},
};

static const keydef *const key_tables[] = {sidekick_keys, listener_keys, route_keys, cluster_keys,
                                           plugin_keys};

/* Line of key `name` in section `s`, 0 when absent. */
static int key_line(const sect *s, const char *name)
{
    const keydef *t = key_tables[s->kind];
    for (int i = 0; t[i].name; i++)
        if (strcmp(t[i].name, name) == 0) return s->key_line[i];
    return 0;
}

/* ---- pass 1: sections (from the reader) and keys (from inih) ----------------------------- */

static sect *find_sect(ctx *x, int kind, const char *name)
{
    for (size_t i = 0; i < x->nsects; i++)
        if (x->sects[i]->kind == kind && strcmp(x->sects[i]->name, name) == 0) return x->sects[i];
    return NULL;
}

/* Creates the object of a new [kind name] section with its defaults and
 * appends it to the config's array of that kind. NULL on allocation failure. */
static void *new_object(ctx *x, int kind, const char *name)
{
    static const size_t sizes[] = {0, sizeof(sk_listener), sizeof(sk_route), sizeof(sk_cluster)};
    sk_config *c = x->cfg;
    if (kind == SEC_SIDEKICK) return c;
    if (kind == SEC_PLUGIN) {
        sk_instance *pi = c->ext->instance_new(name, (int)c->nplugins, x->lineno);
        if (!pi || push(x, &c->plugins, &c->nplugins, pi) < 0) {
            if (pi) c->ext->instance_free(pi);
            oom(x);
            return NULL;
        }
        return pi;
    }
    char *nm = strdup(name);
    void *obj = calloc(1, sizes[kind]);
    int rc = !nm || !obj            ? -1
             : kind == SEC_LISTENER ? push(x, &c->listeners, &c->nlisteners, obj)
             : kind == SEC_ROUTE    ? push(x, &c->routes, &c->nroutes, obj)
                                    : push(x, &c->clusters, &c->nclusters, obj);
    if (rc < 0) {
        free(nm);
        free(obj);
        oom(x);
        return NULL;
    }
    /* From here on the object belongs to the config and is freed with it. */
    if (kind == SEC_LISTENER) {
        sk_listener *l = obj;
        l->name = nm;
        l->index = (int)c->nlisteners - 1;
        l->line = x->lineno;
        l->protocol = SK_PROTO_HTTP;
        l->max_connections = 10000;
        l->header_timeout_ms = 10000;
        l->idle_timeout_ms = 60000;
        l->max_header_bytes = 64 * 1024;
        l->max_headers = 100;
    } else if (kind == SEC_ROUTE) {
        sk_route *r = obj;
        r->name = nm;
        r->index = (int)c->nroutes - 1;
        r->line = x->lineno;
        r->timeout_ms = 15000;
        r->lua_budget_ms = 50;
        if (!(r->prefix = xstrdup(x, "/"))) return NULL;
    } else {
        sk_cluster *cl = obj;
        cl->name = nm;
        cl->index = (int)c->nclusters - 1;
        cl->line = x->lineno;
        cl->lb = SK_LB_ROUND_ROBIN;
        cl->connect_timeout_ms = 1000;
        cl->config = c;
        cl->max_connections = cl->max_pending = cl->max_requests = 1024;
    }
    return obj;
}

/*
 * Handles a "[...]" line (leading whitespace already stripped). Returns 0,
 * or -1 with an error recorded.
 */
static int section_start(ctx *x, char *line)
{
    char *close = strchr(line, ']');
    x->cur = NULL;
    if (!close) return fail_at(x, x->lineno, NULL, NULL, "section header without ']'");
    char *rest = trim(close + 1);
    if (*rest && *rest != ';' && *rest != '#')
        return fail_at(x, x->lineno, NULL, NULL, "unexpected '%s' after section header", rest);
    *close = '\0';
    char *kind = trim(line + 1), *name = kind;
    while (*name && *name != ' ' && *name != '\t') name++;
    if (*name) *name++ = '\0';
    name = trim(name);
    char label[256];
    snprintf(label, sizeof(label), *name ? "[%s %s]" : "[%s]", kind, name);

    int k = -1;
    for (int i = 0; i < (int)SK_ARRAY_LEN(kind_names); i++)
        if (strcmp(kind, kind_names[i]) == 0) k = i;
    if (k < 0 && strcmp(kind, "tls") == 0)
        return fail_at(x, x->lineno, NULL, NULL, "%s not supported yet in this version", label);
    if (k < 0) return fail_at(x, x->lineno, NULL, NULL, "%s unknown section", label);
    if (k == SEC_SIDEKICK && *name)
        return fail_at(x, x->lineno, NULL, NULL, "%s [sidekick] takes no name", label);
    if (k != SEC_SIDEKICK && !*name)
        return fail_at(x, x->lineno, NULL, NULL, "%s missing name (write [%s NAME])", label, kind);
    if (*name && !is_name(name))
        return fail_at(x, x->lineno, NULL, NULL, "%s bad name (letters, digits, '-', '_' and '.' only)",
                       label);
    sect *prev = find_sect(x, k, name);
    if (prev)
        return fail_at(x, x->lineno, NULL, NULL, "%s duplicate section (first at line %d)", label,
                       prev->line);

    sect *s = calloc(1, sizeof(*s));
    if (!s || push(x, &x->sects, &x->nsects, s) < 0) {
        free(s);
        return oom(x);
    }
    s->kind = k;
    s->line = x->lineno;
    s->name = "";
    if (!(s->obj = new_object(x, k, name))) return -1;
    if (k == SEC_LISTENER) s->name = ((sk_listener *)s->obj)->name;
    if (k == SEC_ROUTE) s->name = ((sk_route *)s->obj)->name;
    if (k == SEC_CLUSTER) s->name = ((sk_cluster *)s->obj)->name;
    if (k == SEC_PLUGIN) s->name = x->cfg->ext->instance_name(s->obj);
    x->cur = s;
    return 0;
}

/*
 * inih's line reader: hands over one line per call, counting lines, with
 * leading whitespace removed; section headers are handled here. Returning
 * NULL ends the parse (end of file, or an error already recorded).
 */
static char *read_line(char *str, int num, void *stream)
{
    ctx *x = stream;
    if (x->failed) return NULL;
    ssize_t n = getline(&x->buf, &x->bufcap, x->fp);
    if (n < 0) {
        if (ferror(x->fp)) fail_at(x, 0, NULL, NULL, "read error: %s", strerror(errno));
        return NULL;
    }
    x->lineno++;
    char *p = x->buf;
    if (memchr(p, '\0', (size_t)n)) {
        fail_at(x, x->lineno, NULL, NULL, "NUL byte in line");
        return NULL;
    }
    if (x->lineno == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;
    while (isspace((unsigned char)*p)) p++;
    if (*p == ';' || *p == '#') *p = '\0'; /* a comment line, however long */
    /* Inline comments as inih sees them: ';' after whitespace. Removed here
     * so that only the content counts against inih's line length. */
    for (char *q = p; *q; q++) {
        if (*q == ';' && q > p && isspace((unsigned char)q[-1])) {
            *q = '\0';
            break;
        }
    }
    size_t len = strlen(p);
    while (len > 0 && isspace((unsigned char)p[len - 1])) p[--len] = '\0';
    if (num < 2 || len > (size_t)num - 2) {
        fail_at(x, x->lineno, x->cur, NULL, "line too long (more than %d characters)", num - 2);
        return NULL;
    }
    memcpy(str, p, len + 1);
    if (*p == '[' && section_start(x, p) < 0) return NULL; /* section_start edits p */
    return str;
}

/* inih's handler: one "key = value" of the current section. Always returns 1:
 * errors are recorded in the context, and the reader then stops the parse. */
static int on_key(void *user, const char *section, const char *name, const char *value)
{
    ctx *x = user;
    sect *s = x->cur;
    if (x->failed) return 1;
    x->key = name;
    if (!s) {
        fail_at(x, x->lineno, NULL, name, "key outside of any section");
        return 1;
    }
    if (s->kind == SEC_PLUGIN) {
        sk_instance *pi = s->obj;
        if (strcmp(name, "load") == 0) {
            int first = 0;
            if (!*value) {
                bad(x, "missing value");
            } else if ((first = x->cfg->ext->instance_set_load(pi, value, x->lineno)) > 0) {
                bad(x, "duplicate key (first at line %d)", first);
            } else if (first < 0) {
                oom(x);
            } else {
                s->key_line[0] = x->lineno;
            }
        } else if (x->cfg->ext->instance_add_key(pi, name, value, x->lineno) < 0) {
            oom(x);
        }
        return 1;
    }
    if (s->kind == SEC_ROUTE && strncmp(name, "lua.", 4) == 0) {
        k_lua_key(x, s, name, value);
        return 1;
    }
    const keydef *t = key_tables[s->kind], *k = NULL;
    for (int i = 0; t[i].name; i++)
        if (strcmp(t[i].name, name) == 0) k = &t[i];
    if (!k) {
        bad(x, "unknown key");
        return 1;
    }
    int *line = &s->key_line[k - t];
    if (*line && !(k->flags & KEY_REPEAT)) {
        bad(x, "duplicate key (first at line %d)", *line);
        return 1;
    }
    if (!*line) *line = x->lineno;
    if (!k->fn)
        bad(x, "not supported yet in this version");
    else if (!*value)
        bad(x, "missing value");
    else
        k->fn(x, s, k, value);
    return 1;
}

/* ---- pass 2: each section on its own ----------------------------------------------------- */

static int check_section(ctx *x, sect *s)
{
    if (s->kind == SEC_LISTENER) {
        sk_listener *l = s->obj;
        if (!key_line(s, "address")) return fail_at(x, s->line, s, NULL, "missing 'address'");
        if (l->protocol == SK_PROTO_TCP && !s->ref)
            return fail_at(x, s->line, s, NULL, "protocol tcp needs a 'cluster'");
        if (l->protocol == SK_PROTO_HTTP && s->ref)
            return fail_at(x, key_line(s, "cluster"), s, "cluster",
                           "only for protocol = tcp (http listeners use routes)");
        for (int i = 0; i < l->index; i++) {
            sk_listener *o = x->cfg->listeners[i];
            if (addr_port(&l->address) != 0 && strcmp(o->address.text, l->address.text) == 0)
                return fail_at(x, key_line(s, "address"), s, "address", "%s is already used by [listener %s]",
                               l->address.text, o->name);
        }
    } else if (s->kind == SEC_ROUTE) {
        sk_route *r = s->obj;
        int pl = key_line(s, "prefix"), ph = key_line(s, "path");
        int cl = key_line(s, "cluster"), rl = key_line(s, "respond");
        int rw = key_line(s, "rewrite_prefix");
        if (!s->ref) return fail_at(x, s->line, s, NULL, "missing 'listener'");
        if (pl && ph)
            return fail_at(x, SK_MAX(pl, ph), s, pl > ph ? "prefix" : "path",
                           "'prefix' and 'path' are exclusive");
        if (ph) {
            free(r->prefix);
            r->prefix = NULL;
        }
        if (rw && ph) return fail_at(x, rw, s, "rewrite_prefix", "needs 'prefix', not 'path'");
        if (cl && rl)
            return fail_at(x, SK_MAX(cl, rl), s, cl > rl ? "cluster" : "respond",
                           "'cluster' and 'respond' are exclusive");
        if (!cl && !rl) return fail_at(x, s->line, s, NULL, "needs 'cluster' or 'respond'");
        if (r->nlua_keys && !r->lua) return fail_at(x, s->lua_key_line, s, s->lua_key, "needs 'lua'");
        if (key_line(s, "lua_budget") && !r->lua)
            return fail_at(x, key_line(s, "lua_budget"), s, "lua_budget", "needs 'lua'");
        if (r->lua && rl)
            return fail_at(x, key_line(s, "lua"), s, "lua", "a route with 'respond' runs no filter");
        if (r->lua && r->lua[0] != '/') { /* relative to lua_dir */
            char *dir = x->dir;
            x->dir = x->cfg->lua_dir;
            char *abs = resolve_path(x, r->lua);
            x->dir = dir;
            if (set_str(x, &r->lua, abs) < 0) return -1;
        }
    } else if (s->kind == SEC_CLUSTER) {
        sk_cluster *cl = s->obj;
        if (!key_line(s, "endpoints") && !cl->discovery)
            return fail_at(x, s->line, s, NULL, "missing 'endpoints' (or 'discovery')");
    }
    return 0;
}

/* ---- pass 3: references between sections ------------------------------------------------- */

static sk_cluster *find_cluster(ctx *x, const char *name)
{
    sect *s = find_sect(x, SEC_CLUSTER, name);
    return s ? s->obj : NULL;
}

/* Resolves `plugins` names into the instance array of a listener or route. */
static int link_plugins(ctx *x, sect *s, sk_instance ***out, size_t *n)
{
    if (!s->npnames) return 0;
    if (!(*out = calloc(s->npnames, sizeof(**out)))) return oom(x);
    for (size_t i = 0; i < s->npnames; i++) {
        sect *ps = find_sect(x, SEC_PLUGIN, s->pnames[i]);
        if (!ps)
            return fail_at(x, key_line(s, "plugins"), s, "plugins",
                           "unknown plugin '%s' (no [plugin %s] section)", s->pnames[i], s->pnames[i]);
        (*out)[i] = ps->obj;
        *n = i + 1;
    }
    return 0;
}

static int link_section(ctx *x, sect *s)
{
    if (s->kind == SEC_LISTENER) {
        sk_listener *l = s->obj;
        if (s->npnames && l->protocol == SK_PROTO_TCP)
            return fail_at(x, key_line(s, "plugins"), s, "plugins", "only for protocol = http");
        if (link_plugins(x, s, &l->plugins, &l->nplugins) < 0) return -1;
    }
    if (s->kind == SEC_ROUTE &&
        link_plugins(x, s, &((sk_route *)s->obj)->plugins, &((sk_route *)s->obj)->nplugins) < 0)
        return -1;
    if (s->kind == SEC_CLUSTER && ((sk_cluster *)s->obj)->discovery) {
        sk_cluster *cl = s->obj;
        sect *ps = find_sect(x, SEC_PLUGIN, cl->discovery);
        if (!ps)
            return fail_at(x, key_line(s, "discovery"), s, "discovery",
                           "unknown plugin '%s' (no [plugin %s] section)", cl->discovery, cl->discovery);
        cl->discovery_inst = ps->obj;
    }
    if (s->kind == SEC_LISTENER && s->ref) {
        sk_listener *l = s->obj;
        if (!(l->cluster = find_cluster(x, s->ref)))
            return fail_at(x, key_line(s, "cluster"), s, "cluster", "unknown cluster '%s'", s->ref);
    } else if (s->kind == SEC_ROUTE) {
        sk_route *r = s->obj;
        sect *ls = find_sect(x, SEC_LISTENER, s->ref);
        if (!ls) return fail_at(x, key_line(s, "listener"), s, "listener", "unknown listener '%s'", s->ref);
        sk_listener *l = ls->obj;
        if (l->protocol != SK_PROTO_HTTP)
            return fail_at(x, key_line(s, "listener"), s, "listener",
                           "[listener %s] has protocol tcp; routes need an http listener", l->name);
        for (size_t i = 0; i < r->nclusters; i++)
            if (!(r->clusters[i].cluster = find_cluster(x, s->names[i])))
                return fail_at(x, key_line(s, "cluster"), s, "cluster", "unknown cluster '%s'", s->names[i]);
        r->listener = l;
        if (push(x, &l->routes, &l->nroutes, r) < 0) return -1;
    }
    return 0;
}

/* The admin endpoint must not take a listener's address. */
static int check_admin(ctx *x)
{
    sk_config *c = x->cfg;
    if (!c->admin_enabled || addr_port(&c->admin) == 0) return 0;
    for (size_t i = 0; i < c->nlisteners; i++) {
        if (strcmp(c->listeners[i]->address.text, c->admin.text) == 0) {
            sect *s = find_sect(x, SEC_SIDEKICK, "");
            return fail_at(x, s ? key_line(s, "admin") : 0, s, "admin", "%s is already used by [listener %s]",
                           c->admin.text, c->listeners[i]->name);
        }
    }
    return 0;
}

/* ---- loading ----------------------------------------------------------------------------- */

/* The section line `line` belongs to, or NULL before the first one. */
static sect *sect_at(ctx *x, int line)
{
    sect *found = NULL;
    for (size_t i = 0; i < x->nsects && x->sects[i]->line <= line; i++) found = x->sects[i];
    return found;
}

/*
 * Reads the whole file into memory and parses that copy: a reload sees one
 * version of the file. A file that changes while it is read (a writer
 * rewriting it in place) is refused rather than half applied; writing a
 * temporary file and rename(2)-ing it over the config is the safe way.
 */
static int read_snapshot(ctx *x)
{
    int fd = open(x->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_at(x, 0, NULL, NULL, "cannot open: %s", strerror(errno));
    struct stat before, after;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = fstat(fd, &before);
    while (rc == 0) {
        if (len == cap) {
            cap = cap ? cap * 2 : 16384;
            char *nb = cap > (64u << 20) ? NULL : realloc(buf, cap);
            if (!nb) {
                rc = -2;
                break;
            }
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) rc = -1;
        if (n <= 0) break;
        len += (size_t)n;
    }
    if (rc == 0) rc = fstat(fd, &after);
    close(fd);
    if (rc == 0 &&
        (before.st_size != after.st_size || (off_t)len != after.st_size ||
         before.st_mtim.tv_sec != after.st_mtim.tv_sec || before.st_mtim.tv_nsec != after.st_mtim.tv_nsec)) {
        free(buf);
        return fail_at(x, 0, NULL, NULL,
                       "the file changed while it was read: refused (write a new file and rename it over)");
    }
    if (rc != 0) {
        free(buf);
        return rc == -2 ? fail_at(x, 0, NULL, NULL, "file too large (more than 64 MB)")
                        : fail_at(x, 0, NULL, NULL, "read error: %s", strerror(errno));
    }
    x->snapshot = buf;
    x->fp = fmemopen(buf ? buf : (char *)"", len, "r");
    if (!x->fp) return oom(x);
    return 0;
}

static int set_defaults(ctx *x)
{
    sk_config *c = x->cfg;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    c->refcnt = 1;
    c->generation = 1;
    c->loaded_at = time(NULL);
    c->workers = (int)(cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
    c->admin_enabled = true;
    if (sk_parse_addr("127.0.0.1:15000", &c->admin) < 0)
        return fail_at(x, 0, NULL, NULL, "bad default admin address");
    c->log_level = SK_LOG_INFO;
    c->drain_timeout_ms = 15000;
    c->lua_memory = 64 * 1024 * 1024;
    if (!(c->plugin_dir = resolve_path(x, "plugins"))) return -1;
    if (!(c->lua_dir = resolve_path(x, "lua"))) return -1;
    if (!(c->access_log = xstrdup(x, "stdout"))) return -1;
    return 0;
}

static int load(ctx *x)
{
    sk_config *c = x->cfg;
    c->file = realpath(x->path, NULL);
    if (!c->file) return fail_at(x, 0, NULL, NULL, "cannot open: %s", strerror(errno));
    char *slash = strrchr(c->file, '/');
    x->dir = slash == c->file ? strdup("/") : strndup(c->file, (size_t)(slash - c->file));
    if (!x->dir) return oom(x);
    if (set_defaults(x) < 0) return -1;
    if (read_snapshot(x) < 0) return -1;

    int rc = ini_parse_stream(read_line, x, on_key, x);
    if (rc > 0 && (!x->failed || x->err_line > rc)) {
        /* inih found a line that is neither a section, "key = value" nor a
         * comment, before any error of ours (inih may go on after one). */
        free(x->err);
        x->err = NULL;
        x->failed = false;
        return fail_at(x, rc, sect_at(x, rc), NULL, "expected 'key = value'");
    }
    if (x->failed) return -1;
    if (rc == -2) return oom(x);
    if (rc != 0) return fail_at(x, 0, NULL, NULL, "cannot parse (inih error %d)", rc);
    if (c->nlisteners == 0)
        return fail_at(x, 0, NULL, NULL, "no [listener NAME] section: at least one is needed");
    for (size_t i = 0; i < x->nsects; i++)
        if (check_section(x, x->sects[i]) < 0) return -1;
    for (size_t i = 0; i < x->nsects; i++)
        if (link_section(x, x->sects[i]) < 0) return -1;
    if (check_admin(x) < 0) return -1;
    /* Last, once everything else is valid: load every plugin and let it
     * check its own keys (create). */
    for (size_t i = 0; i < x->nsects; i++) {
        sect *s = x->sects[i];
        if (s->kind != SEC_PLUGIN) continue;
        char err[1024];
        int load_line = 0;
        int lrc = c->ext->instance_load(s->obj, c, err, sizeof(err), &load_line);
        if (lrc == -1)
            return fail_at(x, load_line ? load_line : s->line, s, load_line ? "load" : NULL, "%s", err);
        if (lrc < 0) return fail_at(x, s->line, s, NULL, "%s", err); /* create() refused the section */
    }
    /* Then tell each discovery instance the clusters that name it. */
    for (size_t i = 0; i < c->nclusters; i++) {
        sk_cluster *cl = c->clusters[i];
        if (!cl->discovery_inst) continue;
        char err[1024];
        if (c->ext->instance_on_cluster(cl->discovery_inst, cl, err, sizeof(err)) < 0) {
            sect *s = find_sect(x, SEC_CLUSTER, cl->name);
            return fail_at(x, s ? key_line(s, "discovery") : cl->line, s, "discovery", "%s", err);
        }
    }
    /* Every route script is read and run once here: a syntax error or a
     * failing top level fails the load like any bad key. */
    char lerr[2048];
    int bad_route = -1;
    if (c->ext->lua_load(c, &bad_route, lerr, sizeof(lerr)) < 0) {
        sect *s = bad_route >= 0 ? find_sect(x, SEC_ROUTE, c->routes[bad_route]->name) : NULL;
        return fail_at(x, s ? key_line(s, "lua") : 0, s, s ? "lua" : NULL, "%s", lerr);
    }
    return 0;
}

/*
 * Loads and validates the INI file `path` into a new sk_config (refcnt 1,
 * generation 1). On failure returns NULL and sets *err to a malloc'd message
 * "FILE:LINE: [SECTION NAME] KEY: message" (the caller frees it); nothing
 * else stays allocated. Never logs, never exits.
 */
sk_config *sk_config_parse(const char *path, const sk_config_ext *ext, char **err)
{
    ctx x;
    memset(&x, 0, sizeof(x));
    x.path = path ? path : "(null)";
    if (err) *err = NULL;
    x.cfg = calloc(1, sizeof(*x.cfg));
    if (!x.cfg) {
        if (err) *err = strdup("out of memory");
        return NULL;
    }
    x.cfg->ext = ext;
    int rc = path ? load(&x) : fail_at(&x, 0, NULL, NULL, "no file given");

    if (x.fp) fclose(x.fp);
    free(x.snapshot);
    free(x.buf);
    free(x.dir);
    for (size_t i = 0; i < x.nsects; i++) {
        free(x.sects[i]->ref);
        for (size_t j = 0; j < x.sects[i]->nnames; j++) free(x.sects[i]->names[j]);
        free(x.sects[i]->names);
        for (size_t j = 0; j < x.sects[i]->npnames; j++) free(x.sects[i]->pnames[j]);
        free(x.sects[i]->pnames);
        free(x.sects[i]);
    }
    free(x.sects);
    if (rc < 0 || x.failed) {
        config_free(x.cfg);
        if (err)
            *err = x.err;
        else
            free(x.err);
        return NULL;
    }
    return x.cfg;
}

/* Returns the cluster named `name`, or NULL. */
sk_cluster *sk_config_cluster(const sk_config *c, const char *name)
{
    for (size_t i = 0; i < c->nclusters; i++)
        if (strcmp(c->clusters[i]->name, name) == 0) return c->clusters[i];
    return NULL;
}
