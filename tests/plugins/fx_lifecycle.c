/*
 * fx_lifecycle — test fixture: records when instances are created and
 * destroyed, and tags requests and responses with the instance's tag.
 *
 * Keys (both required, each once):
 *
 *     file = PATH   create() appends "create TAG\n" to PATH, destroy()
 *                   appends "destroy TAG\n" (open O_APPEND, one write,
 *                   close each time, so the file can be read at any moment
 *                   and lines of different instances never interleave)
 *     tag  = TEXT   on_request sets request header x-lifecycle: TEXT,
 *                   on_response sets response header x-lifecycle: TEXT
 *
 * Any other key is refused in create(). The reload tests count the
 * "create" and "destroy" lines to check that every config generation that
 * was released destroyed its instances exactly once.
 */
#include <sidekick/plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct fx {
    const sk_host_api *host;
    sk_instance *self;
    char *file;
    char *tag;
} fx;

/* Appends "<what> <tag>\n" to the file in one write. 0, or -1 (errno). */
static int record(const char *file, const char *what, const char *tag)
{
    char line[1024];
    int n = snprintf(line, sizeof line, "%s %s\n", what, tag);
    if (n < 0 || (size_t)n >= sizeof line) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    ssize_t w;
    do {
        w = write(fd, line, (size_t)n);
    } while (w < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (w != n) {
        errno = w < 0 ? saved : EIO;
        return -1;
    }
    return 0;
}

static void free_fx(fx *f)
{
    if (!f) return;
    free(f->file);
    free(f->tag);
    free(f);
}

static void destroy(void *inst)
{
    fx *f = inst;
    if (!f) return;
    if (record(f->file, "destroy", f->tag) < 0)
        f->host->log(f->self, SK_LOG_ERROR, "cannot append to %s: %s", f->file, strerror(errno));
    free_fx(f);
}

static int set_once(char **slot, const sk_kv *kv, char *err, size_t err_size)
{
    if (*slot) {
        snprintf(err, err_size, "fx_lifecycle: key '%s' (line %d) given twice", kv->key, kv->line);
        return -1;
    }
    if (!*kv->value) {
        snprintf(err, err_size, "fx_lifecycle: key '%s' (line %d) is empty", kv->key, kv->line);
        return -1;
    }
    if (!(*slot = strdup(kv->value))) {
        snprintf(err, err_size, "fx_lifecycle: out of memory");
        return -1;
    }
    return 0;
}

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    fx *f = calloc(1, sizeof *f);
    if (!f) {
        snprintf(err, err_size, "fx_lifecycle: out of memory");
        return NULL;
    }
    f->host = host;
    f->self = self;
    for (size_t i = 0; i < nkeys; i++) {
        const sk_kv *kv = &keys[i];
        int rc;
        if (strcmp(kv->key, "file") == 0) {
            rc = set_once(&f->file, kv, err, err_size);
        } else if (strcmp(kv->key, "tag") == 0) {
            rc = set_once(&f->tag, kv, err, err_size);
        } else {
            snprintf(err, err_size, "fx_lifecycle: unknown key '%s' (line %d); known: file, tag",
                     kv->key, kv->line);
            rc = -1;
        }
        if (rc < 0) {
            free_fx(f);
            return NULL;
        }
    }
    if (!f->file || !f->tag) {
        snprintf(err, err_size, "fx_lifecycle: missing key '%s'", f->file ? "tag" : "file");
        free_fx(f);
        return NULL;
    }
    if (record(f->file, "create", f->tag) < 0) {
        snprintf(err, err_size, "fx_lifecycle: cannot append to %s: %s", f->file, strerror(errno));
        free_fx(f);
        return NULL;
    }
    return f;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    if (f->host->set_header(r, "x-lifecycle", f->tag) < 0) {
        f->host->log(f->self, SK_LOG_ERROR, "set_header(x-lifecycle) failed");
        return SK_ERROR;
    }
    return SK_CONTINUE;
}

static sk_status on_response(void *inst, void *wdata, sk_req *r)
{
    fx *f = inst;
    (void)wdata;
    if (f->host->set_response_header(r, "x-lifecycle", f->tag) < 0) {
        f->host->log(f->self, SK_LOG_ERROR, "set_response_header(x-lifecycle) failed");
        return SK_ERROR;
    }
    return SK_CONTINUE;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_lifecycle",
    .description = "test fixture: records create/destroy in a file, tags requests and responses",
    .create = create,
    .destroy = destroy,
    .on_request = on_request,
    .on_response = on_response,
};
