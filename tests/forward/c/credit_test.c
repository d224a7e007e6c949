/* The rate limit's credit arithmetic (cext/forward/credit.c) with a clock of our own:
 * refill, exhaustion, a frame larger than the credit, live changes, u64 edges, the
 * long-run rate of a backlogged sender woken late. Built with ASan/UBSan by
 * tests/forward/test_credit_c.py; prints "ok N checks" and exits 0, or names the
 * failed check and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "credit.h"
#include "check.h"

static int take(struct ncd_credit *c, uint64_t size, uint64_t now, uint64_t *wake)
{
    *wake = 0;
    return ncd_credit_take(c, size, now, wake);
}

static void test_refill_and_exhaustion(void)
{
    struct ncd_credit c;
    uint64_t wake;

    ncd_credit_init(&c, 1000, 1000, 1000);
    CHECK(ncd_credit_limited(&c));
    CHECK(take(&c, 600, 1000, &wake) == 1);
    CHECK(take(&c, 400, 1000, &wake) == 1);
    CHECK(c.remaining == 0);
    CHECK(take(&c, 1, 1000, &wake) == 0); /* spent: wait for the window's end */
    CHECK(wake == 2000);
    CHECK(c.waits == 1);
    CHECK(take(&c, 1, 1500, &wake) == 0); /* still waiting: the same frame, not counted */
    CHECK(wake == 2000);
    CHECK(c.waits == 1);
    CHECK(take(&c, 1, 2000, &wake) == 1); /* the refill */
    CHECK(c.remaining == 999);
    CHECK(c.wait_usec == 1000);
    CHECK(c.window_start == 2000);
    /* a window that ended long ago: a new one starts at now, one interval's credit more */
    CHECK(take(&c, 999, 2000, &wake) == 1);
    CHECK(take(&c, 500, 9000, &wake) == 1);
    CHECK(c.window_start == 9000);
    CHECK(c.remaining == 500);
}

static void test_frame_larger_than_credit(void)
{
    struct ncd_credit c;
    uint64_t wake;

    /* netback: credit accumulates over intervals up to max(128 KiB, bytes) */
    ncd_credit_init(&c, 1000, 1000, 10);
    CHECK(take(&c, 1514, 10, &wake) == 0);
    CHECK(wake == 1010);
    CHECK(take(&c, 1514, 1010, &wake) == 1); /* 2000 after one refill */
    CHECK(c.remaining == 486);
    /* the largest ncd frame at a tiny credit: passes after enough refills */
    ncd_credit_init(&c, 100, 10, 0);
    uint64_t now = 0, rounds = 0;
    c.remaining = 0;
    while (!take(&c, 65664, now, &wake)) {
        CHECK(wake > now);
        now = wake;
        rounds++;
        CHECK(rounds < 1000);
    }
    CHECK(rounds >= 656 && rounds <= 658);
    /* the burst cap: refills (forced by a frame that never fits) never exceed
     * max(NCD_CREDIT_MAX_BURST, bytes + NCD_CREDIT_CARRY) */
    const uint64_t never = 1u << 30;
    ncd_credit_init(&c, 1000, 10, 0);
    for (now = 10; now < 10000; now += 10)
        CHECK(take(&c, never, now, &wake) == 0);
    CHECK(c.remaining == NCD_CREDIT_MAX_BURST); /* netback's 128 KiB */
    CHECK(take(&c, NCD_CREDIT_MAX_BURST, now, &wake) == 1);
    ncd_credit_init(&c, 100000, 10, 0);
    for (now = 10; now < 1000; now += 10)
        CHECK(take(&c, never, now, &wake) == 0);
    CHECK(c.remaining == 100000 + NCD_CREDIT_CARRY);
    ncd_credit_init(&c, 1u << 20, 10, 0);
    for (now = 10; now < 1000; now += 10)
        CHECK(take(&c, never, now, &wake) == 0);
    CHECK(c.remaining == (1u << 20) + NCD_CREDIT_CARRY);
    /* what an interval left (less than the next frame) is kept, not lost */
    ncd_credit_init(&c, 625000, 50000, 0);
    CHECK(take(&c, 600000, 0, &wake) == 1);
    CHECK(take(&c, 65000, 0, &wake) == 0);
    CHECK(take(&c, 65000, 50000, &wake) == 1);
    CHECK(c.remaining == 25000 + 625000 - 65000);
}

static void test_untake(void)
{
    struct ncd_credit c;
    uint64_t wake;

    /* a frame taken, then not sent (fd full): charged once, when it goes */
    ncd_credit_init(&c, 1000, 1000, 0);
    CHECK(take(&c, 800, 0, &wake) == 1);
    ncd_credit_untake(&c, 800);
    CHECK(c.remaining == 1000);
    CHECK(take(&c, 800, 0, &wake) == 1);
    CHECK(take(&c, 200, 0, &wake) == 1);
    ncd_credit_init(&c, UINT64_MAX, 1, 0); /* saturates */
    ncd_credit_untake(&c, 5);
    CHECK(c.remaining == UINT64_MAX);
    ncd_credit_init(&c, 0, 0, 0); /* unlimited: nothing to give back */
    ncd_credit_untake(&c, 5);
    CHECK(c.remaining == 0);
}

static void test_live_change(void)
{
    struct ncd_credit c;
    uint64_t wake;

    /* a refill pending: it happens now, under the new rate (mod_timer_pending) */
    ncd_credit_init(&c, 1000, 1000, 1000);
    CHECK(take(&c, 1000, 1000, &wake) == 1);
    CHECK(take(&c, 800, 1200, &wake) == 0);
    CHECK(wake == 2000);
    ncd_credit_set(&c, 5000, 1000, 1500);
    CHECK(take(&c, 800, 1500, &wake) == 1);
    CHECK(c.remaining == 4200);
    /* no refill pending: what is left is clamped to the new interval's credit */
    ncd_credit_set(&c, 100, 1000, 1600);
    CHECK(c.remaining == 100);
    CHECK(take(&c, 101, 1600, &wake) == 0);
    /* to unlimited: everything passes, the wait ends */
    ncd_credit_set(&c, 0, 0, 1700);
    CHECK(!ncd_credit_limited(&c));
    CHECK(take(&c, 1u << 30, 1700, &wake) == 1);
    CHECK(c.wait_usec == 300 + 100); /* 1200..1500, then 1600..1700 */
    ncd_credit_set(&c, 200, 0, 1700); /* usec 0 is unlimited too */
    CHECK(take(&c, 1u << 30, 1700, &wake) == 1);
    /* back to limited: a fresh window at now, as at connect */
    ncd_credit_set(&c, 300, 1000, 5000);
    CHECK(c.remaining == 300 && c.window_start == 5000);
    CHECK(take(&c, 300, 5000, &wake) == 1);
    CHECK(take(&c, 1, 5000, &wake) == 0);
    CHECK(wake == 6000);
    CHECK(c.waits == 3); /* counters survive changes */
}

static void test_u64_edges(void)
{
    struct ncd_credit c;
    uint64_t wake;

    /* the credit never wraps: remaining + bytes saturates */
    ncd_credit_init(&c, UINT64_MAX, 1, 0);
    CHECK(take(&c, 1, 0, &wake) == 1);
    CHECK(take(&c, UINT64_MAX, 5, &wake) == 1); /* refilled to UINT64_MAX, not wrapped */
    CHECK(c.remaining == 0);
    CHECK(take(&c, UINT64_MAX, 10, &wake) == 1);
    /* the clock near its end: the window's end saturates, the frame still passes */
    ncd_credit_init(&c, 1000, 1000, UINT64_MAX - 10);
    CHECK(take(&c, 1000, UINT64_MAX - 10, &wake) == 1);
    CHECK(take(&c, 1, UINT64_MAX - 5, &wake) == 0);
    CHECK(wake == UINT64_MAX);
    CHECK(take(&c, 1, UINT64_MAX, &wake) == 1);
    /* the longest interval libxl can write and a huge credit */
    ncd_credit_init(&c, UINT64_MAX - 1, UINT32_MAX, 1);
    CHECK(take(&c, UINT64_MAX - 1, 1, &wake) == 1);
    CHECK(take(&c, 1, 2, &wake) == 0);
    CHECK(wake == 1 + (uint64_t)UINT32_MAX);
    /* a refill armed in the past fires at once (no busy "wait until the past") */
    ncd_credit_init(&c, 1000, 1000, 0);
    c.remaining = 0;
    CHECK(take(&c, 1500, 100000, &wake) == 1);
    /* poll timeouts: rounded up, 0 when due, capped */
    CHECK(ncd_credit_poll_ms(2000, 1500) == 1);
    CHECK(ncd_credit_poll_ms(2001, 0) == 3);
    CHECK(ncd_credit_poll_ms(1000, 1000) == 0);
    CHECK(ncd_credit_poll_ms(5, 1000) == 0);
    CHECK(ncd_credit_poll_ms(UINT64_MAX, 0) == INT32_MAX);
}

/* A backlogged sender of frames at 100 Mbit/s with xl's 50 ms interval, its thread
 * woken up to 40 ms late: over 100 s it gets the rate, to one interval (lateness
 * costs nothing: the window moves to where the refill was due; what an interval
 * left is kept). With 64 KiB GSO frames too. */
static void long_run(uint64_t bytes, uint64_t frame)
{
    struct ncd_credit c;
    uint64_t wake, now = 1, sent = 0;
    const uint64_t usec = 50000, end = 100u * 1000000u;
    unsigned seed = 1;

    ncd_credit_init(&c, bytes, usec, now);
    while (now < end) {
        if (take(&c, frame, now, &wake)) {
            sent += frame;
            continue;
        }
        CHECK(wake > now);
        seed = seed * 1103515245u + 12345u;
        now = wake + (seed >> 8) % 40000u;
    }
    uint64_t expected = bytes * (end / usec);
    CHECK(sent <= expected + bytes + frame); /* never above the rate ... */
    CHECK(sent + bytes + frame >= expected); /* ... nor below it: remainders are kept */
}

static void test_long_run_rate(void)
{
    long_run(625000, 1514);
    long_run(625000, 65000);
    long_run(312500, 65000);
    long_run(12500, 1514); /* 2 Mbit/s: below netback's 128 KiB burst */
}

static void test_ctl(void)
{
    struct ncd_credit c;
    struct ncd_credit_ctl ctl;

    ncd_credit_init(&c, 0, 0, 1);
    ncd_credit_ctl_init(&ctl);
    CHECK(!ncd_credit_ctl_changed(&ctl));
    CHECK(ncd_credit_ctl_apply(&ctl, &c, 10) == 0);
    ncd_credit_ctl_post(&ctl, 7, 8);
    ncd_credit_ctl_post(&ctl, 625000, 50000); /* the later post wins */
    CHECK(ncd_credit_ctl_changed(&ctl));
    CHECK(ncd_credit_ctl_apply(&ctl, &c, 10) == 1);
    CHECK(c.bytes == 625000 && c.usec == 50000 && c.remaining == 625000);
    CHECK(!ncd_credit_ctl_changed(&ctl));
    CHECK(ncd_credit_ctl_apply(&ctl, &c, 20) == 0);
    ncd_credit_ctl_destroy(&ctl);
}

int main(void)
{
    test_refill_and_exhaustion();
    test_frame_larger_than_credit();
    test_untake();
    test_live_change();
    test_u64_edges();
    test_long_run_rate();
    test_ctl();
    CHECK(ncd_credit_now() > 0);
    printf("ok %d checks\n", checks);
    return 0;
}
