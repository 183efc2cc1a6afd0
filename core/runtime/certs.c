/*
 * certs.c — the certificates of the running generation: their files
 * watched with inotify so that a rotation takes effect without a reload,
 * and what the admin endpoint shows of them (/config, /metrics).
 *
 * Directories are watched, not files: writers replace certificates by
 * renaming a new file over the old one, and Kubernetes swaps a `..data`
 * symlink to a new directory; either way the file's directory sees an
 * event. Events are coalesced for SETTLE_S, then every [tls] section
 * re-reads its files if they changed (sk_tls_slot_reload): new handshakes
 * use the new contexts, open connections keep theirs, a refused
 * replacement (half-written, a key that does not match, expired) leaves
 * the old one in force, logged and counted.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "certs.h"
#include "tls.h"

#define SETTLE_S  0.2 /* events within this are one change (a writer's rename and chmod, a ..data swap) */
#define MAX_WATCH 64  /* directories watched at most */

static struct {
    struct ev_loop *loop;
    int fd;              /* inotify instance, -1 when off */
    ev_io io;            /* its readability */
    ev_timer settle;     /* runs the re-read once events stop */
    sk_config *cfg;      /* the generation whose sections are watched (a reference) */
    int wds[MAX_WATCH];  /* watch descriptors */
    size_t nwds;
} w = {.fd = -1};

/* Re-reads every section whose files changed. */
static void reread(sk_config *cfg)
{
    for (size_t i = 0; i < cfg->ntls; i++) {
        sk_tls *t = cfg->tls[i];
        if (!t->state) continue;
        char err[512];
        int rc = sk_tls_slot_reload(t->state, err, sizeof(err));
        if (rc == 0) continue;
        if (rc < 0) {
            sk_error("tls %s: keeping the certificate in force: %s", t->name, err);
            continue;
        }
        sk_tls_slot_info info;
        sk_tls_slot_info_get(t->state, &info);
        char when[32] = "?";
        struct tm tm;
        if (info.cert.not_after && gmtime_r(&info.cert.not_after, &tm))
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        sk_info("tls %s: new certificate in force (serial %s, expires %s)", t->name,
                info.cert.serial[0] ? info.cert.serial : "-", when);
    }
}

static void on_settle(struct ev_loop *loop, ev_timer *t, int revents)
{
    if (w.cfg) reread(w.cfg);
}

static void on_inotify(struct ev_loop *loop, ev_io *io, int revents)
{
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool any = false;
    for (;;) {
        ssize_t n = read(w.fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        any = true; /* what changed does not matter: every section compares its own files */
    }
    if (any) {
        w.settle.repeat = SETTLE_S;
        ev_timer_again(loop, &w.settle);
    }
}

/* The directory of path into dir (PATH_MAX). */
static void dir_of(const char *path, char *dir)
{
    snprintf(dir, PATH_MAX, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0';
    else if (slash)
        *slash = '\0';
}

static void unwatch_all(void)
{
    for (size_t i = 0; i < w.nwds; i++) inotify_rm_watch(w.fd, w.wds[i]);
    w.nwds = 0;
}

/* Watches the directories of cfg's certificate files (see certs.h). */
void sk_certs_watch(struct ev_loop *loop, sk_config *cfg)
{
    if (w.fd < 0 && cfg->ntls) {
        w.loop = loop;
        w.fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (w.fd < 0) {
            sk_warn("tls: cannot watch certificate files (%s): they are re-read on reload only", strerror(errno));
            return;
        }
        ev_io_init(&w.io, on_inotify, w.fd, EV_READ);
        ev_io_start(loop, &w.io);
        ev_init(&w.settle, on_settle);
    }
    if (w.fd < 0) return;
    unwatch_all();
    sk_config_ref(cfg);
    sk_config_unref(w.cfg);
    w.cfg = cfg;
    for (size_t i = 0; i < cfg->ntls; i++) {
        if (!cfg->tls[i]->state) continue;
        const char *files[3];
        sk_tls_slot_files(cfg->tls[i]->state, files);
        for (int f = 0; f < 3; f++) {
            if (!files[f]) continue;
            char dir[PATH_MAX];
            dir_of(files[f], dir);
            int wd = inotify_add_watch(w.fd, dir,
                                       IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB |
                                           IN_MOVE_SELF | IN_DELETE_SELF);
            if (wd < 0) {
                sk_warn("tls %s: cannot watch %s (%s): re-read on reload only", cfg->tls[i]->name, dir,
                        strerror(errno));
                continue;
            }
            bool known = false; /* the same directory returns the same descriptor */
            for (size_t j = 0; j < w.nwds; j++) known |= w.wds[j] == wd;
            if (!known && w.nwds < MAX_WATCH) w.wds[w.nwds++] = wd;
        }
    }
}

/* Stops watching (see certs.h). */
void sk_certs_stop(void)
{
    if (w.fd >= 0) {
        ev_io_stop(w.loop, &w.io);
        ev_timer_stop(w.loop, &w.settle);
        close(w.fd);
        w.fd = -1;
        w.nwds = 0;
    }
    sk_config_unref(w.cfg);
    w.cfg = NULL;
}

/* ---- what the admin endpoint shows ---- */

static void jset(json_t *o, const char *k, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(o, k, v) < 0) *ok = false;
}

static json_t *str_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

static json_t *iso_time(time_t t)
{
    char when[32];
    struct tm tm;
    if (!t || !gmtime_r(&t, &tm)) return json_null();
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return json_string(when);
}

/* The [tls] sections as JSON (see certs.h). */
json_t *sk_certs_json(const sk_config *cfg, bool *ok)
{
    static const char *const verify[] = {"none", "optional", "required"};
    json_t *a = json_array();
    if (!a) {
        *ok = false;
        return NULL;
    }
    time_t now = time(NULL);
    for (size_t i = 0; i < cfg->ntls; i++) {
        const sk_tls *t = cfg->tls[i];
        json_t *o = json_object(), *ids = json_array();
        if (!o || !ids || json_array_append_new(a, o) < 0) {
            json_decref(o);
            json_decref(ids);
            *ok = false;
            break;
        }
        jset(o, "name", json_string(t->name), ok);
        jset(o, "cert", str_or_null(t->cert), ok);
        jset(o, "key", str_or_null(t->key), ok);
        jset(o, "ca", str_or_null(t->ca), ok);
        if (t->server_side) jset(o, "verify", json_string(verify[t->verify_server]), ok);
        if (t->client_side) jset(o, "verify_upstream", json_string(verify[t->verify_client]), ok);
        for (size_t j = 0; j < t->npeer_ids; j++) json_array_append_new(ids, json_string(t->peer_ids[j]));
        jset(o, "peer_identity", ids, ok);
        jset(o, "sni", str_or_null(t->sni), ok);
        jset(o, "min_version", json_string(t->min_version == 13 ? "1.3" : "1.2"), ok);
        jset(o, "ciphers", str_or_null(t->ciphers), ok);
        jset(o, "session_tickets", json_boolean(t->session_tickets), ok);
        if (!t->state) continue;
        sk_tls_slot_info info;
        sk_tls_slot_info_get(t->state, &info);
        jset(o, "subject", str_or_null(info.cert.subject), ok);
        jset(o, "spiffe_id", str_or_null(info.cert.spiffe_id), ok);
        jset(o, "serial", str_or_null(info.cert.serial), ok);
        jset(o, "not_before", iso_time(info.cert.not_before), ok);
        jset(o, "not_after", iso_time(info.cert.not_after), ok);
        jset(o, "expires_in_seconds",
             info.cert.not_after ? json_integer((json_int_t)(info.cert.not_after - now)) : json_null(), ok);
        jset(o, "loaded_at", iso_time(info.loaded_at), ok);
        jset(o, "reloads", json_integer((json_int_t)info.reloads_ok), ok);
        jset(o, "reload_failures", json_integer((json_int_t)info.reloads_failed), ok);
        jset(o, "last_error", str_or_null(info.last_error), ok);
    }
    return a;
}

/* The [tls] sections' gauges and counters (see certs.h). */
int sk_certs_render_prometheus(sk_buf *out, const sk_config *cfg)
{
    if (!cfg->ntls) return 0;
    time_t now = time(NULL);
    int rc = sk_buf_printf(out, "# HELP sidekick_tls_certificate_expiry_seconds Seconds until the certificate of "
                                "a [tls] section expires (negative: expired).\n"
                                "# TYPE sidekick_tls_certificate_expiry_seconds gauge\n");
    for (size_t i = 0; rc == 0 && i < cfg->ntls; i++) {
        sk_tls_slot_info info;
        if (!cfg->tls[i]->state) continue;
        sk_tls_slot_info_get(cfg->tls[i]->state, &info);
        if (info.cert.not_after)
            rc = sk_buf_printf(out, "sidekick_tls_certificate_expiry_seconds{tls=\"%s\"} %" PRId64 "\n",
                               cfg->tls[i]->name, (int64_t)(info.cert.not_after - now));
    }
    if (rc == 0)
        rc = sk_buf_printf(out, "# HELP sidekick_tls_reloads_total Certificate rotations of a [tls] section seen "
                                "in its files: taken (ok) or refused (failed, the old one stays).\n"
                                "# TYPE sidekick_tls_reloads_total counter\n");
    for (size_t i = 0; rc == 0 && i < cfg->ntls; i++) {
        sk_tls_slot_info info;
        if (!cfg->tls[i]->state) continue;
        sk_tls_slot_info_get(cfg->tls[i]->state, &info);
        rc = sk_buf_printf(out,
                           "sidekick_tls_reloads_total{tls=\"%s\",result=\"ok\"} %" PRIu64 "\n"
                           "sidekick_tls_reloads_total{tls=\"%s\",result=\"failed\"} %" PRIu64 "\n",
                           cfg->tls[i]->name, info.reloads_ok, cfg->tls[i]->name, info.reloads_failed);
    }
    return rc;
}
