/* Shared bits of the libFuzzer targets in fuzz/.
 *
 * scripts/fuzz.sh runs the targets with -close_fd_mask=2 so that the library's own
 * "hostile peer" lines (one per rejected input) do not flood the log; libFuzzer and
 * the sanitizers keep reporting on a duplicate of stderr.  Our CHECK() failures go
 * to a duplicate taken in LLVMFuzzerInitialize, which runs before stderr is closed.
 */
#ifndef NCD_FUZZ_UTIL_H
#define NCD_FUZZ_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int fuzz_errfd = 2;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    int fd = dup(2);
    (void)argc;
    (void)argv;
    if (fd >= 0)
        fuzz_errfd = fd;
    return 0;
}

#define FUZZ_FAIL(...)                                                                  \
    do {                                                                                \
        dprintf(fuzz_errfd, __VA_ARGS__);                                               \
        abort();                                                                        \
    } while (0)

#define CHECK(c)                                                                        \
    do {                                                                                \
        if (!(c))                                                                       \
            FUZZ_FAIL("%s: check failed: %s (%s:%d)%s\n", FUZZ_NAME, #c, __FILE__,       \
                      __LINE__, FUZZ_CONTEXT);                                          \
    } while (0)

#endif
