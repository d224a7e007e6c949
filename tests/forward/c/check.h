/* CHECK() for the C unit tests in this directory: counts the checks (``checks``, which
 * each test prints as "ok N checks") and on the first failed one names it and exits 1. */
#ifndef NCD_TEST_CHECK_H
#define NCD_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int checks;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        checks++;                                                                      \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

#endif
