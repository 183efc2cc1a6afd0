/*
 * http1.h — the downstream HTTP/1.1 codec (http1.c). Message heads are in
 * head.h; the connection type is in worker.h until the codec seam lands.
 */
#ifndef SK_HTTP1_H
#define SK_HTTP1_H

#include "head.h"
#include "worker.h"

#endif
