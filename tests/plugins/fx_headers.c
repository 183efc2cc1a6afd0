/*
 * fx_headers — test fixture: adds headers both ways, tags the chain, and
 * passes per-request metadata between plugins.
 *
 * Keys (each optional; request_header, response_header, set_meta and
 * meta_to_header may repeat and are applied in file order):
 *
 *     request_header  = name: value   add_header() on the request (on_request)
 *     response_header = name: value   add_response_header() (on_response)
 *     tag = X                          on_request: request header x-chain becomes
 *                                      "<existing>, X" (or "X"), written with
 *                                      set_header(); on_response: the same on the
 *                                      response header x-chain-resp. The two
 *                                      headers show the chain order both ways.
 *     set_meta = k=v                   set_meta(k, v) (on_request)
 *     meta_to_header = k: x-name       on_request, after set_meta: request header
 *                                      x-name = meta(k), or "-" when k is unset
 *     identity_to_header = x-name      on_request: request header x-name = the
 *                                      peer's identity(), or "-" when none
 *
 * Any other key is refused in create(). A host call that fails turns into
 * SK_ERROR (and a log line), so a test sees the failure as a 500.
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FX_MAX_ITEMS 16 /* per list */
#define FX_MAX_VALUE 4096 /* bytes of a concatenated x-chain value */

/* A pair of NUL-terminated strings, owned by the instance. */
typedef struct pair {
    char *a;
    char *b;
} pair;

typedef struct list {
    pair item[FX_MAX_ITEMS];
    size_t n;
} list;

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    list req_headers;  /* name, value */
    list resp_headers; /* name, value */
    list set_meta;     /* key, value */
    list meta_to_hdr;  /* meta key, header name */
    char *tag;         /* NULL when not configured */
    char *id_hdr;      /* identity_to_header; NULL when not configured */
} fx;

static char *dup_range(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static const char *skip_ws(const char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    return s;
}

static size_t trim_len(const char *s, size_t n)
{
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    return n;
}

/*
 * Splits "a<sep>b" (spaces around both parts trimmed) into two new strings
 * appended to l. 0, or -1 with a message in err.
 */
static int add_pair(list *l, const sk_kv *kv, char sep, char *err, size_t err_size)
{
    const char *v = kv->value;
    const char *s = strchr(v, sep);
    if (!s) {
        snprintf(err, err_size, "fx_headers: key '%s' (line %d): expected 'a%cb', got '%s'",
                 kv->key, kv->line, sep, v);
        return -1;
    }
    if (l->n == FX_MAX_ITEMS) {
        snprintf(err, err_size, "fx_headers: key '%s' (line %d): more than %d", kv->key, kv->line,
                 FX_MAX_ITEMS);
        return -1;
    }
    const char *a = skip_ws(v);
    size_t alen = trim_len(a, (size_t)(s - a));
    const char *b = skip_ws(s + 1);
    size_t blen = trim_len(b, strlen(b));
    if (alen == 0) {
        snprintf(err, err_size, "fx_headers: key '%s' (line %d): empty name in '%s'", kv->key,
                 kv->line, v);
        return -1;
    }
    pair *p = &l->item[l->n];
    p->a = dup_range(a, alen);
    p->b = dup_range(b, blen);
    if (!p->a || !p->b) {
        free(p->a);
        free(p->b);
        snprintf(err, err_size, "fx_headers: out of memory");
        return -1;
    }
    l->n++;
    return 0;
}

static void free_list(list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->item[i].a);
        free(l->item[i].b);
    }
}

static void destroy(void *inst)
{
    fx *f = inst;
    if (!f) return;
    free_list(&f->req_headers);
    free_list(&f->resp_headers);
    free_list(&f->set_meta);
    free_list(&f->meta_to_hdr);
    free(f->tag);
    free(f->id_hdr);
    free(f);
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_headers: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    for (size_t i = 0; i < nkeys; i++) {
        const sk_kv *kv = &keys[i];
        int rc = 0;
        if (strcmp(kv->key, "request_header") == 0) {
            rc = add_pair(&f->req_headers, kv, ':', err, err_size);
        } else if (strcmp(kv->key, "response_header") == 0) {
            rc = add_pair(&f->resp_headers, kv, ':', err, err_size);
        } else if (strcmp(kv->key, "set_meta") == 0) {
            rc = add_pair(&f->set_meta, kv, '=', err, err_size);
        } else if (strcmp(kv->key, "meta_to_header") == 0) {
            rc = add_pair(&f->meta_to_hdr, kv, ':', err, err_size);
        } else if (strcmp(kv->key, "identity_to_header") == 0) {
            if (f->id_hdr || !*kv->value) {
                snprintf(err, err_size, "fx_headers: key 'identity_to_header' (line %d) given "
                         "twice or empty", kv->line);
                rc = -1;
            } else if (!(f->id_hdr = dup_range(kv->value, strlen(kv->value)))) {
                snprintf(err, err_size, "fx_headers: out of memory");
                rc = -1;
            }
        } else if (strcmp(kv->key, "tag") == 0) {
            if (f->tag) {
                snprintf(err, err_size, "fx_headers: key 'tag' (line %d) given twice", kv->line);
                rc = -1;
            } else if (!*kv->value) {
                snprintf(err, err_size, "fx_headers: key 'tag' (line %d) is empty", kv->line);
                rc = -1;
            } else if (!(f->tag = dup_range(kv->value, strlen(kv->value)))) {
                snprintf(err, err_size, "fx_headers: out of memory");
                rc = -1;
            }
        } else {
            snprintf(err, err_size,
                     "fx_headers: unknown key '%s' (line %d); known: request_header, "
                     "response_header, tag, set_meta, meta_to_header, identity_to_header",
                     kv->key, kv->line);
            rc = -1;
        }
        if (rc < 0) {
            destroy(f);
            return NULL;
        }
    }
    return f;
}

/* "<old>, tag" or "tag" into buf. 0, or -1 when it does not fit. */
static int chain_value(char *buf, size_t size, int have_old, sk_str old, const char *tag)
{
    int n;
    if (have_old && old.ptr)
        n = snprintf(buf, size, "%.*s, %s", (int)old.len, old.ptr, tag);
    else
        n = snprintf(buf, size, "%s", tag);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    const sk_host_api *h = f->host;
    (void)wdata;

    for (size_t i = 0; i < f->req_headers.n; i++) {
        if (h->add_header(r, f->req_headers.item[i].a, f->req_headers.item[i].b) < 0) {
            h->log(f->self, SK_LOG_ERROR, "add_header(%s) failed", f->req_headers.item[i].a);
            return SK_ERROR;
        }
    }
    if (f->tag) {
        sk_str old = {0};
        char buf[FX_MAX_VALUE];
        int have = h->header(r, "x-chain", &old);
        if (chain_value(buf, sizeof buf, have, old, f->tag) < 0 ||
            h->set_header(r, "x-chain", buf) < 0) {
            h->log(f->self, SK_LOG_ERROR, "set_header(x-chain) failed");
            return SK_ERROR;
        }
    }
    for (size_t i = 0; i < f->set_meta.n; i++) {
        if (h->set_meta(r, f->set_meta.item[i].a, f->set_meta.item[i].b) < 0) {
            h->log(f->self, SK_LOG_ERROR, "set_meta(%s) failed", f->set_meta.item[i].a);
            return SK_ERROR;
        }
    }
    for (size_t i = 0; i < f->meta_to_hdr.n; i++) {
        const char *v = h->meta(r, f->meta_to_hdr.item[i].a);
        if (h->set_header(r, f->meta_to_hdr.item[i].b, v ? v : "-") < 0) {
            h->log(f->self, SK_LOG_ERROR, "set_header(%s) failed", f->meta_to_hdr.item[i].b);
            return SK_ERROR;
        }
    }
    if (f->id_hdr) {
        sk_str id = h->identity(r);
        char buf[FX_MAX_VALUE];
        int n = id.ptr ? snprintf(buf, sizeof buf, "%.*s", (int)id.len, id.ptr)
                       : snprintf(buf, sizeof buf, "-");
        if (n < 0 || (size_t)n >= sizeof buf || h->set_header(r, f->id_hdr, buf) < 0) {
            h->log(f->self, SK_LOG_ERROR, "set_header(%s) failed", f->id_hdr);
            return SK_ERROR;
        }
    }
    return SK_CONTINUE;
}

static sk_status on_response(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    const sk_host_api *h = f->host;
    (void)wdata;

    for (size_t i = 0; i < f->resp_headers.n; i++) {
        if (h->add_response_header(r, f->resp_headers.item[i].a, f->resp_headers.item[i].b) < 0) {
            h->log(f->self, SK_LOG_ERROR, "add_response_header(%s) failed",
                   f->resp_headers.item[i].a);
            return SK_ERROR;
        }
    }
    if (f->tag) {
        sk_str old = {0};
        char buf[FX_MAX_VALUE];
        int have = h->response_header(r, "x-chain-resp", &old);
        if (chain_value(buf, sizeof buf, have, old, f->tag) < 0 ||
            h->set_response_header(r, "x-chain-resp", buf) < 0) {
            h->log(f->self, SK_LOG_ERROR, "set_response_header(x-chain-resp) failed");
            return SK_ERROR;
        }
    }
    return SK_CONTINUE;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_headers",
    .description = "test fixture: adds request/response headers, tags the chain, passes metadata",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
    .on_response = on_response,
};
