/*
 * http_client.h — the asynchronous HTTP/1.1 client of the plugin ABI
 * (sk_host_api.http_start / http_cancel / http_strerror, ABI 1.1): libcurl's
 * multi socket API driven by the main thread's libev loop. Main thread only.
 */
#ifndef SK_HTTP_CLIENT_H
#define SK_HTTP_CLIENT_H

#include <sidekick/plugin.h>

/*
 * Starts a call for instance `self` (see sk_host_api.http_start in
 * plugin.h for the contract). Everything `rq` points to is copied. Returns
 * 0 and the handle in *call (when call is not NULL), or an SK_HTTP_E* code
 * with a warning logged; no callback runs inside this function.
 */
int sk_http_start(sk_instance *self, const sk_http_request *rq, sk_http_call **call);

/* Stops a call without running its callbacks again and frees it (deferred
 * while libcurl is running a callback). NULL and calls inside their own
 * on_done are ignored. Main thread. */
void sk_http_cancel(sk_http_call *call);

/* A static, human-readable text for an SK_HTTP_E* code (or 0). */
const char *sk_http_strerror(int error);

/*
 * Called by the plugin host just before `pi`'s destroy hook: every call of
 * the instance still in flight gets on_done(SK_HTTP_ECANCELLED) (or, when
 * create never succeeded, is dropped without callbacks) and is freed, and
 * http_start refuses new calls for `pi` until sk_http_instance_closed(pi).
 */
void sk_http_instance_closing(sk_instance *pi);

/* Calls of `pi` in flight (started, not ended or cancelled). Main thread. */
size_t sk_http_instance_calls(const sk_instance *pi);

/* Called just after `pi`'s destroy hook: drops anything destroy still
 * started and lets the address be reused by a new instance. */
void sk_http_instance_closed(sk_instance *pi);

#endif
