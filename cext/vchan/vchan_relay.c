/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd_vchan_relay: infd -> vchan and vchan -> outfd at once, zero-copy
 * (readv straight into the write ring, writev straight out of the read ring).
 * The loop behind the `ncd-vchan` tool; runs without the GIL.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include "vchan_int.h"

/* Write everything left in the read ring to outfd (the peer has closed). */
static int drain(struct ncd_vchan *v, int outfd, char *err, size_t errlen)
{
    struct iovec iov[2];
    for (;;) {
        int cnt = ncd_vchan_read_iov(v, iov, SIZE_MAX);
        ssize_t w;
        if (cnt < 0)
            return ncd_fail(err, errlen, errno, "vchan read: %s", strerror(errno));
        if (cnt == 0)
            return 0;
        w = writev(outfd, iov, cnt);
        if (w > 0) {
            ncd_vchan_read_commit(v, (size_t)w);
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd p = {.fd = outfd, .events = POLLOUT};
            poll(&p, 1, -1);
        } else {
            int e = w < 0 ? errno : EIO;
            return ncd_fail(err, errlen, e, "write to output: %s", strerror(e));
        }
    }
}

int ncd_vchan_relay(struct ncd_vchan *v, int infd, int outfd, char *err, size_t errlen)
{
    struct iovec iov[2];
    int in_eof = 0, in_ready = 1, ring_full = 0, out_blocked = 0;
    int vfd = ncd_vchan_fd(v);

    for (;;) {
        int progress = 1;
        while (progress) {
            int cnt;
            progress = 0;
            /* vchan -> out */
            cnt = ncd_vchan_read_iov(v, iov, SIZE_MAX);
            if (cnt < 0)
                return ncd_fail(err, errlen, errno, "vchan read: %s", strerror(errno));
            out_blocked = 0;
            if (cnt > 0) {
                ssize_t w = writev(outfd, iov, cnt);
                if (w > 0) {
                    ncd_vchan_read_commit(v, (size_t)w);
                    progress = 1;
                } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                    ncd_vchan_read_commit(v, 0);
                    out_blocked = 1;
                } else {
                    int e = w < 0 ? errno : EIO;
                    return ncd_fail(err, errlen, e, "write to output: %s", strerror(e));
                }
            }
            /* in -> vchan */
            if (!in_eof && in_ready) {
                cnt = ncd_vchan_write_iov(v, iov, SIZE_MAX);
                if (cnt < 0) {
                    if (errno == EPIPE)
                        break; /* the peer closed: drained below */
                    return ncd_fail(err, errlen, errno, "vchan write: %s", strerror(errno));
                }
                ring_full = cnt == 0;
                if (cnt > 0) {
                    ssize_t r = readv(infd, iov, cnt);
                    if (r > 0) {
                        ncd_vchan_write_commit(v, (size_t)r);
                        progress = 1;
                    } else {
                        ncd_vchan_write_commit(v, 0);
                        if (r == 0)
                            in_eof = 1;
                        else if (errno == EAGAIN || errno == EINTR)
                            in_ready = 0;
                        else
                            return ncd_fail(err, errlen, errno, "read from input: %s",
                                            strerror(errno));
                    }
                }
            }
        }
        if (!ncd_vchan_is_open(v)) {
            if (ncd_vchan_close_reason(v))
                return ncd_fail(err, errlen, EPROTO, "%s: %s", ncd_vchan_close_reason(v),
                                strerror(EPROTO));
            return drain(v, outfd, err, errlen);
        }
        if (in_eof && !out_blocked) {
            ncd_vchan_request_notify(v, 1, 0);
            if (ncd_vchan_unconsumed(v) == 0)
                return 0;
        }
        {
            struct pollfd p[3];
            int n = 0, i;
            p[n++] = (struct pollfd){.fd = vfd, .events = POLLIN};
            if (!in_eof && !ring_full && !in_ready)
                p[n++] = (struct pollfd){.fd = infd, .events = POLLIN};
            if (out_blocked)
                p[n++] = (struct pollfd){.fd = outfd, .events = POLLOUT};
            if (poll(p, (nfds_t)n, -1) < 0) /* EINTR too: the caller calls again */
                return ncd_fail(err, errlen, errno, "poll: %s", strerror(errno));
            for (i = 0; i < n; i++) {
                if (!p[i].revents)
                    continue;
                if (p[i].fd == vfd && i == 0) {
                    if (ncd_vchan_wait(v) < 0 && errno != EAGAIN)
                        return ncd_fail(err, errlen, errno, "vchan wait: %s", strerror(errno));
                } else if (p[i].events & POLLIN) {
                    in_ready = 1;
                }
            }
        }
    }
}
