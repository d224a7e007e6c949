/*
 * libxengnttab.so.1 for xensim: xengnttab_* (map foreign grants, grant copy)
 * and xengntshr_* (share fresh pages), with Debian's API and symbol versions,
 * plus the xensim_* extension of xensim.h.
 *
 * Pages are broker-owned memfds passed over the handle's connection and
 * mmap'd MAP_SHARED, one fd per page.  Read-only grants arrive as O_RDONLY
 * descriptors, so neither mmap(PROT_WRITE) nor mprotect can make them
 * writable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xengnttab.h>

#include "client.h"
#include "xensim.h"

#define PAGE XENSIM_PAGE_SIZE
#define MAX_MAP_REFS ((XENSIM_MAX_MSG - sizeof(struct xensim_req)) / sizeof(struct xensim_ref))
#define MAX_SHARE_REFS ((XENSIM_MAX_MSG - sizeof(struct xensim_rsp)) / sizeof(uint32_t))
/* at most 2 fds per segment: one batch's fds fit in one message (and a
 * process with the default RLIMIT_NOFILE of 1024 can hold them) */
#define COPY_BATCH (XENSIM_MAX_FDS_PER_MSG / 2)

struct xengntdev_handle {
    struct xensim_conn conn;
};

static struct xengntdev_handle *open_handle(struct xentoollog_logger *logger,
                                            unsigned open_flags, const char *ctx,
                                            uint32_t kind)
{
    struct xengntdev_handle *h = calloc(1, sizeof(*h));

    (void)open_flags;
    if (!h)
        return NULL;
    if (xensim_connect(&h->conn, ctx, kind, logger, 1) < 0) {
        int err = errno;

        free(h);
        errno = err;
        return NULL;
    }
    return h;
}

static int close_handle(struct xengntdev_handle *h)
{
    if (!h)
        return 0;
    xensim_regions_lock();
    /* Like closing /dev/xen/gntdev: user mappings stay until munmap; the
     * broker releases the grants/mappings and fires unmap notifies now. */
    xensim_regions_forget_owner(h);
    xensim_regions_unlock();
    xensim_disconnect(&h->conn);
    free(h);
    return 0;
}

/* ------------------------------------------------------------------ gnttab */

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    return open_handle(logger, open_flags, "gnttab", XENSIM_KIND_GNTTAB);
}

int xengnttab_close(xengnttab_handle *xgt)
{
    return close_handle(xgt);
}

int xengnttab_fd(xengnttab_handle *xgt)
{
    return xgt->conn.fd;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    /* Current Linux gntdev has no SET_MAX_GRANTS ioctl (ENOTTY), which
     * libxengnttab treats as success; its per-map `limit` is the broker's
     * --gntdev-limit. */
    (void)xgt;
    (void)nr_grants;
    return 0;
}

static void *grant_map(xengnttab_handle *xgt, uint32_t count, const uint32_t *domids,
                       int domids_stride, const uint32_t *refs, int prot,
                       uint32_t notify_offset, uint32_t notify_port)
{
    struct xensim_req req = {
        .op = XENSIM_OP_MAP,
        .count = count,
        .arg = { (prot & PROT_WRITE) ? 1 : 0, notify_offset, notify_port },
    };
    struct xensim_rsp rsp = { 0 };
    struct xensim_ref *items = NULL;
    struct xensim_region *reg = NULL;
    void *addr = NULL;
    int granted = 0;
    int err = 0;

    if (count == 0 || count > MAX_MAP_REFS) {
        errno = EINVAL;
        xensim_log(xgt->conn.logger, "gnttab", errno, "ioctl MAP_GRANT_REF failed");
        return NULL;
    }
    items = malloc(count * sizeof(*items));
    reg = malloc(sizeof(*reg));
    if (!items || !reg) {
        err = ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < count; i++) {
        items[i].domid = domids[(size_t)i * domids_stride];
        items[i].ref = refs[i];
    }
    addr = xensim_call_map(&xgt->conn, &req, items, count * sizeof(*items), &rsp, NULL, 0,
                           NULL, count, prot, &granted);
    if (!addr) {
        err = errno;
        if (granted) {
            /* the broker mapped, we could not: give the mapping back */
            struct xensim_req un = { .op = XENSIM_OP_UNMAP, .arg = { rsp.val[0] } };
            struct xensim_rsp ursp;

            xensim_call(&xgt->conn, &un, NULL, 0, &ursp, NULL, 0, NULL, NULL, 0);
            xensim_log(xgt->conn.logger, "gnttab", err, "mmap failed");
        } else if (err == EINVAL && rsp.val[1]) {
            xensim_log(xgt->conn.logger, "gnttab", err,
                       "mmap failed: grant d%u ref %u: status %d",
                       items[rsp.val[2] < count ? rsp.val[2] : 0].domid,
                       items[rsp.val[2] < count ? rsp.val[2] : 0].ref, (int)rsp.val[1]);
        } else {
            xensim_log(xgt->conn.logger, "gnttab", err, "mmap failed");
        }
        goto out;
    }
    reg->addr = addr;
    reg->count = count;
    reg->kind = XENSIM_REGION_MAP;
    reg->owner = xgt;
    reg->map_id = rsp.val[0];
    xensim_regions_lock();
    xensim_region_add(reg);
    xensim_regions_unlock();
    reg = NULL;
out:
    free(items);
    free(reg);
    if (!addr)
        errno = err;
    return addr;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
    return grant_map(xgt, 1, &domid, 0, &ref, prot, XENSIM_NONE, XENSIM_NONE);
}

void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t *domids,
                               uint32_t *refs, int prot)
{
    return grant_map(xgt, count, domids, 1, refs, prot, XENSIM_NONE, XENSIM_NONE);
}

void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
                                      uint32_t *refs, int prot)
{
    return grant_map(xgt, count, &domid, 0, refs, prot, XENSIM_NONE, XENSIM_NONE);
}

void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
                                     int prot, uint32_t notify_offset,
                                     evtchn_port_t notify_port)
{
    return grant_map(xgt, 1, &domid, 0, &ref, prot, notify_offset, notify_port);
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    struct xensim_region *r;
    struct xensim_req req = { .op = XENSIM_OP_UNMAP };
    struct xensim_rsp rsp;

    if (start_address == NULL) {
        errno = EINVAL;
        return -1;
    }
    xensim_regions_lock();
    r = xensim_region_find(start_address);
    if (!r || r->kind != XENSIM_REGION_MAP || r->owner != xgt ||
        r->addr != (uint8_t *)start_address) {
        xensim_regions_unlock();
        errno = EINVAL; /* GET_OFFSET_FOR_VADDR: no such mapping */
        return -1;
    }
    if (r->count != count) {
        xensim_regions_unlock();
        errno = EINVAL;
        return -1;
    }
    req.arg[0] = r->map_id;
    xensim_region_remove(r);
    xensim_regions_unlock();
    if (munmap(start_address, (size_t)count * PAGE) < 0)
        return -1;
    return xensim_call(&xgt->conn, &req, NULL, 0, &rsp, NULL, 0, NULL, NULL, 0);
}

static int copy_batch(xengnttab_handle *xgt, uint32_t count,
                      xengnttab_grant_copy_segment_t *segs)
{
    struct xensim_req req = { .op = XENSIM_OP_COPY, .count = count };
    struct xensim_copy_seg items[COPY_BATCH];
    int32_t status[COPY_BATCH];
    int fds[2 * COPY_BATCH];
    struct xensim_rsp rsp;
    size_t got = 0;
    unsigned k = 0;
    int rc = 0, err = 0;

    memset(items, 0, count * sizeof(items[0]));
    for (uint32_t i = 0; i < count; i++) {
        const xengnttab_grant_copy_segment_t *s = &segs[i];

        items[i].flags = s->flags;
        items[i].len = s->len;
        if (s->flags & GNTCOPY_source_gref) {
            items[i].src_ref = s->source.foreign.ref;
            items[i].src_domid = s->source.foreign.domid;
            items[i].src_offset = s->source.foreign.offset;
        }
        if (s->flags & GNTCOPY_dest_gref) {
            items[i].dst_ref = s->dest.foreign.ref;
            items[i].dst_domid = s->dest.foreign.domid;
            items[i].dst_offset = s->dest.foreign.offset;
        }
    }
    if (xensim_call(&xgt->conn, &req, items, count * sizeof(items[0]), &rsp, status,
                    sizeof(status), &got, fds, 2 * COPY_BATCH) < 0) {
        xensim_log(xgt->conn.logger, "gnttab", errno, "ioctl GRANT_COPY failed");
        return -1;
    }
    if (got != count * sizeof(int32_t)) {
        xensim_close_fds(fds, rsp.nfds);
        errno = EPROTO;
        return -1;
    }
    for (uint32_t i = 0; i < count; i++) {
        xengnttab_grant_copy_segment_t *s = &segs[i];
        int sfd = -1, dfd = -1;
        uint8_t tmp[PAGE];
        ssize_t n;

        s->status = (int16_t)status[i];
        if (status[i] != GNTST_okay)
            continue;
        if (s->flags & GNTCOPY_source_gref)
            sfd = k < rsp.nfds ? fds[k++] : -1;
        if (s->flags & GNTCOPY_dest_gref)
            dfd = k < rsp.nfds ? fds[k++] : -1;
        if (((s->flags & GNTCOPY_source_gref) && sfd < 0) ||
            ((s->flags & GNTCOPY_dest_gref) && dfd < 0)) {
            err = EPROTO;
            rc = -1;
            break;
        }
        if (rc < 0)
            continue;
        /* pread/pwrite rather than memcpy: a bad local buffer gives EFAULT,
         * as get_user_pages does in gntdev. */
        if (sfd >= 0 && dfd >= 0) {
            n = pread(sfd, tmp, s->len, s->source.foreign.offset);
            if (n == s->len)
                n = pwrite(dfd, tmp, s->len, s->dest.foreign.offset);
        } else if (sfd >= 0) {
            n = pread(sfd, s->dest.virt, s->len, s->source.foreign.offset);
        } else {
            n = pwrite(dfd, s->source.virt, s->len, s->dest.foreign.offset);
        }
        if (n != s->len) {
            err = n < 0 ? errno : EIO;
            rc = -1;
        }
    }
    xensim_close_fds(fds, rsp.nfds);
    if (rc < 0)
        errno = err;
    return rc;
}

int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
                         xengnttab_grant_copy_segment_t *segs)
{
    for (uint32_t done = 0; done < count;) {
        uint32_t n = count - done < COPY_BATCH ? count - done : COPY_BATCH;

        if (copy_batch(xgt, n, segs + done) < 0)
            return -1;
        done += n;
    }
    return 0;
}

int xengnttab_dmabuf_exp_from_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t flags,
                                   uint32_t count, const uint32_t *refs, uint32_t *fd)
{
    (void)xgt, (void)domid, (void)flags, (void)count, (void)refs, (void)fd;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_exp_wait_released(xengnttab_handle *xgt, uint32_t fd,
                                       uint32_t wait_to_ms)
{
    (void)xgt, (void)fd, (void)wait_to_ms;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_imp_to_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t fd,
                                 uint32_t count, uint32_t *refs)
{
    (void)xgt, (void)domid, (void)fd, (void)count, (void)refs;
    errno = EOPNOTSUPP;
    return -1;
}

int xengnttab_dmabuf_imp_release(xengnttab_handle *xgt, uint32_t fd)
{
    (void)xgt, (void)fd;
    errno = EOPNOTSUPP;
    return -1;
}

/* ------------------------------------------------------------------ gntshr */

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    return open_handle(logger, open_flags, "gntshr", XENSIM_KIND_GNTSHR);
}

int xengntshr_close(xengntshr_handle *xgs)
{
    return close_handle(xgs);
}

int xengntshr_fd(xengntshr_handle *xgs)
{
    return xgs->conn.fd;
}

static void send_unshare(xengntshr_handle *xgs, const uint32_t *refs, uint32_t n)
{
    struct xensim_req req = { .op = XENSIM_OP_UNSHARE, .count = n };
    struct xensim_rsp rsp;

    if (n)
        xensim_call(&xgs->conn, &req, refs, n * sizeof(uint32_t), &rsp, NULL, 0, NULL, NULL, 0);
}

static void *share(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
                   int writable, uint32_t notify_offset, uint32_t notify_port)
{
    struct xensim_req req = {
        .op = XENSIM_OP_SHARE,
        .count = (uint32_t)count,
        .arg = { domid, writable ? 1 : 0, notify_offset, notify_port },
    };
    struct xensim_rsp rsp = { 0 };
    struct xensim_region *reg = NULL;
    size_t got = 0;
    void *addr = NULL;
    int granted = 0;
    int err = 0;

    if (count <= 0 || (size_t)count > MAX_SHARE_REFS) {
        errno = EINVAL;
        xensim_log(xgs->conn.logger, "gntshr", errno, "ioctl failed");
        return NULL;
    }
    reg = malloc(sizeof(*reg) + (size_t)count * sizeof(uint32_t));
    if (!reg) {
        err = ENOMEM;
        goto out;
    }
    addr = xensim_call_map(&xgs->conn, &req, NULL, 0, &rsp, reg->refs,
                           (size_t)count * sizeof(uint32_t), &got, (uint32_t)count,
                           PROT_READ | PROT_WRITE, &granted);
    if (addr && got != (size_t)count * sizeof(uint32_t)) {
        munmap(addr, (size_t)count * PAGE);
        addr = NULL;
        errno = EPROTO;
    }
    if (!addr) {
        err = errno;
        xensim_log(xgs->conn.logger, "gntshr", err, granted ? "mmap failed" : "ioctl failed");
        if (granted && got == (size_t)count * sizeof(uint32_t))
            send_unshare(xgs, reg->refs, (uint32_t)count);
        goto out;
    }
    memcpy(refs, reg->refs, (size_t)count * sizeof(uint32_t));
    reg->addr = addr;
    reg->count = (uint32_t)count;
    reg->kind = XENSIM_REGION_SHARE;
    reg->owner = xgs;
    reg->map_id = 0;
    xensim_regions_lock();
    xensim_region_add(reg);
    xensim_regions_unlock();
    reg = NULL;
out:
    free(reg);
    if (!addr)
        errno = err;
    return addr;
}

void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
                            int writable)
{
    return share(xgs, domid, count, refs, writable, XENSIM_NONE, XENSIM_NONE);
}

void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref,
                                  int writable, uint32_t notify_offset,
                                  evtchn_port_t notify_port)
{
    return share(xgs, domid, 1, ref, writable, notify_offset, notify_port);
}

int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count)
{
    uint8_t *start = start_address;
    uint32_t *refs;
    uint32_t n = 0;

    if (((uintptr_t)start & (PAGE - 1)) || count == 0) {
        errno = EINVAL;
        return -1;
    }
    refs = malloc((size_t)count * sizeof(*refs));
    if (!refs) {
        errno = ENOMEM;
        return -1;
    }
    xensim_regions_lock();
    for (uint32_t i = 0; i < count; i++) {
        uint8_t *p = start + (size_t)i * PAGE;
        struct xensim_region *r = xensim_region_find(p);
        uint32_t idx;

        if (!r || r->kind != XENSIM_REGION_SHARE || r->owner != xgs)
            continue;
        idx = (uint32_t)((p - r->addr) / PAGE);
        if (r->refs[idx] == XENSIM_REF_GONE)
            continue;
        refs[n++] = r->refs[idx];
        r->refs[idx] = XENSIM_REF_GONE;
        int live = 0;

        for (uint32_t j = 0; j < r->count; j++)
            live |= r->refs[j] != XENSIM_REF_GONE;
        if (!live)
            xensim_region_remove(r);
    }
    xensim_regions_unlock();
    if (n == 0) {
        free(refs);
        errno = EINVAL;
        return -1;
    }
    /* Like gntalloc: the pages leave our address space, then the grants end
     * (clearing the notify byte and sending the notify event). */
    munmap(start, (size_t)count * PAGE);
    send_unshare(xgs, refs, n);
    free(refs);
    return 0;
}

/* ------------------------------------------------------------ extensions */

int xensim_grant_existing(xengntshr_handle *xgs, void *addr, uint32_t domid, int writable,
                          uint32_t *ref)
{
    struct xensim_req req = { .op = XENSIM_OP_GRANT_EXISTING,
                              .arg = { 0, domid, writable ? 1 : 0 } };
    struct xensim_rsp rsp;
    struct xensim_region *r;

    xensim_regions_lock();
    r = xensim_region_find(addr);
    if (!r) {
        xensim_regions_unlock();
        errno = EINVAL;
        xensim_log(xgs->conn.logger, "gntshr", errno,
                   "grant_existing: %p is not a page of the simulator", addr);
        return -1;
    }
    uint32_t idx = (uint32_t)(((uint8_t *)addr - r->addr) / PAGE);

    if (r->kind == XENSIM_REGION_SHARE) {
        req.arg[0] = r->refs[idx];
        req.arg[3] = 0;
    } else {
        /* Mapped from a grant: let the hypervisor judge the page's owner. */
        req.arg[0] = r->map_id;
        req.arg[3] = 1;
        req.arg[4] = idx;
    }
    xensim_regions_unlock();
    if (req.arg[3] == 0 && req.arg[0] == XENSIM_REF_GONE) {
        errno = EINVAL;
        return -1;
    }
    if (xensim_call(&xgs->conn, &req, NULL, 0, &rsp, NULL, 0, NULL, NULL, 0) < 0) {
        xensim_log(xgs->conn.logger, "gntshr", errno, "grant_existing of %p to d%u failed",
                   addr, domid);
        return -1;
    }
    *ref = rsp.val[0];
    return 0;
}

int xensim_end_grant(xengntshr_handle *xgs, uint32_t ref)
{
    struct xensim_req req = { .op = XENSIM_OP_END_GRANT, .arg = { ref } };
    struct xensim_rsp rsp;

    return xensim_call(&xgs->conn, &req, NULL, 0, &rsp, NULL, 0, NULL, NULL, 0);
}
