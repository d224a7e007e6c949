/*
 * LD_PRELOAD test double for the three libxenctrl calls vchan-socket-proxy's
 * *client* mode makes besides libxenvchan: xc_interface_open/close and
 * xc_domain_getinfo (it only asks "is the server domain dying?").  xensim has no
 * /dev/xen/privcmd, so without this the proxy exits before touching the vchan.
 * getinfo fails with EPERM, which the proxy treats as "keep waiting".
 * The vchan itself still goes through Debian's libxenvchan and xensim's shims.
 */
#include <errno.h>
#include <stdint.h>

struct xc_interface_core;
static char handle;

struct xc_interface_core *xc_interface_open(void *logger, void *dombuild_logger,
                                            unsigned open_flags);
int xc_interface_close(struct xc_interface_core *xch);
int xc_domain_getinfo(struct xc_interface_core *xch, uint32_t first_domid,
                      unsigned int max_doms, void *info);

struct xc_interface_core *xc_interface_open(void *logger, void *dombuild_logger,
                                            unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    return (struct xc_interface_core *)&handle;
}

int xc_interface_close(struct xc_interface_core *xch)
{
    (void)xch;
    return 0;
}

int xc_domain_getinfo(struct xc_interface_core *xch, uint32_t first_domid,
                      unsigned int max_doms, void *info)
{
    (void)xch;
    (void)first_domid;
    (void)max_doms;
    (void)info;
    errno = EPERM;
    return -1;
}
