/*
 * fx_newminor — test fixture: a plugin built against a newer minor version
 * of the ABI than the host's.
 *
 * sidekick_plugin.abi_minor = SK_PLUGIN_ABI_MINOR + 1: it may use members
 * the host does not have, so the loader must refuse it. Otherwise a
 * working no-op plugin taking no keys.
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
        snprintf(err, err_size, "fx_newminor: unknown key '%s'", keys[0].key);
        return NULL;
    }
    return &dummy;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR + 1,
    .name = "fx_newminor",
    .description = "test fixture: ABI minor one above the host's",
    .create = create,
};
