/*
 * Shared plumbing of the xensim shims: one broker connection per handle,
 * request/reply with fd passing, error logging, and the process-wide registry
 * of simulator memory regions (shares and mappings).
 */
#ifndef XENSIM_CLIENT_H
#define XENSIM_CLIENT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "proto.h"

struct xentoollog_logger;

#define XENSIM_HIDDEN __attribute__((visibility("hidden")))

struct xensim_conn {
    int fd;
    uint32_t domid;
    pthread_mutex_t lock; /* one request/reply in flight per connection */
    struct xentoollog_logger *logger;
};

/* Connect to $XENSIM_HV_SOCKET and say hello.  Returns 0, or -1 with errno
 * (ENOENT when unset or missing, ECONNREFUSED when no broker) after logging. */
XENSIM_HIDDEN int xensim_connect(struct xensim_conn *c, const char *ctx, uint32_t kind,
                                 struct xentoollog_logger *logger, int cloexec);
XENSIM_HIDDEN void xensim_disconnect(struct xensim_conn *c);

/* One round trip.  `out` receives up to out_max payload bytes (the reply's
 * payload length is returned in *out_len when non-NULL); `fds` receives up to
 * fds_max descriptors (exactly rsp->nfds are returned, the caller owns them).
 * Returns 0, or -1 with errno (transport failure or the broker's err). */
XENSIM_HIDDEN int xensim_call(struct xensim_conn *c, const struct xensim_req *req,
                              const void *payload, size_t plen, struct xensim_rsp *rsp,
                              void *out, size_t out_max, size_t *out_len, int *fds,
                              unsigned fds_max);

/* Log an error like libxentoollog's XTL_ERROR (to the handle's logger, else
 * stderr).  Preserves errno. */
XENSIM_HIDDEN void xensim_log(struct xentoollog_logger *logger, const char *ctx, int err,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

XENSIM_HIDDEN void xensim_close_fds(int *fds, unsigned n);

/* ---- process-wide registry of simulator memory ---- */
enum xensim_region_kind {
    XENSIM_REGION_SHARE = 1, /* pages this domain allocated and granted */
    XENSIM_REGION_MAP = 2,   /* pages mapped from grants (possibly foreign) */
};

#define XENSIM_REF_GONE 0xffffffffu

struct xensim_region {
    struct xensim_region *next;
    uint8_t *addr;
    uint32_t count;
    int kind;
    const void *owner; /* the handle that created it */
    uint32_t map_id;   /* XENSIM_REGION_MAP */
    uint32_t refs[];   /* XENSIM_REGION_SHARE: per page ref or XENSIM_REF_GONE */
};

XENSIM_HIDDEN void xensim_regions_lock(void);
XENSIM_HIDDEN void xensim_regions_unlock(void);
/* The following need the registry lock held. */
XENSIM_HIDDEN void xensim_region_add(struct xensim_region *r);
XENSIM_HIDDEN struct xensim_region *xensim_region_find(const void *addr);
XENSIM_HIDDEN void xensim_region_remove(struct xensim_region *r);
/* Remove (and free) every region of `owner`; does not munmap. */
XENSIM_HIDDEN void xensim_regions_forget_owner(const void *owner);

/* A round trip whose reply carries `count` page descriptors: page i is mapped
 * (shared, prot) at page i of a fresh reservation as it arrives, and its
 * descriptor closed at once.  Returns the address, or NULL with errno, never
 * leaving a partial mapping behind.  *granted says whether the broker
 * succeeded (then rsp and `out` are filled and, on a local failure, the caller
 * must undo the broker's share/map). */
XENSIM_HIDDEN void *xensim_call_map(struct xensim_conn *c, const struct xensim_req *req,
                                    const void *payload, size_t plen, struct xensim_rsp *rsp,
                                    void *out, size_t out_max, size_t *out_len, uint32_t count,
                                    int prot, int *granted);

#endif /* XENSIM_CLIENT_H */
