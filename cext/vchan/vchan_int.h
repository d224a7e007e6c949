/* SPDX-License-Identifier: GPL-2.0-only */
/* ncd vchan internals shared by vchan.c (ring I/O) and vchan_init.c (setup). */
#ifndef NCD_VCHAN_INT_H
#define NCD_VCHAN_INT_H

#include <stddef.h>
#include <stdint.h>
#include <xen/io/libxenvchan.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#include "ncd_util.h"
#include "vchan.h"

#define NCD_PAGE_SHIFT 12
#define NCD_PAGE_SIZE 4096u
#define NCD_SMALL_ORDER 10
#define NCD_LARGE_ORDER 11
#define NCD_MAX_ORDER 20
#define NCD_SMALL_OFFSET 1024u
#define NCD_LARGE_OFFSET 2048u
#define NCD_GRANTS_OFFSET 24u
#define NCD_MAX_GRANTS ((NCD_PAGE_SIZE - NCD_GRANTS_OFFSET) / 4u)

_Static_assert(offsetof(struct vchan_interface, left) == 0, "layout");
_Static_assert(offsetof(struct vchan_interface, right) == 8, "layout");
_Static_assert(offsetof(struct ring_shared, cons) == 0, "layout");
_Static_assert(offsetof(struct ring_shared, prod) == 4, "layout");
_Static_assert(offsetof(struct vchan_interface, left_order) == 16, "layout");
_Static_assert(offsetof(struct vchan_interface, right_order) == 18, "layout");
_Static_assert(offsetof(struct vchan_interface, cli_live) == 20, "layout");
_Static_assert(offsetof(struct vchan_interface, srv_live) == 21, "layout");
_Static_assert(offsetof(struct vchan_interface, cli_notify) == 22, "layout");
_Static_assert(offsetof(struct vchan_interface, srv_notify) == 23, "layout");
_Static_assert(offsetof(struct vchan_interface, grants) == NCD_GRANTS_OFFSET, "layout");

/* Barriers, as xen_mb / xen_rmb / xen_wmb. */
#define vchan_mb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define vchan_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define vchan_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
/* One read / one write of a shared word (READ_ONCE / WRITE_ONCE). */
#define SHR_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define SHR_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

struct ncd_ring {
    struct ring_shared *shr; /* indices in the shared page */
    uint8_t *buf;            /* ring memory */
    uint32_t order;          /* private copy, never re-read from the page */
    uint32_t size;           /* 1 << order */
    uint32_t own;            /* our private index: cons (read ring) or prod (write ring) */
    uint32_t peer_max;       /* read ring: the highest producer index seen; own <= peer_max
                              * <= own + size (mod 2^32); prod never goes back behind it */
    uint32_t granted;        /* last amount handed out by *_iov (commit clamp) */
    uint32_t npages;         /* pages granted/mapped separately (order >= 12), else 0 */
};

struct ncd_local;    /* in-memory backing of a local pair (vchan_init.c) */
struct ncd_ring_ops; /* share / map / unmap of pages: gntshr, gnttab or local (vchan_init.c) */

/* What this end knows about the peer's live flag; only ever moves forward
 * (NOT_SEEN -> LIVE -> GONE, or straight to GONE), by compare-and-swap. */
enum ncd_peer_seen {
    NCD_PEER_NOT_SEEN = 0, /* server: no client yet (cli_live still 2) */
    NCD_PEER_LIVE = 1,     /* the peer's live flag was seen at 1 */
    NCD_PEER_GONE = 2,     /* the peer's live flag was seen at 0: latched for good */
};

struct ncd_vchan {
    int is_server;
    int bad;           /* atomic: the peer was hostile, the channel is poisoned for good */
    int peer_seen;     /* atomic enum ncd_peer_seen */
    const char *bad_reason; /* set once (CAS) before bad is set; static string */
    uint16_t peer_domid;
    struct vchan_interface *ring; /* control page */
    struct ncd_ring rd, wr;
    const struct ncd_ring_ops *ops; /* how the pages were shared / mapped */
    /* Xen */
    xengntshr_handle *gntshr;
    xengnttab_handle *gnttab;
    xenevtchn_handle *evt;
    uint32_t port;
    /* local mode */
    struct ncd_local *local;
    int efd;      /* our eventfd (we wait on it) */
    int peer_efd; /* the peer's eventfd (we notify it); -1 if none */
    struct ncd_vchan_stats stats; /* updated with atomic adds */
};

/* Shared ring-I/O helpers (vchan.c) used by setup code. */
int ncd_vchan_send_event(struct ncd_vchan *v);
/* Store our live flag (srv_live or cli_live), full barrier, wake the peer. */
void ncd_vchan_publish_live(struct ncd_vchan *v, uint8_t live);
void ncd_vchan_mark_bad(struct ncd_vchan *v, const char *reason);

/* Layout of the control page as validated by a client. */
struct ncd_layout {
    uint32_t left_order, right_order; /* left = client write, right = client read */
    uint32_t left_pages, right_pages;
    uint32_t grants[NCD_MAX_GRANTS];
};
/* Reads orders and grant refs once from page, validates; 0 or -1 + err. */
int ncd_vchan_parse_layout(const struct vchan_interface *page, struct ncd_layout *out,
                           char *err, size_t errlen);

#define STAT_ADD(v, field) __atomic_fetch_add(&(v)->stats.field, 1, __ATOMIC_RELAXED)

#endif
