/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd answer predictor (docs/forwarding.md, "Wake-ups"): how soon a peer answers
 * what it is sent, so that a thread about to sleep spins first only when the other
 * half of a request/response is probably on its way (a ping's echo reply), and not
 * for what comes later (the next request, 10 ms away) or never (one-way traffic).
 *
 * A thread marks when it hands a peer something (the first hand-over since the
 * peer last sent); when the peer's next data shows up, the time in between is one
 * answer, folded into a moving average (weight 1/8). An answer is due while the
 * last hand-over is younger than the spin and the average is shorter than it.
 * A peer that never answers averages long waits and is never spun for. Time is
 * an input (nanoseconds, CLOCK_MONOTONIC); each struct is owned by one thread.
 */
#ifndef NCD_ANSWER_H
#define NCD_ANSWER_H

#include <stdint.h>
#include <time.h>

#define NCD_ANSWER_SHIFT 3 /* average over ~8 answers */

struct ncd_answer {
    int64_t sent_ns; /* the first hand-over since the peer last sent; 0 = none */
    int64_t avg_ns;  /* average time from such a hand-over to the peer's next data */
};

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t ncd_answer_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* No spinning for this peer until its answers have been quick. */
static inline void ncd_answer_init(struct ncd_answer *a, int64_t spin_ns)
{
    a->sent_ns = 0;
    a->avg_ns = spin_ns;
}

/* Something was handed to the peer at now. */
static inline void ncd_answer_sent(struct ncd_answer *a, int64_t now)
{
    if (!a->sent_ns)
        a->sent_ns = now;
}

/* The peer's data showed up at now. */
static inline void ncd_answer_seen(struct ncd_answer *a, int64_t now)
{
    if (a->sent_ns) {
        a->avg_ns += (now - a->sent_ns - a->avg_ns) / (1 << NCD_ANSWER_SHIFT);
        a->sent_ns = 0;
    }
}

/* A thread's idle wait of ns (from running out of work to finding some, a spin
 * included), folded into its average *avg_ns with the same weight: the switch
 * and the pump spin only while that average stays under their spin. */
static inline void ncd_answer_waited(int64_t *avg_ns, int64_t ns)
{
    *avg_ns += (ns - *avg_ns) / (1 << NCD_ANSWER_SHIFT);
}

/* A spin of spin_ns that found nothing: no more spins (on the waits' average)
 * until at least 21 waits, each folded in with weight 1/8, have brought the
 * average back under one spin, and twice as many after each further miss in a
 * row (*misses counts them, up to NCD_ANSWER_MISSES_MAX; reset it when a spin
 * finds work).  A peer that wakes us without work buys one spin per 21 or more
 * events, and on a loaded host, where the peer is off its CPU, the spinning stops. */
#define NCD_ANSWER_MISSED 16    /* spins the average is set to after a first miss */
#define NCD_ANSWER_MISSES_MAX 6 /* ... doubled per miss in a row up to 1024 spins */

static inline void ncd_answer_missed(int64_t *avg_ns, unsigned *misses, int64_t spin_ns)
{
    *avg_ns = ((int64_t)NCD_ANSWER_MISSED << *misses) * spin_ns;
    if (*misses < NCD_ANSWER_MISSES_MAX)
        (*misses)++;
}

/* Whether the peer's answer is probably less than spin_ns away. */
static inline int ncd_answer_due(const struct ncd_answer *a, int64_t now, int64_t spin_ns)
{
    return a->sent_ns && a->avg_ns < spin_ns && now - a->sent_ns < spin_ns;
}

#endif
