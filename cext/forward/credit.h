/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd rate limit: a credit per interval on what a guest transmits (docs/forwarding.md,
 * "Rate limit"), Linux xen-netback's scheme (netback.c tx_add_credit /
 * tx_credit_exceeded, xenbus.c xen_net_rate_changed) with the time as an input:
 *
 *   - every `usec` microseconds the credit grows by `bytes`, capped at
 *     max(NCD_CREDIT_MAX_BURST, bytes + NCD_CREDIT_CARRY): a frame larger than one
 *     interval's credit (up to 128 KiB, every ncd frame) passes once enough
 *     intervals have accumulated, as in netback;
 *   - a frame passes while it fits in the remaining credit; one that does not arms
 *     the refill "timer" at the end of the current window and the window moves
 *     there, so a backlogged sender gets exactly `bytes` per `usec` however late
 *     the thread wakes (netback: credit_window_start = next_credit);
 *   - a live change clamps the remaining credit to the new `bytes`, or, with a
 *     refill pending, refills now under the new rate (mod_timer_pending(jiffies)).
 *
 * bytes == 0 or usec == 0: unlimited (the default; libxl writes no `rate` key then).
 *
 * struct ncd_credit is owned by one thread (a pump's or a switch's), which passes
 * CLOCK_MONOTONIC microseconds (ncd_credit_now) into every call: the arithmetic is
 * pure and tested with any clock (tests/forward/c/credit_test.c). struct
 * ncd_credit_ctl carries a new (bytes, usec) from any thread to that one.
 */
#ifndef NCD_CREDIT_H
#define NCD_CREDIT_H

#include <pthread.h>
#include <stdint.h>

/* netback: "Allow a burst big enough to transmit a jumbo packet of up to 128kB." */
#define NCD_CREDIT_MAX_BURST 131072u
/* The credit left over from an interval (it did not fit the next frame, so it is
 * less than one frame: NCD_ETH_MAX, a GSO frame) is kept on top of the next
 * interval's: the cap is max(NCD_CREDIT_MAX_BURST, bytes + NCD_CREDIT_CARRY).
 * Netback's cap, max(128 KiB, bytes), drops it: with 64 KiB GSO frames that loses
 * up to a frame per interval, 10-20% of the rate at 50 Mbit/s. */
#define NCD_CREDIT_CARRY 65664u

struct ncd_credit {
    uint64_t bytes;        /* credit per interval (credit_bytes); 0 = unlimited */
    uint64_t usec;         /* interval length (credit_usec); 0 = unlimited */
    uint64_t remaining;    /* credit left (remaining_credit) */
    uint64_t window_start; /* start of the current window, us (credit_window_start) */
    uint64_t refill_at;    /* a pending refill (netback's credit timer), us; 0 = none */
    uint64_t waiting_since; /* when the frame now waiting first waited, us; 0 = none */
    /* counters (monotonic) */
    uint64_t waits;        /* frames that had to wait for a refill (rate_limited) */
    uint64_t wait_usec;    /* time those frames waited, microseconds */
};

/* CLOCK_MONOTONIC in microseconds (never 0). */
uint64_t ncd_credit_now(void);

/* A fresh credit (at connect): full interval's credit, window starting at now. */
void ncd_credit_init(struct ncd_credit *c, uint64_t bytes, uint64_t usec, uint64_t now);

/* Whether a frame of `size` bytes may pass at `now`. 1: it passes, its size is taken
 * from the credit. 0: it must wait; *wake = the time (us) at which to ask again
 * (the pending refill). Unlimited: always 1. */
int ncd_credit_take(struct ncd_credit *c, uint64_t size, uint64_t now, uint64_t *wake);

/* Give back what ncd_credit_take took for a frame that then did not go (the
 * caller keeps it for later, e.g. its fd was full): it is charged once, when it goes. */
void ncd_credit_untake(struct ncd_credit *c, uint64_t size);

/* A live change of the rate (xen_net_rate_changed); counters are kept. */
void ncd_credit_set(struct ncd_credit *c, uint64_t bytes, uint64_t usec, uint64_t now);

/* Whether a limit is set at all (else ncd_credit_take always says yes). */
static inline int ncd_credit_limited(const struct ncd_credit *c)
{
    return c->bytes != 0 && c->usec != 0;
}

/* Milliseconds from now to *wake for poll(), rounded up (waking early only costs a
 * look), at least 1 and at most INT32_MAX. */
int ncd_credit_poll_ms(uint64_t wake, uint64_t now);

/* The rate set from another thread (Python), picked up by the owner thread. */
struct ncd_credit_ctl {
    pthread_mutex_t lock;
    uint64_t bytes, usec; /* under lock */
    int changed;          /* atomic: set (release) under lock, cleared by the owner */
};

void ncd_credit_ctl_init(struct ncd_credit_ctl *ctl);
void ncd_credit_ctl_destroy(struct ncd_credit_ctl *ctl);
/* Any thread: publish a new rate. */
void ncd_credit_ctl_post(struct ncd_credit_ctl *ctl, uint64_t bytes, uint64_t usec);
/* Owner thread: whether a rate was posted since the last apply (one atomic load). */
static inline int ncd_credit_ctl_changed(struct ncd_credit_ctl *ctl)
{
    /* pairs with the release store in ncd_credit_ctl_post */
    return __atomic_load_n(&ctl->changed, __ATOMIC_ACQUIRE);
}
/* Owner thread: apply the posted rate to c (ncd_credit_set); 1 if there was one. */
int ncd_credit_ctl_apply(struct ncd_credit_ctl *ctl, struct ncd_credit *c, uint64_t now);

#endif
