/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Late EOI: an event channel's unmask deferred while its events carry no work.
 *
 * A peer can notify as fast as it can make hypercalls, and each event it sends
 * costs the receiving thread a wakeup.  Linux answered this in XSA-332 with
 * "lateeoi" (drivers/xen/events/events_base.c, xen_irq_lateeoi_locked(); the
 * backends call xen_irq_lateeoi(irq, XEN_EOI_FLAG_SPURIOUS) for an event that
 * found nothing to do): a spurious event leaves the port masked for a delay that
 * grows with the run of spurious events, and the first event that carries work
 * resets it.  The same here.  Before a thread sleeps it snapshots what the peer
 * owns (its index on either ring and its live flag, ncd_vchan_eoi_arm()); when
 * the event fd fires, the event is taken *without* unmasking the port
 * (ncd_vchan_eoi_event()).  If one of those moved, the event carried work and
 * the port is unmasked at once: an honest peer sees no added latency.
 * Otherwise, after EOI_FREE spurious events in a row, the unmask waits
 * EOI_FIRST_US, doubling per further spurious event up to EOI_MAX_US.  While
 * masked, the peer's notifications only mark the port pending (no wakeup, no
 * syscall on our side); the unmask re-delivers one of them.  So a storm costs us
 * at most one wakeup per EOI_MAX_US, however fast the peer notifies.
 *
 * Without an event-channel handle (a local pair: eventfds) there is no mask;
 * the thread then leaves the fd out of its poll set while deferred
 * (ncd_vchan_eoi_fd()), to the same effect.
 */
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "vchan_int.h"

#define EOI_FREE 1u          /* spurious events in a row unmasked at once */
#define EOI_FIRST_US 1000    /* then the first deferral ... */
#define EOI_MAX_US 16000     /* ... doubling up to this */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void snapshot(struct ncd_vchan *v, int64_t out[3])
{
    out[0] = ncd_vchan_peek_data(v);  /* the peer's producer index on our read ring */
    out[1] = ncd_vchan_peek_space(v); /* the peer's consumer index on our write ring */
    out[2] = ncd_vchan_is_open(v);    /* its live flag */
}

static int unmask(struct ncd_vchan_eoi *e, struct ncd_vchan *v)
{
    e->unmask_at = 0;
    if (v->evt && xenevtchn_unmask(v->evt, v->port) < 0)
        return -1;
    return 0;
}

void ncd_vchan_eoi_arm(struct ncd_vchan_eoi *e, struct ncd_vchan *v)
{
    snapshot(v, e->seen);
}

int ncd_vchan_eoi_event(struct ncd_vchan_eoi *e, struct ncd_vchan *v)
{
    int64_t now[3];

    if (v->evt) {
        if (xenevtchn_pending(v->evt) < 0)
            return errno == EAGAIN ? 0 : -1; /* none pending: a wakeup raced */
    } else {
        uint64_t cnt;
        if (read(v->efd, &cnt, sizeof cnt) != (ssize_t)sizeof cnt)
            return errno == EAGAIN ? 0 : -1;
    }
    STAT_ADD(v, notify_recv);
    snapshot(v, now);
    if (now[0] != e->seen[0] || now[1] != e->seen[1] || now[2] != e->seen[2]) {
        e->streak = 0;
        return unmask(e, v) < 0 ? -1 : 1;
    }
    __atomic_fetch_add(&e->spurious, 1, __ATOMIC_RELAXED);
    if (e->streak < 64)
        e->streak++;
    if (e->streak <= EOI_FREE)
        return unmask(e, v) < 0 ? -1 : 1;
    unsigned shift = e->streak - EOI_FREE - 1;
    int64_t us = shift >= 8 ? EOI_MAX_US : (int64_t)EOI_FIRST_US << shift;
    if (us > EOI_MAX_US)
        us = EOI_MAX_US;
    e->unmask_at = now_ns() + us * 1000;
    return 1;
}

int ncd_vchan_eoi_fd(const struct ncd_vchan_eoi *e, struct ncd_vchan *v)
{
    return e->unmask_at && !v->evt ? -1 : ncd_vchan_fd(v);
}

int ncd_vchan_eoi_timeout(const struct ncd_vchan_eoi *e, int timeout_ms)
{
    if (!e->unmask_at)
        return timeout_ms;
    int64_t left = e->unmask_at - now_ns();
    int ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
    return timeout_ms >= 0 && timeout_ms < ms ? timeout_ms : ms;
}

int ncd_vchan_eoi_tick(struct ncd_vchan_eoi *e, struct ncd_vchan *v)
{
    if (!e->unmask_at || now_ns() < e->unmask_at)
        return 0;
    return unmask(e, v);
}

int ncd_vchan_eoi_work(struct ncd_vchan_eoi *e, struct ncd_vchan *v)
{
    e->streak = 0;
    return e->unmask_at ? unmask(e, v) : 0;
}

uint64_t ncd_vchan_eoi_spurious(const struct ncd_vchan_eoi *e)
{
    return __atomic_load_n(&e->spurious, __ATOMIC_RELAXED);
}
