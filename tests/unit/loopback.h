/*
 * loopback.h — a listening socket on 127.0.0.1 for the unit tests that
 * drive real connections (test_transport.c, test_tls.c).
 */
#ifndef SK_TEST_LOOPBACK_H
#define SK_TEST_LOOPBACK_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* A non-blocking listening socket on an ephemeral port of 127.0.0.1, its
 * address in *a; -1 on failure. */
static int listener(struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    memset(a, 0, sizeof(*a));
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(0x7f000001);
    socklen_t len = sizeof(*a);
    if (fd < 0 || bind(fd, (struct sockaddr *)a, sizeof(*a)) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)a, &len) < 0)
        return -1;
    return fd;
}

#endif
