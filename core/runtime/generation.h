/*
 * generation.h — loading a configuration generation (generation.c): the
 * INI file parsed and validated by the config layer, with its plugin
 * instances and Lua scripts loaded by the extension layer.
 */
#ifndef SK_GENERATION_H
#define SK_GENERATION_H

#include "config.h"

/*
 * Loads and validates `path` into a generation with refcnt 1: sk_config_parse
 * with the extension layer's loaders. NULL with *err (malloc'd, naming file,
 * line, section and key) on failure.
 */
sk_config *sk_config_load(const char *path, char **err);

#endif
