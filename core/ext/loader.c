/*
 * loader.c — the extension layer's side of the config seam
 * (config.h sk_config_ext): plugin instance declarations and loading, and
 * the Lua scripts of a generation.
 */
#include <stdlib.h>
#include <string.h>

#include "loader.h"
#include "lua_filter.h"
#include "plugin_host.h"

static const char *instance_name(const sk_instance *pi)
{
    return pi->name;
}

static int instance_set_load(sk_instance *pi, const char *value, int line)
{
    if (pi->load_line) return pi->load_line;
    if (!(pi->load = strdup(value))) return -1;
    pi->load_line = line;
    return 0;
}

static int instance_load(sk_instance *pi, sk_config *c, char *err, size_t err_size, int *load_line)
{
    pi->config = c;
    *load_line = pi->load_line;
    return sk_instance_load(pi, c->plugin_dir, c->workers, err, err_size);
}

/* The extension layer's table for sk_config_parse. */
const sk_config_ext sk_ext_config_ops = {
    .instance_new = sk_instance_new,
    .instance_name = instance_name,
    .instance_set_load = instance_set_load,
    .instance_add_key = sk_instance_add_key,
    .instance_load = instance_load,
    .instance_on_cluster = sk_instance_on_cluster,
    .instance_free = sk_instance_free,
    .lua_load = sk_lua_load_config,
    .lua_free = sk_lua_gen_free,
};
