/*
 * fuzz_ratelimit — ratelimit.so's config parser (create) and its bucket
 * table (decide), without the host: the plugin's .c is included and driven
 * through a stub sk_host_api.
 *
 * Input: lines. "key=value" lines (at most 16) are the [plugin] keys handed
 * to create(); every other line, once create() succeeded, is a bucket key
 * for one decision. A successful create must leave rate > 0, burst >= 1 and
 * a table of max_keys buckets; a decision must leave the bucket within
 * [0, burst] and never more keys than max_keys.
 */
#include "../../plugins/ratelimit/ratelimit.c"

/* assert() vanishes under NDEBUG (Release): a failed check aborts in every build. */
#define CHECK(c)           \
    do {                   \
        if (!(c)) abort(); \
    } while (0)
#include <stdarg.h>

static void stub_log(sk_instance *self, int level, const char *fmt, ...)
{
    (void)self, (void)level, (void)fmt;
}
static const char *stub_name(sk_instance *self)
{
    (void)self;
    return "fz\"\\x";
}
static sk_metric *stub_counter_labelled(sk_instance *self, const char *name, const char *help,
                                        const char *label, const char *const *values, size_t nvalues)
{
    (void)self, (void)name, (void)help, (void)label, (void)values, (void)nvalues;
    static int dummy;
    return (sk_metric *)&dummy;
}

static sk_metric *stub_counter(sk_instance *self, const char *name, const char *help)
{
    (void)self, (void)name, (void)help;
    static int dummy;
    return (sk_metric *)&dummy;
}

static sk_host_api stub_host = {
    .counter = stub_counter,
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .log = stub_log,
    .instance_name = stub_name,
    .counter_labelled = stub_counter_labelled,
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    sk_kv kv[16];
    size_t nkv = 0;
    char *lines[64];
    size_t nlines = 0;
    for (char *p = text, *nl; p && *p; p = nl) {
        nl = strchr(p, '\n');
        if (nl) *nl++ = 0;
        char *eq = strchr(p, '=');
        if (eq && nkv < 16) {
            *eq = 0;
            kv[nkv].key = p;
            kv[nkv].value = eq + 1;
            kv[nkv].line = (int)nkv + 1;
            nkv++;
        } else if (nlines < 64) {
            lines[nlines++] = p;
        }
    }
    /* a big max_keys would only make the run slow: keep it small */
    for (size_t i = 0; i < nkv; i++)
        if (strcmp(kv[i].key, "max_keys") == 0 && strlen(kv[i].value) > 4) kv[i].value = "9999";
    char err[256];
    err[0] = 0;
    ratelimit *rl = create(&stub_host, NULL, kv, nkv, err, sizeof err);
    if (!rl) {
        CHECK(err[0] != 0); /* a refusal always says why */
    } else {
        CHECK(rl->rate > 0 && rl->burst >= 1);
        if (rl->global) { /* no table: what Redis needs is set */
            CHECK(rl->redis_prefix && rl->redis_addr && rl->redis_port > 0 && rl->redis_timeout_ms >= 1);
            destroy(rl);
            free(text);
            return 0;
        }
        CHECK(rl->nshards >= 1);
        for (size_t i = 0; i < nlines; i++) {
            verdict v;
            if (decide(rl, lines[i], strlen(lines[i]), &v) < 0) continue;
            CHECK(v.remaining <= (uint64_t)rl->burst);
            CHECK(v.allowed || v.retry_s >= 1);
        }
        uint64_t total = 0;
        for (uint32_t k = 0; k < rl->nshards; k++) {
            shard *s = &rl->shards[k];
            CHECK(s->used <= s->cap);
            total += s->used;
            uint32_t n = 0;
            for (uint32_t j = s->head; j != NIL; j = s->e[j].next) n++;
            CHECK(n == s->used); /* the LRU list holds every bucket once */
            for (uint32_t j = 0; j < s->used; j++) CHECK(s->e[j].tokens >= 0 && s->e[j].tokens <= rl->burst);
        }
        CHECK(total <= rl->nshards * (uint64_t)rl->shards[0].cap);
        destroy(rl);
    }
    free(text);
    return 0;
}
