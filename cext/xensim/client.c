/*
 * xensim shims: broker connection, request/reply with SCM_RIGHTS, logging,
 * region registry.  See proto.h for the wire protocol.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <xentoollog.h>

#include "client.h"

#define ENV_HV_SOCKET "XENSIM_HV_SOCKET"

void xensim_log(struct xentoollog_logger *logger, const char *ctx, int err, const char *fmt,
                ...)
{
    int saved = errno;
    va_list ap;

    va_start(ap, fmt);
    if (logger && logger->vmessage) {
        logger->vmessage(logger, XTL_ERROR, err, ctx, fmt, ap);
    } else {
        char msg[512];

        vsnprintf(msg, sizeof(msg), fmt, ap);
        if (err > 0)
            fprintf(stderr, "%s: error: %s: %s\n", ctx, msg, strerror(err));
        else
            fprintf(stderr, "%s: error: %s\n", ctx, msg);
    }
    va_end(ap);
    errno = saved;
}

void xensim_close_fds(int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

int xensim_connect(struct xensim_conn *c, const char *ctx, uint32_t kind,
                   struct xentoollog_logger *logger, int cloexec)
{
    const char *path = getenv(ENV_HV_SOCKET);
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    struct xensim_req req = { .op = XENSIM_OP_HELLO, .arg = { XENSIM_PROTO_MAGIC, kind } };
    struct xensim_rsp rsp;
    int fd;

    c->fd = -1;
    c->logger = logger;
    if (!path || !*path) {
        errno = ENOENT;
        xensim_log(logger, ctx, errno,
                   "no simulated hypervisor: %s is not set", ENV_HV_SOCKET);
        return -1;
    }
    if (strlen(path) >= sizeof(sun.sun_path)) {
        errno = ENAMETOOLONG;
        xensim_log(logger, ctx, errno, "bad %s", ENV_HV_SOCKET);
        return -1;
    }
    strcpy(sun.sun_path, path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | (cloexec ? SOCK_CLOEXEC : 0), 0);
    if (fd < 0) {
        xensim_log(logger, ctx, errno, "socket failed");
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
        int err = errno;

        close(fd);
        errno = err;
        xensim_log(logger, ctx, err, "could not open simulated hypervisor %s", path);
        return -1;
    }
    if (pthread_mutex_init(&c->lock, NULL)) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    c->fd = fd;
    if (xensim_call(c, &req, NULL, 0, &rsp, NULL, 0, NULL, NULL, 0) < 0) {
        int err = errno;

        xensim_log(logger, ctx, err, "hypervisor handshake with %s failed", path);
        xensim_disconnect(c);
        errno = err;
        return -1;
    }
    c->domid = rsp.val[0];
    return 0;
}

void xensim_disconnect(struct xensim_conn *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
        pthread_mutex_destroy(&c->lock);
    }
}

/*
 * Where the descriptors of a reply go.  Store mode (base == NULL): fds[i].
 * Map mode: descriptor i is mmap'd MAP_FIXED at base + i pages and closed at
 * once, so a reply of any size holds at most one message's worth of
 * descriptors (XENSIM_MAX_FDS_PER_MSG) open: RLIMIT_NOFILE (1024 by default)
 * never limits how many pages one call can share or map.
 */
struct fd_sink {
    int *fds;
    uint8_t *base;
    int prot;
    unsigned max;  /* descriptors expected at most */
    unsigned kept; /* stored or mapped */
    unsigned seen; /* received, including dropped ones */
    int err;       /* first local failure (overflow: EPROTO, mmap: its errno) */
};

static void sink_put(struct fd_sink *s, int fd)
{
    s->seen++;
    if (s->kept >= s->max) {
        close(fd);
        if (!s->err)
            s->err = EPROTO;
        return;
    }
    if (!s->base) {
        s->fds[s->kept++] = fd;
        return;
    }
    if (!s->err) {
        void *want = s->base + (size_t)s->kept * XENSIM_PAGE_SIZE;
        void *p = mmap(want, XENSIM_PAGE_SIZE, s->prot, MAP_SHARED | MAP_FIXED, fd, 0);

        if (p == MAP_FAILED)
            s->err = errno;
    }
    close(fd);
    s->kept++;
}

/* Receive one message: data into buf, descriptors into the sink. */
static ssize_t recv_one(int sock, void *buf, size_t len, struct fd_sink *sink)
{
    union {
        char buf[CMSG_SPACE(XENSIM_MAX_FDS_PER_MSG * sizeof(int))];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = cbuf.buf, .msg_controllen = sizeof(cbuf.buf),
    };
    ssize_t n;

    do {
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *in = CMSG_DATA(cm);

        for (size_t i = 0; i < k; i++) {
            int fd;

            memcpy(&fd, in + i * sizeof(int), sizeof(fd));
            sink_put(sink, fd);
        }
    }
    if (n == 0) {
        errno = ECONNRESET;
        return -1;
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        /* MSG_CTRUNC also when the kernel could not install every descriptor
         * (RLIMIT_NOFILE): those are lost. */
        errno = EPROTO;
        return -1;
    }
    return n;
}

/*
 * One round trip.  Returns 0, or -1 with errno.  *granted is set when the
 * broker's reply said success (rsp and the payload are then filled in even if
 * the call fails locally afterwards, so that the caller can undo what the
 * broker did).  Continuation messages are always drained when the reply
 * header was valid, so a local failure never desynchronises the connection.
 */
static int call_sink(struct xensim_conn *c, const struct xensim_req *req, const void *payload,
                     size_t plen, struct xensim_rsp *rsp, void *out, size_t out_max,
                     size_t *out_len, struct fd_sink *sink, int *granted)
{
    struct iovec iov[2] = {
        { .iov_base = (void *)req, .iov_len = sizeof(*req) },
        { .iov_base = (void *)payload, .iov_len = plen },
    };
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = plen ? 2 : 1 };
    size_t bufsz = sizeof(*rsp) + out_max;
    size_t first_len = 0;
    int rc = -1, err = 0;
    uint8_t stackbuf[256];
    uint8_t *buf = bufsz <= sizeof(stackbuf) ? stackbuf : malloc(bufsz);
    ssize_t n;

    *granted = 0;
    if (!buf) {
        errno = ENOMEM;
        return -1;
    }
    if (sizeof(*req) + plen > XENSIM_MAX_MSG) {
        err = E2BIG;
        goto out;
    }
    pthread_mutex_lock(&c->lock);
    do {
        n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        err = errno;
        goto unlock;
    }
    n = recv_one(c->fd, buf, bufsz, sink);
    if (n < 0) {
        err = errno;
        goto unlock;
    }
    if ((size_t)n < sizeof(*rsp)) {
        err = EPROTO;
        goto unlock;
    }
    memcpy(rsp, buf, sizeof(*rsp));
    first_len = (size_t)n;
    while (sink->seen < rsp->nfds) {
        struct xensim_cont cont;
        unsigned before = sink->seen;

        n = recv_one(c->fd, &cont, sizeof(cont), sink);
        if (n < 0) {
            err = errno;
            goto unlock;
        }
        if ((size_t)n != sizeof(cont) || cont.magic != XENSIM_PROTO_MAGIC ||
            sink->seen - before != cont.nfds || sink->seen == before) {
            err = EPROTO;
            goto unlock;
        }
    }
    if (sink->seen != rsp->nfds) {
        err = EPROTO;
        goto unlock;
    }
    if (rsp->err) {
        err = rsp->err > 0 ? rsp->err : EPROTO;
        goto unlock;
    }
    *granted = 1;
    if (out && out_max)
        memcpy(out, buf + sizeof(*rsp), first_len - sizeof(*rsp));
    if (out_len)
        *out_len = first_len - sizeof(*rsp);
    if (sink->err) {
        err = sink->err;
        goto unlock;
    }
    rc = 0;
unlock:
    pthread_mutex_unlock(&c->lock);
out:
    if (rc < 0 && !sink->base && sink->fds)
        xensim_close_fds(sink->fds, sink->kept);
    if (buf != stackbuf)
        free(buf);
    if (rc < 0)
        errno = err;
    return rc;
}

int xensim_call(struct xensim_conn *c, const struct xensim_req *req, const void *payload,
                size_t plen, struct xensim_rsp *rsp, void *out, size_t out_max,
                size_t *out_len, int *fds, unsigned fds_max)
{
    struct fd_sink sink = { .fds = fds, .max = fds ? fds_max : 0 };
    int granted;

    return call_sink(c, req, payload, plen, rsp, out, out_max, out_len, &sink, &granted);
}

void *xensim_call_map(struct xensim_conn *c, const struct xensim_req *req,
                      const void *payload, size_t plen, struct xensim_rsp *rsp, void *out,
                      size_t out_max, size_t *out_len, uint32_t count, int prot,
                      int *granted)
{
    size_t len = (size_t)count * XENSIM_PAGE_SIZE;
    uint8_t *base;
    struct fd_sink sink = { .prot = prot, .max = count };

    *granted = 0;
    base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    sink.base = base;
    if (call_sink(c, req, payload, plen, rsp, out, out_max, out_len, &sink, granted) < 0) {
        int err = errno;

        munmap(base, len);
        errno = err;
        return NULL;
    }
    if (sink.kept != count) {
        munmap(base, len);
        errno = EPROTO;
        return NULL;
    }
    return base;
}

/* ---------------------------------------------------------------- regions */
static pthread_mutex_t regions_lock = PTHREAD_MUTEX_INITIALIZER;
static struct xensim_region *regions;

void xensim_regions_lock(void)
{
    pthread_mutex_lock(&regions_lock);
}

void xensim_regions_unlock(void)
{
    pthread_mutex_unlock(&regions_lock);
}

void xensim_region_add(struct xensim_region *r)
{
    r->next = regions;
    regions = r;
}

struct xensim_region *xensim_region_find(const void *addr)
{
    const uint8_t *a = addr;

    for (struct xensim_region *r = regions; r; r = r->next) {
        if (a >= r->addr && a < r->addr + (size_t)r->count * XENSIM_PAGE_SIZE)
            return r;
    }
    return NULL;
}

void xensim_region_remove(struct xensim_region *r)
{
    for (struct xensim_region **pp = &regions; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            free(r);
            return;
        }
    }
}

void xensim_regions_forget_owner(const void *owner)
{
    struct xensim_region **pp = &regions;

    while (*pp) {
        struct xensim_region *r = *pp;

        if (r->owner == owner) {
            *pp = r->next;
            free(r);
        } else {
            pp = &r->next;
        }
    }
}
