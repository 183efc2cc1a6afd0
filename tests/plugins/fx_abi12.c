/*
 * fx_abi12 — test fixture: every member ABI 1.2 added.
 *
 * Keys:
 *     out        = PATH              one JSON line per event is appended here (required)
 *     endpoints  = a:1 5, b:2 1      on_cluster answers every cluster naming it with these
 *                                    (address weight), through set_endpoints_from
 *     source     = NAME              the source it gives (default "fx"); "none" passes NULL
 *     stale_ms   = N                 N ms after on_cluster (a main-loop timer), it calls
 *                                    cluster_state(cluster, 0, message) for each cluster
 *     message    = TEXT              that message (default "fx: refresh failed")
 *     foreign    = CLUSTER           on_cluster also tries cluster_state on this cluster,
 *                                    which does not name the instance (must be refused)
 *     stream     = URL               from create, a GET with max_body = SK_HTTP_UNLIMITED;
 *                                    every body piece is recorded (length and running total)
 *
 * Events written to `out`:
 *     {"event":"cluster","cluster":"api","arg":"..."}      on_cluster (arg null when absent)
 *     {"event":"answer","cluster":"api","rc":0}            set_endpoints_from's result
 *     {"event":"bad_source","rc":-1}                        set_endpoints_from with a bad source
 *     {"event":"early_state","cluster":"api","rc":0}       cluster_state before the answer
 *     {"event":"foreign","cluster":"other","rc":-1}        cluster_state on the foreign cluster
 *     {"event":"stale","cluster":"api","rc":0}             the stale_ms timer's cluster_state
 *     {"event":"piece","len":N,"total":T}                  a piece of the stream
 *     {"event":"done","error":E,"total":T,"message":".."}  the stream's on_done
 *
 * Metrics: sidekick_plugin_fx_abi12_responses_total{route,code_class} (counter_vec,
 * two labels: routes "a", "b" and "other" times 2xx, 5xx, other),
 * sidekick_plugin_fx_abi12_last{what,unit} (gauge_vec: status/code and
 * attempts/count of the last response), sidekick_plugin_fx_abi12_stream_bytes_total
 * (counter), sidekick_plugin_fx_abi12_refused_registrations (gauge: the bad
 * counter_vec / gauge_vec registrations create tries that were refused, as
 * they all must be).
 */
#include <sidekick/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EPS      16
#define MAX_CLUSTERS 8

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char out[1024];
    char list[1024];
    sk_weighted_endpoint eps[MAX_EPS];
    size_t neps;
    char source[64];
    int null_source;
    unsigned stale_ms;
    char message[512];
    char foreign[128];
    char stream[512];
    char clusters[MAX_CLUSTERS][128];
    size_t nclusters;
    sk_timer *stale_timer;
    sk_http_call *call;
    unsigned long long streamed;
    sk_metric *responses, *last, *bytes, *refused;
} fx;

static const char *const labels2[] = {"route", "code_class"};
static const char *const series[] = {"a",   "2xx", "a",     "5xx",   "a",   "other", "b",   "2xx",   "b",
                                     "5xx", "b",   "other", "other", "2xx", "other", "5xx", "other", "other"};
static const char *const last_labels[] = {"what", "unit"};
static const char *const last_series[] = {"status", "code", "attempts", "count"};

/* Appends one line to the out file. */
static void emit(fx *f, const char *line)
{
    FILE *fp = fopen(f->out, "a");
    if (!fp) {
        f->host->log(f->self, SK_LOG_ERROR, "cannot open %s", f->out);
        return;
    }
    fputs(line, fp);
    fputc('\n', fp);
    fclose(fp);
}

static void emit_rc(fx *f, const char *event, const char *cluster, int rc)
{
    char line[512];
    snprintf(line, sizeof line, "{\"event\":\"%s\",\"cluster\":\"%s\",\"rc\":%d}", event, cluster, rc);
    emit(f, line);
}

/* Tries registrations that must all be refused; returns how many were. */
static int bad_registrations(fx *f)
{
    const sk_host_api *h = f->host;
    static const char *const one[] = {"v"};
    static const char *const vals[] = {"x", "y"};
    static const char *const dup_labels[] = {"a", "a"};
    static const char *const five[] = {"a", "b", "c", "d", "e"};
    static const char *const dup_series[] = {"x", "y", "x", "y"};
    static const char *const reserved[] = {"instance"};
    static const char *const quote[] = {"x\"y"};
    int n = 0;
    n += h->counter_vec(f->self, "fx_abi12_bad_nolabels", "", one, 0, vals, 1) == NULL;
    n += h->counter_vec(f->self, "fx_abi12_bad_five", "", five, 5, five, 1) == NULL;
    n += h->counter_vec(f->self, "fx_abi12_bad_duplabel", "", dup_labels, 2, dup_series, 1) == NULL;
    n += h->counter_vec(f->self, "fx_abi12_bad_noseries", "", dup_labels + 1, 1, vals, 0) == NULL;
    n += h->gauge_vec(f->self, "fx_abi12_bad_dupseries", "", labels2, 2, dup_series, 2) == NULL;
    n += h->gauge_vec(f->self, "fx_abi12_bad_reserved", "", reserved, 1, vals, 1) == NULL;
    n += h->gauge_vec(f->self, "fx_abi12_bad_quote", "", one, 1, quote, 1) == NULL;
    /* the name exists already, in another shape */
    n += h->gauge_vec(f->self, "fx_abi12_responses_total", "", labels2, 2, series, 9) == NULL;
    return n;
}

static void on_piece(void *arg, const char *data, size_t len)
{
    fx *f = arg;
    (void)data;
    f->streamed += len;
    f->host->metric_add(f->bytes, (int64_t)len);
    char line[128];
    snprintf(line, sizeof line, "{\"event\":\"piece\",\"len\":%zu,\"total\":%llu}", len, f->streamed);
    emit(f, line);
}

static void on_stream_done(void *arg, int error, const char *message)
{
    fx *f = arg;
    f->call = NULL;
    char msg[512], line[1024];
    snprintf(msg, sizeof msg, "%s", message);
    for (char *p = msg; *p; p++)
        if (*p == '\\' || *p == '"' || (unsigned char)*p < 0x20) *p = '_';
    snprintf(line, sizeof line, "{\"event\":\"done\",\"error\":%d,\"total\":%llu,\"message\":\"%s\"}", error,
             f->streamed, msg);
    emit(f, line);
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    if (host->abi_minor < 2) {
        snprintf(err, err_size, "fx_abi12: needs a host with plugin ABI 1.2");
        return NULL;
    }
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_abi12: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    snprintf(f->source, sizeof f->source, "fx");
    snprintf(f->message, sizeof f->message, "fx: refresh failed");
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        if (strcmp(k, "out") == 0) {
            snprintf(f->out, sizeof f->out, "%s", v);
        } else if (strcmp(k, "endpoints") == 0) {
            snprintf(f->list, sizeof f->list, "%s", v);
        } else if (strcmp(k, "source") == 0) {
            f->null_source = strcmp(v, "none") == 0;
            snprintf(f->source, sizeof f->source, "%s", v);
        } else if (strcmp(k, "stale_ms") == 0) {
            f->stale_ms = (unsigned)strtoul(v, NULL, 10);
        } else if (strcmp(k, "message") == 0) {
            snprintf(f->message, sizeof f->message, "%s", v);
        } else if (strcmp(k, "foreign") == 0) {
            snprintf(f->foreign, sizeof f->foreign, "%s", v);
        } else if (strcmp(k, "stream") == 0) {
            snprintf(f->stream, sizeof f->stream, "%s", v);
        } else {
            snprintf(
                err, err_size,
                "fx_abi12: unknown key '%s' (line %d); known: out, endpoints, source, stale_ms, message, "
                "foreign, stream",
                k, keys[i].line);
            free(f);
            return NULL;
        }
    }
    if (!f->out[0]) {
        snprintf(err, err_size, "fx_abi12: 'out' is required");
        free(f);
        return NULL;
    }
    for (char *save = NULL, *p = strtok_r(f->list, ",", &save); p && f->neps < MAX_EPS;
         p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ') p++;
        char *sp = strchr(p, ' ');
        f->eps[f->neps].weight = sp ? (uint32_t)strtoul(sp + 1, NULL, 10) : 1;
        if (sp) *sp = 0;
        f->eps[f->neps++].address = p;
    }
    f->responses = host->counter_vec(self, "fx_abi12_responses_total", "Responses by route and status class",
                                     labels2, 2, series, 9);
    f->last = host->gauge_vec(self, "fx_abi12_last", "The last response", last_labels, 2, last_series, 2);
    f->bytes = host->counter(self, "fx_abi12_stream_bytes_total", "Bytes of the stream read");
    f->refused = host->gauge(self, "fx_abi12_refused_registrations", "Bad vec registrations refused");
    if (!f->responses || !f->last || !f->bytes || !f->refused) {
        snprintf(err, err_size, "fx_abi12: a good metric registration failed");
        free(f);
        return NULL;
    }
    if (host->counter_vec(self, "fx_abi12_responses_total", "", labels2, 2, series, 9) != f->responses) {
        snprintf(err, err_size, "fx_abi12: re-registration gave another metric");
        free(f);
        return NULL;
    }
    host->metric_set(f->refused, bad_registrations(f));
    if (f->stream[0]) {
        sk_http_request rq = {
            .url = f->stream,
            .max_body = SK_HTTP_UNLIMITED,
            .on_body = on_piece,
            .on_done = on_stream_done,
            .arg = f,
        };
        int rc = host->http_start(self, &rq, &f->call);
        if (rc != 0) {
            snprintf(err, err_size, "fx_abi12: http_start: %s", host->http_strerror(rc));
            free(f);
            return NULL;
        }
    }
    return f;
}

static void destroy(void *inst)
{
    fx *f = inst;
    if (f->stale_timer) f->host->timer_stop(f->stale_timer);
    free(f);
}

static void go_stale(void *arg)
{
    fx *f = arg;
    f->stale_timer = NULL; /* fired: freed by the host */
    for (size_t i = 0; i < f->nclusters; i++)
        emit_rc(f, "stale", f->clusters[i], f->host->cluster_state(f->self, f->clusters[i], 0, f->message));
}

static int on_cluster(void *inst, const char *cluster, const char *arg, char *err, size_t err_size)
{
    fx *f = inst;
    const sk_host_api *h = f->host;
    if (f->nclusters == MAX_CLUSTERS) {
        snprintf(err, err_size, "fx_abi12: more than %d clusters", MAX_CLUSTERS);
        return -1;
    }
    snprintf(f->clusters[f->nclusters++], sizeof f->clusters[0], "%s", cluster);
    char line[1024];
    snprintf(line, sizeof line, "{\"event\":\"cluster\",\"cluster\":\"%s\",\"arg\":%s%s%s}", cluster,
             arg ? "\"" : "", arg ? arg : "null", arg ? "\"" : "");
    emit(f, line);
    /* a word before the answer: the cluster stays "waiting" */
    emit_rc(f, "early_state", cluster, h->cluster_state(f->self, cluster, 0, "fx: asking"));
    char bad[64];
    snprintf(bad, sizeof bad, "{\"event\":\"bad_source\",\"rc\":%d}",
             h->set_endpoints_from(f->self, cluster, f->eps, f->neps, "Bad Source"));
    emit(f, bad);
    if (f->neps)
        emit_rc(f, "answer", cluster,
                h->set_endpoints_from(f->self, cluster, f->eps, f->neps, f->null_source ? NULL : f->source));
    if (f->foreign[0])
        emit_rc(f, "foreign", f->foreign, h->cluster_state(f->self, f->foreign, 1, "not mine"));
    if (f->stale_ms && !f->stale_timer)
        f->stale_timer = h->timer_start(h->main_loop(), f->stale_ms, go_stale, f);
    return 0;
}

static void on_log(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    const sk_host_api *h = f->host;
    sk_req_info info = {.size = sizeof info};
    if (h->request_info(r, &info) != 0) return;
    sk_str route = h->route(r);
    size_t row = 2;
    if (route.ptr && route.len == 1 && route.ptr[0] == 'a') row = 0;
    if (route.ptr && route.len == 1 && route.ptr[0] == 'b') row = 1;
    size_t col = info.status >= 200 && info.status < 300   ? 0
                 : info.status >= 500 && info.status < 600 ? 1
                                                           : 2;
    h->metric_add_at(f->responses, row * 3 + col, 1);
    h->metric_set_at(f->last, 0, info.status);
    h->metric_set_at(f->last, 1, info.attempts);
    h->metric_set_at(f->last, 2, 12345); /* out of range: ignored */
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = 2,
    .name = "fx_abi12",
    .description =
        "test fixture: set_endpoints_from, cluster_state, counter_vec/gauge_vec, SK_HTTP_UNLIMITED",
    .create = create,
    .destroy = destroy,
    .on_log = on_log,
    .on_cluster = on_cluster,
};
