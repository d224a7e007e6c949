/*
 * xensim wire protocol between the shim libraries and the hypervisor broker.
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET connection per shim handle, to
 * WORLD/dom<N>/hypervisor.sock.  The socket a client connected to is its
 * domain identity; the broker learns the client's pid with SO_PEERCRED.
 *
 * Every request is one message: struct xensim_req followed by a payload of
 * `count` items (item type depends on the op).  Every request gets exactly one
 * reply: struct xensim_rsp followed by a payload, plus `nfds` file descriptors
 * passed with SCM_RIGHTS.  When nfds > XENSIM_MAX_FDS_PER_MSG the reply is
 * followed by continuation messages (an 8-byte struct xensim_cont each) that
 * carry the remaining fds, at most XENSIM_MAX_FDS_PER_MSG per message.
 *
 * All integers are little-endian host order (the broker runs on the same
 * host).  err is 0 or a positive errno value.  Mirrored in Python by
 * xensim/broker/proto.py; change both together.
 */
#ifndef XENSIM_PROTO_H
#define XENSIM_PROTO_H

#include <stdint.h>

#define XENSIM_PROTO_MAGIC      0x58534d31u /* "XSM1" */
#define XENSIM_PAGE_SIZE        4096u
#define XENSIM_MAX_MSG          65536u
#define XENSIM_MAX_FDS_PER_MSG  200u
#define XENSIM_NONE             0xffffffffu /* "no notify offset / port" */
#define XENSIM_EVTCHN_STATE_STRIDE 64u

/* Event channel port state word (in the channel's shared state page). */
#define XENSIM_EVTCHN_MASKED   (1u << 0) /* delivered, not yet unmasked */
#define XENSIM_EVTCHN_PENDING  (1u << 1) /* notified while masked */
#define XENSIM_EVTCHN_QUEUED   (1u << 2) /* delivered, not yet returned by pending() */

struct xensim_req {
    uint32_t op;
    uint32_t count;   /* number of payload items */
    uint32_t arg[6];
};                    /* 32 bytes */

struct xensim_rsp {
    int32_t  err;     /* 0 or positive errno */
    uint32_t nfds;    /* total fds carried by this reply and its continuations */
    uint32_t count;   /* number of payload items */
    uint32_t val[5];
};                    /* 32 bytes */

struct xensim_cont {
    uint32_t magic;   /* XENSIM_PROTO_MAGIC */
    uint32_t nfds;    /* fds in this continuation message */
};

/* One (domid, ref) pair: payload item of XENSIM_OP_MAP. */
struct xensim_ref {
    uint32_t domid;
    uint32_t ref;
};

/* Payload item of XENSIM_OP_COPY (one grant-copy segment, foreign sides only
 * matter to the broker; local sides are copied by the shim itself). */
struct xensim_copy_seg {
    uint32_t flags;      /* GNTCOPY_source_gref | GNTCOPY_dest_gref */
    uint32_t len;
    uint32_t src_ref;
    uint32_t src_domid;
    uint32_t src_offset;
    uint32_t dst_ref;
    uint32_t dst_domid;
    uint32_t dst_offset;
};                       /* 32 bytes */

enum xensim_op {
    /* arg0 = XENSIM_PROTO_MAGIC, arg1 = handle kind (enum xensim_kind).
     * rsp.val0 = caller's domid. */
    XENSIM_OP_HELLO = 1,

    /* gntshr: arg0 = grantee domid, arg1 = writable, arg2 = notify byte offset
     * from the start of the region or XENSIM_NONE, arg3 = notify port or
     * XENSIM_NONE; count = pages.  rsp: payload = count uint32 grant refs,
     * fds = count read-write memfds (one per page). */
    XENSIM_OP_SHARE = 2,
    /* gntshr: payload = count uint32 refs to end (must be this handle's). */
    XENSIM_OP_UNSHARE = 3,
    /* gntshr extension: arg0 = ref of a page this handle shares, arg1 = grantee
     * domid, arg2 = writable.  rsp.val0 = new ref.  EPERM unless the page is
     * the caller domain's own page. */
    XENSIM_OP_GRANT_EXISTING = 4,
    /* gntshr extension: arg0 = ref created by GRANT_EXISTING on this handle. */
    XENSIM_OP_END_GRANT = 5,

    /* gnttab: arg0 = writable, arg1 = notify byte offset from the start of the
     * mapping or XENSIM_NONE, arg2 = notify port or XENSIM_NONE;
     * payload = count struct xensim_ref.  rsp.val0 = mapping id, fds = count
     * memfds, read-only ones for read-only grants.  On failure err = EINVAL,
     * val1 = GNTST_* status (as uint32), val2 = index of the failing ref. */
    XENSIM_OP_MAP = 6,
    /* gnttab: arg0 = mapping id. */
    XENSIM_OP_UNMAP = 7,
    /* gnttab: payload = count struct xensim_copy_seg.  rsp payload = count
     * int32 GNTST_* statuses; fds = for every segment with status 0, the
     * source memfd if the source is a gref, then the dest memfd if the dest is
     * a gref (dest fds are writable). */
    XENSIM_OP_COPY = 8,

    /* evtchn: arg0 = remote domid.  rsp.val0 = local port, rsp.val1 = this
     * port's slot in the state page; fds = [rx, tx, state]: eventfd waking
     * this handle, eventfd waking the peer's handle, and the channel's state
     * page (memfd) holding one 32-bit state word per end at slot *
     * XENSIM_EVTCHN_STATE_STRIDE (bits XENSIM_EVTCHN_*; see evtchn.c). */
    XENSIM_OP_ALLOC_UNBOUND = 9,
    /* evtchn: arg0 = remote domid, arg1 = remote port.  Same reply. */
    XENSIM_OP_BIND_INTERDOMAIN = 10,
    /* evtchn: arg0 = local port bound by this handle. */
    XENSIM_OP_UNBIND = 11,

    /* control, accepted only on dom0's socket */
    XENSIM_OP_CREATE_DOMAIN = 20,  /* arg0 = domid */
    XENSIM_OP_DESTROY_DOMAIN = 21, /* arg0 = domid; rsp.val0 = processes killed */
    XENSIM_OP_LIST_DOMAINS = 22,   /* rsp payload = count uint32 domids */
    XENSIM_OP_STATS = 23,          /* rsp payload = count bytes of JSON */
    /* arg0 = first domid, arg1 = max domains.  rsp payload = count struct
     * xensim_dominfo: the live domains with domid >= first, in domid order
     * (a domU asking gets EPERM, as Xen's getdomaininfo domctl gives it). */
    XENSIM_OP_DOMAIN_INFO = 24,
};

/* Payload item of XENSIM_OP_DOMAIN_INFO. */
#define XENSIM_DOMINFO_DYING    (1u << 0) /* being destroyed */
#define XENSIM_DOMINFO_SHUTDOWN (1u << 1) /* (never set: xensim has no shutdown) */
struct xensim_dominfo {
    uint32_t domid;
    uint32_t flags;        /* XENSIM_DOMINFO_* */
    uint32_t shared_pages; /* pages the domain shares (its own memory in use by grants) */
    uint32_t mapped_pages; /* foreign pages it has mapped */
};

enum xensim_kind {
    XENSIM_KIND_GNTTAB = 1,
    XENSIM_KIND_GNTSHR = 2,
    XENSIM_KIND_EVTCHN = 3,
    XENSIM_KIND_CONTROL = 4,
    XENSIM_KIND_PRIVCMD = 5, /* libxenctrl's xc_interface */
};

#endif /* XENSIM_PROTO_H */
