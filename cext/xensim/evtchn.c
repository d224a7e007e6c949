/*
 * libxenevtchn.so.1 for xensim, with Debian's API and symbol versions.
 *
 * Delivery follows Xen + Linux's evtchn driver: a notify delivers the event
 * at once unless the port is masked (delivered and not yet unmasked); then it
 * only marks the port pending, and unmask re-delivers it.  Each channel has a
 * shared state page (from the broker) with one 32-bit word per end:
 *
 *   MASKED   delivered, waiting for xenevtchn_unmask
 *   PENDING  notified while masked: deliver again on unmask
 *   QUEUED   delivered, not yet returned by xenevtchn_pending
 *
 * The *sender* does the delivery, with a compare-and-swap on the receiver's
 * word, exactly when it notifies: unmasked -> MASKED|QUEUED and one write(2)
 * to the receiver's eventfd (its wakeup); masked -> PENDING and no syscall at
 * all.  So xenevtchn_notify costs at most one syscall and never a broker round
 * trip, and a notification is never lost: one that arrives after delivery
 * waits in PENDING for the unmask.
 *
 * The handle's fd is an epoll fd holding each port's eventfd (level
 * triggered).  Wakeups without QUEUED (the broker's: a bind, an unmap
 * notification) are delivered by xenevtchn_pending on the receiving side.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <unistd.h>

#include <xenevtchn.h>

#include "client.h"

#define UNRESTRICTED ((uint32_t)-1)


#define MASKED XENSIM_EVTCHN_MASKED
#define PENDING XENSIM_EVTCHN_PENDING
#define QUEUED XENSIM_EVTCHN_QUEUED

struct port {
    evtchn_port_t port;
    int rx, tx;
    void *page;     /* the channel's state page */
    uint32_t *mine; /* this end's state word */
    uint32_t *peer; /* the peer end's state word (untrusted: the peer writes it too) */
};

static void release_port(struct port *p)
{
    close(p->rx);
    close(p->tx);
    munmap(p->page, XENSIM_PAGE_SIZE);
}

/* Atomically replace *w by f(*w); returns the old value. */
#define UPDATE(w, old, expr)                                                         \
    do {                                                                             \
        uint32_t new_;                                                               \
        old = __atomic_load_n((w), __ATOMIC_ACQUIRE);                                \
        do {                                                                         \
            new_ = (expr);                                                           \
        } while (!__atomic_compare_exchange_n((w), &old, new_, 0, __ATOMIC_ACQ_REL,  \
                                              __ATOMIC_ACQUIRE));                   \
    } while (0)

struct xenevtchn_handle {
    struct xensim_conn conn;
    int epfd;
    uint32_t restrict_domid;
    pthread_mutex_t lock; /* guards ports[] */
    struct port *ports;
    size_t nports, cap;
};

static struct port *find_port(xenevtchn_handle *xce, evtchn_port_t port)
{
    for (size_t i = 0; i < xce->nports; i++) {
        if (xce->ports[i].port == port)
            return &xce->ports[i];
    }
    return NULL;
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
    int cloexec = !(flags & XENEVTCHN_NO_CLOEXEC);
    xenevtchn_handle *xce = calloc(1, sizeof(*xce));
    int err;

    if (!xce)
        return NULL;
    xce->restrict_domid = UNRESTRICTED;
    xce->epfd = epoll_create1(cloexec ? EPOLL_CLOEXEC : 0);
    if (xce->epfd < 0) {
        err = errno;
        xensim_log(logger, "evtchn", err, "epoll_create1 failed");
        goto fail;
    }
    if (pthread_mutex_init(&xce->lock, NULL)) {
        err = ENOMEM;
        close(xce->epfd);
        goto fail;
    }
    if (xensim_connect(&xce->conn, "evtchn", XENSIM_KIND_EVTCHN, logger, cloexec) < 0) {
        err = errno;
        pthread_mutex_destroy(&xce->lock);
        close(xce->epfd);
        goto fail;
    }
    return xce;
fail:
    free(xce);
    errno = err;
    return NULL;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd,
                                   unsigned open_flags)
{
    (void)fd, (void)open_flags;
    errno = EOPNOTSUPP;
    xensim_log(logger, "evtchn", errno, "xenevtchn_fdopen is not simulated");
    return NULL;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    if (!xce)
        return 0;
    /* Closing the connection unbinds every port in the broker. */
    xensim_disconnect(&xce->conn);
    for (size_t i = 0; i < xce->nports; i++)
        release_port(&xce->ports[i]);
    close(xce->epfd);
    pthread_mutex_destroy(&xce->lock);
    free(xce->ports);
    free(xce);
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    return xce->epfd;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    static const uint64_t one = 1;
    struct port *p;
    uint32_t old;
    ssize_t n = sizeof(one);
    int err = 0;

    pthread_mutex_lock(&xce->lock);
    p = find_port(xce, port);
    if (!p) {
        pthread_mutex_unlock(&xce->lock);
        errno = ENOTCONN;
        return -1;
    }
    /* Deliver now (and wake the peer) unless the peer's port is masked. */
    UPDATE(p->peer, old, (old & MASKED) ? (old | PENDING) : (old | MASKED | QUEUED));
    if (!(old & MASKED)) {
        n = write(p->tx, &one, sizeof(one));
        err = errno;
    }
    pthread_mutex_unlock(&xce->lock);
    if (n != sizeof(one)) {
        errno = n < 0 ? err : EIO;
        return -1;
    }
    return 0;
}

static xenevtchn_port_or_error_t bind_port(xenevtchn_handle *xce, uint32_t op,
                                           uint32_t domid, uint32_t remote_port,
                                           const char *what)
{
    struct xensim_req req = { .op = op, .arg = { domid, remote_port } };
    struct xensim_rsp rsp;
    struct epoll_event ev = { .events = EPOLLIN };
    void *page = MAP_FAILED;
    uint32_t slot;
    int fds[3];
    int err;

    if (xensim_call(&xce->conn, &req, NULL, 0, &rsp, NULL, 0, NULL, fds, 3) < 0) {
        xensim_log(xce->conn.logger, "evtchn", errno, "%s failed", what);
        return -1;
    }
    slot = rsp.val[1];
    if (rsp.nfds != 3 || slot > 1) {
        xensim_close_fds(fds, rsp.nfds);
        errno = EPROTO;
        return -1;
    }
    page = mmap(NULL, XENSIM_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[2], 0);
    err = errno;
    close(fds[2]);
    fds[2] = -1;
    pthread_mutex_lock(&xce->lock);
    if (page == MAP_FAILED)
        goto fail;
    if (xce->nports == xce->cap) {
        size_t cap = xce->cap ? 2 * xce->cap : 8;
        struct port *np = realloc(xce->ports, cap * sizeof(*np));

        if (!np) {
            err = ENOMEM;
            goto fail;
        }
        xce->ports = np;
        xce->cap = cap;
    }
    ev.data.u32 = rsp.val[0];
    if (epoll_ctl(xce->epfd, EPOLL_CTL_ADD, fds[0], &ev) < 0) {
        err = errno;
        goto fail;
    }
    xce->ports[xce->nports++] = (struct port){
        .port = rsp.val[0],
        .rx = fds[0],
        .tx = fds[1],
        .page = page,
        .mine = (uint32_t *)((uint8_t *)page + slot * XENSIM_EVTCHN_STATE_STRIDE),
        .peer = (uint32_t *)((uint8_t *)page + (1 - slot) * XENSIM_EVTCHN_STATE_STRIDE),
    };
    pthread_mutex_unlock(&xce->lock);
    return (xenevtchn_port_or_error_t)rsp.val[0];
fail:
    pthread_mutex_unlock(&xce->lock);
    {
        struct xensim_req un = { .op = XENSIM_OP_UNBIND, .arg = { rsp.val[0] } };
        struct xensim_rsp ursp;

        xensim_call(&xce->conn, &un, NULL, 0, &ursp, NULL, 0, NULL, NULL, 0);
    }
    if (page != MAP_FAILED)
        munmap(page, XENSIM_PAGE_SIZE);
    xensim_close_fds(fds, 2);
    errno = err;
    return -1;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid)
{
    if (xce->restrict_domid != UNRESTRICTED) {
        errno = EACCES;
        return -1;
    }
    return bind_port(xce, XENSIM_OP_ALLOC_UNBOUND, domid, 0, "ioctl BIND_UNBOUND_PORT");
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port)
{
    if (xce->restrict_domid != UNRESTRICTED && xce->restrict_domid != domid) {
        errno = EACCES;
        return -1;
    }
    return bind_port(xce, XENSIM_OP_BIND_INTERDOMAIN, domid, remote_port,
                     "ioctl BIND_INTERDOMAIN");
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    if (xce->restrict_domid != UNRESTRICTED) {
        errno = EACCES;
        return -1;
    }
    errno = EOPNOTSUPP;
    xensim_log(xce->conn.logger, "evtchn", errno, "VIRQ %u: no virtual IRQs in xensim", virq);
    return -1;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    struct xensim_req req = { .op = XENSIM_OP_UNBIND, .arg = { port } };
    struct xensim_rsp rsp;
    struct port *p, gone;

    pthread_mutex_lock(&xce->lock);
    p = find_port(xce, port);
    if (!p) {
        pthread_mutex_unlock(&xce->lock);
        errno = ENOTCONN;
        return -1;
    }
    gone = *p;
    *p = xce->ports[--xce->nports];
    /* The broker holds the same eventfd, so close() alone would not take it
     * out of the epoll set. */
    epoll_ctl(xce->epfd, EPOLL_CTL_DEL, gone.rx, NULL);
    release_port(&gone);
    pthread_mutex_unlock(&xce->lock);
    return xensim_call(&xce->conn, &req, NULL, 0, &rsp, NULL, 0, NULL, NULL, 0);
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    for (;;) {
        struct epoll_event ev;
        struct port *p;
        uint64_t cnt;
        uint32_t old;
        int deliver;
        /* as a read() of /dev/xen/evtchn: blocks, unless the fd is O_NONBLOCK */
        int nonblock = (fcntl(xce->epfd, F_GETFL) & O_NONBLOCK) != 0;
        int n = epoll_wait(xce->epfd, &ev, 1, nonblock ? 0 : -1);

        if (n < 0)
            return -1; /* EINTR like a read() of /dev/xen/evtchn */
        if (n == 0) {
            if (nonblock) {
                errno = EAGAIN;
                return -1;
            }
            continue;
        }
        pthread_mutex_lock(&xce->lock);
        p = find_port(xce, ev.data.u32);
        if (!p) {
            pthread_mutex_unlock(&xce->lock); /* unbound meanwhile */
            continue;
        }
        /* Consume the wakeup, then take the delivered event.  A wakeup that
         * the sender did not deliver (the broker's) is delivered here. */
        if (read(p->rx, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN) {
            int err = errno;

            pthread_mutex_unlock(&xce->lock);
            errno = err;
            return -1;
        }
        UPDATE(p->mine, old,
               (old & QUEUED) ? (old & ~QUEUED)
               : (old & MASKED) ? (old | PENDING) : (old | MASKED));
        deliver = (old & QUEUED) || !(old & MASKED);
        pthread_mutex_unlock(&xce->lock);
        if (deliver)
            return (xenevtchn_port_or_error_t)ev.data.u32;
    }
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    static const uint64_t one = 1;
    struct port *p;
    uint32_t old;
    int rc = 0;

    pthread_mutex_lock(&xce->lock);
    p = find_port(xce, port);
    /* Like evtchn_write(): ports this handle does not own are ignored. */
    if (p) {
        /* Pending while masked: deliver again (stay masked), wake ourselves. */
        UPDATE(p->mine, old,
               (old & PENDING) ? ((old & ~PENDING) | MASKED | QUEUED) : (old & ~MASKED));
        if ((old & PENDING) && write(p->rx, &one, sizeof(one)) != sizeof(one))
            rc = -1;
    }
    pthread_mutex_unlock(&xce->lock);
    return rc;
}

int xenevtchn_restrict(xenevtchn_handle *xce, domid_t domid)
{
    if (xce->restrict_domid != UNRESTRICTED) {
        errno = EACCES;
        return -1;
    }
    if (domid == 0 || domid >= DOMID_FIRST_RESERVED) {
        errno = EINVAL;
        return -1;
    }
    xce->restrict_domid = domid;
    return 0;
}
