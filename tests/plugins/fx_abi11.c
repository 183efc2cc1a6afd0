/*
 * fx_abi11 — test fixture: every member ABI 1.1 added.
 *
 * Keys:
 *     out       = PATH            one JSON line per event is appended here (required)
 *     weights   = a:1 5, b:2 7    on_cluster sets these (address weight) with
 *                                 set_endpoints_weighted for every cluster naming it
 *     refuse    = ARG             on_cluster refuses a cluster whose ARG is this
 *     leak      = on              starts a one-hour timer on the main loop in create
 *                                 and one on each worker in worker_init, and never
 *                                 stops them (the host must, at destroy / worker_fini)
 *
 * Events written to `out`:
 *     {"event":"cluster","cluster":"api","arg":"a b"}         on_cluster (arg null when absent)
 *     {"event":"log","request_id":"...","start":N,"connect":N,"first_byte":N,"end":N,
 *      "received":N,"sent":N,"endpoint":"ip:port","attempts":N,"status":N,"reason":"..",
 *      "size":N}                                               on_log, from request_info
 *
 * on_request adds the request header x-fx-request-id with host->request_id(),
 * so a test can compare it with the x-request-id the upstream received.
 *
 * Metrics: sidekick_plugin_fx_abi11_responses_total{code_class} (counter,
 * labelled: 1xx..5xx, other), sidekick_plugin_fx_abi11_attempts{code_class}
 * (gauge, labelled: attempts of the last response of that class), and
 * sidekick_plugin_fx_abi11_refused_registrations (gauge: how many of the bad
 * labelled registrations create tries were refused, as they all must be).
 */
#include <sidekick/plugin.h>

#include <stddef.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EPS 16

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char out[1024];
    char refuse[256];
    char list[1024];
    sk_weighted_endpoint eps[MAX_EPS];
    size_t neps;
    int leak;
    sk_metric *responses, *attempts, *refused;
} fx;

static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "other"};

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

/* "text" or null (the fixture's strings need no escaping). */
static void json_str(char *buf, size_t size, sk_str s)
{
    if (s.ptr)
        snprintf(buf, size, "\"%.*s\"", (int)s.len, s.ptr);
    else
        snprintf(buf, size, "null");
}

static void never(void *arg)
{
    (void)arg;
}

/* Tries registrations that must all be refused; returns how many were. */
static int bad_registrations(fx *f)
{
    static const char *const one[] = {"a"};
    static const char *const dup[] = {"a", "a"};
    static const char *const quote[] = {"a\"b"};
    static const char *const empty[] = {""};
    const char *many[SK_METRIC_MAX_LABEL_VALUES + 1];
    char names[SK_METRIC_MAX_LABEL_VALUES + 1][8];
    for (int i = 0; i <= SK_METRIC_MAX_LABEL_VALUES; i++) {
        snprintf(names[i], sizeof names[i], "v%d", i);
        many[i] = names[i];
    }
    const sk_host_api *h = f->host;
    int n = 0;
    n += h->counter_labelled(f->self, "fx_abi11_bad_many", "", "v", many, SK_METRIC_MAX_LABEL_VALUES + 1) == NULL;
    n += h->counter_labelled(f->self, "fx_abi11_bad_none", "", "v", one, 0) == NULL;
    n += h->counter_labelled(f->self, "fx_abi11_bad_label", "", "1v", one, 1) == NULL;
    n += h->counter_labelled(f->self, "fx_abi11_bad_instance", "", "instance", one, 1) == NULL;
    n += h->counter_labelled(f->self, "fx_abi11_bad_dup", "", "v", dup, 2) == NULL;
    n += h->counter_labelled(f->self, "fx_abi11_bad_quote", "", "v", quote, 1) == NULL;
    n += h->counter_labelled(f->self, "fx_abi11_bad_empty", "", "v", empty, 1) == NULL;
    n += h->gauge_labelled(f->self, "bad-name", "", "v", one, 1) == NULL;
    /* the name exists already as a labelled counter */
    n += h->gauge_labelled(f->self, "fx_abi11_responses_total", "", "code_class", classes, 6) == NULL;
    return n;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys, char *err,
                    size_t err_size)
{
    if (host->abi_minor < 1) {
        snprintf(err, err_size, "fx_abi11: needs a host with plugin ABI 1.1");
        return NULL;
    }
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_abi11: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    for (size_t i = 0; i < nkeys; i++) {
        const char *k = keys[i].key, *v = keys[i].value;
        if (strcmp(k, "out") == 0) {
            snprintf(f->out, sizeof f->out, "%s", v);
        } else if (strcmp(k, "weights") == 0) {
            snprintf(f->list, sizeof f->list, "%s", v);
        } else if (strcmp(k, "refuse") == 0) {
            snprintf(f->refuse, sizeof f->refuse, "%s", v);
        } else if (strcmp(k, "leak") == 0) {
            f->leak = strcmp(v, "on") == 0;
        } else {
            snprintf(err, err_size, "fx_abi11: unknown key '%s' (line %d); known: out, weights, refuse, leak", k,
                     keys[i].line);
            free(f);
            return NULL;
        }
    }
    if (!f->out[0]) {
        snprintf(err, err_size, "fx_abi11: 'out' is required");
        free(f);
        return NULL;
    }
    /* "a:1 5, b:2 7" */
    for (char *save = NULL, *p = strtok_r(f->list, ",", &save); p && f->neps < MAX_EPS;
         p = strtok_r(NULL, ",", &save)) {
        while (*p == ' ') p++;
        char *sp = strchr(p, ' ');
        f->eps[f->neps].weight = sp ? (uint32_t)strtoul(sp + 1, NULL, 10) : 1;
        if (sp) *sp = 0;
        f->eps[f->neps++].address = p;
    }
    f->responses = host->counter_labelled(self, "fx_abi11_responses_total", "Responses by status class",
                                          "code_class", classes, 6);
    f->attempts = host->gauge_labelled(self, "fx_abi11_attempts", "Attempts of the last response by class",
                                       "code_class", classes, 6);
    f->refused = host->gauge(self, "fx_abi11_refused_registrations", "Bad labelled registrations refused");
    if (!f->responses || !f->attempts || !f->refused) {
        snprintf(err, err_size, "fx_abi11: a good metric registration failed");
        free(f);
        return NULL;
    }
    /* the same registration again gives the same metric */
    if (host->counter_labelled(self, "fx_abi11_responses_total", "", "code_class", classes, 6) != f->responses) {
        snprintf(err, err_size, "fx_abi11: re-registration gave another metric");
        free(f);
        return NULL;
    }
    host->metric_set(f->refused, bad_registrations(f));
    if (f->leak) {
        sk_loop *main = host->main_loop();
        if (main) host->timer_start(main, 3600 * 1000, never, NULL);
    }
    return f;
}

static void destroy(void *inst)
{
    free(inst);
}

static int worker_init(void *inst, sk_loop *loop, void **wdata)
{
    fx *f = inst;
    if (f->leak) f->host->timer_start(loop, 3600 * 1000, never, NULL);
    *wdata = NULL;
    return 0;
}

static int on_cluster(void *inst, const char *cluster, const char *arg, char *err, size_t err_size)
{
    fx *f = inst;
    if (f->refuse[0] && arg && strcmp(arg, f->refuse) == 0) {
        snprintf(err, err_size, "fx_abi11: ARG '%s' refused for cluster %s", arg, cluster);
        return -1;
    }
    char line[1024];
    snprintf(line, sizeof line, "{\"event\":\"cluster\",\"cluster\":\"%s\",\"arg\":%s%s%s}", cluster,
             arg ? "\"" : "", arg ? arg : "null", arg ? "\"" : "");
    emit(f, line);
    if (f->neps && f->host->set_endpoints_weighted(f->self, cluster, f->eps, f->neps) != 0) {
        snprintf(err, err_size, "fx_abi11: set_endpoints_weighted(%s) failed", cluster);
        return -1;
    }
    return 0;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    sk_str id = f->host->request_id(r);
    char v[256];
    snprintf(v, sizeof v, "%.*s", (int)id.len, id.ptr ? id.ptr : "");
    f->host->set_header(r, "x-fx-request-id", v);
    return SK_CONTINUE;
}

static void on_log(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    const sk_host_api *h = f->host;
    sk_req_info info;
    memset(&info, 0xff, sizeof info); /* the host must fill every field */
    /* the 1.1 layout, as a plugin built against the 1.1 header passes it
     * (ABI 1.2 appended generation and tls): the host fills no more */
    info.size = offsetof(sk_req_info, generation);
    if (h->request_info(r, &info) != 0) {
        h->log(f->self, SK_LOG_ERROR, "request_info failed");
        return;
    }
    sk_str id = h->request_id(r);
    char ep[128], reason[128], line[2048];
    json_str(ep, sizeof ep, info.endpoint);
    json_str(reason, sizeof reason, info.reason);
    snprintf(line, sizeof line,
             "{\"event\":\"log\",\"request_id\":\"%.*s\",\"start\":%llu,\"connect\":%llu,\"first_byte\":%llu,"
             "\"end\":%llu,\"received\":%llu,\"sent\":%llu,\"endpoint\":%s,\"attempts\":%u,\"status\":%d,"
             "\"reason\":%s,\"size\":%zu}",
             (int)id.len, id.ptr ? id.ptr : "", (unsigned long long)info.start_ns,
             (unsigned long long)info.upstream_connect_ns, (unsigned long long)info.upstream_first_byte_ns,
             (unsigned long long)info.end_ns, (unsigned long long)info.bytes_received,
             (unsigned long long)info.bytes_sent, ep, (unsigned)info.attempts, info.status, reason, info.size);
    emit(f, line);
    size_t cls = info.status >= 100 && info.status <= 599 ? (size_t)(info.status / 100 - 1) : 5;
    h->metric_add_at(f->responses, cls, 1);
    h->metric_set_at(f->attempts, cls, info.attempts);
    h->metric_add_at(f->responses, 99, 1); /* out of range: ignored */
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = 1,
    .name = "fx_abi11",
    .description = "test fixture: request id and info, weighted endpoints, on_cluster, labelled metrics",
    .create = create,
    .destroy = destroy,
    .worker_init = worker_init,
    .on_request = on_request,
    .on_log = on_log,
    .on_cluster = on_cluster,
};
