/*
 * Test helper for xensim: a "domain process" driven line by line on stdin.
 * Linked against Debian's libxengnttab/libxenevtchn (run with
 * LD_LIBRARY_PATH=xensim/lib to get the shims); the xensim extension is
 * looked up with dlsym so the binary also links against the real libraries.
 *
 * Every command prints one line: "ok ..." or "err <errno-name> <errno>".
 * Regions (shares and mappings) are numbered from 0 in creation order.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define MAXREG 4096
#define PAGE 4096

static xengnttab_handle *gt;
static xengntshr_handle *gs;
static xenevtchn_handle *ev;
static struct { uint8_t *addr; uint32_t count; int shared; } reg[MAXREG];
static int nreg;

typedef int (*grant_existing_fn)(xengntshr_handle *, void *, uint32_t, int, uint32_t *);

static void err_out(void)
{
    int e = errno;

    printf("err %s %d\n", strerrorname_np(e) ? strerrorname_np(e) : "?", e);
}

static int add_region(void *addr, uint32_t count, int shared)
{
    reg[nreg].addr = addr;
    reg[nreg].count = count;
    reg[nreg].shared = shared;
    return nreg++;
}

static uint32_t num(const char *s)
{
    return (uint32_t)strtoul(s ? s : "0", NULL, 0);
}

static int need(void **h, const char *what)
{
    if (*h)
        return 0;
    if (!strcmp(what, "gnttab"))
        *h = xengnttab_open(NULL, 0);
    else if (!strcmp(what, "gntshr"))
        *h = xengntshr_open(NULL, 0);
    else
        *h = xenevtchn_open(NULL, 0);
    return *h ? 0 : -1;
}

#define NEED(h, w)                          \
    do {                                    \
        if (need((void **)&(h), (w)) < 0) { \
            err_out();                      \
            return;                         \
        }                                   \
    } while (0)

/* copy seg: "g,dom,ref,off" or "l,region,off" for SRC and DST, then LEN */
static int parse_ptr(char *spec, union xengnttab_copy_ptr *p, int *is_gref)
{
    char *f[4] = { 0 };
    int n = 0;

    for (char *t = strtok(spec, ","); t && n < 4; t = strtok(NULL, ","))
        f[n++] = t;
    if (n >= 4 && f[0][0] == 'g') {
        *is_gref = 1;
        p->foreign.domid = (uint16_t)num(f[1]);
        p->foreign.ref = num(f[2]);
        p->foreign.offset = (uint16_t)num(f[3]);
        return 0;
    }
    if (n >= 3 && f[0][0] == 'l') {
        *is_gref = 0;
        p->virt = reg[num(f[1])].addr + num(f[2]);
        return 0;
    }
    return -1;
}

static void do_copy(char *rest)
{
    xengnttab_grant_copy_segment_t segs[64];
    char *specs[64 * 3];
    int n = 0, nseg = 0;

    NEED(gt, "gnttab");
    for (char *t = strtok(rest, " "); t && n < 64 * 3; t = strtok(NULL, " "))
        specs[n++] = t;
    for (int i = 0; i + 2 < n; i += 3, nseg++) {
        int sg = 0, dg = 0;

        memset(&segs[nseg], 0, sizeof(segs[nseg]));
        if (parse_ptr(specs[i], &segs[nseg].source, &sg) ||
            parse_ptr(specs[i + 1], &segs[nseg].dest, &dg)) {
            printf("err BADSPEC 0\n");
            return;
        }
        segs[nseg].len = (uint16_t)num(specs[i + 2]);
        segs[nseg].flags = (sg ? GNTCOPY_source_gref : 0) | (dg ? GNTCOPY_dest_gref : 0);
        segs[nseg].status = 99;
    }
    if (xengnttab_grant_copy(gt, nseg, segs) < 0) {
        err_out();
        return;
    }
    printf("ok");
    for (int i = 0; i < nseg; i++)
        printf(" %d", segs[i].status);
    printf("\n");
}

/* stress: THREADS threads share the gnttab and evtchn handles, each mapping,
 * checking and unmapping ITER times and notifying PORT. */
struct stress_arg {
    uint32_t domid, ref, port, iter;
    int failures;
};

static void *stress_thread(void *opaque)
{
    struct stress_arg *a = opaque;

    for (uint32_t i = 0; i < a->iter; i++) {
        uint8_t *p = xengnttab_map_grant_ref(gt, a->domid, a->ref, PROT_READ);

        if (!p || p[0] != 'S' || xengnttab_unmap(gt, p, 1) < 0)
            a->failures++;
        if (xenevtchn_notify(ev, a->port) < 0)
            a->failures++;
    }
    return NULL;
}

static void do_stress(uint32_t threads, uint32_t iter, uint32_t domid, uint32_t ref,
                      uint32_t port)
{
    pthread_t tid[64];
    struct stress_arg args[64];
    int failures = 0;

    if (threads > 64)
        threads = 64;
    NEED(gt, "gnttab");
    NEED(ev, "evtchn");
    for (uint32_t i = 0; i < threads; i++) {
        args[i] = (struct stress_arg){ domid, ref, port, iter, 0 };
        pthread_create(&tid[i], NULL, stress_thread, &args[i]);
    }
    for (uint32_t i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        failures += args[i].failures;
    }
    printf("ok %d\n", failures);
}

static void command(char *line)
{
    char *cmd = strtok(line, " \n");
    char *a[8] = { 0 };

    if (!cmd)
        return;
    if (!strcmp(cmd, "copy")) {
        do_copy(strtok(NULL, "\n"));
        return;
    }
    for (int i = 0; i < 8; i++)
        a[i] = strtok(NULL, " \n");

    if (!strcmp(cmd, "stress")) { /* threads iter domid ref port */
        do_stress(num(a[0]), num(a[1]), num(a[2]), num(a[3]), num(a[4]));
    } else if (!strcmp(cmd, "pid")) {
        printf("ok %d\n", getpid());
    } else if (!strcmp(cmd, "open")) {
        if (!strcmp(a[0], "gnttab"))
            NEED(gt, "gnttab");
        else if (!strcmp(a[0], "gntshr"))
            NEED(gs, "gntshr");
        else
            NEED(ev, "evtchn");
        printf("ok\n");
    } else if (!strcmp(cmd, "share")) { /* domid count writable */
        uint32_t refs[1024];
        uint32_t count = num(a[1]);
        void *p;

        NEED(gs, "gntshr");
        p = xengntshr_share_pages(gs, num(a[0]), (int)count, refs, (int)num(a[2]));
        if (!p) {
            err_out();
            return;
        }
        printf("ok %d", add_region(p, count, 1));
        for (uint32_t i = 0; i < count; i++)
            printf(" %u", refs[i]);
        printf("\n");
    } else if (!strcmp(cmd, "share_notify")) { /* domid writable offset port */
        uint32_t ref;
        void *p;

        NEED(gs, "gntshr");
        p = xengntshr_share_page_notify(gs, num(a[0]), &ref, (int)num(a[1]), num(a[2]),
                                        (evtchn_port_t)strtol(a[3], NULL, 0));
        if (!p) {
            err_out();
            return;
        }
        printf("ok %d %u\n", add_region(p, 1, 1), ref);
    } else if (!strcmp(cmd, "unshare")) { /* region count */
        NEED(gs, "gntshr");
        if (xengntshr_unshare(gs, reg[num(a[0])].addr, num(a[1])) < 0)
            err_out();
        else
            printf("ok\n");
    } else if (!strcmp(cmd, "map") || !strcmp(cmd, "map_notify")) {
        /* domid ref prot(r|rw) [offset port] */
        int prot = !strcmp(a[2], "rw") ? PROT_READ | PROT_WRITE : PROT_READ;
        void *p;

        NEED(gt, "gnttab");
        if (!strcmp(cmd, "map"))
            p = xengnttab_map_grant_ref(gt, num(a[0]), num(a[1]), prot);
        else
            p = xengnttab_map_grant_ref_notify(gt, num(a[0]), num(a[1]), prot, num(a[3]),
                                               (evtchn_port_t)strtol(a[4], NULL, 0));
        if (!p) {
            err_out();
            return;
        }
        printf("ok %d\n", add_region(p, 1, 0));
    } else if (!strcmp(cmd, "mapdom")) { /* domid prot first count: refs first..first+count-1 */
        int prot = !strcmp(a[1], "rw") ? PROT_READ | PROT_WRITE : PROT_READ;
        uint32_t first = num(a[2]), count = num(a[3]);
        uint32_t *refs = malloc(count * sizeof(*refs));
        void *p;

        NEED(gt, "gnttab");
        for (uint32_t i = 0; i < count; i++)
            refs[i] = first + i;
        p = xengnttab_map_domain_grant_refs(gt, count, num(a[0]), refs, prot);
        free(refs);
        if (!p) {
            err_out();
            return;
        }
        printf("ok %d\n", add_region(p, count, 0));
    } else if (!strcmp(cmd, "maprefs")) { /* prot d:r d:r ... (up to 7) */
        int prot = !strcmp(a[0], "rw") ? PROT_READ | PROT_WRITE : PROT_READ;
        uint32_t doms[7], refs[7], n = 0;
        void *p;

        NEED(gt, "gnttab");
        for (int i = 1; i < 8 && a[i]; i++, n++) {
            doms[n] = num(a[i]);
            refs[n] = num(strchr(a[i], ':') + 1);
        }
        p = xengnttab_map_grant_refs(gt, n, doms, refs, prot);
        if (!p) {
            err_out();
            return;
        }
        printf("ok %d\n", add_region(p, n, 0));
    } else if (!strcmp(cmd, "unmap")) { /* region */
        NEED(gt, "gnttab");
        if (xengnttab_unmap(gt, reg[num(a[0])].addr, reg[num(a[0])].count) < 0)
            err_out();
        else
            printf("ok\n");
    } else if (!strcmp(cmd, "write")) { /* region offset text */
        memcpy(reg[num(a[0])].addr + num(a[1]), a[2], strlen(a[2]));
        printf("ok\n");
    } else if (!strcmp(cmd, "fill")) { /* region offset len byte */
        memset(reg[num(a[0])].addr + num(a[1]), (int)num(a[3]), num(a[2]));
        printf("ok\n");
    } else if (!strcmp(cmd, "read")) { /* region offset len */
        printf("ok %.*s\n", (int)num(a[2]), (char *)reg[num(a[0])].addr + num(a[1]));
    } else if (!strcmp(cmd, "byte")) { /* region offset */
        printf("ok %u\n", reg[num(a[0])].addr[num(a[1])]);
    } else if (!strcmp(cmd, "trywrite")) { /* region offset: write in a child */
        pid_t pid = fork();
        int st;

        if (pid == 0) {
            reg[num(a[0])].addr[num(a[1])] = 0x55;
            _exit(0);
        }
        waitpid(pid, &st, 0);
        if (WIFSIGNALED(st))
            printf("ok signal %d\n", WTERMSIG(st));
        else
            printf("ok exit %d\n", WEXITSTATUS(st));
    } else if (!strcmp(cmd, "mprotect_rw")) { /* region */
        if (mprotect(reg[num(a[0])].addr, PAGE, PROT_READ | PROT_WRITE) < 0)
            err_out();
        else
            printf("ok\n");
    } else if (!strcmp(cmd, "grant_existing")) { /* region pageoffset domid writable */
        grant_existing_fn fn = (grant_existing_fn)dlsym(RTLD_DEFAULT, "xensim_grant_existing");
        uint32_t ref;

        NEED(gs, "gntshr");
        if (!fn) {
            printf("err NOSYM 0\n");
            return;
        }
        if (fn(gs, reg[num(a[0])].addr + num(a[1]), num(a[2]), (int)num(a[3]), &ref) < 0)
            err_out();
        else
            printf("ok %u\n", ref);
    } else if (!strcmp(cmd, "unbound")) { /* remote */
        int port;

        NEED(ev, "evtchn");
        port = xenevtchn_bind_unbound_port(ev, num(a[0]));
        if (port < 0)
            err_out();
        else
            printf("ok %d\n", port);
    } else if (!strcmp(cmd, "bind")) { /* domid port */
        int port;

        NEED(ev, "evtchn");
        port = xenevtchn_bind_interdomain(ev, num(a[0]), num(a[1]));
        if (port < 0)
            err_out();
        else
            printf("ok %d\n", port);
    } else if (!strcmp(cmd, "notify")) {
        NEED(ev, "evtchn");
        if (xenevtchn_notify(ev, num(a[0])) < 0)
            err_out();
        else
            printf("ok\n");
    } else if (!strcmp(cmd, "pending")) { /* timeout_ms: poll the fd first */
        struct pollfd pfd;
        int port;

        NEED(ev, "evtchn");
        pfd.fd = xenevtchn_fd(ev);
        pfd.events = POLLIN;
        if (poll(&pfd, 1, (int)num(a[0])) == 0) {
            printf("ok none\n");
            return;
        }
        port = xenevtchn_pending(ev);
        if (port < 0)
            err_out();
        else
            printf("ok %d\n", port);
    } else if (!strcmp(cmd, "unmask")) {
        NEED(ev, "evtchn");
        if (xenevtchn_unmask(ev, num(a[0])) < 0)
            err_out();
        else
            printf("ok\n");
    } else if (!strcmp(cmd, "unbind")) {
        NEED(ev, "evtchn");
        if (xenevtchn_unbind(ev, num(a[0])) < 0)
            err_out();
        else
            printf("ok\n");
    } else if (!strcmp(cmd, "close")) {
        if (!strcmp(a[0], "gnttab")) {
            xengnttab_close(gt);
            gt = NULL;
        } else if (!strcmp(a[0], "gntshr")) {
            xengntshr_close(gs);
            gs = NULL;
        } else {
            xenevtchn_close(ev);
            ev = NULL;
        }
        printf("ok\n");
    } else if (!strcmp(cmd, "getinfo")) { /* first max: libxenctrl's xc_domain_getinfo */
        static xc_dominfo_t info[64];
        xc_interface *xch = xc_interface_open(NULL, NULL, 0);
        unsigned max = num(a[1]) < 64 ? num(a[1]) : 64;
        int n;

        if (!xch) {
            err_out();
            return;
        }
        n = xc_domain_getinfo(xch, num(a[0]), max, info);
        if (n < 0) {
            err_out();
            xc_interface_close(xch);
            return;
        }
        printf("ok %d", n);
        for (int i = 0; i < n; i++)
            printf(" %u:%s%s", info[i].domid, info[i].dying ? "dying" : "live",
                   info[i].shutdown ? ",shutdown" : "");
        printf("\n");
        xc_interface_close(xch);
    } else if (!strcmp(cmd, "exit")) {
        printf("ok\n");
        fflush(stdout);
        exit(0);
    } else {
        printf("err UNKNOWN 0\n");
    }
}

int main(void)
{
    char line[8192];

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin))
        command(line);
    return 0;
}
