/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Blocking waits on a vchan: "until n bytes are readable / writable", with a
 * bounded spin before sleeping on the event channel.
 *
 * Why spin: a peer that is producing or consuming right now will move its
 * index within microseconds, while a sleep costs a notification (a syscall on
 * the peer's side), an event-channel wakeup and a scheduler round trip on ours
 * (tens of microseconds on a guest).  While we spin we do NOT ask the peer to
 * notify us, so a busy peer makes no syscalls on our behalf.  Only when the
 * spin budget is spent do we set our request bit, re-check (the bit is posted
 * before the re-read, see vchan.c) and sleep in poll().
 *
 * One thread waits on a vchan at a time (the event channel is shared by both
 * directions).  Each sleep is capped at WAIT_SLICE_MS so that a wakeup
 * consumed elsewhere costs a delay, never a hang.
 */
#include <errno.h>
#include <poll.h>
#include <time.h>

#include "vchan_int.h"

#define WAIT_SLICE_MS 100
#define LIVE_CHECK_EVERY 64u /* spin iterations between checks of the live flag */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

enum wait_dir { WAIT_DATA, WAIT_SPACE };

static int64_t peek(struct ncd_vchan *v, enum wait_dir dir)
{
    return dir == WAIT_DATA ? ncd_vchan_peek_data(v) : ncd_vchan_peek_space(v);
}

/* >= n: done; 0..n-1: keep waiting; -1: fail with errno set. */
static int64_t check(struct ncd_vchan *v, enum wait_dir dir, size_t n)
{
    int64_t got = peek(v, dir);
    int live;

    if (got < 0) {
        errno = EPROTO;
        return -1;
    }
    if ((uint64_t)got >= n && dir == WAIT_DATA)
        return got; /* data stays readable after a close */
    live = ncd_vchan_is_open(v);
    if (live == 0) {
        if (ncd_vchan_close_reason(v)) {
            errno = EPROTO;
            return -1;
        }
        /* what the peer wrote before it closed is still ours to read */
        got = peek(v, dir);
        if (got >= 0 && (uint64_t)got >= n && dir == WAIT_DATA)
            return got;
        errno = EPIPE;
        return -1;
    }
    return got; /* may be >= n for WAIT_SPACE: done */
}

static ssize_t wait_for(struct ncd_vchan *v, enum wait_dir dir, size_t n, unsigned spin_us,
                        int timeout_ms)
{
    size_t limit = dir == WAIT_DATA ? v->rd.size : v->wr.size;
    int64_t start = now_ns();
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : start + (int64_t)timeout_ms * 1000000;
    int64_t spin_end = start + (int64_t)spin_us * 1000;
    int64_t got;
    unsigned i;

    if (n == 0)
        n = 1;
    if (n > limit) {
        errno = EINVAL;
        return -1;
    }
    got = check(v, dir, n);
    if (got < 0 || (uint64_t)got >= n)
        return (ssize_t)got;

    /* spin: re-read the peer's index only; the live flag now and then */
    for (i = 1; spin_us && now_ns() < spin_end; i++) {
        ncd_cpu_relax();
        if (i % LIVE_CHECK_EVERY) {
            got = peek(v, dir);
            if (got < 0) {
                errno = EPROTO;
                return -1;
            }
        } else {
            got = check(v, dir, n);
            if (got < 0)
                return -1;
        }
        if ((uint64_t)got >= n)
            return (ssize_t)got;
    }

    /* sleep: ask to be told, re-check, poll the event channel */
    for (;;) {
        struct pollfd pfd = { .fd = ncd_vchan_fd(v), .events = POLLIN, .revents = 0 };
        int64_t left = deadline - now_ns();
        int slice, rc;

        ncd_vchan_request_notify(v, dir == WAIT_SPACE, dir == WAIT_DATA);
        got = check(v, dir, n);
        if (got < 0 || (uint64_t)got >= n)
            return (ssize_t)got;
        if (left <= 0)
            return 0;
        slice = left / 1000000 >= WAIT_SLICE_MS ? WAIT_SLICE_MS : (int)((left + 999999) / 1000000);
        rc = poll(&pfd, 1, slice);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (rc > 0 && (pfd.revents & POLLIN) && ncd_vchan_wait(v) < 0 && errno != EAGAIN)
            return -1;
    }
}

ssize_t ncd_vchan_wait_data(struct ncd_vchan *v, size_t n, unsigned spin_us, int timeout_ms)
{
    return wait_for(v, WAIT_DATA, n, spin_us, timeout_ms);
}

ssize_t ncd_vchan_wait_space(struct ncd_vchan *v, size_t n, unsigned spin_us, int timeout_ms)
{
    return wait_for(v, WAIT_SPACE, n, spin_us, timeout_ms);
}
