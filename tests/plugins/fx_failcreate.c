/*
 * fx_failcreate — test fixture: create() always fails.
 *
 * Any keys are accepted only to be echoed: the error is
 * "fx_failcreate: refusing on purpose (key K=V)" naming the first key of the
 * section, or "(no keys)". sidekick -t and start-up must fail with it.
 */
#include <sidekick/plugin.h>

#include <stdio.h>

static void *create(const sk_host_api *host, sk_instance *self, const sk_kv *keys, size_t nkeys,
                    char *err, size_t err_size)
{
    (void)host;
    (void)self;
    if (nkeys > 0)
        snprintf(err, err_size, "fx_failcreate: refusing on purpose (key %s=%s)", keys[0].key,
                 keys[0].value);
    else
        snprintf(err, err_size, "fx_failcreate: refusing on purpose (no keys)");
    return NULL;
}

static sk_status on_request(void *inst, void *wdata, sk_req *r)
{
    (void)inst;
    (void)wdata;
    (void)r;
    return SK_ERROR; /* never reached: there is no instance */
}

SK_PLUGIN_EXPORT const sk_plugin sidekick_plugin = {
    .abi_major = SK_PLUGIN_ABI_MAJOR,
    .abi_minor = SK_PLUGIN_ABI_MINOR,
    .name = "fx_failcreate",
    .description = "test fixture: create() always fails",
    .create = create,
    .on_request = on_request,
};
