/*
 * file.c — source = file of discovery.so: a cluster's endpoints from a file
 * of "ADDRESS:PORT [WEIGHT]" lines, watched with inotify.
 *
 *     [plugin files]
 *     source = file                  (no other key)
 *     [cluster api]
 *     discovery = files /etc/sidekick/api.endpoints
 *
 * The file format is parsed by dsc_parse_endpoints (parse.c): numeric IPv4
 * or [IPv6] addresses only, host names are refused with the line number (a
 * file source never resolves names). The path must be absolute: the host
 * does not tell a plugin the directory of its config file.
 *
 * Watching: one inotify fd per instance, watched with watch_fd on the main
 * loop. Each cluster watches the directory of its path (so that a file that
 * does not exist yet, a rename-over and a symlink swap are all seen) and,
 * when the path resolves elsewhere through symlinks, the directory of the
 * resolved file too (in-place edits of the target). The resolution is done
 * again at every check, so a Kubernetes `..data` swap moves the second
 * watch to the new target directory. Events only concern a cluster when
 * they name its file, a `..`-prefixed entry (Kubernetes' ..data and
 * ..TIMESTAMP dirs), the first component of its symlink's target, or the
 * watched directory itself.
 *
 * Applying: events are debounced per cluster: 50 ms after a close, rename,
 * delete, link or attribute change; 1 s after a write or the creation of a
 * regular file that was not closed yet (a writer still at work: its close
 * shortens the wait to 50 ms). After such a wait without a close, an empty
 * file or one whose last line has no newline yet is taken for unfinished
 * and left for the next event. Then the file is read whole (at most
 * FILE_MAX bytes, a regular file only) and applied only when every line
 * parses; a bad line is logged with file:line and the last good set stays
 * (dsc_stale). Identical content is not parsed again. A missing file keeps
 * the last good set (none at first: the cluster waits, logged once); a
 * missing directory is retried every second. The inotify queue overflowing
 * re-checks every cluster.
 */
#include "discovery.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/inotify.h>
#include <sys/stat.h>

#define FILE_MAX     (1u << 20) /* bytes of an endpoint file */
#define SETTLE_MS    50         /* after a close, rename, delete... */
#define WRITING_MS   1000       /* after a write with the file still open */
#define DIR_RETRY_MS 1000       /* a directory that does not exist yet */
#define DIR_EVENTS                                                                                  \
    (IN_CREATE | IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ATTRIB | \
     IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

/* One directory watch, shared by the clusters whose files are in it. */
typedef struct fdir {
    struct fdir *next;
    int wd;   /* inotify watch descriptor */
    int refs; /* cluster watches on it */
} fdir;

/* The instance: one inotify fd for all its clusters. */
typedef struct fsrc {
    int ifd;
    sk_watch *w;
    fdir *dirs;
} fsrc;

enum fstate { FS_NONE = 0, FS_OK, FS_MISSING, FS_BAD };

/* A cluster's file. */
typedef struct fcl {
    char *path;      /* absolute */
    char *dir;       /* dirname(path) */
    char *base;      /* basename(path) */
    int dir_wd;      /* watch of dir, -1 while it is not watched */
    int tgt_wd;      /* watch of the resolved file's dir when elsewhere, else -1 */
    char *tgt_dir;   /* that directory */
    char *tgt_base;  /* basename of the resolved file */
    char *link_head; /* first component of path's symlink text (relative), or NULL */
    sk_timer *timer; /* debounce, or the directory retry */
    int writing;     /* the pending check follows a write not closed yet */
    int state;       /* enum fstate of the last check */
    uint64_t hash;   /* of the last content read (state FS_OK / FS_BAD) */
    size_t len;
} fcl;

static fsrc *src_of(dsc_inst *in)
{
    return in->priv;
}

static uint64_t fnv(const char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h;
}

/* ---- shared directory watches ---- */

/* Watches dir (or takes one more reference on its watch). The wd, or -1
 * with errno (ENOENT: no such directory yet). */
static int dir_hold(fsrc *s, const char *dir)
{
    int wd = inotify_add_watch(s->ifd, dir, DIR_EVENTS);
    if (wd < 0) return -1;
    for (fdir *d = s->dirs; d; d = d->next)
        if (d->wd == wd) {
            d->refs++;
            return wd;
        }
    fdir *d = calloc(1, sizeof *d);
    if (!d) {
        inotify_rm_watch(s->ifd, wd);
        errno = ENOMEM;
        return -1;
    }
    d->wd = wd;
    d->refs = 1;
    d->next = s->dirs;
    s->dirs = d;
    return wd;
}

/* Drops one reference on watch wd; the last one removes the watch. */
static void dir_release(fsrc *s, int wd)
{
    if (wd < 0) return;
    for (fdir **p = &s->dirs; *p; p = &(*p)->next)
        if ((*p)->wd == wd) {
            if (--(*p)->refs == 0) {
                fdir *d = *p;
                *p = d->next;
                inotify_rm_watch(s->ifd, wd);
                free(d);
            }
            return;
        }
}

/* The kernel dropped watch wd (its directory is gone): forget it, and the
 * clusters that used it. */
static void dir_gone(dsc_inst *in, int wd)
{
    fsrc *s = src_of(in);
    for (fdir **p = &s->dirs; *p; p = &(*p)->next)
        if ((*p)->wd == wd) {
            fdir *d = *p;
            *p = d->next;
            free(d);
            break;
        }
    for (dsc_cluster *c = in->clusters; c; c = c->next) {
        fcl *f = c->priv;
        if (!f) continue;
        if (f->dir_wd == wd) f->dir_wd = -1;
        if (f->tgt_wd == wd) f->tgt_wd = -1;
    }
}

/* ---- checking one cluster's file ---- */

static void schedule(dsc_cluster *cl, uint64_t ms, int writing);

/* Where path leads through symlinks now: moves the target directory watch
 * there (none when it is dir itself or unresolvable), and notes the first
 * component of path's own symlink text. */
static void resolve(dsc_cluster *cl)
{
    fcl *f = cl->priv;
    fsrc *s = src_of(cl->inst);
    free(f->link_head);
    f->link_head = NULL;
    char link[PATH_MAX];
    ssize_t n = readlink(f->path, link, sizeof link - 1);
    if (n > 0) {
        link[n] = 0;
        if (link[0] != '/') {
            char *slash = strchr(link, '/');
            if (slash) *slash = 0;
            f->link_head = strdup(link);
        }
    }
    char real[PATH_MAX];
    char *tdir = NULL, *tbase = NULL;
    if (realpath(f->path, real)) {
        char *slash = strrchr(real, '/');
        if (slash) {
            tbase = strdup(slash + 1);
            *slash = 0;
            tdir = strdup(real[0] ? real : "/");
        }
    }
    if (tdir && strcmp(tdir, f->dir) == 0 && tbase && strcmp(tbase, f->base) == 0) {
        free(tdir); /* not a symlink: nothing else to watch */
        free(tbase);
        tdir = tbase = NULL;
    }
    if (tdir && f->tgt_dir && strcmp(tdir, f->tgt_dir) == 0 && f->tgt_wd >= 0) {
        free(tdir); /* the same as before */
        free(f->tgt_base);
        f->tgt_base = tbase;
        return;
    }
    dir_release(s, f->tgt_wd);
    f->tgt_wd = -1;
    free(f->tgt_dir);
    free(f->tgt_base);
    f->tgt_dir = tdir;
    f->tgt_base = tbase;
    if (tdir && (f->tgt_wd = dir_hold(s, tdir)) < 0)
        dsc_log(cl->inst, SK_LOG_WARN, "cluster %s: cannot watch %s (%s): edits in place there are not seen",
                cl->name, tdir, strerror(errno));
}

/* Reads the file and applies it when it parses whole. */
static void check(dsc_cluster *cl)
{
    fcl *f = cl->priv;
    fsrc *s = src_of(cl->inst);
    if (f->dir_wd < 0 && (f->dir_wd = dir_hold(s, f->dir)) < 0) {
        int e = errno;
        if (f->state != FS_MISSING)
            dsc_stale(cl, "file: cannot watch directory %s (%s), retrying every %ds", f->dir, strerror(e),
                      DIR_RETRY_MS / 1000);
        f->state = FS_MISSING;
        schedule(cl, DIR_RETRY_MS, 0);
        return;
    }
    resolve(cl);
    int fd = open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (f->state != FS_MISSING) {
            if (e == ENOENT && !cl->published)
                dsc_stale(cl, "file: %s does not exist yet, waiting for it", f->path);
            else
                dsc_stale(cl, "file: cannot open %s (%s)", f->path, strerror(e));
        }
        f->state = FS_MISSING;
        return;
    }
    struct stat st;
    char *buf = NULL;
    const char *problem = NULL;
    size_t len = 0;
    if (fstat(fd, &st) < 0)
        problem = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        problem = "not a regular file";
    else if ((uint64_t)st.st_size > FILE_MAX)
        problem = "larger than 1 MiB";
    else if (!(buf = malloc((size_t)st.st_size + 1)))
        problem = "out of memory";
    if (!problem) {
        /* read what is there, up to one byte past the size seen (the file
         * may be growing; the next event reads it again) */
        size_t cap = (size_t)st.st_size + 1;
        while (len < cap) {
            ssize_t r = read(fd, buf + len, cap - len);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                problem = strerror(errno);
                break;
            }
            if (r == 0) break;
            len += (size_t)r;
        }
    }
    close(fd);
    if (!problem && len > (size_t)st.st_size) {
        free(buf); /* still growing: a writer at work, its next event reads it again */
        schedule(cl, WRITING_MS, 1);
        return;
    }
    if (problem) {
        free(buf);
        dsc_stale(cl, "file: %s: %s", f->path, problem);
        f->state = FS_BAD;
        f->len = 0;
        return;
    }
    uint64_t h = fnv(buf ? buf : "", len);
    if ((f->state == FS_OK || f->state == FS_BAD) && h == f->hash && len == f->len) {
        free(buf); /* unchanged since the last check */
        return;
    }
    if (f->writing && (len == 0 || buf[len - 1] != '\n')) {
        /* a writer may still be at work (no close seen): an empty file or a
         * last line without its newline is not taken for the whole file */
        dsc_log(cl->inst, SK_LOG_INFO, "cluster %s: %s looks incomplete (%zu bytes), waiting for its close",
                cl->name, f->path, len);
        free(buf);
        return;
    }
    f->hash = h;
    f->len = len;
    dsc_eplist l;
    int line;
    char err[200];
    if (dsc_parse_endpoints(buf ? buf : "", len, &l, &line, err, sizeof err) < 0) {
        dsc_stale(cl, "file: %s:%d: %s", f->path, line, err);
        f->state = FS_BAD;
    } else {
        int rc = dsc_publish(cl, l.eps, l.n);
        if (rc >= 0) {
            if (rc > 0)
                dsc_log(cl->inst, SK_LOG_INFO, "cluster %s: %zu endpoint(s) from %s", cl->name, cl->neps,
                        f->path);
            f->state = FS_OK;
        } else {
            f->state = FS_BAD;
        }
        dsc_eplist_free(&l);
    }
    free(buf);
}

static void on_timer(void *arg)
{
    dsc_cluster *cl = arg;
    fcl *f = cl->priv;
    f->timer = NULL; /* fired: freed by the host */
    check(cl);
}

/* (Re)starts cl's timer: the check runs ms from now (the last event
 * decides); `writing`: after a write that was not closed yet. */
static void schedule(dsc_cluster *cl, uint64_t ms, int writing)
{
    fcl *f = cl->priv;
    const sk_host_api *h = cl->inst->host;
    if (f->timer) h->timer_stop(f->timer);
    f->writing = writing;
    f->timer = h->timer_start(h->main_loop(), ms, on_timer, cl);
    if (!f->timer) dsc_log(cl->inst, SK_LOG_ERROR, "cluster %s: cannot start a timer", cl->name);
}

/* Whether an event on watch wd about entry `name` (NULL: the directory
 * itself) concerns cl. */
static int concerns(const fcl *f, int wd, const char *name)
{
    if (wd == f->dir_wd) {
        if (!name || strcmp(name, f->base) == 0 || strncmp(name, "..", 2) == 0) return 1;
        return f->link_head && strcmp(name, f->link_head) == 0;
    }
    if (wd == f->tgt_wd) return !name || (f->tgt_base && strcmp(name, f->tgt_base) == 0);
    return 0;
}

/* The delay an event asks for: long while a writer may still be at work. */
static uint64_t delay_of(const struct inotify_event *ev, const fcl *f)
{
    if (ev->mask & IN_MODIFY) return WRITING_MS;
    if ((ev->mask & IN_CREATE) && ev->len && !(ev->mask & IN_ISDIR)) {
        /* a new regular file is usually written next: wait for its close */
        char p[PATH_MAX];
        struct stat st;
        const char *dir = ev->wd == f->dir_wd ? f->dir : f->tgt_dir;
        if (dir && snprintf(p, sizeof p, "%s/%s", dir, ev->name) < (int)sizeof p && lstat(p, &st) == 0 &&
            S_ISREG(st.st_mode))
            return WRITING_MS;
    }
    return SETTLE_MS;
}

static void on_inotify(void *arg, int fd, int events)
{
    dsc_inst *in = arg;
    (void)events;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (int round = 0; round < 64; round++) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return; /* EAGAIN: drained */
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) {
                dsc_log(in, SK_LOG_WARN, "inotify queue overflow: checking every file again");
                for (dsc_cluster *c = in->clusters; c; c = c->next)
                    if (c->priv) {
                        ((fcl *)c->priv)->state = FS_NONE;
                        schedule(c, SETTLE_MS, 0);
                    }
                continue;
            }
            const char *name = ev->len && ev->name[0] ? ev->name : NULL;
            for (dsc_cluster *c = in->clusters; c; c = c->next) {
                fcl *f = c->priv;
                if (f && concerns(f, ev->wd, name)) {
                    uint64_t ms = delay_of(ev, f);
                    schedule(c, ms, ms == WRITING_MS);
                }
            }
            if (ev->mask & IN_IGNORED) dir_gone(in, ev->wd);
        }
    }
}

/* ---- the ops ---- */

static int file_create(dsc_inst *in, const sk_kv *keys, size_t n, char *err, size_t errsz)
{
    if (n > 0) {
        snprintf(err, errsz, "file: line %d: unknown key '%s' (source = file has no other key)", keys[0].line,
                 keys[0].key);
        return -1;
    }
    fsrc *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errsz, "file: out of memory");
        return -1;
    }
    in->priv = s;
    s->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (s->ifd < 0) {
        snprintf(err, errsz, "file: inotify_init1: %s", strerror(errno));
        return -1;
    }
    s->w = in->host->watch_fd(in->host->main_loop(), s->ifd, SK_EV_READ, on_inotify, in);
    if (!s->w) {
        snprintf(err, errsz, "file: cannot watch the inotify fd");
        return -1;
    }
    return 0;
}

static int file_add_cluster(dsc_inst *in, dsc_cluster *cl, const char *arg, char *err, size_t errsz)
{
    (void)in;
    if (strchr(arg, ' ') || strchr(arg, '\t')) {
        snprintf(err, errsz, "file: '%s': one path expected", arg);
        return -1;
    }
    fcl *f = calloc(1, sizeof *f);
    if (!f) goto oom;
    cl->priv = f;
    f->dir_wd = f->tgt_wd = -1;
    if (arg[0] != '/') {
        /* the host does not tell a plugin where its config file is */
        snprintf(err, errsz, "file: '%s': an absolute path is required", arg);
        return -1;
    }
    f->path = strdup(arg);
    if (!f->path) goto oom;
    size_t plen = strlen(f->path);
    while (plen > 1 && f->path[plen - 1] == '/') f->path[--plen] = 0;
    char *slash = strrchr(f->path, '/');
    if (!slash[1]) {
        snprintf(err, errsz, "file: '%s' is not a file path", arg);
        return -1;
    }
    f->base = strdup(slash + 1);
    f->dir = slash == f->path ? strdup("/") : strndup(f->path, (size_t)(slash - f->path));
    if (!f->base || !f->dir) goto oom;
    struct stat st;
    if (stat(f->path, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errsz, "file: %s is a directory, not an endpoint file", f->path);
        return -1;
    }
    check(cl); /* the first read: the set serves from the first request */
    return 0;
oom:
    snprintf(err, errsz, "file: out of memory");
    return -1;
}

static void file_destroy(dsc_inst *in)
{
    fsrc *s = src_of(in);
    for (dsc_cluster *c = in->clusters; c; c = c->next) {
        fcl *f = c->priv;
        if (!f) continue;
        if (f->timer) in->host->timer_stop(f->timer);
        if (s) {
            dir_release(s, f->dir_wd);
            dir_release(s, f->tgt_wd);
        }
        free(f->path);
        free(f->dir);
        free(f->base);
        free(f->tgt_dir);
        free(f->tgt_base);
        free(f->link_head);
        free(f);
        c->priv = NULL;
    }
    if (!s) return;
    if (s->w) in->host->unwatch_fd(s->w);
    if (s->ifd >= 0) close(s->ifd);
    while (s->dirs) {
        fdir *d = s->dirs;
        s->dirs = d->next;
        free(d);
    }
    free(s);
    in->priv = NULL;
}

const dsc_source_ops dsc_file_ops = {
    .name = "file",
    .create = file_create,
    .add_cluster = file_add_cluster,
    .destroy = file_destroy,
};
