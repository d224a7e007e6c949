/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd vchan setup and teardown (the counterpart of libxenvchan's init.c):
 * grant / map the control page and rings, bind the event channel, validate
 * what a server put in the control page, and the in-memory "local" pairs.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tracker.h"
#include "vchan_int.h"

/* Fake grant refs of local pairs: left ring pages, right ring pages. */
#define LOCAL_LEFT_BASE 0x10000u
#define LOCAL_RIGHT_BASE 0x20000u

struct ncd_local {
    int refs;
    struct vchan_interface *page;
    uint8_t *left, *right; /* separate ring memory (order >= 12) or NULL */
    uint32_t left_pages, right_pages;
    int srv_efd, cli_efd;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

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

static void ring_setup(struct ncd_ring *r, struct ring_shared *shr, uint8_t *buf, uint32_t order)
{
    r->shr = shr;
    r->buf = buf;
    r->order = order;
    r->size = 1u << order;
    r->npages = order_pages(order);
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
        set_err(err, errlen, "bad control page: ring orders %u/%u outside %d..%d", lo, ro,
                NCD_SMALL_ORDER, NCD_MAX_ORDER);
        errno = EPROTO;
        return -1;
    }
    if (lo == ro && lo < NCD_PAGE_SHIFT) {
        set_err(err, errlen, "bad control page: both rings have in-page order %u", lo);
        errno = EPROTO;
        return -1;
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
        set_err(err, errlen,
                "bad control page: %u grant refs do not fit before offset %u (orders %u/%u)",
                total, limit, lo, ro);
        errno = EPROTO;
        return -1;
    }
    for (i = 0; i < total; i++)
        out->grants[i] = SHR_LOAD(&page->grants[i]);
    return 0;
}

static const char *grant_hint(int e)
{
    return (e == ENOSPC || e == ENOMEM || e == EDQUOT)
               ? " (Linux gntalloc allows 1024 grants per guest by default, module parameter "
                 "gntalloc.limit; use smaller rings or fewer vchans)"
               : "";
}

static struct ncd_vchan *vchan_alloc(int is_server, uint16_t peer)
{
    struct ncd_vchan *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->is_server = is_server;
    v->peer_domid = peer;
    v->efd = -1;
    v->peer_efd = -1;
    return v;
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

int ncd_vchan_server_init(struct ncd_vchan **out, uint16_t peer_domid, size_t read_min,
                          size_t write_min, uint32_t *ctrl_gref, uint32_t *evtchn_port,
                          char *err, size_t errlen)
{
    struct ncd_vchan *v;
    uint32_t ro, wo, ref = 0, need;
    xenevtchn_port_or_error_t port;
    void *buf;
    int e = 0;

    *out = NULL;
    if (read_min > NCD_VCHAN_MAX_RING || write_min > NCD_VCHAN_MAX_RING) {
        set_err(err, errlen, "ring size %zu/%zu above the maximum %u", read_min, write_min,
                NCD_VCHAN_MAX_RING);
        errno = EINVAL;
        return -1;
    }
    pick_orders(read_min, write_min, &ro, &wo);
    need = 1 + order_pages(ro) + order_pages(wo);
    v = vchan_alloc(1, peer_domid);
    if (!v) {
        set_err(err, errlen, "out of memory");
        errno = ENOMEM;
        return -1;
    }
    v->evt = xenevtchn_open(NULL, 0);
    if (!v->evt) {
        e = errno;
        set_err(err, errlen, "xenevtchn_open: %s", strerror(e));
        goto fail;
    }
    port = xenevtchn_bind_unbound_port(v->evt, peer_domid);
    if (port < 0) {
        e = errno;
        set_err(err, errlen, "xenevtchn_bind_unbound_port(dom%u): %s", peer_domid, strerror(e));
        goto fail;
    }
    v->port = (uint32_t)port;
    if (xenevtchn_unmask(v->evt, v->port) < 0) {
        e = errno;
        set_err(err, errlen, "xenevtchn_unmask(%u): %s", v->port, strerror(e));
        goto fail;
    }
    v->gntshr = xengntshr_open(NULL, 0);
    if (!v->gntshr) {
        e = errno;
        set_err(err, errlen, "xengntshr_open: %s", strerror(e));
        goto fail;
    }
    v->ring = xengntshr_share_page_notify(v->gntshr, peer_domid, &ref, 1,
                                          offsetof(struct vchan_interface, srv_live), v->port);
    if (!v->ring) {
        e = errno;
        set_err(err, errlen, "xengntshr_share_page_notify(dom%u): %s%s", peer_domid,
                strerror(e), grant_hint(e));
        goto fail;
    }
    init_server_page(v, ro, wo);
    ring_setup(&v->rd, &v->ring->left, NULL, ro);
    ring_setup(&v->wr, &v->ring->right, NULL, wo);
    if (v->rd.npages) {
        buf = xengntshr_share_pages(v->gntshr, peer_domid, v->rd.npages, v->ring->grants, 1);
        if (!buf) {
            e = errno;
            v->rd.npages = 0;
            set_err(err, errlen,
                    "xengntshr_share_pages(%u read-ring pages for dom%u): %s%s; this vchan needs "
                    "%u grants",
                    order_pages(ro), peer_domid, strerror(e), grant_hint(e), need);
            goto fail;
        }
        v->rd.buf = buf;
    } else {
        v->rd.buf = in_page_ring(v->ring, ro);
    }
    if (v->wr.npages) {
        buf = xengntshr_share_pages(v->gntshr, peer_domid, v->wr.npages,
                                    v->ring->grants + v->rd.npages, 1);
        if (!buf) {
            e = errno;
            v->wr.npages = 0;
            set_err(err, errlen,
                    "xengntshr_share_pages(%u write-ring pages for dom%u): %s%s; this vchan "
                    "needs %u grants",
                    order_pages(wo), peer_domid, strerror(e), grant_hint(e), need);
            goto fail;
        }
        v->wr.buf = buf;
    } else {
        v->wr.buf = in_page_ring(v->ring, wo);
    }
    vchan_mb();
    *ctrl_gref = ref;
    *evtchn_port = v->port;
    *out = v;
    return 0;
fail:
    ncd_vchan_close(v);
    errno = e ? e : EIO;
    return -1;
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
        set_err(err, errlen, "foreign-page tracker: %s", strerror(e));
        errno = e;
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (ncd_tracker_track(t, v->peer_domid, refs[i],
                              (const uint8_t *)mem + (size_t)i * NCD_PAGE_SIZE, v, &h) < 0) {
            e = errno;
            set_err(err, errlen, "foreign-page tracker: page %u of dom%u gref %u: %s", i,
                    v->peer_domid, refs[i], strerror(e));
            errno = e;
            return -1;
        }
    }
    return 0;
}

static void untrack_mapped(struct ncd_vchan *v)
{
    struct ncd_tracker *t;
    if (v->is_server || v->local || !v->gnttab)
        return;
    t = ncd_tracker_process();
    if (t)
        ncd_tracker_untrack_ctxt(t, v);
}

unsigned ncd_vchan_tracked_pages(struct ncd_vchan *v)
{
    struct ncd_tracker *t;
    if (v->is_server || v->local || !v->gnttab)
        return 0;
    t = ncd_tracker_process();
    return t ? ncd_tracker_count_ctxt(t, v) : 0;
}

int ncd_vchan_client_init(struct ncd_vchan **out, uint16_t peer_domid, uint32_t ctrl_gref,
                          uint32_t evtchn_port, char *err, size_t errlen)
{
    struct ncd_vchan *v;
    struct ncd_layout *lay = NULL;
    xenevtchn_port_or_error_t port;
    void *buf;
    int e = 0;

    *out = NULL;
    v = vchan_alloc(0, peer_domid);
    lay = malloc(sizeof *lay);
    if (!v || !lay) {
        free(v);
        free(lay);
        set_err(err, errlen, "out of memory");
        errno = ENOMEM;
        return -1;
    }
    v->evt = xenevtchn_open(NULL, 0);
    if (!v->evt) {
        e = errno;
        set_err(err, errlen, "xenevtchn_open: %s", strerror(e));
        goto fail;
    }
    port = xenevtchn_bind_interdomain(v->evt, peer_domid, evtchn_port);
    if (port < 0) {
        e = errno;
        set_err(err, errlen, "xenevtchn_bind_interdomain(dom%u, port %u): %s", peer_domid,
                evtchn_port, strerror(e));
        goto fail;
    }
    v->port = (uint32_t)port;
    if (xenevtchn_unmask(v->evt, v->port) < 0) {
        e = errno;
        set_err(err, errlen, "xenevtchn_unmask(%u): %s", v->port, strerror(e));
        goto fail;
    }
    v->gnttab = xengnttab_open(NULL, 0);
    if (!v->gnttab) {
        e = errno;
        set_err(err, errlen, "xengnttab_open: %s", strerror(e));
        goto fail;
    }
    v->ring = xengnttab_map_grant_ref_notify(v->gnttab, peer_domid, ctrl_gref,
                                             PROT_READ | PROT_WRITE,
                                             offsetof(struct vchan_interface, cli_live), v->port);
    if (!v->ring) {
        e = errno;
        set_err(err, errlen, "xengnttab_map_grant_ref_notify(dom%u, gref %u): %s", peer_domid,
                ctrl_gref, strerror(e));
        goto fail;
    }
    if (ncd_vchan_parse_layout(v->ring, lay, err, errlen) < 0) {
        e = EPROTO;
        goto fail;
    }
    /* the client writes left and reads right */
    ring_setup(&v->wr, &v->ring->left, NULL, lay->left_order);
    ring_setup(&v->rd, &v->ring->right, NULL, lay->right_order);
    if (v->wr.npages) {
        buf = xengnttab_map_domain_grant_refs(v->gnttab, v->wr.npages, peer_domid, lay->grants,
                                              PROT_READ | PROT_WRITE);
        if (!buf) {
            e = errno;
            v->wr.npages = 0;
            set_err(err, errlen, "xengnttab_map_domain_grant_refs(%u write-ring pages): %s",
                    lay->left_pages, strerror(e));
            goto fail;
        }
        v->wr.buf = buf;
    } else {
        v->wr.buf = in_page_ring(v->ring, lay->left_order);
    }
    if (v->rd.npages) {
        buf = xengnttab_map_domain_grant_refs(v->gnttab, v->rd.npages, peer_domid,
                                              lay->grants + lay->left_pages, PROT_READ);
        if (!buf) {
            e = errno;
            v->rd.npages = 0;
            set_err(err, errlen, "xengnttab_map_domain_grant_refs(%u read-ring pages): %s",
                    lay->right_pages, strerror(e));
            goto fail;
        }
        v->rd.buf = buf;
    } else {
        v->rd.buf = in_page_ring(v->ring, lay->right_order);
    }
    if (track_mapped(v, v->ring, &ctrl_gref, 1, err, errlen) < 0 ||
        track_mapped(v, v->wr.buf, lay->grants, v->wr.npages, err, errlen) < 0 ||
        track_mapped(v, v->rd.buf, lay->grants + lay->left_pages, v->rd.npages, err, errlen) <
            0) {
        e = errno;
        goto fail;
    }
    free(lay);
    lay = NULL;
    v->rd.own = SHR_LOAD(&v->ring->right.cons);
    v->wr.own = SHR_LOAD(&v->ring->left.prod);
    SHR_STORE(&v->ring->cli_live, (uint8_t)1);
    SHR_STORE(&v->ring->srv_notify, (uint8_t)VCHAN_NOTIFY_WRITE);
    vchan_mb();
    ncd_vchan_send_event(v); /* wake the server */
    *out = v;
    return 0;
fail:
    free(lay);
    ncd_vchan_close(v);
    errno = e ? e : EIO;
    return -1;
}

/* ---- in-memory pairs ---- */

static void local_put(struct ncd_local *l)
{
    if (--l->refs > 0)
        return;
    free(l->left);
    free(l->right);
    free(l->page);
    if (l->srv_efd >= 0)
        close(l->srv_efd);
    if (l->cli_efd >= 0)
        close(l->cli_efd);
    free(l);
}

int ncd_vchan_local_server(struct ncd_vchan **out, size_t read_min, size_t write_min,
                           char *err, size_t errlen)
{
    struct ncd_vchan *v;
    struct ncd_local *l;
    uint32_t ro, wo, i;

    *out = NULL;
    if (read_min > NCD_VCHAN_MAX_RING || write_min > NCD_VCHAN_MAX_RING) {
        set_err(err, errlen, "ring size %zu/%zu above the maximum %u", read_min, write_min,
                NCD_VCHAN_MAX_RING);
        errno = EINVAL;
        return -1;
    }
    pick_orders(read_min, write_min, &ro, &wo);
    v = vchan_alloc(1, 0);
    l = calloc(1, sizeof *l);
    if (!v || !l) {
        free(v);
        free(l);
        set_err(err, errlen, "out of memory");
        errno = ENOMEM;
        return -1;
    }
    l->refs = 1;
    l->srv_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->cli_efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->page = aligned_alloc(NCD_PAGE_SIZE, NCD_PAGE_SIZE);
    l->left_pages = order_pages(ro);
    l->right_pages = order_pages(wo);
    if (l->left_pages)
        l->left = aligned_alloc(NCD_PAGE_SIZE, (size_t)1 << ro);
    if (l->right_pages)
        l->right = aligned_alloc(NCD_PAGE_SIZE, (size_t)1 << wo);
    v->local = l;
    if (l->srv_efd < 0 || l->cli_efd < 0 || !l->page || (l->left_pages && !l->left) ||
        (l->right_pages && !l->right)) {
        int e = errno;
        set_err(err, errlen, "local vchan setup: %s", strerror(e));
        ncd_vchan_close(v);
        errno = e;
        return -1;
    }
    v->ring = l->page;
    init_server_page(v, ro, wo);
    for (i = 0; i < l->left_pages; i++)
        v->ring->grants[i] = LOCAL_LEFT_BASE + i;
    for (i = 0; i < l->right_pages; i++)
        v->ring->grants[l->left_pages + i] = LOCAL_RIGHT_BASE + i;
    ring_setup(&v->rd, &v->ring->left, l->left ? l->left : in_page_ring(v->ring, ro), ro);
    ring_setup(&v->wr, &v->ring->right, l->right ? l->right : in_page_ring(v->ring, wo), wo);
    v->efd = l->srv_efd;
    v->peer_efd = l->cli_efd;
    *out = v;
    return 0;
}

/* Resolve a run of fake grant refs to the local ring they name. */
static uint8_t *local_map(struct ncd_local *l, const uint32_t *grants, uint32_t n)
{
    uint32_t i, base = grants[0];
    uint8_t *mem;
    uint32_t avail;
    if (base == LOCAL_LEFT_BASE) {
        mem = l->left;
        avail = l->left_pages;
    } else if (base == LOCAL_RIGHT_BASE) {
        mem = l->right;
        avail = l->right_pages;
    } else {
        return NULL;
    }
    if (!mem || n != avail)
        return NULL;
    for (i = 0; i < n; i++)
        if (grants[i] != base + i)
            return NULL;
    return mem;
}

int ncd_vchan_local_client(struct ncd_vchan **out, struct ncd_vchan *server, char *err,
                           size_t errlen)
{
    struct ncd_local *l = server->local;
    struct ncd_layout *lay;
    struct ncd_vchan *v;
    uint8_t *buf;

    *out = NULL;
    if (!l) {
        set_err(err, errlen, "not a local vchan server");
        errno = EINVAL;
        return -1;
    }
    v = vchan_alloc(0, 0);
    lay = malloc(sizeof *lay);
    if (!v || !lay) {
        free(v);
        free(lay);
        set_err(err, errlen, "out of memory");
        errno = ENOMEM;
        return -1;
    }
    if (ncd_vchan_parse_layout(l->page, lay, err, errlen) < 0)
        goto fail;
    v->ring = l->page;
    ring_setup(&v->wr, &v->ring->left, NULL, lay->left_order);
    ring_setup(&v->rd, &v->ring->right, NULL, lay->right_order);
    if (v->wr.npages) {
        buf = local_map(l, lay->grants, v->wr.npages);
        if (!buf) {
            set_err(err, errlen, "mapping %u write-ring pages: no such grant", v->wr.npages);
            goto fail;
        }
        v->wr.buf = buf;
    } else {
        v->wr.buf = in_page_ring(v->ring, lay->left_order);
    }
    if (v->rd.npages) {
        buf = local_map(l, lay->grants + lay->left_pages, v->rd.npages);
        if (!buf) {
            set_err(err, errlen, "mapping %u read-ring pages: no such grant", v->rd.npages);
            goto fail;
        }
        v->rd.buf = buf;
    } else {
        v->rd.buf = in_page_ring(v->ring, lay->right_order);
    }
    free(lay);
    l->refs++;
    v->local = l;
    v->efd = l->cli_efd;
    v->peer_efd = l->srv_efd;
    v->rd.own = SHR_LOAD(&v->ring->right.cons);
    v->wr.own = SHR_LOAD(&v->ring->left.prod);
    SHR_STORE(&v->ring->cli_live, (uint8_t)1);
    SHR_STORE(&v->ring->srv_notify, (uint8_t)VCHAN_NOTIFY_WRITE);
    vchan_mb();
    ncd_vchan_send_event(v);
    *out = v;
    return 0;
fail:
    free(lay);
    free(v);
    errno = EPROTO;
    return -1;
}

void *ncd_vchan_shared_page(struct ncd_vchan *v)
{
    return v->ring;
}

void ncd_vchan_close(struct ncd_vchan *v)
{
    if (!v)
        return;
    if (v->ring) {
        SHR_STORE(v->is_server ? &v->ring->srv_live : &v->ring->cli_live, (uint8_t)0);
        vchan_mb();
        ncd_vchan_send_event(v);
    }
    if (v->local) {
        local_put(v->local);
        free(v);
        return;
    }
    if (v->is_server && v->gntshr) {
        if (v->rd.npages)
            xengntshr_unshare(v->gntshr, v->rd.buf, v->rd.npages);
        if (v->wr.npages)
            xengntshr_unshare(v->gntshr, v->wr.buf, v->wr.npages);
        if (v->ring)
            xengntshr_unshare(v->gntshr, v->ring, 1);
        xengntshr_close(v->gntshr);
    } else if (!v->is_server && v->gnttab) {
        untrack_mapped(v); /* before the addresses can be reused */
        if (v->wr.npages)
            xengnttab_unmap(v->gnttab, v->wr.buf, v->wr.npages);
        if (v->rd.npages)
            xengnttab_unmap(v->gnttab, v->rd.buf, v->rd.npages);
        if (v->ring)
            xengnttab_unmap(v->gnttab, v->ring, 1);
        xengnttab_close(v->gnttab);
    }
    if (v->evt) {
        if (v->port)
            xenevtchn_unbind(v->evt, v->port);
        xenevtchn_close(v->evt);
    }
    free(v);
}
