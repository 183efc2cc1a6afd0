/*
 * fx_nosym — test fixture: a shared object without the `sidekick_plugin`
 * symbol.
 *
 * It exports a well-formed descriptor under another name
 * (`sidekick_plugin_v2`), so only the lookup of the exact symbol can tell;
 * the loader must refuse it, naming the missing symbol.
 */
#include <sidekick/plugin.h>

#include <stdio.h>

static int dummy;

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    (void)host;
    (void)self;
    (void)keys;
    (void)nkeys;
    (void)err;
    (void)err_size;
    return &dummy;
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin_v2 = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_nosym",
    .description = "test fixture: exports no sidekick_plugin",
    .create = create,
};
