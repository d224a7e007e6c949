/*
 * libxenctrl.so.4.17 for xensim: the three calls of libxenctrl that Debian's
 * vchan-socket-proxy makes (xc_interface_open, xc_interface_close,
 * xc_domain_getinfo), with Xen 4.17's prototypes, xc_dominfo_t and symbol
 * version (VERS_4.17.0).  Nothing else of libxenctrl exists here: a program
 * that needs any other xc_* function fails to load under the simulator's
 * LD_LIBRARY_PATH (undefined symbol), rather than running on a half-simulated
 * hypervisor.
 *
 * An xc_interface is one broker connection (like an open /dev/xen/privcmd).
 * xc_domain_getinfo asks the broker for the live domains, which answers only
 * dom0: from a domU it fails with EPERM, as the getdomaininfo domctl does for
 * an unprivileged domain.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <xenctrl.h>

#include "client.h"

#define MAX_INFO ((XENSIM_MAX_MSG - sizeof(struct xensim_rsp)) / sizeof(struct xensim_dominfo))

struct xc_interface_core {
    struct xensim_conn conn;
};

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    struct xc_interface_core *xch = calloc(1, sizeof(*xch));

    (void)dombuild_logger;
    (void)open_flags; /* XC_OPENFLAG_*: no dombuild logging, no reentrancy to manage */
    if (!xch)
        return NULL;
    if (xensim_connect(&xch->conn, "xc", XENSIM_KIND_PRIVCMD, logger, 1) < 0) {
        int err = errno;

        free(xch);
        errno = err;
        return NULL;
    }
    return xch;
}

int xc_interface_close(xc_interface *xch)
{
    if (!xch)
        return 0;
    xensim_disconnect(&xch->conn);
    free(xch);
    return 0;
}

static void fill(xc_dominfo_t *out, const struct xensim_dominfo *in)
{
    memset(out, 0, sizeof(*out));
    out->domid = in->domid;
    out->dying = !!(in->flags & XENSIM_DOMINFO_DYING);
    out->shutdown = !!(in->flags & XENSIM_DOMINFO_SHUTDOWN);
    /* a simulated domain is a set of processes: call it running, one vcpu */
    out->running = !out->dying && !out->shutdown;
    out->blocked = 0;
    out->nr_pages = in->shared_pages;
    out->nr_shared_pages = in->shared_pages;
    out->nr_online_vcpus = out->dying ? 0 : 1;
    out->max_vcpu_id = 0;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info)
{
    struct xensim_req req = { .op = XENSIM_OP_DOMAIN_INFO };
    struct xensim_rsp rsp = { 0 };
    struct xensim_dominfo *items;
    size_t got = 0;
    unsigned n;

    if (!xch || (max_doms && !info)) {
        errno = EINVAL;
        return -1;
    }
    if (max_doms == 0)
        return 0;
    if (max_doms > MAX_INFO)
        max_doms = MAX_INFO;
    req.arg[0] = first_domid;
    req.arg[1] = max_doms;
    items = calloc(max_doms, sizeof(*items));
    if (!items) {
        errno = ENOMEM;
        return -1;
    }
    if (xensim_call(&xch->conn, &req, NULL, 0, &rsp, items, max_doms * sizeof(*items), &got,
                    NULL, 0) < 0) {
        int err = errno;

        /* like libxc's PERROR on a failed domctl */
        xensim_log(xch->conn.logger, "xc", err, "getdomaininfo d%u failed", first_domid);
        free(items);
        errno = err;
        return -1;
    }
    if (got % sizeof(*items) || got / sizeof(*items) > max_doms) {
        free(items);
        errno = EPROTO;
        return -1;
    }
    n = (unsigned)(got / sizeof(*items));
    for (unsigned i = 0; i < n; i++)
        fill(&info[i], &items[i]);
    free(items);
    if (n == 0) {
        /* libxc: the first domctl found no domain >= first_domid */
        errno = ESRCH;
        return -1;
    }
    return (int)n;
}
