/*
 * filters.h — the table of this layer's filter hosts (filters.c) that the
 * runtime registers with the request layer (sk_filters_register).
 */
#ifndef SK_EXT_FILTERS_H
#define SK_EXT_FILTERS_H

#include "filter.h"

extern const sk_filter_ops sk_ext_filter_ops;

#endif
