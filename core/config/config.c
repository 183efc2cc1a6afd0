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

#include "config_internal.h"

const char *const sk__cfg_kind_names[SEC_COUNT] = {"sidekick", "listener", "route", "cluster", "plugin",
                                                          "tls"};

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

static void tls_free(sk_tls *t)
{
    if (t->state) t->state_free(t->state);
    free(t->name);
    free(t->cert);
    free(t->key);
    free(t->ca);
    for (size_t i = 0; i < t->npeer_ids; i++) free(t->peer_ids[i]);
    free(t->peer_ids);
    free(t->sni);
    free(t->alpn);
    free(t->ciphers);
    free(t);
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
        free(c->clusters[i]->hash_key_name);
        free(c->clusters[i]->health_check);
        if (c->clusters[i]->upstream) c->clusters[i]->upstream_free(c->clusters[i]->upstream);
        free(c->clusters[i]);
    }
    /* Plugins last: destroy() may still look at nothing but its own state,
     * yet nothing above points into a plugin. */
    for (size_t i = 0; c->ext && i < c->nplugins; i++) c->ext->instance_free(c->plugins[i]);
    free(c->plugins);
    for (size_t i = 0; i < c->ntls; i++) tls_free(c->tls[i]);
    free(c->tls);
    free(c->listeners);
    free(c->routes);
    free(c->clusters);
    free(c->file);
    free(c->plugin_dir);
    free(c->http_client_ca);
    free(c->http_client_cert);
    free(c->http_client_key);
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
            n = (size_t)snprintf(where, sizeof(where), "[%s %s] ", sk__cfg_kind_names[s->kind], s->name);
        else
            n = (size_t)snprintf(where, sizeof(where), "[%s] ", sk__cfg_kind_names[s->kind]);
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
int sk__cfg_fail_at(ctx *x, int line, const sect *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int sk__cfg_fail_at(ctx *x, int line, const sect *s, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(x, line, s, key, fmt, ap);
    va_end(ap);
    return -1;
}

/* Records an error about the key being parsed, at the current line. */
int sk__cfg_bad(ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int sk__cfg_bad(ctx *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(x, x->lineno, x->cur, x->key, fmt, ap);
    va_end(ap);
    return -1;
}

int sk__cfg_oom(ctx *x)
{
    return sk__cfg_fail_at(x, 0, NULL, NULL, "out of memory");
}

char *sk__cfg_strdup(ctx *x, const char *s)
{
    char *p = strdup(s);
    if (!p) sk__cfg_oom(x);
    return p;
}

/* Appends `p` to the pointer array *arr of *n elements. */
int sk__cfg_push(ctx *x, void *arrp, size_t *n, void *p)
{
    void ***arr = arrp;
    void **a = realloc(*arr, (*n + 1) * sizeof(void *));
    if (!a) return sk__cfg_oom(x);
    a[(*n)++] = p;
    *arr = a;
    return 0;
}

/* ---- small string helpers ---------------------------------------------------------------- */

char *sk__cfg_trim(char *s)
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

bool sk__cfg_is_token(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char)*s)) return false;
    return true;
}

bool sk__cfg_is_name(const char *s)
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
int sk__cfg_split_list(ctx *x, const char *v, char **copy, char ***items)
{
    *items = NULL;
    *copy = sk__cfg_strdup(x, v);
    if (!*copy) return -1;
    size_t n = 1;
    for (const char *p = v; *p; p++) n += *p == ',';
    char **a = calloc(n, sizeof(char *));
    if (!a) {
        free(*copy);
        *copy = NULL;
        return sk__cfg_oom(x);
    }
    size_t i = 0;
    char *p = *copy;
    for (;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        a[i] = sk__cfg_trim(p);
        if (!a[i][0]) {
            free(a);
            free(*copy);
            *copy = NULL;
            return sk__cfg_bad(x, "empty entry in list '%s'", v);
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
char *sk__cfg_resolve_path(ctx *x, const char *v)
{
    size_t dl = strlen(x->dir), vl = strlen(v);
    char *joined = malloc(dl + vl + 2);
    if (!joined) {
        sk__cfg_oom(x);
        return NULL;
    }
    if (v[0] == '/')
        memcpy(joined, v, vl + 1);
    else
        snprintf(joined, dl + vl + 2, "%s/%s", x->dir, v);

    char *out = malloc(strlen(joined) + 2);
    if (!out) {
        free(joined);
        sk__cfg_oom(x);
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

int sk__cfg_set_str(ctx *x, char **field, char *p)
{
    if (!p) return -1;
    free(*field);
    *field = p;
    return 0;
}

/* ---- pass 1: sections (from the reader) and keys (from inih) ----------------------------- */

static sect *sk__cfg_find_sect(ctx *x, int kind, const char *name)
{
    for (size_t i = 0; i < x->nsects; i++)
        if (x->sects[i]->kind == kind && strcmp(x->sects[i]->name, name) == 0) return x->sects[i];
    return NULL;
}

/* Creates the object of a new [kind name] section with its defaults and
 * appends it to the config's array of that kind. NULL on allocation failure. */
static void *new_object(ctx *x, int kind, const char *name)
{
    static const size_t sizes[] = {0, sizeof(sk_listener), sizeof(sk_route), sizeof(sk_cluster), 0,
                                   sizeof(sk_tls)};
    sk_config *c = x->cfg;
    if (kind == SEC_SIDEKICK) return c;
    if (kind == SEC_PLUGIN) {
        sk_instance *pi = c->ext->instance_new(name, (int)c->nplugins, x->lineno);
        if (!pi || sk__cfg_push(x, &c->plugins, &c->nplugins, pi) < 0) {
            if (pi) c->ext->instance_free(pi);
            sk__cfg_oom(x);
            return NULL;
        }
        return pi;
    }
    char *nm = strdup(name);
    void *obj = calloc(1, sizes[kind]);
    int rc = !nm || !obj            ? -1
             : kind == SEC_LISTENER ? sk__cfg_push(x, &c->listeners, &c->nlisteners, obj)
             : kind == SEC_ROUTE    ? sk__cfg_push(x, &c->routes, &c->nroutes, obj)
             : kind == SEC_TLS      ? sk__cfg_push(x, &c->tls, &c->ntls, obj)
                                    : sk__cfg_push(x, &c->clusters, &c->nclusters, obj);
    if (rc < 0) {
        free(nm);
        free(obj);
        sk__cfg_oom(x);
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
        l->h2_max_streams = 100;
        l->h2_frame_size = 16384;
        l->h2_stream_window = 65536;
        l->h2_conn_window = 1024 * 1024;
    } else if (kind == SEC_ROUTE) {
        sk_route *r = obj;
        r->name = nm;
        r->index = (int)c->nroutes - 1;
        r->line = x->lineno;
        r->timeout_ms = 15000;
        r->lua_budget_ms = 50;
        r->retry_on = SK_RETRY_ON_DEFAULT;
        r->retry_backoff_ms = 25;
        if (!(r->prefix = sk__cfg_strdup(x, "/"))) return NULL;
    } else if (kind == SEC_TLS) {
        sk_tls *t = obj;
        t->name = nm;
        t->index = (int)c->ntls - 1;
        t->line = x->lineno;
        t->verify = -1;
        t->min_version = 12;
        t->session_tickets = true;
        if (!(t->alpn = sk__cfg_strdup(x, "h2,http/1.1"))) return NULL;
    } else {
        sk_cluster *cl = obj;
        cl->name = nm;
        cl->index = (int)c->nclusters - 1;
        cl->line = x->lineno;
        cl->lb = SK_LB_ROUND_ROBIN;
        cl->connect_timeout_ms = 1000;
        cl->config = c;
        cl->max_connections = cl->max_pending = cl->max_requests = 1024;
        cl->max_retries = 1024;
        cl->retry_budget_ppm = 200000; /* 20% */
        cl->retry_budget_min = 10;
        cl->ewma_decay_ms = 10000;
        cl->health_interval_ms = 5000;
        cl->health_timeout_ms = 1000;
        cl->healthy_threshold = 2;
        cl->unhealthy_threshold = 3;
        cl->outlier_failures = 5;
        cl->outlier_ejection_ms = 30000;
        cl->max_ejection_percent = 50;
        cl->panic_threshold = 50;
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
    if (!close) return sk__cfg_fail_at(x, x->lineno, NULL, NULL, "section header without ']'");
    char *rest = sk__cfg_trim(close + 1);
    if (*rest && *rest != ';' && *rest != '#')
        return sk__cfg_fail_at(x, x->lineno, NULL, NULL, "unexpected '%s' after section header", rest);
    *close = '\0';
    char *kind = sk__cfg_trim(line + 1), *name = kind;
    while (*name && *name != ' ' && *name != '\t') name++;
    if (*name) *name++ = '\0';
    name = sk__cfg_trim(name);
    char label[256];
    snprintf(label, sizeof(label), *name ? "[%s %s]" : "[%s]", kind, name);

    int k = -1;
    for (int i = 0; i < (int)SK_ARRAY_LEN(sk__cfg_kind_names); i++)
        if (strcmp(kind, sk__cfg_kind_names[i]) == 0) k = i;
    if (k < 0) return sk__cfg_fail_at(x, x->lineno, NULL, NULL, "%s unknown section", label);
    if (k == SEC_SIDEKICK && *name)
        return sk__cfg_fail_at(x, x->lineno, NULL, NULL, "%s [sidekick] takes no name", label);
    if (k != SEC_SIDEKICK && !*name)
        return sk__cfg_fail_at(x, x->lineno, NULL, NULL, "%s missing name (write [%s NAME])", label, kind);
    if (*name && !sk__cfg_is_name(name))
        return sk__cfg_fail_at(x, x->lineno, NULL, NULL,
                               "%s bad name (letters, digits, '-', '_' and '.' only)", label);
    sect *prev = sk__cfg_find_sect(x, k, name);
    if (prev)
        return sk__cfg_fail_at(x, x->lineno, NULL, NULL, "%s duplicate section (first at line %d)", label,
                               prev->line);

    sect *s = calloc(1, sizeof(*s));
    if (!s || sk__cfg_push(x, &x->sects, &x->nsects, s) < 0) {
        free(s);
        return sk__cfg_oom(x);
    }
    s->kind = k;
    s->line = x->lineno;
    s->name = "";
    if (!(s->obj = new_object(x, k, name))) return -1;
    if (k == SEC_LISTENER) s->name = ((sk_listener *)s->obj)->name;
    if (k == SEC_ROUTE) s->name = ((sk_route *)s->obj)->name;
    if (k == SEC_CLUSTER) s->name = ((sk_cluster *)s->obj)->name;
    if (k == SEC_PLUGIN) s->name = x->cfg->ext->instance_name(s->obj);
    if (k == SEC_TLS) s->name = ((sk_tls *)s->obj)->name;
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
        if (ferror(x->fp)) sk__cfg_fail_at(x, 0, NULL, NULL, "read error: %s", strerror(errno));
        return NULL;
    }
    x->lineno++;
    char *p = x->buf;
    if (memchr(p, '\0', (size_t)n)) {
        sk__cfg_fail_at(x, x->lineno, NULL, NULL, "NUL byte in line");
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
        sk__cfg_fail_at(x, x->lineno, x->cur, NULL, "line too long (more than %d characters)", num - 2);
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
        sk__cfg_fail_at(x, x->lineno, NULL, name, "key outside of any section");
        return 1;
    }
    if (s->kind == SEC_PLUGIN) {
        sk_instance *pi = s->obj;
        if (strcmp(name, "load") == 0) {
            int first = 0;
            if (!*value) {
                sk__cfg_bad(x, "missing value");
            } else if ((first = x->cfg->ext->instance_set_load(pi, value, x->lineno)) > 0) {
                sk__cfg_bad(x, "duplicate key (first at line %d)", first);
            } else if (first < 0) {
                sk__cfg_oom(x);
            } else {
                s->key_line[0] = x->lineno;
            }
        } else if (x->cfg->ext->instance_add_key(pi, name, value, x->lineno) < 0) {
            sk__cfg_oom(x);
        }
        return 1;
    }
    if (s->kind == SEC_ROUTE && strncmp(name, "lua.", 4) == 0) {
        sk__cfg_lua_key(x, s, name, value);
        return 1;
    }
    const keydef *t = sk__cfg_key_tables[s->kind], *k = NULL;
    for (int i = 0; t[i].name; i++)
        if (strcmp(t[i].name, name) == 0) k = &t[i];
    if (!k) {
        sk__cfg_bad(x, "unknown key");
        return 1;
    }
    int *line = &s->key_line[k - t];
    if (*line && !(k->flags & KEY_REPEAT)) {
        sk__cfg_bad(x, "duplicate key (first at line %d)", *line);
        return 1;
    }
    if (!*line) *line = x->lineno;
    if (!k->fn)
        sk__cfg_bad(x, "not supported yet in this version");
    else if (!*value)
        sk__cfg_bad(x, "missing value");
    else
        k->fn(x, s, k, value);
    return 1;
}

/* ---- pass 2: each section on its own ----------------------------------------------------- */

/* The traffic management keys of a route, against each other: retry keys
 * need `retries`, per_try_timeout must be below `timeout` (a per-try limit
 * the route timeout cuts first would be silently ignored: envoy#10082), and
 * a `respond` route sends nothing upstream to retry, mirror or fault. */
static int check_route_traffic(ctx *x, sect *s, sk_route *r)
{
    static const char *const retry_keys[] = {"retry_on", "retry_backoff"};
    for (size_t i = 0; i < SK_ARRAY_LEN(retry_keys); i++) {
        int line = sk__cfg_key_line(s, retry_keys[i]);
        if (line && r->retries == 0)
            return sk__cfg_fail_at(x, line, s, retry_keys[i], "has no effect without 'retries' (at least 1)");
    }
    int pl = sk__cfg_key_line(s, "per_try_timeout");
    if (pl && r->timeout_ms && r->per_try_timeout_ms >= r->timeout_ms)
        return sk__cfg_fail_at(x, pl, s, "per_try_timeout",
                               "%llums must be below the route's timeout (%llums%s), which covers every try",
                               (unsigned long long)r->per_try_timeout_ms, (unsigned long long)r->timeout_ms,
                               sk__cfg_key_line(s, "timeout") ? "" : ", the default");
    static const char *const upstream_keys[] = {"retry_on",    "per_try_timeout", "retry_backoff", "mirror",
                                                "fault_delay", "fault_abort",     "fault_headers"};
    if (sk__cfg_key_line(s, "respond")) {
        for (size_t i = 0; i < SK_ARRAY_LEN(upstream_keys); i++) {
            int line = sk__cfg_key_line(s, upstream_keys[i]);
            if (line)
                return sk__cfg_fail_at(x, line, s, upstream_keys[i],
                                       "a route with 'respond' sends nothing upstream");
        }
    }
    return 0;
}

/* The traffic keys of a cluster that only make sense together
 * (docs/traffic.md): refused rather than silently ignored. */
static int check_traffic(ctx *x, sect *s, const sk_cluster *cl)
{
    int hk = sk__cfg_key_line(s, "hash_key");
    if (hk && cl->lb != SK_LB_RING_HASH)
        return sk__cfg_fail_at(x, hk, s, "hash_key", "only lb = ring_hash hashes a key (set lb = ring_hash)");
    int ed = sk__cfg_key_line(s, "ewma_decay");
    if (ed && cl->lb != SK_LB_EWMA) return sk__cfg_fail_at(x, ed, s, "ewma_decay", "only for lb = ewma");
    static const char *const hc_keys[] = {"health_interval", "health_timeout", "healthy_threshold",
                                          "unhealthy_threshold", "health_initial"};
    for (size_t i = 0; i < SK_ARRAY_LEN(hc_keys) && !cl->health_check; i++) {
        int l = sk__cfg_key_line(s, hc_keys[i]);
        if (l) return sk__cfg_fail_at(x, l, s, hc_keys[i], "needs 'health_check' (the path to check)");
    }
    if (!cl->outlier_failures) {
        int l = SK_MAX(sk__cfg_key_line(s, "outlier_ejection"), sk__cfg_key_line(s, "max_ejection_percent"));
        if (l)
            return sk__cfg_fail_at(x, l, s,
                                   l == sk__cfg_key_line(s, "outlier_ejection") ? "outlier_ejection"
                                                                                : "max_ejection_percent",
                                   "outlier detection is off (outlier_failures = 0)");
    }
    return 0;
}

static int check_section(ctx *x, sect *s)
{
    if (s->kind == SEC_LISTENER) {
        sk_listener *l = s->obj;
        if (!sk__cfg_key_line(s, "address")) return sk__cfg_fail_at(x, s->line, s, NULL, "missing 'address'");
        if (l->protocol == SK_PROTO_TCP && !s->ref)
            return sk__cfg_fail_at(x, s->line, s, NULL, "protocol tcp needs a 'cluster'");
        if (l->protocol == SK_PROTO_HTTP && s->ref)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "cluster"), s, "cluster",
                                   "only for protocol = tcp (http listeners use routes)");
        for (int i = 0; i < l->index; i++) {
            sk_listener *o = x->cfg->listeners[i];
            if (sk__cfg_addr_port(&l->address) != 0 && strcmp(o->address.text, l->address.text) == 0)
                return sk__cfg_fail_at(x, sk__cfg_key_line(s, "address"), s, "address",
                                       "%s is already used by [listener %s]", l->address.text, o->name);
        }
    } else if (s->kind == SEC_ROUTE) {
        sk_route *r = s->obj;
        int pl = sk__cfg_key_line(s, "prefix"), ph = sk__cfg_key_line(s, "path");
        int cl = sk__cfg_key_line(s, "cluster"), rl = sk__cfg_key_line(s, "respond");
        int rw = sk__cfg_key_line(s, "rewrite_prefix");
        if (!s->ref) return sk__cfg_fail_at(x, s->line, s, NULL, "missing 'listener'");
        if (pl && ph)
            return sk__cfg_fail_at(x, SK_MAX(pl, ph), s, pl > ph ? "prefix" : "path",
                                   "'prefix' and 'path' are exclusive");
        if (ph) {
            free(r->prefix);
            r->prefix = NULL;
        }
        if (rw && ph) return sk__cfg_fail_at(x, rw, s, "rewrite_prefix", "needs 'prefix', not 'path'");
        if (cl && rl)
            return sk__cfg_fail_at(x, SK_MAX(cl, rl), s, cl > rl ? "cluster" : "respond",
                                   "'cluster' and 'respond' are exclusive");
        if (!cl && !rl) return sk__cfg_fail_at(x, s->line, s, NULL, "needs 'cluster' or 'respond'");
        if (r->nlua_keys && !r->lua) return sk__cfg_fail_at(x, s->lua_key_line, s, s->lua_key, "needs 'lua'");
        if (sk__cfg_key_line(s, "lua_budget") && !r->lua)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "lua_budget"), s, "lua_budget", "needs 'lua'");
        if (r->lua && rl)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "lua"), s, "lua",
                                   "a route with 'respond' runs no filter");
        if (check_route_traffic(x, s, r) < 0) return -1;
        if (r->lua && r->lua[0] != '/') { /* relative to lua_dir */
            char *dir = x->dir;
            x->dir = x->cfg->lua_dir;
            char *abs = sk__cfg_resolve_path(x, r->lua);
            x->dir = dir;
            if (sk__cfg_set_str(x, &r->lua, abs) < 0) return -1;
        }
    } else if (s->kind == SEC_CLUSTER) {
        sk_cluster *cl = s->obj;
        if (!sk__cfg_key_line(s, "endpoints") && !cl->discovery)
            return sk__cfg_fail_at(x, s->line, s, NULL, "missing 'endpoints' (or 'discovery')");
        int wl = sk__cfg_key_line(s, "wait_for_endpoints");
        if (wl && !cl->discovery)
            return sk__cfg_fail_at(
                x, wl, s, "wait_for_endpoints",
                "needs 'discovery' (only a discovery instance's first answer is waited for)");
        if (check_traffic(x, s, cl) < 0) return -1;
    } else if (s->kind == SEC_TLS) {
        sk_tls *t = s->obj;
        if (t->cert && !t->key) return sk__cfg_fail_at(x, sk__cfg_key_line(s, "cert"), s, "cert", "needs 'key'");
        if (t->key && !t->cert) return sk__cfg_fail_at(x, sk__cfg_key_line(s, "key"), s, "key", "needs 'cert'");
    }
    return 0;
}

/* ---- pass 3: references between sections ------------------------------------------------- */

static sk_cluster *find_cluster(ctx *x, const char *name)
{
    sect *s = sk__cfg_find_sect(x, SEC_CLUSTER, name);
    return s ? s->obj : NULL;
}

/* Resolves `plugins` names into the instance array of a listener or route. */
static int link_plugins(ctx *x, sect *s, sk_instance ***out, size_t *n)
{
    if (!s->npnames) return 0;
    if (!(*out = calloc(s->npnames, sizeof(**out)))) return sk__cfg_oom(x);
    for (size_t i = 0; i < s->npnames; i++) {
        sect *ps = sk__cfg_find_sect(x, SEC_PLUGIN, s->pnames[i]);
        if (!ps)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "plugins"), s, "plugins",
                                   "unknown plugin '%s' (no [plugin %s] section)", s->pnames[i],
                                   s->pnames[i]);
        (*out)[i] = ps->obj;
        *n = i + 1;
    }
    return 0;
}

static sk_tls *link_tls(ctx *x, sect *s);

static int link_section(ctx *x, sect *s)
{
    if (s->kind == SEC_LISTENER) {
        sk_listener *l = s->obj;
        if (s->npnames && l->protocol == SK_PROTO_TCP)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "plugins"), s, "plugins",
                                   "only for protocol = http");
        if (link_plugins(x, s, &l->plugins, &l->nplugins) < 0) return -1;
    }
    if (s->kind == SEC_ROUTE &&
        link_plugins(x, s, &((sk_route *)s->obj)->plugins, &((sk_route *)s->obj)->nplugins) < 0)
        return -1;
    if (s->kind == SEC_CLUSTER && ((sk_cluster *)s->obj)->discovery) {
        sk_cluster *cl = s->obj;
        sect *ps = sk__cfg_find_sect(x, SEC_PLUGIN, cl->discovery);
        if (!ps)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "discovery"), s, "discovery",
                                   "unknown plugin '%s' (no [plugin %s] section)", cl->discovery,
                                   cl->discovery);
        cl->discovery_inst = ps->obj;
    }
    if (s->kind == SEC_LISTENER && s->ref) {
        sk_listener *l = s->obj;
        if (!(l->cluster = find_cluster(x, s->ref)))
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "cluster"), s, "cluster", "unknown cluster '%s'",
                                   s->ref);
    }
    if (s->tls_ref && (s->kind == SEC_LISTENER || s->kind == SEC_CLUSTER)) {
        sk_tls *t = link_tls(x, s);
        if (!t) return -1;
        if (s->kind == SEC_LISTENER) {
            if (((sk_listener *)s->obj)->protocol == SK_PROTO_TCP && t->npeer_ids)
                return sk__cfg_fail_at(x, sk__cfg_key_line(s, "tls"), s, "tls",
                                       "[tls %s] has peer_identity, which a tcp listener cannot answer with 403 "
                                       "(only http listeners check it)",
                                       t->name);
            ((sk_listener *)s->obj)->tls = t;
            t->server_side = true;
        } else {
            ((sk_cluster *)s->obj)->tls = t;
            t->client_side = true;
        }
    }
    if (s->kind == SEC_ROUTE) {
        sk_route *r = s->obj;
        sect *ls = sk__cfg_find_sect(x, SEC_LISTENER, s->ref);
        if (!ls)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "listener"), s, "listener", "unknown listener '%s'",
                                   s->ref);
        sk_listener *l = ls->obj;
        if (l->protocol != SK_PROTO_HTTP)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "listener"), s, "listener",
                                   "[listener %s] has protocol tcp; routes need an http listener", l->name);
        for (size_t i = 0; i < r->nclusters; i++)
            if (!(r->clusters[i].cluster = find_cluster(x, s->names[i])))
                return sk__cfg_fail_at(x, sk__cfg_key_line(s, "cluster"), s, "cluster",
                                       "unknown cluster '%s'", s->names[i]);
        if (s->mirror_ref && !(r->mirror = find_cluster(x, s->mirror_ref)))
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "mirror"), s, "mirror", "unknown cluster '%s'",
                                   s->mirror_ref);
        r->listener = l;
        if (sk__cfg_push(x, &l->routes, &l->nroutes, r) < 0) return -1;
    }
    return 0;
}

/* The [tls] section named by `tls = NAME` of section s, or NULL with an error. */
static sk_tls *link_tls(ctx *x, sect *s)
{
    sect *ts = sk__cfg_find_sect(x, SEC_TLS, s->tls_ref);
    if (!ts)
        sk__cfg_fail_at(x, sk__cfg_key_line(s, "tls"), s, "tls", "unknown tls section '%s' (no [tls %s])",
                        s->tls_ref, s->tls_ref);
    return ts ? ts->obj : NULL;
}

/* The first listener / cluster of this file naming t, for messages. */
static const char *user_of(ctx *x, const sk_tls *t, bool server)
{
    for (size_t i = 0; i < x->nsects; i++) {
        sect *s = x->sects[i];
        if (s->kind == (server ? SEC_LISTENER : SEC_CLUSTER) && s->tls_ref && strcmp(s->tls_ref, t->name) == 0)
            return s->name;
    }
    return "?";
}

/*
 * A [tls] section against the sides that use it: keys of the other side
 * are refused (a listener cannot send SNI; a cluster neither asks for
 * client certificates optionally nor issues tickets), a listener needs a
 * certificate, verifying needs a CA. Resolves the verify mode of each side.
 */
static int check_tls(ctx *x, sect *s)
{
    sk_tls *t = s->obj;
    int vl = sk__cfg_key_line(s, "verify");
    if (t->server_side) {
        const char *l = user_of(x, t, true);
        if (sk__cfg_key_line(s, "sni"))
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "sni"), s, "sni",
                                   "client-side key, but [listener %s] terminates TLS with this section "
                                   "(use a separate [tls] section for the cluster side)",
                                   l);
        if (!t->cert)
            return sk__cfg_fail_at(x, s->line, s, NULL, "[listener %s] terminates TLS with it: needs 'cert' and 'key'",
                                   l);
        t->verify_server = t->verify >= 0 ? t->verify : t->ca ? SK_VERIFY_REQUIRED : SK_VERIFY_NONE;
        if (t->verify_server != SK_VERIFY_NONE && !t->ca)
            return sk__cfg_fail_at(x, vl, s, "verify", "verifying client certificates needs 'ca'");
    }
    if (t->client_side) {
        const char *c = user_of(x, t, false);
        if (sk__cfg_key_line(s, "session_tickets"))
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "session_tickets"), s, "session_tickets",
                                   "listener-side key, but [cluster %s] originates TLS with this section "
                                   "(use a separate [tls] section for the listener side)",
                                   c);
        if (t->verify == SK_VERIFY_OPTIONAL)
            return sk__cfg_fail_at(x, vl, s, "verify",
                                   "'optional' is for listeners; [cluster %s] verifies its upstream "
                                   "(required) or not (none)",
                                   c);
        t->verify_client = t->verify >= 0 ? t->verify : SK_VERIFY_REQUIRED;
        if (t->verify_client != SK_VERIFY_NONE && !t->ca)
            return sk__cfg_fail_at(x, vl ? vl : s->line, s, vl ? "verify" : NULL,
                                   "[cluster %s] verifies its upstream's certificate: needs 'ca' "
                                   "(or verify = none)",
                                   c);
        if (t->verify_client == SK_VERIFY_NONE && t->npeer_ids)
            return sk__cfg_fail_at(x, sk__cfg_key_line(s, "peer_identity"), s, "peer_identity",
                                   "needs the upstream verified (verify = none is set)");
    }
    if (!t->server_side && !t->client_side) { /* unused: still checked as far as it goes */
        t->verify_server = t->verify >= 0 ? t->verify : t->ca ? SK_VERIFY_REQUIRED : SK_VERIFY_NONE;
        t->verify_client = t->verify == SK_VERIFY_NONE ? SK_VERIFY_NONE : SK_VERIFY_REQUIRED;
        if (t->verify > SK_VERIFY_NONE && !t->ca)
            return sk__cfg_fail_at(x, vl, s, "verify", "needs 'ca'");
    }
    if (t->server_side && t->verify_server == SK_VERIFY_NONE && t->npeer_ids)
        return sk__cfg_fail_at(x, sk__cfg_key_line(s, "peer_identity"), s, "peer_identity",
                               "needs client certificates verified (verify = none)");
    return 0;
}

/* Is id allowed by the patterns ids[n] (see config.h)? */
bool sk_spiffe_allowed(char *const *ids, size_t n, const char *id)
{
    if (n == 0) return true;
    if (!id) return false;
    size_t len = strlen(id);
    for (size_t i = 0; i < n; i++) {
        const char *p = ids[i];
        size_t m = strlen(p);
        if (m >= 2 && p[m - 1] == '*' && p[m - 2] == '/') {
            if (len > m - 1 && strncmp(id, p, m - 1) == 0) return true; /* "prefix/" and at least one byte */
        } else if (m == len && memcmp(id, p, len) == 0) {
            return true;
        }
    }
    return false;
}

/* Is id allowed by t's peer_identity (see config.h)? */
bool sk_tls_identity_allowed(const sk_tls *t, const char *id)
{
    return !t || sk_spiffe_allowed(t->peer_ids, t->npeer_ids, id);
}

/* The admin endpoint must not take a listener's address. */
/* The files of the plugins' HTTP client: readable, cert and key together. */
static int check_http_client(ctx *x)
{
    sk_config *c = x->cfg;
    sect *s = sk__cfg_find_sect(x, SEC_SIDEKICK, "");
    const char *keys[] = {"http_client_ca", "http_client_cert", "http_client_key"};
    const char *files[] = {c->http_client_ca, c->http_client_cert, c->http_client_key};
    for (int i = 0; i < 3; i++) {
        if (files[i] && access(files[i], R_OK) != 0)
            return sk__cfg_fail_at(x, s ? sk__cfg_key_line(s, keys[i]) : 0, s, keys[i], "cannot read %s: %s",
                                   files[i], strerror(errno));
    }
    if (!c->http_client_cert != !c->http_client_key) {
        const char *k = c->http_client_cert ? keys[1] : keys[2];
        return sk__cfg_fail_at(x, s ? sk__cfg_key_line(s, k) : 0, s, k,
                               "http_client_cert and http_client_key go together");
    }
    return 0;
}

static int check_admin(ctx *x)
{
    sk_config *c = x->cfg;
    if (!c->admin_enabled || sk__cfg_addr_port(&c->admin) == 0) return 0;
    for (size_t i = 0; i < c->nlisteners; i++) {
        if (strcmp(c->listeners[i]->address.text, c->admin.text) == 0) {
            sect *s = sk__cfg_find_sect(x, SEC_SIDEKICK, "");
            return sk__cfg_fail_at(x, s ? sk__cfg_key_line(s, "admin") : 0, s, "admin",
                                   "%s is already used by [listener %s]", c->admin.text,
                                   c->listeners[i]->name);
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
    if (fd < 0) return sk__cfg_fail_at(x, 0, NULL, NULL, "cannot open: %s", strerror(errno));
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
        return sk__cfg_fail_at(
            x, 0, NULL, NULL,
            "the file changed while it was read: refused (write a new file and rename it over)");
    }
    if (rc != 0) {
        free(buf);
        return rc == -2 ? sk__cfg_fail_at(x, 0, NULL, NULL, "file too large (more than 64 MB)")
                        : sk__cfg_fail_at(x, 0, NULL, NULL, "read error: %s", strerror(errno));
    }
    x->snapshot = buf;
    x->fp = fmemopen(buf ? buf : (char *)"", len, "r");
    if (!x->fp) return sk__cfg_oom(x);
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
        return sk__cfg_fail_at(x, 0, NULL, NULL, "bad default admin address");
    c->log_level = SK_LOG_INFO;
    c->drain_timeout_ms = 15000;
    c->lua_memory = 64 * 1024 * 1024;
    if (!(c->plugin_dir = sk__cfg_resolve_path(x, "plugins"))) return -1;
    if (!(c->lua_dir = sk__cfg_resolve_path(x, "lua"))) return -1;
    if (!(c->access_log = sk__cfg_strdup(x, "stdout"))) return -1;
    return 0;
}

static int load(ctx *x)
{
    sk_config *c = x->cfg;
    c->file = realpath(x->path, NULL);
    if (!c->file) return sk__cfg_fail_at(x, 0, NULL, NULL, "cannot open: %s", strerror(errno));
    char *slash = strrchr(c->file, '/');
    x->dir = slash == c->file ? strdup("/") : strndup(c->file, (size_t)(slash - c->file));
    if (!x->dir) return sk__cfg_oom(x);
    if (set_defaults(x) < 0) return -1;
    if (read_snapshot(x) < 0) return -1;

    int rc = ini_parse_stream(read_line, x, on_key, x);
    if (rc > 0 && (!x->failed || x->err_line > rc)) {
        /* inih found a line that is neither a section, "key = value" nor a
         * comment, before any error of ours (inih may go on after one). */
        free(x->err);
        x->err = NULL;
        x->failed = false;
        return sk__cfg_fail_at(x, rc, sect_at(x, rc), NULL, "expected 'key = value'");
    }
    if (x->failed) return -1;
    if (rc == -2) return sk__cfg_oom(x);
    if (rc != 0) return sk__cfg_fail_at(x, 0, NULL, NULL, "cannot parse (inih error %d)", rc);
    if (c->nlisteners == 0)
        return sk__cfg_fail_at(x, 0, NULL, NULL, "no [listener NAME] section: at least one is needed");
    for (size_t i = 0; i < x->nsects; i++)
        if (check_section(x, x->sects[i]) < 0) return -1;
    for (size_t i = 0; i < x->nsects; i++)
        if (link_section(x, x->sects[i]) < 0) return -1;
    for (size_t i = 0; i < x->nsects; i++)
        if (x->sects[i]->kind == SEC_TLS && check_tls(x, x->sects[i]) < 0) return -1;
    if (check_admin(x) < 0) return -1;
    if (check_http_client(x) < 0) return -1;
    /* The certificates and keys are read once the sections agree. */
    for (size_t i = 0; i < x->nsects; i++) {
        sect *s = x->sects[i];
        if (s->kind != SEC_TLS || !c->ext->tls_load) continue;
        char err[1024];
        const char *key = NULL;
        if (c->ext->tls_load(s->obj, err, sizeof(err), &key) < 0) {
            int kl = key ? sk__cfg_key_line(s, key) : 0;
            return sk__cfg_fail_at(x, kl ? kl : s->line, s, kl ? key : NULL, "%s", err);
        }
    }
    /* Last, once everything else is valid: load every plugin and let it
     * check its own keys (create). */
    for (size_t i = 0; i < x->nsects; i++) {
        sect *s = x->sects[i];
        if (s->kind != SEC_PLUGIN) continue;
        char err[1024];
        int load_line = 0;
        int lrc = c->ext->instance_load(s->obj, c, err, sizeof(err), &load_line);
        if (lrc == -1)
            return sk__cfg_fail_at(x, load_line ? load_line : s->line, s, load_line ? "load" : NULL, "%s",
                                   err);
        if (lrc < 0)
            return sk__cfg_fail_at(x, s->line, s, NULL, "%s", err); /* create() refused the section */
    }
    /* Then tell each discovery instance the clusters that name it. */
    for (size_t i = 0; i < c->nclusters; i++) {
        sk_cluster *cl = c->clusters[i];
        if (!cl->discovery_inst) continue;
        char err[1024];
        if (c->ext->instance_on_cluster(cl->discovery_inst, cl, err, sizeof(err)) < 0) {
            sect *s = sk__cfg_find_sect(x, SEC_CLUSTER, cl->name);
            return sk__cfg_fail_at(x, s ? sk__cfg_key_line(s, "discovery") : cl->line, s, "discovery", "%s",
                                   err);
        }
    }
    /* Every route script is read and run once here: a syntax error or a
     * failing top level fails the load like any bad key. */
    char lerr[2048];
    int bad_route = -1;
    if (c->ext->lua_load(c, &bad_route, lerr, sizeof(lerr)) < 0) {
        sect *s = bad_route >= 0 ? sk__cfg_find_sect(x, SEC_ROUTE, c->routes[bad_route]->name) : NULL;
        return sk__cfg_fail_at(x, s ? sk__cfg_key_line(s, "lua") : 0, s, s ? "lua" : NULL, "%s", lerr);
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
    int rc = path ? load(&x) : sk__cfg_fail_at(&x, 0, NULL, NULL, "no file given");

    if (x.fp) fclose(x.fp);
    free(x.snapshot);
    free(x.buf);
    free(x.dir);
    for (size_t i = 0; i < x.nsects; i++) {
        free(x.sects[i]->ref);
        free(x.sects[i]->tls_ref);
        free(x.sects[i]->mirror_ref);
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
