/*
 * fx_http — test fixture for the asynchronous HTTP client (ABI 1.1):
 * fetches the URLs of its config from the main loop and appends what
 * happened, one JSON object per line, to a file the test reads.
 *
 * Keys:
 *
 *     file = PATH                 record file (required; O_APPEND, one write per line)
 *     fetch = NAME METHOD URL     a call (repeatable, up to 16)
 *     header = NAME: VALUE        request header of every fetch (repeatable, up to 16)
 *     body = TEXT                 request body of every fetch but GET and HEAD
 *     timeout = MS                timeout_ms;   connect_timeout = MS   connect_timeout_ms
 *     max_body = BYTES            max_body; "unlimited": SK_HTTP_UNLIMITED (needs a 1.2 host:
 *                                 the fixture stays a 1.1 plugin and checks host->abi_minor)
 *     delay = MS                  0 (default): start from create; else from a main-loop timer
 *     repeat = N                  each fetch runs N times (default 1), the next one started
 *                                 from the on_done of the one before
 *     cancel_on_body = K          cancel a fetch from inside its K-th on_body
 *     from_head = NAME            the fetch NAME is not started with the others but from
 *                                 inside the first on_head of another fetch
 *     worker_fetch = URL          on_request calls http_start with URL on the worker
 *                                 (must be refused) and records the result
 *
 * Records ("fetch" is the NAME):
 *     {"ev":"create"}   {"ev":"destroy","open":N}  (N = handles the plugin still holds)
 *     {"ev":"start","fetch":..,"rc":RC,"run":I}
 *     {"ev":"head","fetch":..,"status":S,"headers":[[name,value],...]}
 *     {"ev":"body","fetch":..,"len":L,"data":"..."}  (bytes as \u00XX for >= 0x80)
 *     {"ev":"done","fetch":..,"error":E,"text":"http_strerror(E)","message":"..."}
 *     {"ev":"cancel","fetch":..}
 *     {"ev":"worker_start","rc":RC}
 */
#include <sidekick/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_FETCH 16
#define MAX_HDR   16
#define REC_DATA  4096

typedef struct fx fx;

typedef struct fetch {
    fx *f;
    char name[64], method[16], url[512];
    int run;            /* runs started */
    int from_head;      /* started from another fetch's on_head */
    int pieces;         /* on_body calls of the current run */
    sk_http_call *call; /* current call, NULL when none */
} fetch;

struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char file[512];
    fetch fetches[MAX_FETCH];
    size_t nfetch;
    char *hdr_names[MAX_HDR], *hdr_values[MAX_HDR];
    const char *headers[2 * MAX_HDR + 1];
    size_t nhdr;
    char *body;
    uint64_t timeout, connect_timeout, delay;
    size_t max_body;
    int repeat, cancel_on_body;
    char worker_url[512];
    char from_head[64];
    sk_timer *timer;
};

/* A growing JSON line. */
typedef struct line {
    char buf[3 * REC_DATA * 2 + 8192];
    size_t n;
} line;

static void put(line *l, const char *s)
{
    size_t k = strlen(s);
    if (l->n + k < sizeof(l->buf)) {
        memcpy(l->buf + l->n, s, k);
        l->n += k;
    }
}

static void put_str(line *l, const char *s, size_t len)
{
    char esc[8];
    put(l, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\', esc[1] = (char)ch, esc[2] = 0;
        } else if (ch < 0x20 || ch >= 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", ch);
        } else {
            esc[0] = (char)ch, esc[1] = 0;
        }
        put(l, esc);
    }
    put(l, "\"");
}

static void put_int(line *l, long long v)
{
    char num[32];
    snprintf(num, sizeof num, "%lld", v);
    put(l, num);
}

/* Appends the line (plus "}\n") to the record file in one write. */
static void emit(fx *f, line *l)
{
    put(l, "}\n");
    int fd = open(f->file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return;
    ssize_t w;
    do {
        w = write(fd, l->buf, l->n);
    } while (w < 0 && errno == EINTR);
    close(fd);
}

static void begin(line *l, const char *ev, const fetch *ft)
{
    l->n = 0;
    put(l, "{\"ev\":");
    put_str(l, ev, strlen(ev));
    if (ft) {
        put(l, ",\"fetch\":");
        put_str(l, ft->name, strlen(ft->name));
    }
}

static void start_fetch(fetch *ft);

static void on_head(void *arg, int status, const sk_str *names, const sk_str *values, size_t n)
{
    fetch *ft = arg;
    static line l;
    begin(&l, "head", ft);
    put(&l, ",\"status\":");
    put_int(&l, status);
    put(&l, ",\"headers\":[");
    for (size_t i = 0; i < n; i++) {
        put(&l, i ? ",[" : "[");
        put_str(&l, names[i].ptr, names[i].len);
        put(&l, ",");
        put_str(&l, values[i].ptr, values[i].len);
        put(&l, "]");
    }
    put(&l, "]");
    emit(ft->f, &l);
    fx *f = ft->f;
    for (size_t i = 0; i < f->nfetch; i++) {
        fetch *o = &f->fetches[i];
        if (o != ft && o->from_head && o->run == 0) start_fetch(o); /* from inside a callback */
    }
}

static void on_body(void *arg, const char *data, size_t len)
{
    fetch *ft = arg;
    static line l;
    begin(&l, "body", ft);
    put(&l, ",\"len\":");
    put_int(&l, (long long)len);
    put(&l, ",\"data\":");
    put_str(&l, data, len < REC_DATA ? len : REC_DATA);
    emit(ft->f, &l);
    if (++ft->pieces == ft->f->cancel_on_body && ft->call) {
        ft->f->host->http_cancel(ft->call); /* from inside the callback */
        ft->call = NULL;
        begin(&l, "cancel", ft);
        emit(ft->f, &l);
    }
}

static void on_done(void *arg, int error, const char *message)
{
    fetch *ft = arg;
    fx *f = ft->f;
    static line l;
    f->host->http_cancel(ft->call); /* a no-op from on_done: proves it */
    ft->call = NULL;
    begin(&l, "done", ft);
    put(&l, ",\"error\":");
    put_int(&l, error);
    put(&l, ",\"text\":");
    const char *t = f->host->http_strerror(error);
    put_str(&l, t, strlen(t));
    put(&l, ",\"message\":");
    put_str(&l, message, strlen(message));
    emit(f, &l);
    if (error != SK_HTTP_ECANCELLED && ft->run < f->repeat) start_fetch(ft);
}

static void start_fetch(fetch *ft)
{
    fx *f = ft->f;
    sk_http_request rq = {
        .method = ft->method,
        .url = ft->url,
        .headers = f->nhdr ? f->headers : NULL,
        .timeout_ms = f->timeout,
        .connect_timeout_ms = f->connect_timeout,
        .max_body = f->max_body,
        .on_head = on_head,
        .on_body = on_body,
        .on_done = on_done,
        .arg = ft,
    };
    if (f->body && strcmp(ft->method, "GET") != 0 && strcmp(ft->method, "HEAD") != 0) {
        rq.body = f->body;
        rq.body_len = strlen(f->body);
    }
    ft->run++;
    ft->pieces = 0;
    int rc = f->host->http_start(f->self, &rq, &ft->call);
    static line l;
    begin(&l, "start", ft);
    put(&l, ",\"rc\":");
    put_int(&l, rc);
    put(&l, ",\"run\":");
    put_int(&l, ft->run);
    emit(f, &l);
}

static void start_all(void *arg)
{
    fx *f = arg;
    f->timer = NULL;
    for (size_t i = 0; i < f->nfetch; i++)
        if (!f->fetches[i].from_head) start_fetch(&f->fetches[i]);
}

static void free_fx(fx *f)
{
    for (size_t i = 0; i < f->nhdr; i++) {
        free(f->hdr_names[i]);
        free(f->hdr_values[i]);
    }
    free(f->body);
    free(f);
}

static void destroy(void *inst)
{
    fx *f = inst;
    if (f->timer) f->host->timer_stop(f->timer);
    int open_calls = 0;
    for (size_t i = 0; i < f->nfetch; i++) open_calls += f->fetches[i].call != NULL;
    line l;
    begin(&l, "destroy", NULL);
    put(&l, ",\"open\":");
    put_int(&l, open_calls);
    emit(f, &l);
    free_fx(f);
}

static int parse_num(const sk_kv *kv, unsigned long long *out, char *err, size_t err_size)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(kv->value, &end, 10);
    if (errno || end == kv->value || *end) {
        snprintf(err, err_size, "fx_http: %s (line %d): not a number: '%s'", kv->key, kv->line, kv->value);
        return -1;
    }
    *out = v;
    return 0;
}

static int add_key(fx *f, const sk_kv *kv, char *err, size_t err_size)
{
    unsigned long long v = 0;
    const char *k = kv->key;
    if (strcmp(k, "file") == 0) {
        snprintf(f->file, sizeof f->file, "%s", kv->value);
    } else if (strcmp(k, "fetch") == 0) {
        if (f->nfetch == MAX_FETCH) {
            snprintf(err, err_size, "fx_http: more than %d fetch keys", MAX_FETCH);
            return -1;
        }
        fetch *ft = &f->fetches[f->nfetch];
        if (sscanf(kv->value, "%63s %15s %511s", ft->name, ft->method, ft->url) != 3) {
            snprintf(err, err_size, "fx_http: fetch (line %d): want NAME METHOD URL", kv->line);
            return -1;
        }
        ft->f = f;
        f->nfetch++;
    } else if (strcmp(k, "header") == 0) {
        const char *colon = strchr(kv->value, ':');
        if (!colon || f->nhdr == MAX_HDR) {
            snprintf(err, err_size, "fx_http: header (line %d): want NAME: VALUE (at most %d)", kv->line,
                     MAX_HDR);
            return -1;
        }
        const char *val = colon + 1;
        while (*val == ' ') val++;
        if (!(f->hdr_names[f->nhdr] = strndup(kv->value, (size_t)(colon - kv->value))) ||
            !(f->hdr_values[f->nhdr] = strdup(val))) {
            free(f->hdr_names[f->nhdr]);
            snprintf(err, err_size, "fx_http: out of memory");
            return -1;
        }
        f->headers[2 * f->nhdr] = f->hdr_names[f->nhdr];
        f->headers[2 * f->nhdr + 1] = f->hdr_values[f->nhdr];
        f->nhdr++;
        f->headers[2 * f->nhdr] = NULL;
    } else if (strcmp(k, "body") == 0) {
        free(f->body);
        if (!(f->body = strdup(kv->value))) {
            snprintf(err, err_size, "fx_http: out of memory");
            return -1;
        }
    } else if (strcmp(k, "max_body") == 0 && strcmp(kv->value, "unlimited") == 0) {
        if (f->host->abi_minor < 2) {
            snprintf(err, err_size, "fx_http: max_body = unlimited needs a host with plugin ABI 1.2");
            return -1;
        }
        f->max_body = SK_HTTP_UNLIMITED;
    } else if (strcmp(k, "from_head") == 0) {
        snprintf(f->from_head, sizeof f->from_head, "%s", kv->value);
    } else if (strcmp(k, "worker_fetch") == 0) {
        snprintf(f->worker_url, sizeof f->worker_url, "%s", kv->value);
    } else if (strcmp(k, "timeout") == 0 || strcmp(k, "connect_timeout") == 0 || strcmp(k, "delay") == 0 ||
               strcmp(k, "max_body") == 0 || strcmp(k, "repeat") == 0 || strcmp(k, "cancel_on_body") == 0) {
        if (parse_num(kv, &v, err, err_size) < 0) return -1;
        if (strcmp(k, "timeout") == 0) f->timeout = v;
        if (strcmp(k, "connect_timeout") == 0) f->connect_timeout = v;
        if (strcmp(k, "delay") == 0) f->delay = v;
        if (strcmp(k, "max_body") == 0) f->max_body = (size_t)v;
        if (strcmp(k, "repeat") == 0) f->repeat = (int)v;
        if (strcmp(k, "cancel_on_body") == 0) f->cancel_on_body = (int)v;
    } else {
        snprintf(err, err_size, "fx_http: unknown key '%s' (line %d)", k, kv->line);
        return -1;
    }
    return 0;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    if (host->abi_minor < 1 || !host->http_start) {
        snprintf(err, err_size, "fx_http: the host has no HTTP client (ABI %u.%u)", host->abi_major,
                 host->abi_minor);
        return NULL;
    }
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_http: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    f->repeat = 1;
    for (size_t i = 0; i < nkeys; i++) {
        if (add_key(f, &keys[i], err, err_size) < 0) {
            free_fx(f);
            return NULL;
        }
    }
    if (!f->file[0]) {
        snprintf(err, err_size, "fx_http: missing key 'file'");
        free_fx(f);
        return NULL;
    }
    for (size_t i = 0; i < f->nfetch; i++)
        f->fetches[i].from_head = strcmp(f->fetches[i].name, f->from_head) == 0;
    line l;
    begin(&l, "create", NULL);
    emit(f, &l);
    if (f->delay) {
        if (!(f->timer = host->timer_start(host->main_loop(), f->delay, start_all, f))) {
            snprintf(err, err_size, "fx_http: out of memory");
            free_fx(f);
            return NULL;
        }
    } else {
        start_all(f);
    }
    return f;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    (void)r;
    if (!f->worker_url[0]) return SK_CONTINUE;
    sk_http_request rq = {.url = f->worker_url};
    sk_http_call *call = NULL;
    int rc = f->host->http_start(f->self, &rq, &call);
    line l;
    begin(&l, "worker_start", NULL);
    put(&l, ",\"rc\":");
    put_int(&l, rc);
    put(&l, ",\"null\":");
    put_int(&l, call == NULL);
    emit(f, &l);
    return SK_CONTINUE;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = 1,
    .name = "fx_http",
    .description = "test fixture: the asynchronous HTTP client, recorded in a file",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
};
