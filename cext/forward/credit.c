/* SPDX-License-Identifier: GPL-2.0-only */
/* ncd rate limit: see credit.h. */
#include "credit.h"

#include <time.h>

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a + b < a ? UINT64_MAX : a + b;
}

static int unlimited(const struct ncd_credit *c)
{
    return c->bytes == 0 || c->usec == 0;
}

uint64_t ncd_credit_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u + 1u;
}

/* netback's tx_add_credit: one interval's credit more, never wrapping, capped at a
 * burst that still fits the largest frame; and (ncd) what is left of the last
 * interval, less than one frame, is kept on top of the new credit (see credit.h). */
static void add_credit(struct ncd_credit *c)
{
    uint64_t carry = sat_add(c->bytes, NCD_CREDIT_CARRY);
    uint64_t max_burst = carry > NCD_CREDIT_MAX_BURST ? carry : NCD_CREDIT_MAX_BURST;
    uint64_t max_credit = sat_add(c->remaining, c->bytes);

    c->remaining = max_credit < max_burst ? max_credit : max_burst;
}

static void end_wait(struct ncd_credit *c, uint64_t now)
{
    if (c->waiting_since) {
        c->wait_usec += now > c->waiting_since ? now - c->waiting_since : 0;
        c->waiting_since = 0;
    }
}

void ncd_credit_init(struct ncd_credit *c, uint64_t bytes, uint64_t usec, uint64_t now)
{
    *c = (struct ncd_credit){.bytes = bytes, .usec = usec, .remaining = bytes,
                             .window_start = now};
}

int ncd_credit_take(struct ncd_credit *c, uint64_t size, uint64_t now, uint64_t *wake)
{
    if (unlimited(c)) {
        end_wait(c, now);
        return 1;
    }
    /* A refill armed in the past (a frame larger than the credit after an idle
     * window) fires at once: at most a few rounds before the refill lies ahead
     * (the window then starts at now, and now + usec > now short of saturation). */
    for (int round = 0; round < 4; round++) {
        if (c->refill_at) {
            if (now < c->refill_at) {
                *wake = c->refill_at;
                return 0;
            }
            c->refill_at = 0; /* netback's credit timer fired */
            add_credit(c);
        }
        if (size <= c->remaining) {
            c->remaining -= size;
            end_wait(c, now);
            return 1;
        }
        /* tx_credit_exceeded: a new window if the current one is over ... */
        uint64_t next = sat_add(c->window_start, c->usec);
        if (now >= next) {
            c->window_start = now;
            add_credit(c);
            if (size <= c->remaining) {
                c->remaining -= size;
                end_wait(c, now);
                return 1;
            }
        }
        /* ... else wait for the refill at the end of the window, which moves there */
        if (!c->waiting_since) {
            c->waiting_since = now;
            c->waits++;
        }
        c->refill_at = next; /* >= usec > 0 */
        c->window_start = next;
    }
    *wake = c->refill_at;
    return 0;
}

void ncd_credit_untake(struct ncd_credit *c, uint64_t size)
{
    if (!unlimited(c))
        c->remaining = sat_add(c->remaining, size);
}

void ncd_credit_set(struct ncd_credit *c, uint64_t bytes, uint64_t usec, uint64_t now)
{
    int was_unlimited = unlimited(c);

    c->bytes = bytes;
    c->usec = usec;
    if (unlimited(c)) {
        c->refill_at = 0; /* what waits passes at the next look */
        return;
    }
    if (was_unlimited) { /* as at connect */
        c->remaining = bytes;
        c->window_start = now;
        c->refill_at = 0;
        return;
    }
    /* xen_net_rate_changed: a pending refill happens now, under the new rate;
     * else the credit left is clamped to the new interval's */
    if (c->refill_at)
        c->refill_at = now ? now : 1;
    else if (c->remaining > bytes)
        c->remaining = bytes;
}

int ncd_credit_poll_ms(uint64_t wake, uint64_t now)
{
    if (wake <= now)
        return 0;
    uint64_t d = wake - now, ms = d / 1000u + (d % 1000u != 0); /* no overflow */
    return ms > INT32_MAX ? INT32_MAX : (int)ms;
}

void ncd_credit_ctl_init(struct ncd_credit_ctl *ctl)
{
    pthread_mutex_init(&ctl->lock, NULL);
    ctl->bytes = ctl->usec = 0;
    ctl->changed = 0;
}

void ncd_credit_ctl_destroy(struct ncd_credit_ctl *ctl)
{
    pthread_mutex_destroy(&ctl->lock);
}

void ncd_credit_ctl_post(struct ncd_credit_ctl *ctl, uint64_t bytes, uint64_t usec)
{
    pthread_mutex_lock(&ctl->lock);
    ctl->bytes = bytes;
    ctl->usec = usec;
    /* release: pairs with the acquire load in ncd_credit_ctl_changed (the owner
     * then takes the lock to read the pair, so it is never torn) */
    __atomic_store_n(&ctl->changed, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ctl->lock);
}

int ncd_credit_ctl_apply(struct ncd_credit_ctl *ctl, struct ncd_credit *c, uint64_t now)
{
    uint64_t bytes, usec;

    if (!ncd_credit_ctl_changed(ctl))
        return 0;
    pthread_mutex_lock(&ctl->lock);
    bytes = ctl->bytes;
    usec = ctl->usec;
    __atomic_store_n(&ctl->changed, 0, __ATOMIC_RELAXED); /* under the lock: a later post wins */
    pthread_mutex_unlock(&ctl->lock);
    ncd_credit_set(c, bytes, usec, now);
    return 1;
}
