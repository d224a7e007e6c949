/* What one sleeping thread costs to wake on this machine: two threads play
 * ping-pong through a pair of eventfds, each blocking in poll() as ncd's pump
 * does (cext/pump/pump.c), and every round trip is timed.  A round trip is two
 * wake-ups, so half of it is the price of one; ncd's ping RTT is about that
 * price times the wake-ups on its path (docs/performance.md, "Latency floor").
 *
 *   wake_bench ROUNDS CPU_A CPU_B [spin]
 *
 * CPU_A / CPU_B: the CPU each thread is pinned to, -1 = wherever the scheduler
 * puts it.  "spin": the threads spin on a shared counter instead of sleeping
 * (the floor: what a hand-over costs with nobody asleep).  Prints the round
 * trips' p50, p90 and p99 in nanoseconds on one line: "p50 p90 p99". */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct side {
    int in, out; /* eventfds: wait on in, signal out */
    int cpu;
    long rounds;
    int spin;
    uint64_t *turn; /* spin mode: whose turn, by round parity */
    int parity;     /* the turn values this side waits for: 0 or 1 */
    uint64_t *rtt;  /* ping side only: ns per round trip */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (rc) {
        fprintf(stderr, "wake_bench: pin to CPU %d: %s\n", cpu, strerror(rc));
        exit(2);
    }
}

static void wait_fd(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    uint64_t v;
    while (poll(&p, 1, -1) < 0 && errno == EINTR)
        ;
    if (read(fd, &v, sizeof v) != sizeof v) {
        perror("wake_bench: eventfd read");
        exit(2);
    }
}

static void signal_fd(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) != sizeof one) {
        perror("wake_bench: eventfd write");
        exit(2);
    }
}

/* Spin mode: wait until *turn has our parity, then pass it on.  The acquire
 * load pairs with the other side's release increment. */
static void spin_wait(struct side *s, uint64_t round)
{
    uint64_t want = 2 * round + (uint64_t)s->parity;
    while (__atomic_load_n(s->turn, __ATOMIC_ACQUIRE) != want)
        __builtin_ia32_pause();
}

static void spin_pass(struct side *s)
{
    /* release: pairs with the acquire load in the other side's spin_wait() */
    __atomic_fetch_add(s->turn, 1, __ATOMIC_RELEASE);
}

static void *pong(void *arg)
{
    struct side *s = arg;
    pin(s->cpu);
    for (long i = 0; i < s->rounds; i++) {
        if (s->spin) {
            spin_wait(s, (uint64_t)i);
            spin_pass(s);
        } else {
            wait_fd(s->in);
            signal_fd(s->out);
        }
    }
    return NULL;
}

static void ping(struct side *s)
{
    pin(s->cpu);
    for (long i = 0; i < s->rounds; i++) {
        uint64_t t0 = now_ns();
        if (s->spin) {
            spin_pass(s);
            spin_wait(s, (uint64_t)i + 1);
        } else {
            signal_fd(s->out);
            wait_fd(s->in);
        }
        s->rtt[i] = now_ns() - t0;
        if (!s->spin)
            usleep(200); /* let the other side fall asleep, as an idle pump does */
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: wake_bench ROUNDS CPU_A CPU_B [spin]\n");
        return 2;
    }
    long rounds = strtol(argv[1], NULL, 10);
    if (rounds < 10) {
        fprintf(stderr, "wake_bench: ROUNDS must be at least 10\n");
        return 2;
    }
    int spin = argc > 4 && strcmp(argv[4], "spin") == 0;
    int ab = eventfd(0, EFD_CLOEXEC), ba = eventfd(0, EFD_CLOEXEC);
    uint64_t *rtt = calloc((size_t)rounds, sizeof *rtt);
    uint64_t turn = 0;
    if (ab < 0 || ba < 0 || !rtt) {
        perror("wake_bench: setup");
        return 2;
    }
    struct side a = {.in = ba, .out = ab, .cpu = atoi(argv[2]), .rounds = rounds,
                     .spin = spin, .turn = &turn, .parity = 0, .rtt = rtt};
    struct side b = {.in = ab, .out = ba, .cpu = atoi(argv[3]), .rounds = rounds,
                     .spin = spin, .turn = &turn, .parity = 1};
    pthread_t t;
    int rc = pthread_create(&t, NULL, pong, &b);
    if (rc) {
        fprintf(stderr, "wake_bench: pthread_create: %s\n", strerror(rc));
        return 2;
    }
    ping(&a);
    pthread_join(t, NULL);
    qsort(rtt, (size_t)rounds, sizeof *rtt, cmp_u64);
    printf("%llu %llu %llu\n", (unsigned long long)rtt[rounds / 2],
           (unsigned long long)rtt[rounds * 9 / 10], (unsigned long long)rtt[rounds * 99 / 100]);
    free(rtt);
    return 0;
}
