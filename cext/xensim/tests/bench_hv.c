/*
 * Micro-benchmarks for xensim (driven by bench/bench_hypervisor.py), linked
 * against Debian's libxengnttab/libxenevtchn and run on the shims.
 *
 *   bench_hv pong N              bind an unbound port for dom PEER (env
 *                                BENCH_PEER), print it, answer N pings
 *   bench_hv ping N DOM PORT     bind to DOM:PORT, time N notify->event round
 *                                trips; prints "rtt_us <value>"
 *   bench_hv share COUNT DOM     share COUNT pages with DOM, print "refs FIRST",
 *                                keep them until stdin closes
 *   bench_hv map COUNT ITER DOM FIRST
 *                                ITER x (map COUNT refs FIRST.. + unmap);
 *                                prints "map_unmap_us <per op>"
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <xenevtchn.h>
#include <xengnttab.h>

static double now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void wait_event(xenevtchn_handle *ev, int port)
{
    int p = xenevtchn_pending(ev);

    if (p != port)
        die("xenevtchn_pending");
    if (xenevtchn_unmask(ev, p) < 0)
        die("xenevtchn_unmask");
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "pong")) {
        long n = atol(argv[2]);
        xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
        int port;

        if (!ev)
            die("xenevtchn_open");
        port = xenevtchn_bind_unbound_port(ev, (uint32_t)atoi(getenv("BENCH_PEER")));
        if (port < 0)
            die("bind_unbound_port");
        printf("port %d\n", port);
        fflush(stdout);
        for (long i = 0; i < n; i++) {
            wait_event(ev, port);
            if (xenevtchn_notify(ev, port) < 0)
                die("notify");
        }
        xenevtchn_close(ev);
        return 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "ping")) {
        long n = atol(argv[2]);
        xenevtchn_handle *ev = xenevtchn_open(NULL, 0);
        int port;
        double t0;

        if (!ev)
            die("xenevtchn_open");
        port = xenevtchn_bind_interdomain(ev, (uint32_t)atoi(argv[3]), (uint32_t)atoi(argv[4]));
        if (port < 0)
            die("bind_interdomain");
        wait_event(ev, port); /* Xen marks the binder's port pending */
        t0 = now_us();
        for (long i = 0; i < n; i++) {
            if (xenevtchn_notify(ev, port) < 0)
                die("notify");
            wait_event(ev, port);
        }
        printf("rtt_us %.3f\n", (now_us() - t0) / (double)n);
        xenevtchn_close(ev);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "share")) {
        int count = atoi(argv[2]);
        uint32_t *refs = calloc((size_t)count, sizeof(*refs));
        xengntshr_handle *gs = xengntshr_open(NULL, 0);
        void *p;
        char buf[64];

        if (!gs || !refs)
            die("xengntshr_open");
        p = xengntshr_share_pages(gs, (uint32_t)atoi(argv[3]), count, refs, 1);
        if (!p)
            die("share_pages");
        for (int i = 1; i < count; i++) {
            if (refs[i] != refs[0] + (uint32_t)i) {
                fprintf(stderr, "refs not consecutive\n");
                return 1;
            }
        }
        printf("refs %u\n", refs[0]);
        fflush(stdout);
        while (fgets(buf, sizeof(buf), stdin))
            ;
        xengntshr_unshare(gs, p, (uint32_t)count);
        xengntshr_close(gs);
        return 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "map")) {
        uint32_t count = (uint32_t)atoi(argv[2]);
        long iter = atol(argv[3]);
        uint32_t dom = (uint32_t)atoi(argv[4]), first = (uint32_t)atoi(argv[5]);
        uint32_t *refs = calloc(count, sizeof(*refs));
        xengnttab_handle *gt = xengnttab_open(NULL, 0);
        double t0;

        if (!gt || !refs)
            die("xengnttab_open");
        for (uint32_t i = 0; i < count; i++)
            refs[i] = first + i;
        t0 = now_us();
        for (long k = 0; k < iter; k++) {
            void *p = xengnttab_map_domain_grant_refs(gt, count, dom, refs,
                                                      PROT_READ | PROT_WRITE);

            if (!p)
                die("map_domain_grant_refs");
            if (xengnttab_unmap(gt, p, count) < 0)
                die("unmap");
        }
        printf("map_unmap_us %.3f\n", (now_us() - t0) / (double)iter);
        xengnttab_close(gt);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of bench_hv.c\n");
    return 2;
}
