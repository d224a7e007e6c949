/*
 * Test helper: a libxenvchan client (Debian's libxenvchan.so.4.17, unmodified)
 * that sends N pattern bytes over the vchan and expects them echoed back.
 *
 *   vchan_client DOMID XS_PATH NBYTES [hold]
 *
 * Prints "ok NBYTES" when every byte came back intact; with "hold" it then
 * prints "holding" and sleeps (so a test can kill -9 it with the vchan open).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxenvchan.h>

static uint8_t pattern(size_t i)
{
    return (uint8_t)((i * 2654435761u) >> 13);
}

int main(int argc, char **argv)
{
    struct libxenvchan *ctrl;
    size_t total, sent = 0, got = 0;
    uint8_t buf[65536];

    if (argc < 4) {
        fprintf(stderr, "usage: %s DOMID XS_PATH NBYTES [hold]\n", argv[0]);
        return 2;
    }
    total = strtoul(argv[3], NULL, 0);
    ctrl = libxenvchan_client_init(NULL, atoi(argv[1]), argv[2]);
    if (!ctrl) {
        perror("libxenvchan_client_init");
        return 1;
    }
    ctrl->blocking = 0;
    while (got < total) {
        int progress = 0;

        if (!libxenvchan_is_open(ctrl)) {
            fprintf(stderr, "vchan closed after %zu/%zu bytes back\n", got, total);
            return 1;
        }
        if (sent < total) {
            size_t n = total - sent < sizeof(buf) ? total - sent : sizeof(buf);
            int w;

            for (size_t i = 0; i < n; i++)
                buf[i] = pattern(sent + i);
            w = libxenvchan_write(ctrl, buf, n);
            if (w < 0) {
                perror("libxenvchan_write");
                return 1;
            }
            sent += (size_t)w;
            progress |= w > 0;
        }
        int r = libxenvchan_read(ctrl, buf, sizeof(buf));

        if (r < 0) {
            perror("libxenvchan_read");
            return 1;
        }
        for (int i = 0; i < r; i++) {
            if (buf[i] != pattern(got + (size_t)i)) {
                fprintf(stderr, "corrupt byte at %zu\n", got + (size_t)i);
                return 1;
            }
        }
        got += (size_t)r;
        progress |= r > 0;
        if (!progress && libxenvchan_wait(ctrl) < 0) {
            perror("libxenvchan_wait");
            return 1;
        }
    }
    printf("ok %zu\n", got);
    fflush(stdout);
    if (argc > 4 && !strcmp(argv[4], "hold")) {
        printf("holding\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    libxenvchan_close(ctrl);
    return 0;
}
