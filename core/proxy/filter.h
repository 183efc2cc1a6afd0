/*
 * filter.h — the filters a request runs through, as the request layer sees
 * them: C plugin instances and the route's Lua script. Their hosts live one
 * layer up (ext/plugin_host.c, ext/lua_filter.c) and register one table of
 * operations (sk_filters_register) before any request runs, so the request
 * layer calls them without depending on them. One status enum (sk_status,
 * <sidekick/plugin.h>) for C plugins and Lua alike.
 */
#ifndef SK_FILTER_H
#define SK_FILTER_H

#include <sidekick/plugin.h>

struct sk_instance;
struct sk_request;

typedef struct sk_filter_ops {
    /* A plugin instance's hooks for request r (its worker thread). */
    sk_status (*on_request)(struct sk_instance *pi, struct sk_request *r);
    sk_status (*on_response)(struct sk_instance *pi, struct sk_request *r);
    void (*on_log)(struct sk_instance *pi, struct sk_request *r);
    void (*on_cancel)(struct sk_instance *pi, struct sk_request *r);
    /* The instance's section name, for log lines. */
    const char *(*name)(const struct sk_instance *pi);
    /* Counts a failure of the instance (sidekick_plugin_errors_total). */
    void (*count_error)(struct sk_instance *pi);
    /* The route's Lua filter: on_request, on_response, and the release of
     * the request's coroutine when it is recycled. */
    sk_status (*lua_on_request)(struct sk_request *r);
    sk_status (*lua_on_response)(struct sk_request *r);
    void (*lua_done)(struct sk_request *r);
} sk_filter_ops;

/* The registered filter hosts. */
extern const sk_filter_ops *sk_filters;

/* Registers the filter hosts (the runtime, before a worker runs). */
void sk_filters_register(const sk_filter_ops *ops);

#endif
