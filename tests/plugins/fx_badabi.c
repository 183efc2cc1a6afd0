/*
 * fx_badabi — test fixture: a plugin built for the next ABI major version.
 *
 * sidekick_plugin.abi_major = SK_PLUGIN_ABI_MAJOR + 1: the loader must
 * refuse it (a different major is incompatible both ways) before calling
 * anything in it. Otherwise a working no-op plugin taking no keys.
 */
#include <sidekick/plugin.h>

#include <stdio.h>

static int dummy;

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    (void)host;
    (void)self;
    if (nkeys > 0) {
        snprintf(err, err_size, "fx_badabi: unknown key '%s'", keys[0].key);
        return NULL;
    }
    return &dummy;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR + 1,
    .abi_minor = 0,
    .name = "fx_badabi",
    .description = "test fixture: ABI major one above the host's",
    .create = create,
};
