/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd vchan setup and teardown (the counterpart of libxenvchan's init.c).
 *
 * One resource per helper, each unwinding only what it took itself:
 *   event_setup()     the event channel (xenevtchn, or a local pair's eventfds);
 *   share_ctrl()      server: the control page, with unmap-notify on srv_live;
 *   share_ring()      server: one ring (in the control page, or granted pages);
 *   map_ctrl()        client: the control page, with unmap-notify on cli_live;
 *   map_ring()        client: one ring, from the grant refs the server listed;
 *   track_rings()     client: the mapped pages into the foreign-page tracker.
 * Pages are shared, mapped and unmapped through one set of ring operations
 * (struct ncd_ring_ops): gntshr (a real server), gnttab (a real client) or the
 * in-memory pages of a local pair, so the real and the local server are one path
 * (server_setup()) and so are the real and the local client (client_setup()).
 * Whatever a helper left behind is released by ncd_vchan_close().
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tracker.h"
#include "vchan_int.h"

/* ---- ring operations ---- */

struct ncd_ring_ops {
    const char *name; /* in messages */
    int track;        /* mapped pages go into the foreign-page tracker */
    int (*open)(struct ncd_vchan *v);
    /* n fresh pages granted to the peer, their refs into refs[]; notify_off >= 0
     * (one page only): unmap-notify on that byte with v->port.  NULL + errno. */
    void *(*share)(struct ncd_vchan *v, uint32_t n, uint32_t *refs, int notify_off);
    /* n pages of the peer by grant ref; notify_off as for share.  NULL + errno. */
    void *(*map)(struct ncd_vchan *v, uint32_t n, const uint32_t *refs, int prot,
                 int notify_off);
    void (*unmap)(struct ncd_vchan *v, void *mem, uint32_t n);
    void (*close)(struct ncd_vchan *v);
};

/* gntshr: a real server grants its pages. */
static int gntshr_open(struct ncd_vchan *v)
{
    v->gntshr = xengntshr_open(NULL, 0);
    return v->gntshr ? 0 : -1;
}

static void *gntshr_share(struct ncd_vchan *v, uint32_t n, uint32_t *refs, int notify_off)
{
    if (notify_off >= 0 && n == 1)
        return xengntshr_share_page_notify(v->gntshr, v->peer_domid, refs, 1, notify_off,
                                           v->port);
    return xengntshr_share_pages(v->gntshr, v->peer_domid, (int)n, refs, 1);
}

static void gntshr_unmap(struct ncd_vchan *v, void *mem, uint32_t n)
{
    xengntshr_unshare(v->gntshr, mem, n);
}

static void gntshr_close(struct ncd_vchan *v)
{
    if (v->gntshr)
        xengntshr_close(v->gntshr);
}

static const struct ncd_ring_ops gntshr_ops = {
    .name = "xengntshr",
    .open = gntshr_open,
    .share = gntshr_share,
    .unmap = gntshr_unmap,
    .close = gntshr_close,
};

/* gnttab: a real client maps the server's grants. */
static int gnttab_open(struct ncd_vchan *v)
{
    v->gnttab = xengnttab_open(NULL, 0);
    return v->gnttab ? 0 : -1;
}

static void *gnttab_map(struct ncd_vchan *v, uint32_t n, const uint32_t *refs, int prot,
                        int notify_off)
{
    if (notify_off >= 0 && n == 1)
        return xengnttab_map_grant_ref_notify(v->gnttab, v->peer_domid, refs[0], prot,
                                              notify_off, v->port);
    return xengnttab_map_domain_grant_refs(v->gnttab, n, v->peer_domid, (uint32_t *)refs, prot);
}

static void gnttab_unmap(struct ncd_vchan *v, void *mem, uint32_t n)
{
    xengnttab_unmap(v->gnttab, mem, n);
}

static void gnttab_close(struct ncd_vchan *v)
{
    if (v->gnttab)
        xengnttab_close(v->gnttab);
}

static const struct ncd_ring_ops gnttab_ops = {
    .name = "xengnttab",
    .track = 1,
    .open = gnttab_open,
    .map = gnttab_map,
    .unmap = gnttab_unmap,
    .close = gnttab_close,
};

/* local: both ends in this process.  A "grant ref" names page i of region k
 * (k * LOCAL_REF_STRIDE + i): the control page, then the separate ring pages, in
 * the order the server shared them.  Both ends hold a reference; the memory goes
 * with the last. */
#define LOCAL_REGIONS 3
#define LOCAL_REF_STRIDE 0x10000u

struct ncd_local {
    int refs;
    struct {
        uint8_t *mem;
        uint32_t n;
    } reg[LOCAL_REGIONS];
    uint32_t nreg;
    int srv_efd, cli_efd;
};

static void local_put(struct ncd_local *l)
{
    uint32_t i;
    if (--l->refs > 0)
        return;
    for (i = 0; i < l->nreg; i++)
        free(l->reg[i].mem);
    if (l->srv_efd >= 0)
        close(l->srv_efd);
    if (l->cli_efd >= 0)
        close(l->cli_efd);
    free(l);
}

static int local_open(struct ncd_vchan *v)
{
    (void)v; /* the pages are in v->local already */
    return 0;
}

static void *local_share(struct ncd_vchan *v, uint32_t n, uint32_t *refs, int notify_off)
{
    struct ncd_local *l = v->local;
    uint8_t *mem;
    uint32_t i;
    (void)notify_off; /* a local peer sees the live flag itself */
    if (l->nreg == LOCAL_REGIONS || n >= LOCAL_REF_STRIDE) {
        errno = ENOSPC;
        return NULL;
    }
    mem = aligned_alloc(NCD_PAGE_SIZE, (size_t)n * NCD_PAGE_SIZE);
    if (!mem)
        return NULL;
    memset(mem, 0, (size_t)n * NCD_PAGE_SIZE);
    for (i = 0; i < n; i++)
        refs[i] = l->nreg * LOCAL_REF_STRIDE + i;
    l->reg[l->nreg].mem = mem;
    l->reg[l->nreg].n = n;
    l->nreg++;
    return mem;
}

/* Refs that do not name one whole region: EPROTO (a bad control page). */
static void *local_map(struct ncd_vchan *v, uint32_t n, const uint32_t *refs, int prot,
                       int notify_off)
{
    struct ncd_local *l = v->local;
    uint32_t k = refs[0] / LOCAL_REF_STRIDE, i;
    (void)prot;
    (void)notify_off;
    if (refs[0] % LOCAL_REF_STRIDE || k >= l->nreg || l->reg[k].n != n)
        goto bad;
    for (i = 1; i < n; i++)
        if (refs[i] != refs[0] + i)
            goto bad;
    return l->reg[k].mem;
bad:
    errno = EPROTO;
    return NULL;
}

static void local_unmap(struct ncd_vchan *v, void *mem, uint32_t n)
{
    (void)v; /* freed with the last reference (local_close) */
    (void)mem;
    (void)n;
}

static void local_close(struct ncd_vchan *v)
{
    local_put(v->local);
}

static const struct ncd_ring_ops local_ops = {
    .name = "local pair",
    .open = local_open,
    .share = local_share,
    .map = local_map,
    .unmap = local_unmap,
    .close = local_close,
};

/* ---- sizes and the control page ---- */

static uint32_t min_order(size_t size)
{
    uint32_t order = NCD_PAGE_SHIFT;
    while (size > ((size_t)1 << order))
        order++;
    return order;
}

/* The order choice of libxenvchan_server_init: in-page rings when they fit. */
static void pick_orders(size_t read_min, size_t write_min, uint32_t *ro, uint32_t *wo)
{
    *ro = min_order(read_min);
    *wo = min_order(write_min);
    if (read_min <= NCD_SMALL_OFFSET && write_min <= NCD_LARGE_OFFSET) {
        *ro = NCD_SMALL_ORDER;
        *wo = NCD_LARGE_ORDER;
    } else if (read_min <= NCD_LARGE_OFFSET && write_min <= NCD_SMALL_OFFSET) {
        *ro = NCD_LARGE_ORDER;
        *wo = NCD_SMALL_ORDER;
    } else if (read_min <= NCD_LARGE_OFFSET) {
        *ro = NCD_LARGE_ORDER;
    } else if (write_min <= NCD_LARGE_OFFSET) {
        *wo = NCD_LARGE_ORDER;
    }
}

static uint32_t order_pages(uint32_t order)
{
    return order >= NCD_PAGE_SHIFT ? 1u << (order - NCD_PAGE_SHIFT) : 0;
}

unsigned ncd_vchan_grants_needed(size_t read_min, size_t write_min)
{
    uint32_t ro, wo;
    pick_orders(read_min, write_min, &ro, &wo);
    return 1 + order_pages(ro) + order_pages(wo);
}

static uint8_t *in_page_ring(struct vchan_interface *page, uint32_t order)
{
    return (uint8_t *)page + (order == NCD_SMALL_ORDER ? NCD_SMALL_OFFSET : NCD_LARGE_OFFSET);
}

/* r's indices are shr, its memory buf (npages separate pages, or 0: in-page). */
static void ring_setup(struct ncd_ring *r, struct ring_shared *shr, uint8_t *buf, uint32_t order,
                       uint32_t npages)
{
    r->shr = shr;
    r->buf = buf;
    r->order = order;
    r->size = 1u << order;
    r->npages = npages;
    r->granted = 0;
}

int ncd_vchan_parse_layout(const struct vchan_interface *page, struct ncd_layout *out,
                           char *err, size_t errlen)
{
    uint32_t lo = SHR_LOAD(&page->left_order);
    uint32_t ro = SHR_LOAD(&page->right_order);
    uint32_t limit = NCD_PAGE_SIZE, total, i;

    if (lo < NCD_SMALL_ORDER || lo > NCD_MAX_ORDER || ro < NCD_SMALL_ORDER ||
        ro > NCD_MAX_ORDER) {
        return ncd_fail(err, errlen, EPROTO,
                        "bad control page: ring orders %u/%u outside %d..%d", lo, ro,
                        NCD_SMALL_ORDER, NCD_MAX_ORDER);
    }
    if (lo == ro && lo < NCD_PAGE_SHIFT) {
        return ncd_fail(err, errlen, EPROTO,
                        "bad control page: both rings have in-page order %u", lo);
    }
    if (lo == NCD_SMALL_ORDER || ro == NCD_SMALL_ORDER)
        limit = NCD_SMALL_OFFSET;
    else if (lo == NCD_LARGE_ORDER || ro == NCD_LARGE_ORDER)
        limit = NCD_LARGE_OFFSET;
    out->left_order = lo;
    out->right_order = ro;
    out->left_pages = order_pages(lo);
    out->right_pages = order_pages(ro);
    total = out->left_pages + out->right_pages;
    if (NCD_GRANTS_OFFSET + 4u * total > limit) {
        return ncd_fail(err, errlen, EPROTO,
                        "bad control page: %u grant refs do not fit before offset %u "
                        "(orders %u/%u)",
                        total, limit, lo, ro);
    }
    for (i = 0; i < total; i++)
        out->grants[i] = SHR_LOAD(&page->grants[i]);
    return 0;
}

/* Foreign-page tracker: register n pages mapped at mem from (peer, refs[i]) in the
 * process tracker with ctxt = v (ncd_vchan_close untracks them all). */
static int track_mapped(struct ncd_vchan *v, const void *mem, const uint32_t *refs, uint32_t n,
                        char *err, size_t errlen)
{
    struct ncd_tracker *t = ncd_tracker_process();
    uint64_t h;
    uint32_t i;
    int e;
    if (!t) {
        e = errno;
        return ncd_fail(err, errlen, e, "foreign-page tracker: %s", strerror(e));
    }
    for (i = 0; i < n; i++) {
        if (ncd_tracker_track(t, v->peer_domid, refs[i],
                              (const uint8_t *)mem + (size_t)i * NCD_PAGE_SIZE, v, &h) < 0) {
            e = errno;
            return ncd_fail(err, errlen, e, "foreign-page tracker: page %u of dom%u gref %u: %s",
                            i, v->peer_domid, refs[i], strerror(e));
        }
    }
    return 0;
}

static void untrack_mapped(struct ncd_vchan *v)
{
    struct ncd_tracker *t;
    if (!v->ops->track || !v->gnttab)
        return;
    t = ncd_tracker_process();
    if (t)
        ncd_tracker_untrack_ctxt(t, v);
}

unsigned ncd_vchan_tracked_pages(struct ncd_vchan *v)
{
    struct ncd_tracker *t;
    if (!v->ops->track || !v->gnttab)
        return 0;
    t = ncd_tracker_process();
    return t ? ncd_tracker_count_ctxt(t, v) : 0;
}

static const char *grant_hint(int e)
{
    return (e == ENOSPC || e == ENOMEM || e == EDQUOT)
               ? " (Linux gntalloc allows 1024 grants per guest by default, module parameter "
                 "gntalloc.limit; use smaller rings or fewer vchans)"
               : "";
}

static const char *evtchn_hint(int e)
{
    return e == ENOSPC ? " (the domain's event channel limit is reached: xl.cfg "
                         "max_event_channels, 1023 by default; fewer vchans)"
                       : "";
}

static int check_sizes(size_t read_min, size_t write_min, char *err, size_t errlen)
{
    if (read_min > NCD_VCHAN_MAX_RING || write_min > NCD_VCHAN_MAX_RING)
        return ncd_fail(err, errlen, EINVAL, "ring size %zu/%zu above the maximum %u", read_min,
                        write_min, NCD_VCHAN_MAX_RING);
    return 0;
}

/* A handle with nothing set up yet; a local one takes a reference on l. */
static struct ncd_vchan *vchan_alloc(int is_server, uint16_t peer, const struct ncd_ring_ops *ops,
                                     struct ncd_local *l, char *err, size_t errlen)
{
    struct ncd_vchan *v = calloc(1, sizeof *v);
    if (!v) {
        ncd_fail(err, errlen, ENOMEM, "out of memory");
        return NULL;
    }
    v->is_server = is_server;
    v->peer_domid = peer;
    v->ops = ops;
    v->efd = -1;
    v->peer_efd = -1;
    if (l) {
        l->refs++;
        v->local = l;
    }
    return v;
}

/* ---- per-resource helpers ---- */

/* The event channel: a local pair's eventfds, or xenevtchn with a fresh unbound
 * port for the peer (remote_port < 0, server) or bound to the peer's (client). */
static int event_setup(struct ncd_vchan *v, int64_t remote_port, char *err, size_t errlen)
{
    xenevtchn_port_or_error_t port;
    int e;

    if (v->local) {
        v->efd = v->is_server ? v->local->srv_efd : v->local->cli_efd;
        v->peer_efd = v->is_server ? v->local->cli_efd : v->local->srv_efd;
        return 0;
    }
    v->evt = xenevtchn_open(NULL, 0);
    if (!v->evt)
        return ncd_fail(err, errlen, errno, "xenevtchn_open: %s", strerror(errno));
    /* Non-blocking: xenevtchn_pending() after a poll that saw the fd readable must
     * not sleep when the event is gone meanwhile (the port unbound under us, the
     * peer domain destroyed); it answers EAGAIN and the thread polls again. */
    int fd = xenevtchn_fd(v->evt), fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        e = errno;
        ncd_fail(err, errlen, e, "O_NONBLOCK on the event channel fd %d: %s", fd, strerror(e));
        goto close_handle;
    }
    if (remote_port < 0)
        port = xenevtchn_bind_unbound_port(v->evt, v->peer_domid);
    else
        port = xenevtchn_bind_interdomain(v->evt, v->peer_domid, (evtchn_port_t)remote_port);
    if (port < 0) {
        e = errno;
        if (remote_port < 0)
            ncd_fail(err, errlen, e, "xenevtchn_bind_unbound_port(dom%u): %s%s", v->peer_domid,
                     strerror(e), evtchn_hint(e));
        else
            ncd_fail(err, errlen, e, "xenevtchn_bind_interdomain(dom%u, port %u): %s%s",
                     v->peer_domid, (unsigned)remote_port, strerror(e), evtchn_hint(e));
        goto close_handle;
    }
    v->port = (uint32_t)port;
    if (xenevtchn_unmask(v->evt, v->port) < 0) {
        e = errno;
        ncd_fail(err, errlen, e, "xenevtchn_unmask(%u): %s", v->port, strerror(e));
        goto unbind;
    }
    return 0;
unbind:
    xenevtchn_unbind(v->evt, v->port);
    v->port = 0;
close_handle:
    xenevtchn_close(v->evt);
    v->evt = NULL;
    errno = e;
    return -1;
}

static void event_close(struct ncd_vchan *v)
{
    if (!v->evt)
        return; /* a local pair's eventfds go with its memory */
    if (v->port)
        xenevtchn_unbind(v->evt, v->port);
    xenevtchn_close(v->evt);
}

static int ops_open(struct ncd_vchan *v, char *err, size_t errlen)
{
    if (v->ops->open(v) < 0)
        return ncd_fail(err, errlen, errno, "%s_open: %s", v->ops->name, strerror(errno));
    return 0;
}

static int share_ctrl(struct ncd_vchan *v, uint32_t *ref, char *err, size_t errlen)
{
    int e;
    v->ring = v->ops->share(v, 1, ref, offsetof(struct vchan_interface, srv_live));
    if (!v->ring) {
        e = errno;
        return ncd_fail(err, errlen, e, "%s: sharing the control page with dom%u: %s%s",
                        v->ops->name, v->peer_domid, strerror(e), grant_hint(e));
    }
    return 0;
}

/* Server: ring r of `order` (indices at shr) in the control page, or in fresh
 * pages granted to the peer with their refs written to refs[]. */
static int share_ring(struct ncd_vchan *v, struct ncd_ring *r, struct ring_shared *shr,
                      uint32_t order, uint32_t *refs, const char *dir, unsigned need, char *err,
                      size_t errlen)
{
    uint32_t n = order_pages(order);
    uint8_t *buf;
    int e;

    if (!n) {
        ring_setup(r, shr, in_page_ring(v->ring, order), order, 0);
        return 0;
    }
    buf = v->ops->share(v, n, refs, -1);
    if (!buf) {
        e = errno;
        return ncd_fail(err, errlen, e,
                        "%s: sharing %u %s-ring pages with dom%u: %s%s; this vchan needs %u "
                        "grants",
                        v->ops->name, n, dir, v->peer_domid, strerror(e), grant_hint(e), need);
    }
    ring_setup(r, shr, buf, order, n);
    return 0;
}

/* A local pair's refs that name none of its pages fail with EPROTO. */
static const char *map_error(int e)
{
    return e == EPROTO ? "no such grant" : strerror(e);
}

static int map_ctrl(struct ncd_vchan *v, uint32_t ref, char *err, size_t errlen)
{
    int e;
    v->ring = v->ops->map(v, 1, &ref, PROT_READ | PROT_WRITE,
                          offsetof(struct vchan_interface, cli_live));
    if (!v->ring) {
        e = errno;
        return ncd_fail(err, errlen, e, "%s: mapping the control page (dom%u, gref %u): %s",
                        v->ops->name, v->peer_domid, ref, map_error(e));
    }
    return 0;
}

/* Client: ring r of `order` in the control page, or mapped from refs[]. */
static int map_ring(struct ncd_vchan *v, struct ncd_ring *r, struct ring_shared *shr,
                    uint32_t order, const uint32_t *refs, int prot, const char *dir, char *err,
                    size_t errlen)
{
    uint32_t n = order_pages(order);
    uint8_t *buf;
    int e;

    if (!n) {
        ring_setup(r, shr, in_page_ring(v->ring, order), order, 0);
        return 0;
    }
    buf = v->ops->map(v, n, refs, prot, -1);
    if (!buf) {
        e = errno;
        return ncd_fail(err, errlen, e, "%s: mapping %u %s-ring pages of dom%u: %s",
                        v->ops->name, n, dir, v->peer_domid, map_error(e));
    }
    ring_setup(r, shr, buf, order, n);
    return 0;
}

/* Client: every mapped page of the peer into the process's foreign-page tracker. */
static int track_rings(struct ncd_vchan *v, uint32_t ctrl_gref, const struct ncd_layout *lay,
                       char *err, size_t errlen)
{
    if (!v->ops->track)
        return 0;
    if (track_mapped(v, v->ring, &ctrl_gref, 1, err, errlen) < 0 ||
        track_mapped(v, v->wr.buf, lay->grants, v->wr.npages, err, errlen) < 0 ||
        track_mapped(v, v->rd.buf, lay->grants + lay->left_pages, v->rd.npages, err, errlen) < 0)
        return -1;
    return 0;
}

static void init_server_page(struct ncd_vchan *v, uint32_t ro, uint32_t wo)
{
    struct vchan_interface *p = v->ring;
    memset(p, 0, NCD_PAGE_SIZE);
    p->left_order = (uint16_t)ro;
    p->right_order = (uint16_t)wo;
    p->cli_live = 2;
    p->srv_live = 1;
    p->cli_notify = VCHAN_NOTIFY_WRITE;
}

/* ---- the two paths ---- */

/* Event channel, control page, rings.  The server reads left, writes right. */
static int server_setup(struct ncd_vchan *v, size_t read_min, size_t write_min,
                        uint32_t *ctrl_gref, char *err, size_t errlen)
{
    uint32_t ro, wo;
    unsigned need;

    pick_orders(read_min, write_min, &ro, &wo);
    need = 1 + order_pages(ro) + order_pages(wo);
    if (event_setup(v, -1, err, errlen) < 0 || ops_open(v, err, errlen) < 0 ||
        share_ctrl(v, ctrl_gref, err, errlen) < 0)
        return -1;
    init_server_page(v, ro, wo);
    if (share_ring(v, &v->rd, &v->ring->left, ro, v->ring->grants, "read", need, err, errlen) <
            0 ||
        share_ring(v, &v->wr, &v->ring->right, wo, v->ring->grants + order_pages(ro), "write",
                   need, err, errlen) < 0)
        return -1;
    /* The page is complete before its grant ref is handed out (to xenstore, by our
     * caller).  Pairs with the client reading the page only after it read the ref
     * from xenstore (ncd_vchan_parse_layout(), behind a syscall). */
    vchan_mb();
    return 0;
}

/* Event channel, control page (validated), rings, tracker; then cli_live = 1. */
static int client_setup(struct ncd_vchan *v, uint32_t ctrl_gref, int64_t remote_port, char *err,
                        size_t errlen)
{
    struct ncd_layout *lay = malloc(sizeof *lay);
    int rc = -1;

    if (!lay)
        return ncd_fail(err, errlen, ENOMEM, "out of memory");
    if (event_setup(v, remote_port, err, errlen) < 0 || ops_open(v, err, errlen) < 0 ||
        map_ctrl(v, ctrl_gref, err, errlen) < 0 ||
        ncd_vchan_parse_layout(v->ring, lay, err, errlen) < 0)
        goto out;
    /* the client writes left and reads right */
    if (map_ring(v, &v->wr, &v->ring->left, lay->left_order, lay->grants,
                 PROT_READ | PROT_WRITE, "write", err, errlen) < 0 ||
        map_ring(v, &v->rd, &v->ring->right, lay->right_order, lay->grants + lay->left_pages,
                 PROT_READ, "read", err, errlen) < 0 ||
        track_rings(v, ctrl_gref, lay, err, errlen) < 0)
        goto out;
    v->rd.own = v->rd.peer_max = SHR_LOAD(&v->ring->right.cons);
    v->wr.own = SHR_LOAD(&v->ring->left.prod);
    SHR_STORE(&v->ring->srv_notify, (uint8_t)VCHAN_NOTIFY_WRITE);
    ncd_vchan_publish_live(v, 1); /* and wake the server */
    rc = 0;
out:
    free(lay);
    return rc;
}

/* After a failed setup: release what v holds, keep errno (EIO if none). */
static int setup_failed(struct ncd_vchan *v)
{
    int e = errno ? errno : EIO;
    ncd_vchan_close(v);
    errno = e;
    return -1;
}

int ncd_vchan_server_init(struct ncd_vchan **out, uint16_t peer_domid, size_t read_min,
                          size_t write_min, uint32_t *ctrl_gref, uint32_t *evtchn_port,
                          char *err, size_t errlen)
{
    struct ncd_vchan *v;

    *out = NULL;
    if (check_sizes(read_min, write_min, err, errlen) < 0)
        return -1;
    v = vchan_alloc(1, peer_domid, &gntshr_ops, NULL, err, errlen);
    if (!v)
        return -1;
    if (server_setup(v, read_min, write_min, ctrl_gref, err, errlen) < 0)
        return setup_failed(v);
    *evtchn_port = v->port;
    *out = v;
    return 0;
}

int ncd_vchan_client_init(struct ncd_vchan **out, uint16_t peer_domid, uint32_t ctrl_gref,
                          uint32_t evtchn_port, char *err, size_t errlen)
{
    struct ncd_vchan *v;

    *out = NULL;
    v = vchan_alloc(0, peer_domid, &gnttab_ops, NULL, err, errlen);
    if (!v)
        return -1;
    if (client_setup(v, ctrl_gref, evtchn_port, err, errlen) < 0)
        return setup_failed(v);
    *out = v;
    return 0;
}

/* ---- in-memory pairs ---- */

int ncd_vchan_local_server(struct ncd_vchan **out, size_t read_min, size_t write_min,
                           char *err, size_t errlen)
{
    struct ncd_local *l;
    struct ncd_vchan *v;
    uint32_t ctrl_ref;

    *out = NULL;
    if (check_sizes(read_min, write_min, err, errlen) < 0)
        return -1;
    l = calloc(1, sizeof *l);
    if (!l)
        return ncd_fail(err, errlen, ENOMEM, "out of memory");
    l->srv_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->cli_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    v = vchan_alloc(1, 0, &local_ops, l, err, errlen);
    if (!v) {
        local_put(l);
        errno = ENOMEM;
        return -1;
    }
    if (l->srv_efd < 0 || l->cli_efd < 0) {
        ncd_fail(err, errlen, errno, "local vchan setup: eventfd: %s", strerror(errno));
        return setup_failed(v);
    }
    if (server_setup(v, read_min, write_min, &ctrl_ref, err, errlen) < 0)
        return setup_failed(v);
    *out = v;
    return 0;
}

int ncd_vchan_local_client(struct ncd_vchan **out, struct ncd_vchan *server, char *err,
                           size_t errlen)
{
    struct ncd_vchan *v;

    *out = NULL;
    if (!server->local)
        return ncd_fail(err, errlen, EINVAL, "not a local vchan server");
    v = vchan_alloc(0, 0, &local_ops, server->local, err, errlen);
    if (!v)
        return -1;
    /* the control page is the first region the server shared: ref 0 */
    if (client_setup(v, 0, -1, err, errlen) < 0)
        return setup_failed(v);
    *out = v;
    return 0;
}

void *ncd_vchan_shared_page(struct ncd_vchan *v)
{
    return v->ring;
}

void ncd_vchan_close(struct ncd_vchan *v)
{
    if (!v)
        return;
    if (v->ring)
        ncd_vchan_publish_live(v, 0);
    untrack_mapped(v); /* before the addresses can be reused */
    if (v->rd.npages)
        v->ops->unmap(v, v->rd.buf, v->rd.npages);
    if (v->wr.npages)
        v->ops->unmap(v, v->wr.buf, v->wr.npages);
    if (v->ring)
        v->ops->unmap(v, v->ring, 1);
    v->ops->close(v);
    event_close(v);
    free(v);
}
