/*
 * http_client.c — the plugins' asynchronous HTTP/1.1 client (ABI 1.1).
 *
 * libcurl's multi socket API on the main thread's libev loop: curl tells us
 * which sockets to watch (CURLMOPT_SOCKETFUNCTION → one ev_io per socket)
 * and when to wake it (CURLMOPT_TIMERFUNCTION → one ev_timer), and we hand
 * readiness back with curl_multi_socket_action(). All HTTP/1 parsing is
 * libcurl's. One multi handle serves every instance, so idle connections
 * are reused between calls to the same host.
 *
 * Lifetime rules the code keeps:
 * - libcurl forbids adding or removing easy handles from inside its own
 *   callbacks, and plugin callbacks run inside them (on_head, on_body). So
 *   while `depth` > 0 a cancel only marks the call (its callbacks are then
 *   suppressed and curl is told to abort it) and a start only queues it;
 *   after() does the removal and the adding once curl has returned.
 * - on_done runs outside curl, after the handle left the multi; the call is
 *   freed when on_done returns, and a cancel of itself from there is a no-op.
 * - Calls belong to an instance: sk_http_instance_closing() ends them before
 *   the instance's destroy, so no callback can reach a destroyed instance or
 *   an unloaded .so.
 */
#define CURL_DISABLE_TYPECHECK /* curl_easy_setopt is called through a pointer */
#include <curl/curl.h>
#include <dlfcn.h>
#include <ev.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "head.h"
#include "http_client.h"
#include "config.h"
#include "plugin_host.h"

/*
 * libcurl is loaded when a plugin first starts a call (dlopen), not linked:
 * linked, it and the thirty-odd libraries it needs (TLS, Kerberos, LDAP,
 * SSH, ...) would be mapped into every sidekick at start, tripling its idle
 * memory. The functions used are called through this table; the macros
 * below keep the code reading like plain libcurl.
 */
#define SK_LIBCURL "libcurl.so.4"
static struct {
    void *dl; /* dlopen handle, NULL until loaded */
    __typeof__(curl_global_init) *global_init;
    __typeof__(curl_global_cleanup) *global_cleanup;
    __typeof__(curl_multi_init) *multi_init;
    __typeof__(curl_multi_cleanup) *multi_cleanup;
    __typeof__(curl_multi_setopt) *multi_setopt;
    __typeof__(curl_multi_add_handle) *multi_add_handle;
    __typeof__(curl_multi_remove_handle) *multi_remove_handle;
    __typeof__(curl_multi_assign) *multi_assign;
    __typeof__(curl_multi_info_read) *multi_info_read;
    __typeof__(curl_multi_socket_action) *multi_socket_action;
    __typeof__(curl_easy_init) *easy_init;
    __typeof__(curl_easy_cleanup) *easy_cleanup;
    __typeof__(curl_easy_setopt) *easy_setopt;
    __typeof__(curl_easy_getinfo) *easy_getinfo;
    __typeof__(curl_easy_nextheader) *easy_nextheader;
    __typeof__(curl_easy_strerror) *easy_strerror;
    __typeof__(curl_free) *free;
    __typeof__(curl_slist_append) *slist_append;
    __typeof__(curl_slist_free_all) *slist_free_all;
    __typeof__(curl_url) *url;
    __typeof__(curl_url_cleanup) *url_cleanup;
    __typeof__(curl_url_get) *url_get;
    __typeof__(curl_url_set) *url_set;
} lib;
#undef curl_global_init
#define curl_global_init lib.global_init
#undef curl_global_cleanup
#define curl_global_cleanup lib.global_cleanup
#undef curl_multi_init
#define curl_multi_init lib.multi_init
#undef curl_multi_cleanup
#define curl_multi_cleanup lib.multi_cleanup
#undef curl_multi_setopt
#define curl_multi_setopt lib.multi_setopt
#undef curl_multi_add_handle
#define curl_multi_add_handle lib.multi_add_handle
#undef curl_multi_remove_handle
#define curl_multi_remove_handle lib.multi_remove_handle
#undef curl_multi_assign
#define curl_multi_assign lib.multi_assign
#undef curl_multi_info_read
#define curl_multi_info_read lib.multi_info_read
#undef curl_multi_socket_action
#define curl_multi_socket_action lib.multi_socket_action
#undef curl_easy_init
#define curl_easy_init lib.easy_init
#undef curl_easy_cleanup
#define curl_easy_cleanup lib.easy_cleanup
#undef curl_easy_setopt
#define curl_easy_setopt lib.easy_setopt
#undef curl_easy_getinfo
#define curl_easy_getinfo lib.easy_getinfo
#undef curl_easy_nextheader
#define curl_easy_nextheader lib.easy_nextheader
#undef curl_easy_strerror
#define curl_easy_strerror lib.easy_strerror
#undef curl_free
#define curl_free lib.free
#undef curl_slist_append
#define curl_slist_append lib.slist_append
#undef curl_slist_free_all
#define curl_slist_free_all lib.slist_free_all
#undef curl_url
#define curl_url lib.url
#undef curl_url_cleanup
#define curl_url_cleanup lib.url_cleanup
#undef curl_url_get
#define curl_url_get lib.url_get
#undef curl_url_set
#define curl_url_set lib.url_set

/* Loads libcurl and its functions. 0, or -1 with a message in err. */
static int load_libcurl(char *err, size_t n)
{
    if (lib.dl) return 0;
    void *dl = dlopen(SK_LIBCURL, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(err, n, "cannot load %s: %s", SK_LIBCURL, dlerror());
        return -1;
    }
    static const struct {
        const char *name;
        void **fn;
    } syms[] = {
        {"curl_global_init", (void **)&lib.global_init},
        {"curl_global_cleanup", (void **)&lib.global_cleanup},
        {"curl_multi_init", (void **)&lib.multi_init},
        {"curl_multi_cleanup", (void **)&lib.multi_cleanup},
        {"curl_multi_setopt", (void **)&lib.multi_setopt},
        {"curl_multi_add_handle", (void **)&lib.multi_add_handle},
        {"curl_multi_remove_handle", (void **)&lib.multi_remove_handle},
        {"curl_multi_assign", (void **)&lib.multi_assign},
        {"curl_multi_info_read", (void **)&lib.multi_info_read},
        {"curl_multi_socket_action", (void **)&lib.multi_socket_action},
        {"curl_easy_init", (void **)&lib.easy_init},
        {"curl_easy_cleanup", (void **)&lib.easy_cleanup},
        {"curl_easy_setopt", (void **)&lib.easy_setopt},
        {"curl_easy_getinfo", (void **)&lib.easy_getinfo},
        {"curl_easy_nextheader", (void **)&lib.easy_nextheader},
        {"curl_easy_strerror", (void **)&lib.easy_strerror},
        {"curl_free", (void **)&lib.free},
        {"curl_slist_append", (void **)&lib.slist_append},
        {"curl_slist_free_all", (void **)&lib.slist_free_all},
        {"curl_url", (void **)&lib.url},
        {"curl_url_cleanup", (void **)&lib.url_cleanup},
        {"curl_url_get", (void **)&lib.url_get},
        {"curl_url_set", (void **)&lib.url_set},
    };
    for (size_t i = 0; i < sizeof(syms) / sizeof(syms[0]); i++) {
        if (!(*syms[i].fn = dlsym(dl, syms[i].name))) {
            snprintf(err, n, "%s has no %s", SK_LIBCURL, syms[i].name);
            dlclose(dl);
            return -1;
        }
    }
    lib.dl = dl;
    return 0;
}

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_MAX_BODY           (1024 * 1024)
#define MAX_METHOD_LEN             32

struct sk_http_call {
    sk_http_call *prev, *next; /* every call not yet freed (H.calls) */
    sk_instance *owner;        /* the instance that started it */
    CURL *easy;                /* owned */
    struct curl_slist *hdrs;   /* request headers given to curl, owned */
    /* the plugin's callbacks and argument */
    void (*on_head)(void *arg, int status, const sk_str *names, const sk_str *values, size_t n);
    void (*on_body)(void *arg, const char *data, size_t len);
    void (*on_done)(void *arg, int error, const char *message);
    void *arg;
    size_t max_body; /* response body limit, SK_HTTP_UNLIMITED = none */
    size_t received; /* response body bytes so far */
    int status;      /* final status once the head was delivered, else 0 */
    bool added;      /* in the multi handle (false while queued) */
    bool cancelled;  /* by the plugin or the host: no callback any more */
    bool too_large;  /* the write callback refused a piece over max_body */
    bool in_done;    /* on_done is running */
    char errbuf[CURL_ERROR_SIZE];
};

/* One socket curl asked us to watch. */
typedef struct sock_ctx {
    ev_io io;
    struct sock_ctx *prev, *next; /* H.socks, so that exit frees what curl forgot */
} sock_ctx;

static struct {
    bool ready;           /* curl and the multi handle initialised */
    struct ev_loop *loop; /* the main loop */
    CURLM *multi;         /* owned */
    ev_timer timer;       /* curl's one timeout */
    int depth;            /* > 0 while inside curl_multi_socket_action */
    sk_http_call *calls;  /* every live call */
    size_t ncalls;        /* length of calls */
    sock_ctx *socks;      /* every watched socket */
    sk_instance *closing; /* instance whose destroy is running: starts refused */
    bool sweep;           /* a call was cancelled or queued while depth > 0 */
} H;

static const char *const errors[] = {
    "ok",
    "connect failed",
    "timed out",
    "response body too large",
    "cancelled",
    "bad or broken response",
    "invalid request",
    "out of memory",
    "unsupported URL scheme",
    "not on the main thread",
    "too many calls in flight",
    "TLS handshake or certificate verification failed",
};

/* Strings for sk_host_api.http_strerror. */
const char *sk_http_strerror(int error)
{
    if (error > 0 || (size_t)-error >= SK_ARRAY_LEN(errors)) return "unknown error";
    return errors[-error];
}

/* ---- the loop side of curl ---- */

static void after(void);

static void on_sock_event(struct ev_loop *loop, ev_io *w, int revents)
{
    int running = 0;
    int flags = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    H.depth++;
    curl_multi_socket_action(H.multi, w->fd, flags, &running);
    H.depth--;
    after();
}

static void on_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    int running = 0;
    H.depth++;
    curl_multi_socket_action(H.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    H.depth--;
    after();
}

static void sock_free(sock_ctx *sc)
{
    ev_io_stop(H.loop, &sc->io);
    if (sc->prev)
        sc->prev->next = sc->next;
    else
        H.socks = sc->next;
    if (sc->next) sc->next->prev = sc->prev;
    free(sc);
}

/* CURLMOPT_SOCKETFUNCTION: watch, re-watch or forget one socket. */
static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    sock_ctx *sc = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sc) {
            curl_multi_assign(H.multi, s, NULL);
            sock_free(sc);
        }
        return 0;
    }
    if (!sc) {
        if (!(sc = calloc(1, sizeof(*sc)))) return -1;
        ev_init(&sc->io, on_sock_event);
        sc->next = H.socks;
        if (H.socks) H.socks->prev = sc;
        H.socks = sc;
        curl_multi_assign(H.multi, s, sc);
    }
    int ev = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    ev_io_stop(H.loop, &sc->io);
    ev_io_set(&sc->io, s, ev);
    if (ev) ev_io_start(H.loop, &sc->io);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one timer, -1 = none. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    ev_timer_stop(H.loop, &H.timer);
    if (timeout_ms >= 0) {
        ev_timer_set(&H.timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(H.loop, &H.timer);
    }
    return 0;
}

/* Frees every call, socket and curl itself at exit, without callbacks: the
 * instances that still own calls (workers abandoned at drain_timeout) are
 * never destroyed. */
static void at_exit(void)
{
    while (H.calls) {
        sk_http_call *c = H.calls;
        H.calls = c->next;
        if (c->added) curl_multi_remove_handle(H.multi, c->easy);
        curl_easy_cleanup(c->easy);
        curl_slist_free_all(c->hdrs);
        free(c);
    }
    curl_multi_cleanup(H.multi);
    while (H.socks) sock_free(H.socks);
    ev_timer_stop(H.loop, &H.timer);
    curl_global_cleanup();
    H.ready = false;
}

/* Initialises curl and the multi handle on first use. 0 or an SK_HTTP_E* code. */
static int init(void)
{
    if (H.ready) return 0;
    H.loop = (struct ev_loop *)sk_host.main_loop();
    if (!H.loop) return SK_HTTP_ETHREAD;
    char err[256];
    if (load_libcurl(err, sizeof(err)) < 0) {
        sk_error("http client: %s", err);
        return SK_HTTP_EUNSUPPORTED;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return SK_HTTP_ENOMEM;
    if (!(H.multi = curl_multi_init())) {
        curl_global_cleanup();
        return SK_HTTP_ENOMEM;
    }
    curl_multi_setopt(H.multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(H.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    ev_timer_init(&H.timer, on_timer, 0., 0.);
    H.ready = true;
    atexit(at_exit);
    return 0;
}

/* ---- calls ---- */

static void unlink_call(sk_http_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        H.calls = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    H.ncalls--;
}

/* Takes the call out of curl and frees it. Never while depth > 0. */
static void free_call(sk_http_call *c)
{
    unlink_call(c);
    if (c->added) curl_multi_remove_handle(H.multi, c->easy);
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->hdrs);
    free(c);
}

/* Maps curl's result for call c to an SK_HTTP_E* code and message. */
static int map_result(sk_http_call *c, CURLcode rc, char *msg, size_t n)
{
    int err;
    switch (rc) {
    case CURLE_OK: err = SK_HTTP_OK; break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: err = SK_HTTP_ECONNECT; break;
    case CURLE_OPERATION_TIMEDOUT: err = SK_HTTP_ETIMEOUT; break;
    case CURLE_FILESIZE_EXCEEDED: err = SK_HTTP_ETOOLARGE; break;
    case CURLE_OUT_OF_MEMORY: err = SK_HTTP_ENOMEM; break;
    case CURLE_UNSUPPORTED_PROTOCOL: err = SK_HTTP_EUNSUPPORTED; break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED: err = SK_HTTP_ETLS; break;
    default: err = c->too_large ? SK_HTTP_ETOOLARGE : SK_HTTP_EPROTO; break;
    }
    if (err == SK_HTTP_OK)
        snprintf(msg, n, "HTTP %d, %zu body bytes", c->status, c->received);
    else if (err == SK_HTTP_ETOOLARGE)
        snprintf(msg, n, "%s: more than max_body = %zu bytes", sk_http_strerror(err), c->max_body);
    else
        snprintf(msg, n, "%s: %s", sk_http_strerror(err), c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
    return err;
}

/* Runs on_done (unless cancelled) and frees the call. Outside curl. */
static void finish(sk_http_call *c, int err, const char *msg)
{
    if (!c->cancelled && c->on_done) {
        c->in_done = true;
        c->on_done(c->arg, err, msg);
    }
    free_call(c);
}

/* After curl returned: drop cancelled calls, add queued ones, report the
 * finished ones. Callbacks may cancel and start calls meanwhile. */
static void after(void)
{
    while (H.sweep) {
        H.sweep = false;
        for (sk_http_call *c = H.calls, *next; c; c = next) {
            next = c->next;
            if (c->cancelled && !c->in_done) {
                free_call(c); /* its curl message, if any, goes with it */
            } else if (!c->added) {
                if (curl_multi_add_handle(H.multi, c->easy) == CURLM_OK) {
                    c->added = true;
                } else {
                    finish(c, SK_HTTP_ENOMEM, "out of memory: cannot add the call to the client");
                    H.sweep = true; /* the list may have changed under `next` */
                    break;
                }
            }
        }
    }
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(H.multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        sk_http_call *c = NULL;
        CURLcode rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        if (!c) continue;
        char msg[CURL_ERROR_SIZE + 128];
        int err = map_result(c, rc, msg, sizeof(msg));
        finish(c, err, msg);
    }
}

/* Hands the final response head to on_head: status and the headers curl
 * parsed, copied into one block the host owns during the call. */
static void deliver_head(sk_http_call *c, int status)
{
    c->status = status;
    if (!c->on_head) return;
    size_t n = 0, bytes = 0;
    struct curl_header *h = NULL;
    while ((h = curl_easy_nextheader(c->easy, CURLH_HEADER, -1, h))) {
        n++;
        bytes += strlen(h->name) + strlen(h->value);
    }
    sk_str *names = NULL, *values = NULL;
    char *text = NULL;
    void *block = n ? malloc(2 * n * sizeof(sk_str) + bytes) : NULL;
    if (n && !block) {
        n = 0; /* the status still gets through; the plugin sees no headers */
    } else if (n) {
        names = block;
        values = names + n;
        text = (char *)(values + n);
        size_t i = 0;
        while (i < n && (h = curl_easy_nextheader(c->easy, CURLH_HEADER, -1, i ? h : NULL))) {
            size_t nl = strlen(h->name), vl = strlen(h->value);
            memcpy(text, h->name, nl);
            names[i] = (sk_str){text, nl};
            text += nl;
            memcpy(text, h->value, vl);
            values[i] = (sk_str){text, vl};
            text += vl;
            i++;
        }
        n = i;
    }
    c->on_head(c->arg, status, names, values, n);
    free(block);
}

/* CURLOPT_HEADERFUNCTION: one header line at a time; the blank line ends a
 * head, which is the final one when its status is not 1xx. */
static size_t on_header_line(char *buf, size_t size, size_t nitems, void *userdata)
{
    sk_http_call *c = userdata;
    size_t len = size * nitems;
    if (c->cancelled) return 0;
    if (c->status == 0 && ((len == 2 && buf[0] == '\r' && buf[1] == '\n') || (len == 1 && buf[0] == '\n'))) {
        long status = 0;
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200) deliver_head(c, (int)status);
    }
    return c->cancelled ? 0 : len;
}

/* CURLOPT_WRITEFUNCTION: a piece of the (de-chunked) body. */
static size_t on_body_piece(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    sk_http_call *c = userdata;
    size_t len = size * nmemb;
    if (c->cancelled) return 0;
    if (c->max_body != SK_HTTP_UNLIMITED && len > c->max_body - c->received) {
        c->too_large = true;
        return 0;
    }
    c->received += len;
    if (c->on_body && len) c->on_body(c->arg, ptr, len);
    return c->cancelled ? 0 : len;
}

/* ---- starting and cancelling ---- */

static bool is_token(const char *s, size_t max)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || !((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'z') ||
                          (s[n] >= 'A' && s[n] <= 'Z') || strchr(tchar, s[n])))
            return false;
    return n > 0;
}

static bool has_header(const char *const *hs, const char *name)
{
    for (size_t i = 0; hs && hs[i]; i += 2)
        if (strcasecmp(hs[i], name) == 0) return true;
    return false;
}

/* Logs why a start was refused and returns err. */
static int refuse(sk_instance *self, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int refuse(sk_instance *self, int err, const char *fmt, ...)
{
    char detail[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    sk_log(SK_LOG_WARN, "plugin %s: http_start refused (%s): %s", self ? self->name : "?",
           sk_http_strerror(err), detail);
    return err;
}

/* Checks the URL: http:// or https:// with a host. 0 or an SK_HTTP_E* code (logged). */
static int check_url(sk_instance *self, const char *url)
{
    CURLU *u = curl_url();
    if (!u) return refuse(self, SK_HTTP_ENOMEM, "%s", "out of memory");
    char *scheme = NULL, *host = NULL;
    int err = 0;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host)
        err = refuse(self, SK_HTTP_EINVAL, "not a valid absolute URL: '%.200s'", url);
    else if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        err = refuse(self, SK_HTTP_EUNSUPPORTED, "only http:// and https:// URLs are supported: '%.200s'", url);
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return err;
}

/* Appends "Name: value" to *list (curl's form for an empty value is
 * "Name;"; a bare "Name:" removes one of curl's own). 0 or -1 (OOM). */
static int add_line(struct curl_slist **list, const char *name, const char *value, bool remove)
{
    size_t nl = strlen(name), vl = value ? strlen(value) : 0;
    char *line = malloc(nl + vl + 3);
    if (!line) return -1;
    if (remove)
        snprintf(line, nl + 2, "%s:", name);
    else if (!vl)
        snprintf(line, nl + 2, "%s;", name);
    else
        snprintf(line, nl + vl + 3, "%s: %s", name, value);
    struct curl_slist *l = curl_slist_append(*list, line);
    free(line);
    if (!l) return -1;
    *list = l;
    return 0;
}

/* Sets up the easy handle of call c for request rq. 0 or SK_HTTP_ENOMEM. */
static int setup_easy(sk_http_call *c, const sk_http_request *rq, const char *method)
{
    CURL *e = c->easy;
    const char *const *hs = rq->headers;
    for (size_t i = 0; hs && hs[i]; i += 2)
        if (add_line(&c->hdrs, hs[i], hs[i + 1], false) < 0) return SK_HTTP_ENOMEM;
    /* curl's own additions the contract does not promise */
    static const char *const curl_adds[] = {"Accept", "Expect", "Content-Type"};
    for (size_t i = 0; i < SK_ARRAY_LEN(curl_adds); i++)
        if (!has_header(hs, curl_adds[i]) && add_line(&c->hdrs, curl_adds[i], NULL, true) < 0)
            return SK_HTTP_ENOMEM;
    bool with_body =
        rq->body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    CURLcode rc = CURLE_OK;
#define SET(opt, val) \
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val)
    SET(CURLOPT_URL, rq->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    /* https://: the peer's certificate and name are always verified (curl's
     * defaults, never turned off), against [sidekick] http_client_ca or the
     * system's CA bundle; http_client_cert/key are the client certificate
     * for servers that want one (an etcd with client authentication). */
    const sk_config *cfg = c->owner ? c->owner->config : NULL;
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (cfg && cfg->http_client_ca) SET(CURLOPT_CAINFO, cfg->http_client_ca);
    if (cfg && cfg->http_client_cert) {
        SET(CURLOPT_SSLCERT, cfg->http_client_cert);
        SET(CURLOPT_SSLKEY, cfg->http_client_key);
    }
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_PROXY, ""); /* never http_proxy & co. from the environment */
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PATH_AS_IS, 1L);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS,
        (long)(rq->connect_timeout_ms ? rq->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS));
    if (rq->timeout_ms) SET(CURLOPT_TIMEOUT_MS, (long)rq->timeout_ms);
    /* a stream without limit: nothing for curl to check either */
    if (c->max_body != SK_HTTP_UNLIMITED)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)SK_MIN(c->max_body, (size_t)INT64_MAX));
    SET(CURLOPT_HTTPHEADER, c->hdrs);
    SET(CURLOPT_HEADERFUNCTION, on_header_line);
    SET(CURLOPT_HEADERDATA, c);
    SET(CURLOPT_WRITEFUNCTION, on_body_piece);
    SET(CURLOPT_WRITEDATA, c);
    SET(CURLOPT_ERRORBUFFER, c->errbuf);
    SET(CURLOPT_PRIVATE, (char *)c);
    if (strcmp(method, "HEAD") == 0) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (with_body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(rq->body ? rq->body_len : 0));
        SET(CURLOPT_COPYPOSTFIELDS, rq->body ? rq->body : "");
        if (strcmp(method, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, method);
    } else if (strcmp(method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        SET(CURLOPT_CUSTOMREQUEST, method);
    }
#undef SET
    return rc == CURLE_OK ? 0 : SK_HTTP_ENOMEM;
}

/* See http_client.h and sk_host_api.http_start. */
int sk_http_start(sk_instance *self, const sk_http_request *rq, sk_http_call **call)
{
    if (call) *call = NULL;
    if (gettid() != getpid())
        return refuse(self, SK_HTTP_ETHREAD, "%s",
                      "called on a worker thread; start calls on the main loop and hand results to "
                      "workers with post_to_workers");
    if (!self) return refuse(self, SK_HTTP_EINVAL, "%s", "no instance");
    if (!rq || !rq->url) return refuse(self, SK_HTTP_EINVAL, "%s", "no request or no url");
    if (self == H.closing) return refuse(self, SK_HTTP_ECANCELLED, "%s", "the instance is being destroyed");
    if (H.ncalls >= SK_HTTP_MAX_CALLS)
        return refuse(self, SK_HTTP_EBUSY, "%u calls in flight already", (unsigned)SK_HTTP_MAX_CALLS);
    const char *method = rq->method ? rq->method : "GET";
    if (!is_token(method, MAX_METHOD_LEN)) return refuse(self, SK_HTTP_EINVAL, "bad method '%.40s'", method);
    if (rq->body_len && !rq->body) return refuse(self, SK_HTTP_EINVAL, "%s", "body_len without body");
    if (rq->body_len > SK_HTTP_MAX_REQUEST_BODY)
        return refuse(self, SK_HTTP_EINVAL, "request body over %u bytes", (unsigned)SK_HTTP_MAX_REQUEST_BODY);
    size_t nh = 0;
    for (; rq->headers && rq->headers[nh]; nh += 2) {
        const char *name = rq->headers[nh], *value = rq->headers[nh + 1];
        if (nh / 2 >= SK_HTTP_MAX_HEADERS)
            return refuse(self, SK_HTTP_EINVAL, "more than %u request headers",
                          (unsigned)SK_HTTP_MAX_HEADERS);
        if (!value) return refuse(self, SK_HTTP_EINVAL, "header '%.64s' without a value", name);
        if (!is_token(name, 256) || !sk_header_field_ok(value, false))
            return refuse(self, SK_HTTP_EINVAL, "bad header name or value: '%.64s'", name);
        if (strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0)
            return refuse(self, SK_HTTP_EINVAL, "header '%.64s' is set by the host", name);
    }
    int err = init();
    if (err) return refuse(self, err, "%s", "cannot initialise libcurl");
    if ((err = check_url(self, rq->url))) return err;

    sk_http_call *c = calloc(1, sizeof(*c));
    if (!c) return refuse(self, SK_HTTP_ENOMEM, "%s", "out of memory");
    c->owner = self;
    c->on_head = rq->on_head;
    c->on_body = rq->on_body;
    c->on_done = rq->on_done;
    c->arg = rq->arg;
    c->max_body = rq->max_body ? rq->max_body : DEFAULT_MAX_BODY;
    if (!(c->easy = curl_easy_init()) || setup_easy(c, rq, method) < 0) {
        curl_easy_cleanup(c->easy);
        curl_slist_free_all(c->hdrs);
        free(c);
        return refuse(self, SK_HTTP_ENOMEM, "%s", "out of memory");
    }
    c->next = H.calls;
    if (H.calls) H.calls->prev = c;
    H.calls = c;
    H.ncalls++;
    if (H.depth > 0) {
        H.sweep = true; /* added by after(), once curl returned */
    } else if (curl_multi_add_handle(H.multi, c->easy) != CURLM_OK) {
        c->owner = NULL;
        free_call(c);
        return refuse(self, SK_HTTP_ENOMEM, "%s", "cannot add the call to the client");
    } else {
        c->added = true;
    }
    if (call) *call = c;
    return 0;
}

/* See http_client.h and sk_host_api.http_cancel. */
void sk_http_cancel(sk_http_call *c)
{
    if (!c || c->in_done || c->cancelled) return;
    if (gettid() != getpid()) {
        sk_log(SK_LOG_ERROR, "plugin %s: http_cancel called on a worker thread: ignored",
               c->owner ? c->owner->name : "?");
        return;
    }
    c->cancelled = true;
    if (H.depth > 0)
        H.sweep = true;
    else
        free_call(c);
}

/* See http_client.h. */
void sk_http_instance_closing(sk_instance *pi)
{
    H.closing = pi;
    bool notify = pi->inst != NULL; /* a failed create's arg may be gone */
    for (;;) {
        sk_http_call *c = H.calls;
        while (c && (c->owner != pi || c->cancelled || c->in_done)) c = c->next;
        if (!c) break;
        if (!notify) c->cancelled = true;
        if (H.depth > 0) {
            /* inside curl (never the case today: destroy runs from main's
             * own timers): report now, free in after() */
            if (!c->cancelled && c->on_done) {
                c->in_done = true;
                c->on_done(c->arg, SK_HTTP_ECANCELLED, "cancelled: the plugin instance is being destroyed");
                c->in_done = false;
            }
            c->cancelled = true;
            H.sweep = true;
        } else {
            finish(c, SK_HTTP_ECANCELLED, "cancelled: the plugin instance is being destroyed");
        }
    }
}

/* See http_client.h. */
size_t sk_http_instance_calls(const sk_instance *pi)
{
    size_t n = 0;
    for (const sk_http_call *c = H.calls; c; c = c->next)
        if (c->owner == pi && !c->cancelled) n++;
    return n;
}

/* See http_client.h. */
void sk_http_instance_closed(sk_instance *pi)
{
    for (sk_http_call *c = H.calls, *next; c; c = next) {
        next = c->next;
        if (c->owner == pi && !c->cancelled) {
            c->cancelled = true;
            if (H.depth > 0)
                H.sweep = true;
            else
                free_call(c);
        }
    }
    if (H.closing == pi) H.closing = NULL;
}
