/*
 * loader.h — the table of this layer's config loaders (loader.c) that the
 * runtime hands to sk_config_parse.
 */
#ifndef SK_EXT_LOADER_H
#define SK_EXT_LOADER_H

#include "config.h"

extern const sk_config_ext sk_ext_config_ops;

#endif
