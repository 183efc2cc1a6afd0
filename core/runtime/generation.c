/*
 * generation.c — a configuration generation is the config layer's parse
 * plus the extension layer's plugins and scripts; the runtime, above both,
 * puts them together.
 */
#include "generation.h"
#include "loader.h"

/* Loads a generation (see generation.h). */
sk_config *sk_config_load(const char *path, char **err)
{
    return sk_config_parse(path, &sk_ext_config_ops, err);
}
