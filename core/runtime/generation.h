/*
 * generation.h — loading a configuration generation (generation.c): the
 * INI file parsed and validated by the config layer, with its plugin
 * instances and Lua scripts loaded by the extension layer.
 */
#ifndef SK_GENERATION_H
#define SK_GENERATION_H

#include <ev.h>

#include "config.h"

/*
 * Loads and validates `path` into a generation with refcnt 1: sk_config_parse
 * with the extension layer's loaders. NULL with *err (malloc'd, naming file,
 * line, section and key) on failure.
 */
sk_config *sk_config_load(const char *path, char **err);

/*
 * cfg becomes the running generation now (start-up, or a reload that
 * published it): stamps cfg->started_ms, from which the clusters'
 * wait_for_endpoints count, and arms a timer on `loop` (the main loop) that
 * logs one line for each such wait that runs out before the cluster's first
 * answer. A generation started earlier is no longer watched. Main thread.
 */
void sk_generation_started(sk_config *cfg, struct ev_loop *loop);

/*
 * The first cluster of cfg (in file order) that holds /ready back: it has
 * wait_for_endpoints, has had no answer from discovery (nor one carried
 * over by a reload), and its wait has not run out; *left_ms is what is
 * left of it. NULL when none (or before cfg started). Main thread.
 */
const sk_cluster *sk_generation_waiting(const sk_config *cfg, uint64_t *left_ms);
/* Whether cluster cl of cfg holds /ready back, as above (*left_ms if not NULL). */
bool sk_generation_cluster_waits(const sk_config *cfg, const sk_cluster *cl, uint64_t *left_ms);

#endif
