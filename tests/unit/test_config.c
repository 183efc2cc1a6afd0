/*
 * test_config.c — unit tests of config.c: duration, size and address syntax,
 * a full configuration with every key, the defaults, and every error path
 * (the message must name file, line, section and key).
 *
 * Each test writes its INI text to t.ini in a private temporary directory
 * (the working directory while the tests run), so messages read "t.ini:N: ...".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "generation.h"

#include "check.h"

#define CHECK_STR(a, b)                                                                                     \
    do {                                                                                                    \
        const char *a_ = (a), *b_ = (b);                                                                    \
        checks++;                                                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                                            \
            failures++;                                                                                     \
            fprintf(stderr, "%s:%d: %s: got '%s', want '%s'\n", __FILE__, __LINE__, #a, a_ ? a_ : "(null)", \
                    b_ ? b_ : "(null)");                                                                    \
        }                                                                                                   \
    } while (0)

static char tmpdir[4096];

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(name, "w");
    if (!f) {
        perror(name);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

/* Loads `text` as t.ini; returns the config or NULL (then *err is set). */
static sk_config *load_text(const char *text, char **err)
{
    write_file("t.ini", text);
    return sk_config_load("t.ini", err);
}

/* ---- syntax helpers ---------------------------------------------------------------------- */

static void test_durations(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t ms;
    } cases[] = {
        {"250ms", 0, 250},
        {"10s", 0, 10000},
        {"2m", 0, 120000},
        {"7", 0, 7000},
        {"0", 0, 0},
        {"0ms", 0, 0},
        {"18446744073709551615ms", 0, UINT64_MAX},
        {"18446744073709551616ms", -1, 0},
        {"18446744073709551615", -1, 0},
        {"307445734561825861m", -1, 0},
        {"", -1, 0},
        {"-1s", -1, 0},
        {"+1s", -1, 0},
        {"1.5s", -1, 0},
        {"10 s", -1, 0},
        {" 10s", -1, 0},
        {"10s ", -1, 0},
        {"10h", -1, 0},
        {"10S", -1, 0},
        {"10sm", -1, 0},
        {"ms", -1, 0},
        {"x", -1, 0},
        {"0x10", -1, 0},
    };
    for (size_t i = 0; i < SK_ARRAY_LEN(cases); i++) {
        uint64_t ms = 12345;
        int rc = sk_parse_duration(cases[i].s, &ms);
        if (rc != cases[i].rc || (rc == 0 && ms != cases[i].ms))
            fprintf(stderr, "duration '%s': rc %d ms %llu\n", cases[i].s, rc, (unsigned long long)ms);
        CHECK(rc == cases[i].rc);
        if (rc == 0) CHECK(ms == cases[i].ms);
    }
    uint64_t ms;
    CHECK(sk_parse_duration(NULL, &ms) == -1);
}

static void test_sizes(void)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t n;
    } cases[] = {
        {"512", 0, 512},
        {"0", 0, 0},
        {"64k", 0, 65536},
        {"64K", 0, 65536},
        {"10m", 0, 10485760},
        {"10M", 0, 10485760},
        {"18446744073709551615", 0, UINT64_MAX},
        {"18446744073709551616", -1, 0},
        {"18014398509481984k", -1, 0},
        {"17592186044416m", -1, 0},
        {"", -1, 0},
        {"k", -1, 0},
        {"-1", -1, 0},
        {"1.5k", -1, 0},
        {"64kb", -1, 0},
        {"64 k", -1, 0},
        {"1g", -1, 0},
        {"abc", -1, 0},
    };
    for (size_t i = 0; i < SK_ARRAY_LEN(cases); i++) {
        uint64_t n = 12345;
        int rc = sk_parse_size(cases[i].s, &n);
        if (rc != cases[i].rc || (rc == 0 && n != cases[i].n))
            fprintf(stderr, "size '%s': rc %d n %llu\n", cases[i].s, rc, (unsigned long long)n);
        CHECK(rc == cases[i].rc);
        if (rc == 0) CHECK(n == cases[i].n);
    }
}

static unsigned port_of(const sk_addr *a)
{
    if (a->ss.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

static void test_addresses(void)
{
    static const struct {
        const char *s;
        const char *text; /* NULL = must fail */
        int family;
        unsigned port;
    } cases[] = {
        {"1.2.3.4:80", "1.2.3.4:80", AF_INET, 80},
        {"0.0.0.0:0", "0.0.0.0:0", AF_INET, 0},
        {"127.0.0.1:65535", "127.0.0.1:65535", AF_INET, 65535},
        {"localhost:8080", "127.0.0.1:8080", AF_INET, 8080},
        {"LocalHost:1", "127.0.0.1:1", AF_INET, 1},
        {"[::1]:80", "[::1]:80", AF_INET6, 80},
        {"[::]:443", "[::]:443", AF_INET6, 443},
        {"[2001:DB8:0:0::1]:53", "[2001:db8::1]:53", AF_INET6, 53},
        {"[::ffff:1.2.3.4]:9", "[::ffff:1.2.3.4]:9", AF_INET6, 9},
        {"1.2.3.4:080", "1.2.3.4:80", AF_INET, 80},
        {"1.2.3.4:65536", NULL, 0, 0},
        {"1.2.3.4:", NULL, 0, 0},
        {"1.2.3.4", NULL, 0, 0},
        {"1.2.3.4:-1", NULL, 0, 0},
        {"1.2.3.4:8x", NULL, 0, 0},
        {"1.2.3.4:000080", NULL, 0, 0},
        {":80", NULL, 0, 0},
        {"1.2.3:80", NULL, 0, 0},
        {"1:80", NULL, 0, 0},
        {"0x7f.1:80", NULL, 0, 0},
        {"256.1.1.1:80", NULL, 0, 0},
        {"example.com:80", NULL, 0, 0},
        {"::1:80", NULL, 0, 0},
        {"[::1]80", NULL, 0, 0},
        {"[::1]:", NULL, 0, 0},
        {"[1.2.3.4]:80", NULL, 0, 0},
        {"[]:80", NULL, 0, 0},
        {"[::1:80", NULL, 0, 0},
        {"", NULL, 0, 0},
        {" 1.2.3.4:80", NULL, 0, 0},
    };
    for (size_t i = 0; i < SK_ARRAY_LEN(cases); i++) {
        sk_addr a;
        int rc = sk_parse_addr(cases[i].s, &a);
        if (!cases[i].text) {
            if (rc != -1) fprintf(stderr, "address '%s' accepted as %s\n", cases[i].s, a.text);
            CHECK(rc == -1);
            continue;
        }
        if (rc != 0) fprintf(stderr, "address '%s' refused\n", cases[i].s);
        CHECK(rc == 0);
        CHECK_STR(a.text, cases[i].text);
        CHECK(a.ss.ss_family == cases[i].family);
        CHECK(port_of(&a) == cases[i].port);
        CHECK(a.len ==
              (cases[i].family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)));
    }
    sk_addr a;
    CHECK(sk_parse_addr(NULL, &a) == -1);
}

/* ---- whole files ------------------------------------------------------------------------- */

static const char full_ini[] = "; a comment\n"
                               "# another comment\n"
                               "[sidekick]\n"
                               "workers = 3\n"
                               "admin = [::1]:15099\n"
                               "plugin_dir = ../build/plugins\n"
                               "lua_dir = /opt/lua/\n"
                               "log_level = debug\n"
                               "access_log = logs/access.log\n"
                               "drain_timeout = 2m\n"
                               "\n"
                               "[listener outbound]\n"
                               "    address = 127.0.0.1:15001   ; indented, with a comment\n"
                               "protocol = http\n"
                               "max_connections = 500\n"
                               "header_timeout = 250ms\n"
                               "idle_timeout = 30\n"
                               "max_header_bytes = 16K\n"
                               "max_headers = 50\n"
                               "max_body_bytes = 1m\n"
                               "\n"
                               "[route api]\n"
                               "listener = outbound\n"
                               "host = API.Internal\n"
                               "prefix = /api/\n"
                               "method = get, POST ,Delete\n"
                               "header = X-Canary:  1 \n"
                               "header = x-debug\n"
                               "header = X-Multi: a: b\n"
                               "cluster = api-v1 90, api-v2 10\n"
                               "rewrite_prefix = /\n"
                               "timeout = 0\n"
                               "retries = 10\n"
                               "\n"
                               "[route static]\n"
                               "listener = outbound\n"
                               "host = *.Example.com\n"
                               "path = /healthz\n"
                               "respond = 204\n"
                               "\n"
                               "[listener raw]\n"
                               "address = [::1]:15002\n"
                               "protocol = tcp\n"
                               "cluster = db\n"
                               "\n"
                               "[route teapot]\n"
                               "listener = outbound\n"
                               "respond = 418 I'm a teapot  twice\n"
                               "\n"
                               "[cluster api-v1]\n"
                               "endpoints = 127.0.0.1:8080, [::1]:8081,localhost:8082\n"
                               "lb = least_request\n"
                               "connect_timeout = 5s\n"
                               "max_connections = 1\n"
                               "max_pending = 2\n"
                               "max_requests = 3\n"
                               "\n"
                               "[cluster api-v2]\n"
                               "endpoints = 10.0.0.1:80\n"
                               "lb = random\n"
                               "\n"
                               "[cluster db]\n"
                               "endpoints = 10.0.0.2:5432\n"
                               "lb = round_robin\n";

static void test_full(void)
{
    char *err = NULL;
    char want[8192];
    sk_config *c = load_text(full_ini, &err);
    if (!c) fprintf(stderr, "full config refused: %s\n", err);
    ASSERT(c != NULL);
    CHECK(err == NULL);

    CHECK(c->refcnt == 1);
    CHECK(c->generation == 1);
    snprintf(want, sizeof(want), "%s/t.ini", tmpdir);
    CHECK_STR(c->file, want);
    CHECK(c->loaded_at > 0 && c->loaded_at <= time(NULL));

    CHECK(c->workers == 3);
    CHECK(c->admin_enabled);
    CHECK_STR(c->admin.text, "[::1]:15099");
    char parent[4096];
    snprintf(parent, sizeof(parent), "%s", tmpdir);
    *strrchr(parent, '/') = '\0';
    snprintf(want, sizeof(want), "%s/build/plugins", parent);
    CHECK_STR(c->plugin_dir, want);
    CHECK_STR(c->lua_dir, "/opt/lua");
    CHECK(c->log_level == SK_LOG_DEBUG);
    snprintf(want, sizeof(want), "%s/logs/access.log", tmpdir);
    CHECK_STR(c->access_log, want);
    CHECK(c->drain_timeout_ms == 120000);

    ASSERT(c->nlisteners == 2 && c->nroutes == 3 && c->nclusters == 3);
    sk_listener *out = c->listeners[0], *raw = c->listeners[1];
    sk_route *api = c->routes[0], *st = c->routes[1], *tea = c->routes[2];
    sk_cluster *v1 = c->clusters[0], *v2 = c->clusters[1], *db = c->clusters[2];

    CHECK_STR(out->name, "outbound");
    CHECK(out->index == 0 && out->line == 12);
    CHECK_STR(out->address.text, "127.0.0.1:15001");
    CHECK(out->protocol == SK_PROTO_HTTP);
    CHECK(out->cluster == NULL);
    CHECK(out->max_connections == 500);
    CHECK(out->header_timeout_ms == 250);
    CHECK(out->idle_timeout_ms == 30000);
    CHECK(out->max_header_bytes == 16384);
    CHECK(out->max_headers == 50);
    CHECK(out->max_body_bytes == 1048576);
    ASSERT(out->nroutes == 3);
    CHECK(out->routes[0] == api && out->routes[1] == st && out->routes[2] == tea);

    CHECK_STR(raw->name, "raw");
    CHECK(raw->index == 1 && raw->line == 41);
    CHECK_STR(raw->address.text, "[::1]:15002");
    CHECK(raw->protocol == SK_PROTO_TCP);
    CHECK(raw->cluster == db);
    CHECK(raw->nroutes == 0 && raw->routes == NULL);
    CHECK(raw->max_connections == 10000);

    CHECK_STR(api->name, "api");
    CHECK(api->index == 0 && api->line == 22);
    CHECK(api->listener == out);
    CHECK_STR(api->host, "api.internal");
    CHECK_STR(api->prefix, "/api/");
    CHECK(api->path == NULL);
    ASSERT(api->nmethods == 3);
    CHECK_STR(api->methods[0], "GET");
    CHECK_STR(api->methods[1], "POST");
    CHECK_STR(api->methods[2], "DELETE");
    ASSERT(api->nheaders == 3);
    CHECK_STR(api->headers[0].name, "x-canary");
    CHECK_STR(api->headers[0].value, "1");
    CHECK_STR(api->headers[1].name, "x-debug");
    CHECK(api->headers[1].value == NULL);
    CHECK_STR(api->headers[2].name, "x-multi");
    CHECK_STR(api->headers[2].value, "a: b");
    ASSERT(api->nclusters == 2);
    CHECK(api->clusters[0].cluster == v1 && api->clusters[0].weight == 90);
    CHECK(api->clusters[1].cluster == v2 && api->clusters[1].weight == 10);
    CHECK(api->total_weight == 100);
    CHECK_STR(api->rewrite_prefix, "/");
    CHECK(api->timeout_ms == 0);
    CHECK(api->retries == 10);
    CHECK(api->respond_status == 0 && api->respond_body == NULL);

    CHECK_STR(st->host, "*.example.com");
    CHECK(st->prefix == NULL);
    CHECK_STR(st->path, "/healthz");
    CHECK(st->nmethods == 0 && st->methods == NULL);
    CHECK(st->nheaders == 0);
    CHECK(st->nclusters == 0 && st->clusters == NULL);
    CHECK(st->respond_status == 204);
    CHECK_STR(st->respond_body, "");
    CHECK(st->timeout_ms == 15000);
    CHECK(st->index == 1);

    CHECK(tea->respond_status == 418);
    CHECK_STR(tea->respond_body, "I'm a teapot  twice");
    CHECK_STR(tea->prefix, "/");
    CHECK(tea->host == NULL);
    CHECK(tea->index == 2);

    CHECK_STR(v1->name, "api-v1");
    CHECK(v1->index == 0 && v1->line == 50);
    ASSERT(v1->nendpoints == 3);
    CHECK_STR(v1->endpoints[0].address.text, "127.0.0.1:8080");
    CHECK_STR(v1->endpoints[1].address.text, "[::1]:8081");
    CHECK_STR(v1->endpoints[2].address.text, "127.0.0.1:8082");
    CHECK(v1->endpoints[0].index == 0 && v1->endpoints[2].index == 2);
    CHECK(v1->lb == SK_LB_LEAST_REQUEST);
    CHECK(v1->connect_timeout_ms == 5000);
    CHECK(v1->max_connections == 1 && v1->max_pending == 2 && v1->max_requests == 3);
    CHECK(v1->active_connections == 0 && v1->active_pending == 0 && v1->active_requests == 0);
    CHECK(v2->lb == SK_LB_RANDOM && v2->index == 1);
    CHECK(v2->max_connections == 1024 && v2->connect_timeout_ms == 1000);
    CHECK(db->lb == SK_LB_ROUND_ROBIN && db->index == 2);

    sk_config_ref(c);
    CHECK(c->refcnt == 2);
    sk_config_unref(c);
    CHECK(c->refcnt == 1);
    sk_config_unref(c);
    sk_config_unref(NULL);
}

static void test_defaults(void)
{
    char *err = NULL;
    char want[8192];
    sk_config *c = load_text("[listener in]\naddress = 127.0.0.1:0\n", &err);
    if (!c) fprintf(stderr, "minimal config refused: %s\n", err);
    ASSERT(c != NULL);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(c->workers == (cpus < 1 ? 1 : cpus > 256 ? 256 : cpus));
    CHECK(c->admin_enabled);
    CHECK_STR(c->admin.text, "127.0.0.1:15000");
    snprintf(want, sizeof(want), "%s/plugins", tmpdir);
    CHECK_STR(c->plugin_dir, want);
    snprintf(want, sizeof(want), "%s/lua", tmpdir);
    CHECK_STR(c->lua_dir, want);
    CHECK(c->log_level == SK_LOG_INFO);
    CHECK_STR(c->access_log, "stdout");
    CHECK(c->drain_timeout_ms == 15000);
    ASSERT(c->nlisteners == 1);
    sk_listener *l = c->listeners[0];
    CHECK(l->protocol == SK_PROTO_HTTP && l->max_connections == 10000);
    CHECK(l->header_timeout_ms == 10000 && l->idle_timeout_ms == 60000);
    CHECK(l->max_header_bytes == 65536 && l->max_headers == 100 && l->max_body_bytes == 0);
    CHECK(!l->merge_slashes && l->escaped_slashes == SK_ESCAPED_SLASHES_REJECT);
    CHECK(c->nroutes == 0 && c->nclusters == 0);
    sk_config_unref(c);

    /* workers = auto, admin = off, access_log keywords, a route with defaults. */
    c = load_text("[sidekick]\nworkers = auto\nadmin = off\naccess_log = stderr\n"
                  "[listener in]\naddress = 127.0.0.1:0\n"
                  "[route r]\nlistener = in\ncluster = c 5\n"
                  "[cluster c]\nendpoints = 127.0.0.1:1\n",
                  &err);
    if (!c) fprintf(stderr, "config refused: %s\n", err);
    ASSERT(c != NULL);
    CHECK(c->workers >= 1);
    CHECK(!c->admin_enabled);
    CHECK_STR(c->access_log, "stderr");
    ASSERT(c->nroutes == 1);
    sk_route *r = c->routes[0];
    CHECK_STR(r->prefix, "/");
    CHECK(r->path == NULL && r->host == NULL && r->rewrite_prefix == NULL);
    CHECK(r->timeout_ms == 15000 && r->retries == 0);
    CHECK(r->nclusters == 1 && r->clusters[0].weight == 5 && r->total_weight == 5);
    sk_cluster *cl = c->clusters[0];
    CHECK(cl->lb == SK_LB_ROUND_ROBIN && cl->connect_timeout_ms == 1000);
    CHECK(cl->max_connections == 1024 && cl->max_pending == 1024 && cl->max_requests == 1024);
    /* traffic management's defaults (docs/traffic.md) */
    CHECK(cl->hash_key == SK_HASH_NONE && cl->slow_start_ms == 0 && cl->ewma_decay_ms == 10000);
    CHECK(cl->health_check == NULL && cl->health_interval_ms == 5000 && cl->health_timeout_ms == 1000);
    CHECK(cl->healthy_threshold == 2 && cl->unhealthy_threshold == 3 && !cl->health_initial_unhealthy);
    CHECK(cl->outlier_failures == 5 && cl->outlier_ejection_ms == 30000 && cl->max_ejection_percent == 50);
    CHECK(cl->panic_threshold == 50);
    sk_config_unref(c);

    /* every traffic key */
    c = load_text(
        "[listener in]\naddress = 127.0.0.1:0\n[route r]\nlistener = in\ncluster = a\n"
        "[cluster a]\nendpoints = 127.0.0.1:1\nlb = ring_hash\nhash_key = header:X-User\n"
        "slow_start = 30s\nhealth_check = /healthz?full=1\nhealth_interval = 2s\nhealth_timeout = 500ms\n"
        "healthy_threshold = 1\nunhealthy_threshold = 4\nhealth_initial = unhealthy\n"
        "outlier_failures = 7\noutlier_ejection = 10s\nmax_ejection_percent = 0\npanic_threshold = 0\n"
        "[cluster b]\nendpoints = 127.0.0.1:2\nlb = ring_hash\nhash_key = cookie:Session\n"
        "[cluster e]\nendpoints = 127.0.0.1:3\nlb = ewma\newma_decay = 2s\noutlier_failures = 0\n"
        "[cluster f]\nendpoints = 127.0.0.1:4\nlb = ring_hash\nhash_key = client_ip\n",
        &err);
    if (!c) fprintf(stderr, "config refused: %s\n", err);
    ASSERT(c != NULL && c->nclusters == 4);
    cl = c->clusters[0];
    CHECK(cl->lb == SK_LB_RING_HASH && cl->hash_key == SK_HASH_HEADER);
    CHECK_STR(cl->hash_key_name, "x-user");
    CHECK(cl->slow_start_ms == 30000);
    CHECK_STR(cl->health_check, "/healthz?full=1");
    CHECK(cl->health_interval_ms == 2000 && cl->health_timeout_ms == 500 && cl->healthy_threshold == 1);
    CHECK(cl->unhealthy_threshold == 4 && cl->health_initial_unhealthy);
    CHECK(cl->outlier_failures == 7 && cl->outlier_ejection_ms == 10000 && cl->max_ejection_percent == 0);
    CHECK(cl->panic_threshold == 0);
    CHECK(c->clusters[1]->hash_key == SK_HASH_COOKIE);
    CHECK_STR(c->clusters[1]->hash_key_name, "Session"); /* cookie names are case-sensitive */
    CHECK(c->clusters[2]->lb == SK_LB_EWMA && c->clusters[2]->ewma_decay_ms == 2000);
    CHECK(c->clusters[2]->outlier_failures == 0);
    CHECK(c->clusters[3]->hash_key == SK_HASH_CLIENT_IP && c->clusters[3]->hash_key_name == NULL);
    sk_config_unref(c);

    /* access_log = off; a weight of 0 is allowed as long as the total is not 0; a UTF-8 BOM. */
    c = load_text("\xEF\xBB\xBF[sidekick]\naccess_log = off\n"
                  "[listener in]\naddress = 127.0.0.1:0\n"
                  "[route r]\nlistener = in\ncluster = a 0, b 1\n"
                  "[cluster a]\nendpoints = 127.0.0.1:1\n[cluster b]\nendpoints = 127.0.0.1:2\n",
                  &err);
    if (!c) fprintf(stderr, "config refused: %s\n", err);
    ASSERT(c != NULL);
    CHECK_STR(c->access_log, "off");
    CHECK(c->routes[0]->total_weight == 1 && c->routes[0]->clusters[0].weight == 0);
    sk_config_unref(c);

    /* Two listeners on port 0 are two ephemeral ports, not a conflict. */
    c = load_text("[listener a]\naddress = 127.0.0.1:0\n[listener b]\naddress = 127.0.0.1:0\n", &err);
    CHECK(c != NULL);
    sk_config_unref(c);
}

/* Lines 1-4 of most error cases; the case's own text starts at line 5. */
#define BASE "[listener in]\naddress = 127.0.0.1:0\n[cluster c]\nendpoints = 127.0.0.1:9000\n"

static const struct {
    const char *text;
    const char *err; /* the whole message */
} error_cases[] = {
    /* file level */
    {"", "t.ini: no [listener NAME] section: at least one is needed"},
    {"[sidekick]\nworkers = 2\n", "t.ini: no [listener NAME] section: at least one is needed"},
    {"workers = 2\n" BASE, "t.ini:1: workers: key outside of any section"},
    {BASE "[sidekick]\nnot a key value line\n", "t.ini:6: [sidekick] expected 'key = value'"},
    {BASE "garbage\n", "t.ini:5: [cluster c] expected 'key = value'"},

    /* sections */
    {BASE "[bogus x]\n", "t.ini:5: [bogus x] unknown section"},
    {BASE "[Route x]\n", "t.ini:5: [Route x] unknown section"},
    {BASE "[]\n", "t.ini:5: [] unknown section"},
    {BASE "[tls mesh]\ncert = a.pem\n", "t.ini:6: [tls mesh] cert: needs 'key'"},
    {BASE "[tls mesh]\nkey = a.key\n", "t.ini:6: [tls mesh] key: needs 'cert'"},
    {BASE "[tls m]\nverify = sometimes\n", "t.ini:6: [tls m] verify: bad value 'sometimes' (expected none, optional or required)"},
    {BASE "[tls m]\nverify = required\n", "t.ini:6: [tls m] verify: needs 'ca'"},
    {BASE "[tls m]\nmin_version = 1.1\n", "t.ini:6: [tls m] min_version: bad value '1.1' (expected 1.2 or 1.3)"},
    {BASE "[tls m]\nalpn = spdy/3\n", "t.ini:6: [tls m] alpn: unknown protocol 'spdy/3' (expected h2 or http/1.1)"},
    {BASE "[tls m]\npeer_identity = spiffe://td/a, http://x/y\n",
     "t.ini:6: [tls m] peer_identity: bad SPIFFE ID 'http://x/y' (spiffe://trust-domain/path, or a prefix ending in /*)"},
    {BASE "[tls m]\npeer_identity = spiffe://TD/a\n",
     "t.ini:6: [tls m] peer_identity: bad SPIFFE ID 'spiffe://TD/a' (spiffe://trust-domain/path, or a prefix ending in /*)"},
    {BASE "[tls m]\npeer_identity = spiffe://td/a/../b\n",
     "t.ini:6: [tls m] peer_identity: bad SPIFFE ID 'spiffe://td/a/../b' (spiffe://trust-domain/path, or a prefix ending in /*)"},
    {BASE "[tls m]\nsni = a b\n", "t.ini:6: [tls m] sni: bad server name 'a b' (a DNS name)"},
    {BASE "[tls m]\nsession_tickets = maybe\n", "t.ini:6: [tls m] session_tickets: bad value 'maybe' (expected on or off)"},
    {BASE "[tls m]\nciphers = A B\n", "t.ini:6: [tls m] ciphers: bad cipher list 'A B'"},
    {BASE "[tls m]\nbogus = 1\n", "t.ini:6: [tls m] bogus: unknown key"},
    {BASE "[tls m]\n[tls m]\n", "t.ini:6: [tls m] duplicate section (first at line 5)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\ntls = m\n[tls m]\nca = ca.pem\n",
     "t.ini:8: [tls m] [listener l] terminates TLS with it: needs 'cert' and 'key'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\ntls = m\n[tls m]\ncert = a\nkey = b\nsni = x.internal\n",
     "t.ini:11: [tls m] sni: client-side key, but [listener l] terminates TLS with this section (use a separate "
     "[tls] section for the cluster side)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\ntls = m\n[tls m]\ncert = a\nkey = b\nverify = optional\n",
     "t.ini:11: [tls m] verify: verifying client certificates needs 'ca'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\ntls = m\n[tls m]\ncert = a\nkey = b\n"
          "peer_identity = spiffe://td/x\n",
     "t.ini:11: [tls m] peer_identity: needs client certificates verified (verify = none)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\ntls = m\n[tls m]\nca = ca.pem\nsession_tickets = off\n",
     "t.ini:10: [tls m] session_tickets: listener-side key, but [cluster d] originates TLS with this section (use "
     "a separate [tls] section for the listener side)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\ntls = m\n[tls m]\nca = ca.pem\nverify = optional\n",
     "t.ini:10: [tls m] verify: 'optional' is for listeners; [cluster d] verifies its upstream (required) or not "
     "(none)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\ntls = m\n[tls m]\n",
     "t.ini:8: [tls m] [cluster d] verifies its upstream's certificate: needs 'ca' (or verify = none)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\ntls = m\n[tls m]\nverify = none\npeer_identity = spiffe://td/x\n",
     "t.ini:10: [tls m] peer_identity: needs the upstream verified (verify = none is set)"},
    {BASE "[plugin]\nload = rl.so\n", "t.ini:5: [plugin] missing name (write [plugin NAME])"},
    {BASE "[plugin rl]\n[plugin rl]\n", "t.ini:6: [plugin rl] duplicate section (first at line 5)"},
    {BASE "[plugin rl]\nload = a.so\nload = b.so\n",
     "t.ini:7: [plugin rl] load: duplicate key (first at line 6)"},
    {BASE "[route]\n", "t.ini:5: [route] missing name (write [route NAME])"},
    {BASE "[listener]\n", "t.ini:5: [listener] missing name (write [listener NAME])"},
    {BASE "[cluster]\n", "t.ini:5: [cluster] missing name (write [cluster NAME])"},
    {BASE "[route a b]\n", "t.ini:5: [route a b] bad name (letters, digits, '-', '_' and '.' only)"},
    {BASE "[route a,b]\n", "t.ini:5: [route a,b] bad name (letters, digits, '-', '_' and '.' only)"},
    {BASE "[cluster c]\nendpoints = 127.0.0.1:1\n",
     "t.ini:5: [cluster c] duplicate section (first at line 3)"},
    {BASE "[listener in]\n", "t.ini:5: [listener in] duplicate section (first at line 1)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\n[route r]\n",
     "t.ini:8: [route r] duplicate section (first at line 5)"},
    {BASE "[sidekick]\n[sidekick]\n", "t.ini:6: [sidekick] duplicate section (first at line 5)"},
    {BASE "[sidekick x]\n", "t.ini:5: [sidekick x] [sidekick] takes no name"},
    {BASE "[route x\n", "t.ini:5: section header without ']'"},
    {BASE "[route x] junk\n", "t.ini:5: unexpected 'junk' after section header"},
    {BASE "[route x]]\n", "t.ini:5: unexpected ']' after section header"},

    /* keys in general */
    {BASE "[sidekick]\nworkerz = 2\n", "t.ini:6: [sidekick] workerz: unknown key"},
    {BASE "[sidekick]\nWorkers = 2\n", "t.ini:6: [sidekick] Workers: unknown key"},
    {BASE "[sidekick]\nworkers = 2\n\nworkers = 3\n",
     "t.ini:8: [sidekick] workers: duplicate key (first at line 6)"},
    {BASE "[sidekick]\nworkers =\n", "t.ini:6: [sidekick] workers: missing value"},
    {BASE "[sidekick]\nworkers = ; just a comment\n", "t.ini:6: [sidekick] workers: missing value"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nendpoints = 127.0.0.1:2\n",
     "t.ini:7: [cluster d] endpoints: duplicate key (first at line 6)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nmethod = GET\nmethod = POST\n",
     "t.ini:9: [route r] method: duplicate key (first at line 8)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nunknown = 1\n",
     "t.ini:8: [route r] unknown: unknown key"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nendpoints = 127.0.0.1:2\n",
     "t.ini:7: [listener l] endpoints: unknown key"},

    /* not supported yet */
    {BASE "[listener l]\naddress = 127.0.0.1:1\ntls = mesh\n", "t.ini:7: [listener l] tls: unknown tls section 'mesh' (no [tls mesh])"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\ntls = a b\n", "t.ini:7: [listener l] tls: bad name 'a b'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nplugins = a\n",
     "t.ini:7: [listener l] plugins: unknown plugin 'a' (no [plugin a] section)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nplugins = a, a\n",
     "t.ini:7: [listener l] plugins: plugin 'a' is listed twice"},
    {BASE "[route r]\nlistener = in\ncluster = c\nplugins = a, b\n",
     "t.ini:8: [route r] plugins: unknown plugin 'a' (no [plugin a] section)"},
    {BASE "[route r]\nlistener = in\ncluster = c\nlua.x = 1\n", "t.ini:8: [route r] lua.x: needs 'lua'"},
    {BASE "[route r]\nlistener = in\ncluster = c\nlua_budget = 50ms\n",
     "t.ini:8: [route r] lua_budget: needs 'lua'"},
    {BASE "[route r]\nlistener = in\ncluster = c\nlua = x.lua\nlua_budget = 0ms\n",
     "t.ini:9: [route r] lua_budget: duration '0ms' must be greater than 0"},
    {BASE "[route r]\nlistener = in\ncluster = c\nlua = x.lua\nlua.a-b = 1\n",
     "t.ini:9: [route r] lua.a-b: bad name 'lua.a-b' (expected lua.NAME with NAME of [A-Za-z0-9_])"},
    {BASE "[route r]\nlistener = in\ncluster = c\nlua = x.lua\nlua.a = 1\nlua.a = 2\n",
     "t.ini:10: [route r] lua.a: duplicate key"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nlua = x.lua\n",
     "t.ini:8: [route r] lua: a route with 'respond' runs no filter"},
    {BASE "[sidekick]\nlua_memory = 1k\n",
     "t.ini:6: [sidekick] lua_memory: size 1k out of range (1048576..1099511627776 bytes)"},
    {BASE "[cluster d]\ndiscovery = dns api.example:80\n",
     "t.ini:6: [cluster d] discovery: unknown plugin 'dns' (no [plugin dns] section)"},
    /* traffic keys that only make sense together, and bad values */
#define EP "[cluster d]\nendpoints = 127.0.0.1:1\n"
    {BASE EP "hash_key = header:x\n",
     "t.ini:7: [cluster d] hash_key: only lb = ring_hash hashes a key (set lb = ring_hash)"},
    {BASE EP "lb = ring_hash\nhash_key = ip\n",
     "t.ini:8: [cluster d] hash_key: bad value 'ip' (expected header:NAME, cookie:NAME or client_ip)"},
    {BASE EP "lb = ring_hash\nhash_key = header:a b\n", "t.ini:8: [cluster d] hash_key: bad header name 'a b'"},
    {BASE EP "lb = ring_hash\nhash_key = cookie:\n", "t.ini:8: [cluster d] hash_key: bad cookie name ''"},
    {BASE EP "ewma_decay = 5s\n", "t.ini:7: [cluster d] ewma_decay: only for lb = ewma"},
    {BASE EP "lb = ewma\newma_decay = 1ms\n",
     "t.ini:8: [cluster d] ewma_decay: duration '1ms' is too short (at least 10ms)"},
    {BASE EP "slow_start = 2h\n", "t.ini:7: [cluster d] slow_start: bad duration '2h'"},
    {BASE EP "slow_start = 61m\n", "t.ini:7: [cluster d] slow_start: duration '61m' is too long (at most 60m)"},
    {BASE EP "health_check = healthz\n", "t.ini:7: [cluster d] health_check: 'healthz' must start with '/'"},
    {BASE EP "health_check = /a#b\n",
     "t.ini:7: [cluster d] health_check: '/a#b': a path has no spaces, controls, '#' or bytes outside ASCII"},
    {BASE EP "health_interval = 5s\n",
     "t.ini:7: [cluster d] health_interval: needs 'health_check' (the path to check)"},
    {BASE EP "health_initial = unhealthy\n",
     "t.ini:7: [cluster d] health_initial: needs 'health_check' (the path to check)"},
    {BASE EP "health_check = /h\nhealth_interval = 5ms\n",
     "t.ini:8: [cluster d] health_interval: duration '5ms' is too short (at least 10ms)"},
    {BASE EP "health_check = /h\nhealthy_threshold = 0\n",
     "t.ini:8: [cluster d] healthy_threshold: 0 out of range (1..100)"},
    {BASE EP "health_check = /h\nunhealthy_threshold = 101\n",
     "t.ini:8: [cluster d] unhealthy_threshold: 101 out of range (1..100)"},
    {BASE EP "health_check = /h\nhealth_initial = maybe\n",
     "t.ini:8: [cluster d] health_initial: bad value 'maybe' (expected healthy or unhealthy)"},
    {BASE EP "outlier_failures = 0\noutlier_ejection = 30s\n",
     "t.ini:8: [cluster d] outlier_ejection: outlier detection is off (outlier_failures = 0)"},
    {BASE EP "outlier_failures = 0\nmax_ejection_percent = 30\n",
     "t.ini:8: [cluster d] max_ejection_percent: outlier detection is off (outlier_failures = 0)"},
    {BASE EP "outlier_ejection = 301s\n",
     "t.ini:7: [cluster d] outlier_ejection: duration '301s' is too long (at most 5m)"},
    {BASE EP "max_ejection_percent = 101\n",
     "t.ini:7: [cluster d] max_ejection_percent: 101 out of range (0..100)"},
    {BASE EP "panic_threshold = 50%\n", "t.ini:7: [cluster d] panic_threshold: bad number '50%'"},
#undef EP
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\ntls = client\n", "t.ini:7: [cluster d] tls: unknown tls section 'client' (no [tls client])"},

    /* [sidekick] */
    {BASE "[sidekick]\nworkers = 0\n",
     "t.ini:6: [sidekick] workers: bad value '0' (expected auto or 1..256)"},
    {BASE "[sidekick]\nworkers = 257\n",
     "t.ini:6: [sidekick] workers: bad value '257' (expected auto or 1..256)"},
    {BASE "[sidekick]\nworkers = -1\n",
     "t.ini:6: [sidekick] workers: bad value '-1' (expected auto or 1..256)"},
    {BASE "[sidekick]\nworkers = 4x\n",
     "t.ini:6: [sidekick] workers: bad value '4x' (expected auto or 1..256)"},
    {BASE "[sidekick]\nworkers = 99999999999999999999999\n",
     "t.ini:6: [sidekick] workers: bad value '99999999999999999999999' (expected auto or 1..256)"},
    {BASE "[sidekick]\nadmin = on\n", "t.ini:6: [sidekick] admin: bad address 'on' (expected "
                                      "ip:port, [ipv6]:port, localhost:port or off)"},
    {BASE "[sidekick]\nadmin = 127.0.0.1\n",
     "t.ini:6: [sidekick] admin: bad address '127.0.0.1' (expected ip:port, [ipv6]:port, "
     "localhost:port or off)"},
    {BASE "[sidekick]\nadmin = 127.0.0.1:9000\n[listener x]\naddress = 127.0.0.1:9000\n",
     "t.ini:6: [sidekick] admin: 127.0.0.1:9000 is already used by [listener x]"},
    {"[listener x]\naddress = 127.0.0.1:15000\n",
     "t.ini: admin: 127.0.0.1:15000 is already used by [listener x]"},
    {BASE "[sidekick]\nlog_level = verbose\n",
     "t.ini:6: [sidekick] log_level: bad value 'verbose' (expected error, warn, info or debug)"},
    {BASE "[sidekick]\ndrain_timeout = x\n", "t.ini:6: [sidekick] drain_timeout: bad duration 'x'"},
    {BASE "[sidekick]\ndrain_timeout = -5s\n", "t.ini:6: [sidekick] drain_timeout: bad duration '-5s'"},
    {BASE "[sidekick]\ndrain_timeout = 50000m\n",
     "t.ini:6: [sidekick] drain_timeout: duration '50000m' is too long (at most 43200m)"},

    /* [listener] */
    {BASE "[listener l]\nprotocol = http\n", "t.ini:5: [listener l] missing 'address'"},
    {BASE "[listener l]\n", "t.ini:5: [listener l] missing 'address'"},
    {BASE "[listener l]\naddress = 1.2.3:80\n",
     "t.ini:6: [listener l] address: bad address '1.2.3:80' (expected ip:port, [ipv6]:port or "
     "localhost:port)"},
    {BASE "[listener l]\naddress = example.com:80\n",
     "t.ini:6: [listener l] address: bad address 'example.com:80' (expected ip:port, [ipv6]:port "
     "or localhost:port)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nprotocol = udp\n",
     "t.ini:7: [listener l] protocol: bad value 'udp' (expected http or tcp)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nprotocol = tcp\n",
     "t.ini:5: [listener l] protocol tcp needs a 'cluster'"},
    {BASE "[listener l]\ncluster = c\naddress = 127.0.0.1:1\n",
     "t.ini:6: [listener l] cluster: only for protocol = tcp (http listeners use routes)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nprotocol = tcp\ncluster = nope\n",
     "t.ini:8: [listener l] cluster: unknown cluster 'nope'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_connections = 0\n",
     "t.ini:7: [listener l] max_connections: 0 out of range (1..10000000)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_connections = 1e3\n",
     "t.ini:7: [listener l] max_connections: bad number '1e3'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_connections = 18446744073709551616\n",
     "t.ini:7: [listener l] max_connections: bad number '18446744073709551616'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_connections = 4294967297\n",
     "t.ini:7: [listener l] max_connections: 4294967297 out of range (1..10000000)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmerge_slashes = yes\n",
     "t.ini:7: [listener l] merge_slashes: bad value 'yes' (expected on or off)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmerge_slashes =\n",
     "t.ini:7: [listener l] merge_slashes: missing value"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nescaped_slashes = Decode\n",
     "t.ini:7: [listener l] escaped_slashes: bad value 'Decode' (expected reject, keep or decode)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nescaped_slashes = off\n",
     "t.ini:7: [listener l] escaped_slashes: bad value 'off' (expected reject, keep or decode)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nheader_timeout = 0\n",
     "t.ini:7: [listener l] header_timeout: duration '0' must be greater than 0"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nheader_timeout = 10x\n",
     "t.ini:7: [listener l] header_timeout: bad duration '10x'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nidle_timeout = 1.5s\n",
     "t.ini:7: [listener l] idle_timeout: bad duration '1.5s'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_header_bytes = 512\n",
     "t.ini:7: [listener l] max_header_bytes: size 512 out of range (1024..1048576 bytes)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_header_bytes = 2m\n",
     "t.ini:7: [listener l] max_header_bytes: size 2m out of range (1024..1048576 bytes)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_header_bytes = 64q\n",
     "t.ini:7: [listener l] max_header_bytes: bad size '64q'"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_headers = 0\n",
     "t.ini:7: [listener l] max_headers: 0 out of range (1..10000)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_headers = 10001\n",
     "t.ini:7: [listener l] max_headers: 10001 out of range (1..10000)"},
    {BASE "[listener l]\naddress = 127.0.0.1:1\nmax_body_bytes = lots\n",
     "t.ini:7: [listener l] max_body_bytes: bad size 'lots'"},
    {BASE "[listener l]\naddress = 127.0.0.1:7\n[listener m]\naddress = 127.0.0.1:7\n",
     "t.ini:8: [listener m] address: 127.0.0.1:7 is already used by [listener l]"},
    {BASE "[listener l]\naddress = localhost:7\n[listener m]\n\naddress = 127.0.0.1:7\n",
     "t.ini:9: [listener m] address: 127.0.0.1:7 is already used by [listener l]"},

    /* [route] */
    {BASE "[route r]\nrespond = 200\n", "t.ini:5: [route r] missing 'listener'"},
    {BASE "[route r]\nlistener = in\n", "t.ini:5: [route r] needs 'cluster' or 'respond'"},
    {BASE "[route r]\nrespond = 200\nlistener = out\n",
     "t.ini:7: [route r] listener: unknown listener 'out'"},
    {BASE "[listener t]\naddress = 127.0.0.1:5\nprotocol = tcp\ncluster = c\n"
          "[route r]\nlistener = t\nrespond = 200\n",
     "t.ini:10: [route r] listener: [listener t] has protocol tcp; routes need an http listener"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nhost = a b\n",
     "t.ini:8: [route r] host: bad host 'a b' (expected a name or *.suffix)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nhost = *.\n",
     "t.ini:8: [route r] host: bad host '*.' (expected a name or *.suffix)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nhost = a.*.com\n",
     "t.ini:8: [route r] host: bad host 'a.*.com' (expected a name or *.suffix)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nhost = *\n",
     "t.ini:8: [route r] host: bad host '*' (expected a name or *.suffix)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nprefix = api\n",
     "t.ini:8: [route r] prefix: 'api' must start with '/'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\npath = x/y\n",
     "t.ini:8: [route r] path: 'x/y' must start with '/'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\npath = /a b\n",
     "t.ini:8: [route r] path: '/a b' contains whitespace"},
    {BASE "[route r]\nlistener = in\nprefix = /a\nrespond = 200\npath = /b\n",
     "t.ini:9: [route r] path: 'prefix' and 'path' are exclusive"},
    {BASE "[route r]\nlistener = in\npath = /b\nrespond = 200\nprefix = /a\n",
     "t.ini:9: [route r] prefix: 'prefix' and 'path' are exclusive"},
    {BASE "[route r]\nlistener = in\nrewrite_prefix = /x\npath = /b\ncluster = c\n",
     "t.ini:7: [route r] rewrite_prefix: needs 'prefix', not 'path'"},
    {BASE "[route r]\nlistener = in\ncluster = c\nrewrite_prefix = x\n",
     "t.ini:8: [route r] rewrite_prefix: 'x' must start with '/'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nmethod = GET,,POST\n",
     "t.ini:8: [route r] method: empty entry in list 'GET,,POST'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nmethod = GET,\n",
     "t.ini:8: [route r] method: empty entry in list 'GET,'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nmethod = G(T\n",
     "t.ini:8: [route r] method: bad method 'G(T'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nmethod = GET POST\n",
     "t.ini:8: [route r] method: bad method 'GET POST'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nmethod = GET, get\n",
     "t.ini:8: [route r] method: duplicate method 'GET'"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nheader = x y: 1\n",
     "t.ini:8: [route r] header: bad header name in 'x y: 1' (expected 'name' or 'name: value')"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nheader = : 1\n",
     "t.ini:8: [route r] header: bad header name in ': 1' (expected 'name' or 'name: value')"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nheader = x-a:\n",
     "t.ini:8: [route r] header: empty value in 'x-a:' (write just the name to require presence)"},
    {BASE "[route r]\nlistener = in\nrespond = 200\nheader = x-a\nheader = x(b\n",
     "t.ini:9: [route r] header: bad header name in 'x(b' (expected 'name' or 'name: value')"},
    {BASE "[route r]\nlistener = in\ncluster = nope\n", "t.ini:7: [route r] cluster: unknown cluster 'nope'"},
    {BASE "[route r]\nlistener = in\ncluster = c 50, nope 50\n",
     "t.ini:7: [route r] cluster: unknown cluster 'nope'"},
    {BASE "[route r]\nlistener = in\ncluster = c 90, d\n",
     "t.ini:7: [route r] cluster: missing weight for 'd' (write 'NAME WEIGHT, NAME WEIGHT')"},
    {BASE "[route r]\nlistener = in\ncluster = c 10001\n",
     "t.ini:7: [route r] cluster: bad weight '10001' for 'c' (expected 0..10000)"},
    {BASE "[route r]\nlistener = in\ncluster = c -1\n",
     "t.ini:7: [route r] cluster: bad weight '-1' for 'c' (expected 0..10000)"},
    {BASE "[route r]\nlistener = in\ncluster = c 1 2\n",
     "t.ini:7: [route r] cluster: bad weight '1 2' for 'c' (expected 0..10000)"},
    {BASE "[route r]\nlistener = in\ncluster = c 0\n", "t.ini:7: [route r] cluster: weights add up to 0"},
    {BASE "[route r]\nlistener = in\ncluster = c 1, c 2\n",
     "t.ini:7: [route r] cluster: cluster 'c' named twice"},
    {BASE "[route r]\nlistener = in\ncluster = c/d\n", "t.ini:7: [route r] cluster: bad cluster name 'c/d'"},
    {BASE "[route r]\nlistener = in\ncluster = c,\n", "t.ini:7: [route r] cluster: empty entry in list 'c,'"},
    {BASE "[route r]\nlistener = in\ncluster = c\nrespond = 200\n",
     "t.ini:8: [route r] respond: 'cluster' and 'respond' are exclusive"},
    {BASE "[route r]\nlistener = in\nrespond = 200\ncluster = c\n",
     "t.ini:8: [route r] cluster: 'cluster' and 'respond' are exclusive"},
    {BASE "[route r]\nlistener = in\ncluster = c\ntimeout = soon\n",
     "t.ini:8: [route r] timeout: bad duration 'soon'"},
    {BASE "[route r]\nlistener = in\ncluster = c\nretries = 11\n",
     "t.ini:8: [route r] retries: 11 out of range (0..10)"},
    {BASE "[route r]\nlistener = in\ncluster = c\nretries = two\n",
     "t.ini:8: [route r] retries: bad number 'two'"},
    {BASE "[route r]\nlistener = in\nrespond = 99 x\n",
     "t.ini:7: [route r] respond: bad value '99 x' (expected 'STATUS [BODY]', status 200..599)"},
    {BASE "[route r]\nlistener = in\nrespond = 600\n",
     "t.ini:7: [route r] respond: bad value '600' (expected 'STATUS [BODY]', status 200..599)"},
    {BASE "[route r]\nlistener = in\nrespond = 199\n",
     "t.ini:7: [route r] respond: bad value '199' (expected 'STATUS [BODY]', status 200..599)"},
    {BASE "[route r]\nlistener = in\nrespond = 200ok\n",
     "t.ini:7: [route r] respond: bad value '200ok' (expected 'STATUS [BODY]', status 200..599)"},
    {BASE "[route r]\nlistener = in\nrespond = 2000\n",
     "t.ini:7: [route r] respond: bad value '2000' (expected 'STATUS [BODY]', status 200..599)"},
    {BASE "[route r]\nlistener = in\nrespond = ok\n",
     "t.ini:7: [route r] respond: bad value 'ok' (expected 'STATUS [BODY]', status 200..599)"},
    {BASE "[route r]\nlistener = b@d\n", "t.ini:6: [route r] listener: bad name 'b@d'"},

    /* [cluster] */
    {BASE "[cluster d]\nlb = random\n", "t.ini:5: [cluster d] missing 'endpoints' (or 'discovery')"},
    {BASE "[cluster d]\n", "t.ini:5: [cluster d] missing 'endpoints' (or 'discovery')"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1,,127.0.0.1:2\n",
     "t.ini:6: [cluster d] endpoints: empty entry in list '127.0.0.1:1,,127.0.0.1:2'"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1, nope:2\n",
     "t.ini:6: [cluster d] endpoints: bad address 'nope:2' (expected ip:port, [ipv6]:port or "
     "localhost:port)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:0\n",
     "t.ini:6: [cluster d] endpoints: bad address '127.0.0.1:0': port 0"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1, localhost:1\n",
     "t.ini:6: [cluster d] endpoints: duplicate endpoint '127.0.0.1:1'"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nlb = fastest\n",
     "t.ini:7: [cluster d] lb: bad value 'fastest' (expected round_robin, least_request, random, "
     "ring_hash or ewma)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nconnect_timeout = 0ms\n",
     "t.ini:7: [cluster d] connect_timeout: duration '0ms' must be greater than 0"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nmax_connections = 0\n",
     "t.ini:7: [cluster d] max_connections: 0 out of range (1..10000000)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nmax_pending = 0\n",
     "t.ini:7: [cluster d] max_pending: 0 out of range (1..10000000)"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nmax_requests = x\n",
     "t.ini:7: [cluster d] max_requests: bad number 'x'"},
    /* traffic management (docs/traffic.md) */
    {BASE "[route r]\nlistener = in\ncluster = c\nretry_on = reset\n",
     "t.ini:8: [route r] retry_on: has no effect without 'retries' (at least 1)"},
    {BASE "[route r]\nlistener = in\ncluster = c\nretries = 1\nretry_on = reset, 500\n",
     "t.ini:9: [route r] retry_on: unknown condition '500' (expected connect-failure, reset, 502, 503, 504 "
     "or "
     "retriable-4xx)"},
    {BASE "[route r]\nlistener = in\ncluster = c\nper_try_timeout = 15s\n",
     "t.ini:8: [route r] per_try_timeout: 15000ms must be below the route's timeout (15000ms, the default), "
     "which covers every try"},
    {BASE "[route r]\nlistener = in\ncluster = c\nper_try_timeout = 2s\ntimeout = 1s\n",
     "t.ini:8: [route r] per_try_timeout: 2000ms must be below the route's timeout (1000ms), which covers "
     "every try"},
    {BASE "[route r]\nlistener = in\ncluster = c\nmirror = d 5%\n",
     "t.ini:8: [route r] mirror: unknown cluster 'd'"},
    {BASE "[route r]\nlistener = in\ncluster = c\nmirror = c 5% x\n",
     "t.ini:8: [route r] mirror: bad value 'c 5% x' (expected 'CLUSTER [PCT%]')"},
    {BASE "[route r]\nlistener = in\ncluster = c\nfault_abort = 503 0.00001%\n",
     "t.ini:8: [route r] fault_abort: bad share '0.00001%' (expected a percentage 0%..100%, e.g. 10% or "
     "0.5%)"},
    {BASE "[route r]\nlistener = in\nrespond = 200 ok\nfault_delay = 1s\n",
     "t.ini:8: [route r] fault_delay: a route with 'respond' sends nothing upstream"},
    {BASE "[cluster d]\nendpoints = 127.0.0.1:1\nretry_budget = 20\n",
     "t.ini:7: [cluster d] retry_budget: bad value '20' (expected a percentage 0%..100%, e.g. 20%, or off)"},
};

static int check_error(const char *text, size_t len, const char *want, int line)
{
    char *err = NULL;
    FILE *f = fopen("t.ini", "w");
    if (!f) return 0;
    fwrite(text, 1, len, f);
    fclose(f);
    sk_config *c = sk_config_load("t.ini", &err);
    checks++;
    if (c || !err || strcmp(err, want) != 0) {
        failures++;
        fprintf(stderr, "%s:%d: error case:\n  got  '%s'\n  want '%s'\n", __FILE__, line,
                c     ? "(loaded)"
                : err ? err
                      : "(null)",
                want);
        sk_config_unref(c);
        free(err);
        return 0;
    }
    free(err);
    return 1;
}

/* merge_slashes and escaped_slashes, every value, per listener. */
static void test_normalisation_keys(void)
{
    char *err = NULL;
    sk_config *c =
        load_text("[listener a]\naddress = 127.0.0.1:1\nmerge_slashes = on\nescaped_slashes = decode\n"
                  "[listener b]\naddress = 127.0.0.1:2\nmerge_slashes = off\nescaped_slashes = keep\n"
                  "[listener c]\naddress = 127.0.0.1:3\nescaped_slashes = reject\n",
                  &err);
    if (!c) fprintf(stderr, "load: %s\n", err ? err : "?");
    ASSERT(c && c->nlisteners == 3);
    CHECK(c->listeners[0]->merge_slashes && c->listeners[0]->escaped_slashes == SK_ESCAPED_SLASHES_DECODE);
    CHECK(!c->listeners[1]->merge_slashes && c->listeners[1]->escaped_slashes == SK_ESCAPED_SLASHES_KEEP);
    CHECK(!c->listeners[2]->merge_slashes && c->listeners[2]->escaped_slashes == SK_ESCAPED_SLASHES_REJECT);
    sk_config_unref(c);
}

/* The traffic management keys of routes and clusters, their defaults and shares. */
static void test_traffic_keys(void)
{
    char *err = NULL;
    sk_config *c =
        load_text("[listener in]\naddress = 127.0.0.1:0\n"
                  "[route r]\nlistener = in\ncluster = c\ntimeout = 2s\nretries = 2\n"
                  "retry_on = 503, retriable-4xx\nper_try_timeout = 1999ms\nretry_backoff = 0\n"
                  "mirror = m 0.0001%\nfault_delay = 50ms 12.5%\nfault_abort = 418\nfault_headers = on\n"
                  "[route d]\nlistener = in\ncluster = c\n"
                  "[cluster c]\nendpoints = 127.0.0.1:1\nmax_retries = 0\nretry_budget = 100%\n"
                  "retry_budget_min = 0\n"
                  "[cluster m]\nendpoints = 127.0.0.1:2\nretry_budget = off\n",
                  &err);
    if (!c) fprintf(stderr, "load: %s\n", err ? err : "?");
    ASSERT(c && c->nroutes == 2 && c->nclusters == 2);
    sk_route *r = c->routes[0], *d = c->routes[1];
    CHECK(r->retry_on == (SK_RETRY_BIT(SK_RETRY_503) | SK_RETRY_BIT(SK_RETRY_409)));
    CHECK(r->per_try_timeout_ms == 1999 && r->retry_backoff_ms == 0);
    CHECK(r->mirror == c->clusters[1] && r->mirror_ppm == 1);
    CHECK(r->fault_delay_ms == 50 && r->fault_delay_ppm == 125000);
    CHECK(r->fault_abort_status == 418 && r->fault_abort_ppm == SK_PPM && r->fault_headers);
    CHECK(d->retry_on == SK_RETRY_ON_DEFAULT && d->per_try_timeout_ms == 0 && d->retry_backoff_ms == 25);
    CHECK(!d->mirror && !d->fault_delay_ms && !d->fault_abort_status && !d->fault_headers);
    CHECK(c->clusters[0]->max_retries == 0 && c->clusters[0]->retry_budget_ppm == SK_PPM &&
          c->clusters[0]->retry_budget_min == 0);
    CHECK(c->clusters[1]->max_retries == 1024 && c->clusters[1]->retry_budget_ppm == SK_RETRY_BUDGET_OFF &&
          c->clusters[1]->retry_budget_min == 10);
    sk_config_unref(c);
    /* the default cluster budget: 20% + 10/s */
    c = load_text("[listener in]\naddress = 127.0.0.1:0\n[cluster c]\nendpoints = 127.0.0.1:1\n", &err);
    ASSERT(c && c->nclusters == 1);
    CHECK(c->clusters[0]->retry_budget_ppm == 200000 && c->clusters[0]->retry_budget_min == 10);
    sk_config_unref(c);
    /* without a route timeout, any per-try limit */
    c = load_text("[listener in]\naddress = 127.0.0.1:0\n[route r]\nlistener = in\ncluster = c\ntimeout = 0\n"
                  "per_try_timeout = 1m\n[cluster c]\nendpoints = 127.0.0.1:1\n",
                  &err);
    CHECK(c && c->routes[0]->per_try_timeout_ms == 60000);
    sk_config_unref(c);
}

/* peer_identity patterns: exact IDs and "prefix/" + star. */
static void test_identity_patterns(void)
{
    char *ids[] = {"spiffe://td/ns/shop/sa/frontend", "spiffe://td/ns/ops/*"};
    CHECK(sk_spiffe_allowed(ids, 0, NULL));
    CHECK(sk_spiffe_allowed(ids, 2, "spiffe://td/ns/shop/sa/frontend"));
    CHECK(!sk_spiffe_allowed(ids, 2, "spiffe://td/ns/shop/sa/frontend2"));
    CHECK(!sk_spiffe_allowed(ids, 2, "spiffe://td/ns/shop/sa/fronten"));
    CHECK(sk_spiffe_allowed(ids, 2, "spiffe://td/ns/ops/sa/x"));
    CHECK(sk_spiffe_allowed(ids, 2, "spiffe://td/ns/ops/a"));
    CHECK(!sk_spiffe_allowed(ids, 2, "spiffe://td/ns/ops/"));
    CHECK(!sk_spiffe_allowed(ids, 2, "spiffe://td/ns/ops"));
    CHECK(!sk_spiffe_allowed(ids, 2, "spiffe://td/ns/opsx/a"));
    CHECK(!sk_spiffe_allowed(ids, 2, "spiffe://other/ns/ops/a"));
    CHECK(!sk_spiffe_allowed(ids, 2, NULL));
}

static void test_errors(void)
{
    for (size_t i = 0; i < SK_ARRAY_LEN(error_cases); i++) {
        if (!error_cases[i].err) continue;
        check_error(error_cases[i].text, strlen(error_cases[i].text), error_cases[i].err, __LINE__);
    }

    /* A NUL byte in the file. */
    static const char nul[] = BASE "[sidekick]\nworkers = 2\0x\n";
    check_error(nul, sizeof(nul) - 1, "t.ini:6: NUL byte in line", __LINE__);

    /* A line longer than inih's line buffer (200 in Debian's build). */
    char longline[600];
    snprintf(longline, sizeof(longline), BASE "[cluster d]\nendpoints = 127.0.0.1:1%0300d\n", 0);
    check_error(longline, strlen(longline), "t.ini:6: [cluster d] line too long (more than 198 characters)",
                __LINE__);

    /* Files that cannot be read. */
    char *err = NULL;
    CHECK(sk_config_load("nope.ini", &err) == NULL);
    CHECK_STR(err, "nope.ini: cannot open: No such file or directory");
    free(err);
    err = NULL;
    CHECK(sk_config_load("sub/nope.ini", &err) == NULL);
    CHECK_STR(err, "sub/nope.ini: cannot open: No such file or directory");
    free(err);
    err = NULL;
    CHECK(sk_config_load(".", &err) == NULL);
    CHECK_STR(err, ".: read error: Is a directory");
    free(err);
    /* err may be NULL: the message is dropped, nothing leaks. */
    CHECK(load_text("[bogus]\n", NULL) == NULL);
}

/* Errors name the file as the caller named it; relative paths in the file are
 * relative to the file's directory, not to the working directory. */
static void test_subdir(void)
{
    char *err = NULL, want[8192];
    if (mkdir("conf", 0755) != 0 && errno != EEXIST) {
        perror("mkdir");
        ASSERT(0);
    }
    write_file("conf/x.ini", "[listener in]\naddress = 127.0.0.1:0\n[route api]\nlistener = in\n"
                             "cluster = c\ntimeout = x\n");
    CHECK(sk_config_load("conf/x.ini", &err) == NULL);
    CHECK_STR(err, "conf/x.ini:6: [route api] timeout: bad duration 'x'");
    free(err);

    write_file("conf/y.ini", "[sidekick]\nplugin_dir = ../p\nlua_dir = ./l/./m/\naccess_log = a.log\n"
                             "[listener in]\naddress = 127.0.0.1:0\n");
    sk_config *c = sk_config_load("./conf/../conf/y.ini", &err);
    ASSERT(c != NULL);
    snprintf(want, sizeof(want), "%s/conf/y.ini", tmpdir);
    CHECK_STR(c->file, want);
    snprintf(want, sizeof(want), "%s/p", tmpdir);
    CHECK_STR(c->plugin_dir, want);
    snprintf(want, sizeof(want), "%s/conf/l/m", tmpdir);
    CHECK_STR(c->lua_dir, want);
    snprintf(want, sizeof(want), "%s/conf/a.log", tmpdir);
    CHECK_STR(c->access_log, want);
    sk_config_unref(c);
}

/* Indented keys are ordinary keys; the first error in file order wins even when
 * inih's syntax error and one of ours are both in the file. */
static void test_layout(void)
{
    char *err = NULL;
    sk_config *c = load_text("  [listener in]\n\taddress = 127.0.0.1:0\r\n"
                             "[cluster d]\nendpoints = 127.0.0.1:1\n    lb = random ; comment\n",
                             &err);
    if (!c) fprintf(stderr, "refused: %s\n", err);
    ASSERT(c != NULL);
    CHECK(c->clusters[0]->lb == SK_LB_RANDOM);
    sk_config_unref(c);

    /* Long comments, whole-line or inline, do not count against the line limit. */
    char text[4096];
    snprintf(text, sizeof(text),
             "; %0400d\n# %0400d\n[listener in] ; %0400d\naddress = 127.0.0.1:0 ; %0400d\n"
             "[route r]\nlistener = in\nrespond = 200 a;b c ; %0400d\n",
             0, 0, 0, 0, 0);
    c = load_text(text, &err);
    if (!c) fprintf(stderr, "refused: %s\n", err);
    ASSERT(c != NULL);
    CHECK_STR(c->routes[0]->respond_body, "a;b c");
    sk_config_unref(c);

    check_error(BASE "[cluster d]\nendpoints = 127.0.0.1:1,\n    127.0.0.2\n",
                strlen(BASE "[cluster d]\nendpoints = 127.0.0.1:1,\n    127.0.0.2\n"),
                "t.ini:6: [cluster d] endpoints: empty entry in list '127.0.0.1:1,'", __LINE__);
    check_error(BASE "[cluster d]\nendpoints = 127.0.0.1:1\n    127.0.0.2\n",
                strlen(BASE "[cluster d]\nendpoints = 127.0.0.1:1\n    127.0.0.2\n"),
                "t.ini:7: [cluster d] expected 'key = value'", __LINE__);
    check_error(BASE "[cluster d]\nendpoints = 127.0.0.1:1\nbad line\n[route r]\nlb = x\n",
                strlen(BASE "[cluster d]\nendpoints = 127.0.0.1:1\nbad line\n[route r]\nlb = x\n"),
                "t.ini:7: [cluster d] expected 'key = value'", __LINE__);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/sk-unit-config-XXXXXX");
    if (!mkdtemp(tmpdir) || chdir(tmpdir) != 0) {
        perror("mkdtemp");
        return 2;
    }
    char *real = realpath(tmpdir, NULL);
    if (real) {
        snprintf(tmpdir, sizeof(tmpdir), "%s", real);
        free(real);
    }

    test_durations();
    test_sizes();
    test_addresses();
    test_full();
    test_defaults();
    test_normalisation_keys();
    test_identity_patterns();
    test_traffic_keys();
    test_errors();
    test_subdir();
    test_layout();

    unlink("t.ini");
    unlink("conf/x.ini");
    unlink("conf/y.ini");
    rmdir("conf");
    if (chdir("/") == 0) rmdir(tmpdir);

    printf("test_config: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
