/*
 * test_chain.c — unit tests of the request layer (proxy.c, request.c)
 * against a fake codec: an sk_server_ops table that records what the
 * request layer asks (response head, local reply, body, end, response
 * done), driven through sk_proxy_server_cbs as a codec drives it. A worker
 * is set up on this thread (sk_worker_init_local) on a config with the
 * fixture plugins of tests/plugins (SIDEKICK_PLUGIN_DIR, set by ctest), and
 * its loop is run by hand (EVRUN_NOWAIT), so nothing waits on a clock.
 *
 * Cases: no route → 404 no_route; a `respond` route; a plugin that pauses
 * and resumes (the chain goes on after it; resumed with a reply instead);
 * listener plugins before route plugins and on_response in reverse (one
 * upstream exchange with a listening socket of this test, accepted and
 * answered by hand); a cluster on a closed port → 502; a client gone while
 * paused → on_cancel and an access log line with 499 client_closed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "generation.h"
#include "plugin_host.h"
#include "request.h"
#include "server.h"
#include "worker.h"

#include "check.h"

/* main.c is not part of sidekick_core: admin.c needs these two. */
sk_server sk_srv;
void sk_server_drain(void) {}

/* ---- the fake codec ---- */

/* One stream: what the request layer asked of it. */
typedef struct fstream {
    sk_msg *msg;
    void *rq;
    int head_status;      /* send_head */
    char head_hdrs[2048]; /* its header fields, "name: value\n" each */
    int framing;
    int lr_status; /* local_reply */
    const char *lr_reason;
    char body[4096]; /* send_body or the local reply's body */
    size_t body_len;
    int ends;        /* send_end calls */
    int done;        /* response_done calls (local replies included) */
    int resumed;     /* chain_resumed calls */
    bool in_head;    /* inside cbs.head: finishing waits until it returns */
    bool finish_due; /* response done inside head */
    bool finished;   /* cbs.finish was called */
    bool gone;       /* aborted */
} fstream;

static void stream_finish(fstream *s, bool complete)
{
    void *rq = s->rq;
    s->rq = NULL;
    s->msg = NULL;
    s->finished = true;
    sk_proxy_server_cbs.finish(rq, complete);
}

static int f_send_head(void *p, int status, const char *reason, size_t reason_len, const sk_header *hdrs,
                       size_t n, int framing, bool has_length, uint64_t length)
{
    fstream *s = p;
    (void)reason, (void)reason_len, (void)has_length, (void)length;
    s->head_status = status;
    s->framing = framing;
    size_t off = 0;
    for (size_t i = 0; i < n && off < sizeof(s->head_hdrs); i++)
        off += (size_t)snprintf(s->head_hdrs + off, sizeof(s->head_hdrs) - off, "%.*s: %.*s\n",
                                (int)hdrs[i].name_len, hdrs[i].name, (int)hdrs[i].value_len, hdrs[i].value);
    s->msg->status = status;
    s->msg->response_started = true;
    s->msg->state = SK_REQ_RESPONDING;
    return 0;
}

static int f_send_body(void *p, const void *b, size_t n)
{
    fstream *s = p;
    if (n > sizeof(s->body) - s->body_len) return -1;
    memcpy(s->body + s->body_len, b, n);
    s->body_len += n;
    return 0;
}

static int f_send_end(void *p)
{
    fstream *s = p;
    s->ends++;
    return 0;
}

static int f_send_continue(void *p)
{
    (void)p;
    return 0;
}

static void f_response_done(void *p)
{
    fstream *s = p;
    s->done++;
    s->msg->state = SK_REQ_DONE;
    if (s->in_head)
        s->finish_due = true; /* as a codec inside its parser: after head() returns */
    else
        stream_finish(s, true);
}

static void f_local_reply(void *p, int status, const char *reason, const char *body, size_t len,
                          const char *const *headers, bool close)
{
    fstream *s = p;
    (void)headers, (void)close;
    sk_proxy_server_cbs.cancel(s->rq);
    s->lr_status = status;
    s->lr_reason = reason;
    if (!body) body = reason ? reason : "", len = strlen(body);
    if (len > sizeof(s->body)) len = sizeof(s->body);
    memcpy(s->body, body, len);
    s->body_len = len;
    s->msg->status = status;
    s->msg->reason = reason;
    s->msg->response_started = true;
    f_response_done(p);
}

static void f_flush(void *p)
{
    (void)p;
}

static size_t f_pending(void *p)
{
    (void)p;
    return 0;
}

static void f_nop(void *p)
{
    (void)p;
}

static void f_chain_resumed(void *p)
{
    fstream *s = p;
    s->resumed++;
}

static void f_abort(void *p)
{
    fstream *s = p;
    s->gone = true;
    stream_finish(s, false);
}

static bool f_gone(void *p)
{
    fstream *s = p;
    return s->gone;
}

static const sk_server_ops fake_ops = {
    .send_head = f_send_head,
    .send_body = f_send_body,
    .send_end = f_send_end,
    .send_continue = f_send_continue,
    .local_reply = f_local_reply,
    .flush = f_flush,
    .pending = f_pending,
    .pause_body = f_nop,
    .resume_body = f_nop,
    .chain_resumed = f_chain_resumed,
    .response_done = f_response_done,
    .abort = f_abort,
    .gone = f_gone,
};

/* ---- the worker ---- */

static sk_worker worker;
static sk_config *cfg;
static sk_conn_info info;
static int logfd = -1;

static void spin(int passes)
{
    for (int i = 0; i < passes; i++) {
        ev_run(worker.loop, EVRUN_NOWAIT);
        sk_wctx_reap(&worker.ctx);
    }
}

/* Starts a request as a codec does after parsing its head: method, target,
 * Host and the other header fields (name, value, ..., NULL), no body. Runs
 * cbs.head and returns what it returned. */
static int start(fstream *s, const char *method, const char *target, const char *const *hdrs)
{
    memset(s, 0, sizeof(*s));
    s->rq = sk_proxy_server_cbs.begin(s, &fake_ops, &info, &s->msg);
    if (!s->rq) return -2;
    sk_msg *m = s->msg;
    m->start_ns = sk_now_ns();
    sk_head *h = &m->head;
    int rc = sk_buf_append(&h->raw, target, strlen(target));
    h->url_len = (uint32_t)strlen(target);
    rc |= sk_head_field(h, "Host", 4, 100, 65536);
    rc |= sk_head_value(h, "svc.test", 8, 65536);
    for (size_t i = 0; hdrs && hdrs[i]; i += 2) {
        rc |= sk_head_field(h, hdrs[i], strlen(hdrs[i]), 100, 65536);
        rc |= sk_head_value(h, hdrs[i + 1], strlen(hdrs[i + 1]), 65536);
    }
    h->url = 0;
    rc |= sk_head_finish(h);
    if (rc) return -2;
    m->method = method;
    m->method_id = sk_method_id(method, strlen(method));
    m->version = 11;
    m->keep_alive = true;
    m->path = h->raw.data;
    m->path_len = h->url_len;
    const sk_header *host = sk_head_get(h, "host");
    m->host = m->authority = host->value;
    m->host_len = m->authority_len = host->value_len;
    m->req_framing = SK_BODY_NONE;
    m->body_done = true;
    m->bytes_received = 100;
    m->state = SK_REQ_UPSTREAM;
    s->in_head = true;
    int hr = sk_proxy_server_cbs.head(s->rq);
    s->in_head = false;
    if (s->finish_due) stream_finish(s, true);
    return hr;
}

/* The value of request header `name` of a request still in flight, or "". */
static const char *req_header(const fstream *s, const char *name, char *buf, size_t n)
{
    const sk_header *h = s->msg ? sk_head_get(&s->msg->head, name) : NULL;
    snprintf(buf, n, "%.*s", h ? (int)h->value_len : 0, h ? h->value : "");
    return buf;
}

/* The access log written so far. */
static char *access_log(void)
{
    static char buf[1 << 16];
    ssize_t n = pread(logfd, buf, sizeof(buf) - 1, 0);
    buf[n > 0 ? n : 0] = 0;
    return buf;
}

/* How many access log lines contain every one of the strings a and b. */
static int log_lines_with(const char *a, const char *b)
{
    int n = 0;
    for (char *l = access_log(); *l;) {
        char *e = strchr(l, '\n');
        if (!e) break;
        *e = 0;
        if (strstr(l, a) && strstr(l, b)) n++;
        l = e + 1;
    }
    return n;
}

/* The value of a plugin metric sample line ("name{instance=\"x\"}"), or -1. */
static long plugin_metric(const char *sample)
{
    sk_buf b = {0};
    long v = -1;
    if (sk_plugins_render_prometheus(&b, cfg) == 0 && b.data) {
        sk_buf_append(&b, "", 1);
        const char *p = strstr(b.data, sample);
        if (p) v = strtol(p + strlen(sample), NULL, 10);
    }
    sk_buf_free(&b);
    return v;
}

/* ---- cases ---- */

static void test_no_route(void)
{
    fstream s;
    CHECK(start(&s, "GET", "/nothing", NULL) == 0);
    CHECK(s.finished && s.done == 1);
    CHECK(s.lr_status == 404 && s.lr_reason && strcmp(s.lr_reason, "no_route") == 0);
    CHECK(s.head_status == 0);
    CHECK(log_lines_with("\"path\":\"/nothing\"", "\"status\":404,\"reason\":\"no_route\"") == 1);
}

static void test_respond_route(void)
{
    fstream s;
    const char *h[] = {"x-other", "client", NULL};
    int hr = start(&s, "GET", "/ok", h);
    CHECK(hr == 0);
    CHECK(s.lr_status == 201 && s.lr_reason == NULL);
    CHECK(s.body_len == 4 && memcmp(s.body, "made", 4) == 0);
    CHECK(s.finished);
    CHECK(log_lines_with("\"path\":\"/ok\"", "\"status\":201,\"reason\":null") == 1);
}

/* Listener plugin a, then the route's b, wait (pauses, resumed by a 0 ms
 * timer), c: the chain goes on after the pause, in order. */
static void test_pause_resume(void)
{
    fstream s;
    char v[128];
    CHECK(start(&s, "GET", "/pause/x", NULL) == 1);
    CHECK(!s.finished && s.done == 0 && s.resumed == 0);
    CHECK(strcmp(req_header(&s, "x-chain", v, sizeof v), "a, b") == 0); /* c has not run yet */
    for (int i = 0; i < 50 && !s.finished; i++) spin(1);
    CHECK(s.resumed == 1);
    CHECK(s.finished && s.lr_status == 200);
    CHECK(s.body_len == 5 && memcmp(s.body, "after", 5) == 0);
    CHECK(plugin_metric("sidekick_plugin_fx_pause_resumes_total{instance=\"wait\"} ") == 1);
    CHECK(log_lines_with("\"path\":\"/pause/x\"", "\"status\":200") == 1);
}

/* Resumed with a reply (result = respond): 403 with the plugin's body; the
 * rest of the chain does not run. */
static void test_pause_resume_respond(void)
{
    fstream s;
    CHECK(start(&s, "GET", "/refuse", NULL) == 1);
    for (int i = 0; i < 50 && !s.finished; i++) spin(1);
    CHECK(s.finished && s.lr_status == 403);
    CHECK(s.body_len == 20 && memcmp(s.body, "paused then refused\n", 20) == 0);
}

/* The client goes away while a plugin holds the request (the codec marks
 * it client_closed and finishes it cut): on_cancel, never resume, and the
 * access log says 499 client_closed. */
static void test_client_closed_while_paused(void)
{
    fstream s;
    CHECK(start(&s, "GET", "/long", NULL) == 1);
    spin(2);
    CHECK(!s.finished);
    CHECK(plugin_metric("sidekick_plugin_fx_pause_pending{instance=\"long\"} ") == 1);
    s.msg->client_closed = true;
    stream_finish(&s, false);
    CHECK(plugin_metric("sidekick_plugin_fx_pause_cancels_total{instance=\"long\"} ") == 1);
    CHECK(plugin_metric("sidekick_plugin_fx_pause_pending{instance=\"long\"} ") == 0);
    CHECK(plugin_metric("sidekick_plugin_fx_pause_resumes_total{instance=\"long\"} ") <= 0);
    CHECK(log_lines_with("\"path\":\"/long\"", "\"status\":499,\"reason\":\"client_closed\"") == 1);
    CHECK(s.lr_status == 0 && s.head_status == 0 && s.done == 0);
}

/* A cluster whose endpoint refuses connections: 502 upstream_connect_failure. */
static void test_dead_cluster(void)
{
    fstream s;
    int hr = start(&s, "GET", "/dead", NULL);
    CHECK(hr == 0);
    for (int i = 0; i < 200 && !s.finished; i++) spin(1);
    CHECK(s.finished && s.lr_status == 502);
    CHECK(s.lr_reason && strcmp(s.lr_reason, "upstream_connect_failure") == 0);
    CHECK(log_lines_with("\"path\":\"/dead\"", "\"reason\":\"upstream_connect_failure\"") == 1);
}

/* Listener plugin a, then route plugins b, wait (pauses; a 0 ms timer
 * resumes it) and c on the way in: the upstream receives x-chain: a, b, c
 * and wait's x-paused. on_response in reverse: the client gets
 * x-chain-resp: c, b, a. */
static void test_order_with_upstream(int lfd)
{
    fstream s;
    char v[128];
    CHECK(start(&s, "GET", "/up/x", NULL) == 1);
    CHECK(strcmp(req_header(&s, "x-chain", v, sizeof v), "a, b") == 0);
    int fd = -1;
    for (int i = 0; i < 200 && fd < 0; i++) {
        spin(1);
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    }
    ASSERT(fd >= 0);
    char got[8192];
    size_t len = 0;
    for (int i = 0; i < 200 && !memmem(got, len, "\r\n\r\n", 4); i++) {
        spin(1);
        ssize_t n = read(fd, got + len, sizeof(got) - 1 - len);
        if (n > 0) len += (size_t)n;
    }
    got[len] = 0;
    CHECK(strncmp(got, "GET /up/x HTTP/1.1\r\n", 20) == 0);
    CHECK(strstr(got, "\r\nx-chain: a, b, c\r\n") != NULL);
    CHECK(strstr(got, "\r\nx-paused: 0\r\n") != NULL);
    CHECK(s.resumed == 1);
    static const char resp[] = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    CHECK(write(fd, resp, sizeof(resp) - 1) == (ssize_t)sizeof(resp) - 1);
    for (int i = 0; i < 200 && !s.finished; i++) spin(1);
    CHECK(s.finished && s.head_status == 200 && s.lr_status == 0);
    CHECK(strstr(s.head_hdrs, "x-chain-resp: c, b, a\n") != NULL);
    CHECK(s.body_len == 2 && memcmp(s.body, "ok", 2) == 0 && s.ends == 1 && s.done == 1);
    CHECK(log_lines_with("\"path\":\"/up/x\"", "\"status\":200,\"reason\":null") == 1);
    close(fd);
    spin(5);
}

/* A port that refuses connections: bound, then closed. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

int main(void)
{
    const char *dir = getenv("SIDEKICK_PLUGIN_DIR");
    if (!dir) {
        fprintf(stderr, "test_chain: SIDEKICK_PLUGIN_DIR is not set (ctest sets it)\n");
        return 1;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof(a);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 8) < 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
        perror("test_chain: upstream listener");
        return 1;
    }
    int dead = closed_port();
    if (dead < 0) {
        perror("test_chain: closed port");
        return 1;
    }

    char tmpl[] = "/tmp/sk-chain-XXXXXX";
    if (!mkdtemp(tmpl)) return 1;
    char path[64];
    snprintf(path, sizeof(path), "%s/c.ini", tmpl);
    FILE *f = fopen(path, "w");
    if (!f) return 1;
    fprintf(f,
            "[sidekick]\nworkers = 1\nadmin = off\naccess_log = off\nplugin_dir = %s\n\n"
            "[plugin a]\nload = fx_headers.so\ntag = a\n\n"
            "[plugin b]\nload = fx_headers.so\ntag = b\n\n"
            "[plugin c]\nload = fx_headers.so\ntag = c\n\n"
            "[plugin wait]\nload = fx_pause.so\ndelay_ms = 0\n\n"
            "[plugin refuse]\nload = fx_pause.so\ndelay_ms = 0\nresult = respond\n\n"
            "[plugin long]\nload = fx_pause.so\ndelay_ms = 600000\n\n"
            "[listener main]\naddress = 127.0.0.1:1\nplugins = a\n\n"
            "[route ok]\nlistener = main\npath = /ok\nrespond = 201 made\n\n"
            "[route pause]\nlistener = main\nprefix = /pause\nplugins = b, wait, c\nrespond = 200 after\n\n"
            "[route refuse]\nlistener = main\npath = /refuse\nplugins = refuse, b\nrespond = 200 not this\n\n"
            "[route long]\nlistener = main\npath = /long\nplugins = long\nrespond = 200 never\n\n"
            "[route up]\nlistener = main\nprefix = /up/\nplugins = b, wait, c\ncluster = live\n\n"
            "[route dead]\nlistener = main\npath = /dead\ncluster = dead\n\n"
            "[cluster live]\nendpoints = 127.0.0.1:%u\n\n"
            "[cluster dead]\nendpoints = 127.0.0.1:%d\nconnect_timeout = 1s\n",
            dir, (unsigned)ntohs(a.sin_port), dead);
    fclose(f);
    char *err = NULL;
    cfg = sk_config_load(path, &err);
    unlink(path);
    rmdir(tmpl);
    if (!cfg) {
        fprintf(stderr, "test_chain: config refused: %s\n", err);
        free(err);
        return 1;
    }
    sk_log_level = SK_LOG_ERROR;
    FILE *log = tmpfile();
    sk_metrics *m = sk_metrics_new();
    if (!log || !m) return 1;
    logfd = fileno(log);
    if (sk_worker_init_local(&worker, 0, cfg, m, logfd, &err) < 0) {
        fprintf(stderr, "test_chain: worker: %s\n", err);
        return 1;
    }
    sk_metrics_assign_rows(cfg);
    if (sk_plugins_worker_init(cfg, 0, worker.loop) < 0) {
        fprintf(stderr, "test_chain: a plugin's worker_init failed\n");
        return 1;
    }
    info.wctx = &worker.ctx;
    info.config = cfg;
    info.listener = cfg->listeners[0];
    info.client_ip = "127.0.0.1";
    info.client_addr = "127.0.0.1:40000";

    test_no_route();
    test_respond_route();
    test_pause_resume();
    test_pause_resume_respond();
    test_client_closed_while_paused();
    test_dead_cluster();
    test_order_with_upstream(lfd);

    sk_worker_close_idle_upstreams(&worker);
    spin(3);
    sk_plugins_worker_fini(cfg, 0);
    close(lfd);
    fclose(log);
    printf("test_chain: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
