/*
 * filters.c — the extension layer's side of the request layer's filter
 * seam (proxy/filter.h): plugin instances and Lua filters behind one table.
 */
#include "filters.h"
#include "lua_filter.h"
#include "plugin_host.h"

static const char *instance_name(const sk_instance *pi)
{
    return pi->name;
}

static void count_error(sk_instance *pi)
{
    __atomic_add_fetch(&pi->errors, 1, __ATOMIC_RELAXED);
}

/* The filter hosts of this layer. */
const sk_filter_ops sk_ext_filter_ops = {
    .on_request = sk_plugin_on_request,
    .on_response = sk_plugin_on_response,
    .on_log = sk_plugin_on_log,
    .on_cancel = sk_plugin_on_cancel,
    .name = instance_name,
    .count_error = count_error,
    .lua_on_request = sk_lua_on_request,
    .lua_on_response = sk_lua_on_response,
    .lua_done = sk_lua_request_done,
};
