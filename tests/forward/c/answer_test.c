/* The answer predictor (cext/forward/answer.h) with a clock of our own: a peer that
 * answers quickly is spun for, one whose answers come later than the spin is not, a
 * hand-over older than the spin is not, a new peer is not, and the average follows a
 * peer whose answers slow down. Built with ASan/UBSan by tests/forward/test_credit_c.py;
 * prints "ok N checks" and exits 0, or names the failed check and exits 1. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "answer.h"
#include "check.h"

#define SPIN 150000 /* ns */
#define US 1000

/* n exchanges: handed something at t, the answer seen `after` ns later; returns the
 * time of the last answer */
static int64_t exchanges(struct ncd_answer *a, int64_t t, int n, int64_t after, int64_t gap)
{
    for (int i = 0; i < n; i++, t += gap) {
        ncd_answer_sent(a, t);
        ncd_answer_seen(a, t + after);
    }
    return t;
}

static void test_new_peer_is_not_spun_for(void)
{
    struct ncd_answer a;

    ncd_answer_init(&a, SPIN);
    CHECK(!ncd_answer_due(&a, 1000 * US, SPIN)); /* nothing handed over */
    ncd_answer_sent(&a, 1000 * US);
    CHECK(!ncd_answer_due(&a, 1001 * US, SPIN)); /* handed over, no quick answers yet */
    ncd_answer_seen(&a, 1000 * US + 20 * US);
    CHECK(a.sent_ns == 0 && a.avg_ns < SPIN);
}

static void test_quick_responder(void)
{
    struct ncd_answer a;
    int64_t t;

    ncd_answer_init(&a, SPIN);
    t = exchanges(&a, 1000 * US, 30, 40 * US, 10000 * US); /* a ping's responder */
    CHECK(a.avg_ns > 39 * US && a.avg_ns < 60 * US);
    ncd_answer_sent(&a, t);
    CHECK(ncd_answer_due(&a, t, SPIN));
    CHECK(ncd_answer_due(&a, t + 149 * US, SPIN));
    CHECK(!ncd_answer_due(&a, t + 150 * US, SPIN)); /* the spin is over: sleep */
    /* a second hand-over before the answer keeps the first one's time */
    ncd_answer_sent(&a, t + 100 * US);
    CHECK(a.sent_ns == t);
    ncd_answer_seen(&a, t + 30 * US);
    CHECK(!ncd_answer_due(&a, t + 31 * US, SPIN)); /* answered: nothing due */
}

static void test_slow_or_silent_peer(void)
{
    struct ncd_answer a;
    int64_t t;

    ncd_answer_init(&a, SPIN);
    t = exchanges(&a, 1000 * US, 30, 10000 * US, 20000 * US); /* a ping's requester */
    CHECK(a.avg_ns > SPIN);
    ncd_answer_sent(&a, t);
    CHECK(!ncd_answer_due(&a, t + 1 * US, SPIN));
    /* quick for a while, then its answers slow down: the spin stops within a few */
    ncd_answer_init(&a, SPIN);
    t = exchanges(&a, 1000 * US, 30, 20 * US, 1000 * US);
    CHECK(a.avg_ns < SPIN);
    int n = 0;
    while (a.avg_ns < SPIN) {
        t = exchanges(&a, t, 1, 2000 * US, 5000 * US);
        n++;
    }
    CHECK(n <= 2);
    ncd_answer_sent(&a, t);
    CHECK(!ncd_answer_due(&a, t + 1 * US, SPIN));
}

int main(void)
{
    test_new_peer_is_not_spun_for();
    test_quick_responder();
    test_slow_or_silent_peer();
    printf("ok %d checks\n", checks);
    return 0;
}
