/*
 * accesslog.h — one JSON line per finished HTTP request (accesslog.c).
 */
#ifndef SK_ACCESSLOG_H
#define SK_ACCESSLOG_H

#include "request.h"

/* Writes the access log line of a finished (or cut) request, if enabled. */
void sk_accesslog_write(sk_request *r);

#endif
