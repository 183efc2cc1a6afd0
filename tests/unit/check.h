/*
 * check.h — the counters and check macros every unit test uses. Each test
 * prints "test_<module>: N checks, M failed" and exits non-zero on failure.
 */
#ifndef SK_TEST_CHECK_H
#define SK_TEST_CHECK_H

#include <stdio.h>

static int checks, failures;

/* Counts a check; reports and counts a failure, then goes on. */
#define CHECK(c)                                                                  \
    do {                                                                          \
        checks++;                                                                 \
        if (!(c)) {                                                               \
            failures++;                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
        }                                                                         \
    } while (0)

/* Like CHECK, but leaves the (void) test function (for pointers about to be used). */
#define ASSERT(c)                                                                     \
    do {                                                                              \
        checks++;                                                                     \
        if (!(c)) {                                                                   \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
            return;                                                                   \
        }                                                                             \
    } while (0)

#endif
