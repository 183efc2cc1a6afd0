/*
 * headers.so — adds, sets and removes request and response headers.
 *
 *     [plugin headers]
 *     request_add     = x-a: b        add_header(): appended, client copies kept
 *     request_set     = x-env: prod   set_header(): every copy replaced by this one
 *     request_remove  = cookie        remove_header(): every copy removed
 *     response_add    = x-served-by: sidekick
 *     response_set    = cache-control: no-store
 *     response_remove = server
 *
 * Every key may repeat. Edits run in this order: removes, then sets, then
 * adds, each kind in file order (so `request_remove = x-a` with
 * `request_add = x-a: 1` sends exactly one x-a). Names are validated and
 * lower-cased, values must hold no control characters; unknown keys and bad
 * values are refused in create, naming the key and its line.
 *
 * Built against <sidekick/plugin.h> alone (see plugins/CMakeLists.txt).
 */
#include <sidekick/plugin.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EDITS 64 /* per list */

enum { ADD = 0, SET, REMOVE, NKINDS };

/* One edit: a header name (lower case) and a value (NULL for a remove). */
typedef struct edit {
    char *name;
    char *value;
} edit;

/* The edits of one side (request or response), by kind. */
typedef struct side {
    edit e[NKINDS][MAX_EDITS];
    size_t n[NKINDS];
} side;

typedef struct headers {
    const sk_host_api *host;
    sk_instance *self;
    side req, resp;
} headers;

static void free_side(side *s)
{
    for (int k = 0; k < NKINDS; k++)
        for (size_t i = 0; i < s->n[k]; i++) {
            free(s->e[k][i].name);
            free(s->e[k][i].value);
        }
}

static void destroy(void *inst)
{
    headers *h = inst;
    if (!h) return;
    free_side(&h->req);
    free_side(&h->resp);
    free(h);
}

/* RFC 9110 token characters. */
static int tchar(int c)
{
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Copies [p, p+n) without surrounding blanks; NULL on OOM. */
static char *trimmed(const char *p, size_t n)
{
    while (n && (*p == ' ' || *p == '\t')) p++, n--;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

/* Parses "name: value" (or "name" for a remove) into e. 0, or -1 with err. */
static int parse_edit(const sk_kv *kv, int kind, edit *e, char *err, size_t err_size)
{
    const char *v = kv->value, *colon = strchr(v, ':');
    if (kind == REMOVE && colon) {
        snprintf(err, err_size, "headers: line %d: %s: expected a header name, not '%s'", kv->line, kv->key,
                 v);
        return -1;
    }
    if (kind != REMOVE && !colon) {
        snprintf(err, err_size, "headers: line %d: %s: expected 'name: value', not '%s'", kv->line, kv->key,
                 v);
        return -1;
    }
    e->name = trimmed(v, colon ? (size_t)(colon - v) : strlen(v));
    e->value = colon ? trimmed(colon + 1, strlen(colon + 1)) : NULL;
    if (!e->name || (colon && !e->value)) {
        snprintf(err, err_size, "headers: out of memory");
        return -1;
    }
    if (!e->name[0]) {
        snprintf(err, err_size, "headers: line %d: %s: empty header name", kv->line, kv->key);
        return -1;
    }
    for (char *p = e->name; *p; p++) {
        if (!tchar((unsigned char)*p)) {
            snprintf(err, err_size, "headers: line %d: %s: bad header name '%s'", kv->line, kv->key, e->name);
            return -1;
        }
        *p = (char)tolower((unsigned char)*p);
    }
    for (const char *p = e->value; p && *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            snprintf(err, err_size, "headers: line %d: %s: control character in the value", kv->line,
                     kv->key);
            return -1;
        }
    }
    return 0;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    static const struct {
        const char *key;
        int response, kind;
    } known[] = {
        {"request_add", 0, ADD},  {"request_set", 0, SET},  {"request_remove", 0, REMOVE},
        {"response_add", 1, ADD}, {"response_set", 1, SET}, {"response_remove", 1, REMOVE},
    };
    headers *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, err_size, "headers: out of memory");
        return NULL;
    }
    h->host = host;
    h->self = self;
    for (size_t i = 0; i < nkeys; i++) {
        size_t k = 0;
        while (k < sizeof(known) / sizeof(known[0]) && strcmp(keys[i].key, known[k].key) != 0) k++;
        if (k == sizeof(known) / sizeof(known[0])) {
            snprintf(err, err_size,
                     "headers: line %d: unknown key '%s' (known: request_add, request_set, request_remove, "
                     "response_add, response_set, response_remove)",
                     keys[i].line, keys[i].key);
            destroy(h);
            return NULL;
        }
        side *s = known[k].response ? &h->resp : &h->req;
        int kind = known[k].kind;
        if (s->n[kind] == MAX_EDITS) {
            snprintf(err, err_size, "headers: line %d: %s: more than %d of them", keys[i].line, keys[i].key,
                     MAX_EDITS);
            destroy(h);
            return NULL;
        }
        edit *e = &s->e[kind][s->n[kind]++];
        if (parse_edit(&keys[i], kind, e, err, err_size) < 0) {
            destroy(h);
            return NULL;
        }
    }
    return h;
}

/* Applies one side's edits with the host's set/add/remove functions. */
static sk_status apply(headers *h, sk_req *r, const side *s, int (*set)(sk_req *, const char *, const char *),
                       int (*add)(sk_req *, const char *, const char *), int (*rm)(sk_req *, const char *))
{
    for (size_t i = 0; i < s->n[REMOVE]; i++)
        if (rm(r, s->e[REMOVE][i].name) != 0) goto fail;
    for (size_t i = 0; i < s->n[SET]; i++)
        if (set(r, s->e[SET][i].name, s->e[SET][i].value) != 0) goto fail;
    for (size_t i = 0; i < s->n[ADD]; i++)
        if (add(r, s->e[ADD][i].name, s->e[ADD][i].value) != 0) goto fail;
    return SK_CONTINUE;
fail:
    h->host->log(h->self, SK_LOG_ERROR, "a header edit failed (out of memory?)");
    return SK_ERROR;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    headers *h = inst;
    (void)wdata;
    return apply(h, r, &h->req, h->host->set_header, h->host->add_header, h->host->remove_header);
}

static sk_status on_response(void *inst, void *wdata, sk_req *r)
{
    headers *h = inst;
    (void)wdata;
    return apply(h, r, &h->resp, h->host->set_response_header, h->host->add_response_header,
                 h->host->remove_response_header);
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "headers",
    .description = "adds, sets and removes request and response headers",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
    .on_response = on_response,
};
