"""cffi API-mode module ``_xenbind`` for the tests: Xen's libxengnttab, libxengntshr and
libxenevtchn, which the product uses from C only (cext/vchan).

Compiled against Debian's headers and linked by soname (``-lxengnttab -lxenevtchn``), so
xensim's shims take over through ``LD_LIBRARY_PATH`` (``xensim.paths.domain_env``).
Built on first use by :mod:`tests.xenbind._lib`.
"""

from __future__ import annotations

from cffi import FFI

CDEF = r"""
typedef uint32_t evtchn_port_t;
typedef uint16_t domid_t;

void free(void *ptr);

/* ---- libxengnttab / libxengntshr ---- */
typedef struct xengntdev_handle xengnttab_handle;
typedef struct xengntdev_handle xengntshr_handle;
struct xentoollog_logger;

struct xengnttab_grant_copy_segment {
    union xengnttab_copy_ptr {
        void *virt;
        struct {
            uint32_t ref;
            uint16_t offset;
            uint16_t domid;
        } foreign;
    } source, dest;
    uint16_t len;
    uint16_t flags;
    int16_t status;
};
typedef struct xengnttab_grant_copy_segment xengnttab_grant_copy_segment_t;
#define GNTCOPY_source_gref ...
#define GNTCOPY_dest_gref ...
#define XEN_PAGE_SIZE ...

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags);
int xengnttab_close(xengnttab_handle *xgt);
int xengnttab_fd(xengnttab_handle *xgt);
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot);
void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t *domids,
                               uint32_t *refs, int prot);
void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
                                      uint32_t *refs, int prot);
void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
                                     int prot, uint32_t notify_offset,
                                     evtchn_port_t notify_port);
int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count);
int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants);
int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
                         xengnttab_grant_copy_segment_t *segs);

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags);
int xengntshr_close(xengntshr_handle *xgs);
int xengntshr_fd(xengntshr_handle *xgs);
void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
                            int writable);
void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref,
                                  int writable, uint32_t notify_offset,
                                  evtchn_port_t notify_port);
int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count);

/* ---- libxenevtchn ---- */
typedef int xenevtchn_port_or_error_t;
typedef struct xenevtchn_handle xenevtchn_handle;
xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags);
int xenevtchn_close(xenevtchn_handle *xce);
int xenevtchn_fd(xenevtchn_handle *xce);
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid);
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port);
int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce);
int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port);
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <xengnttab.h>
#include <xenevtchn.h>
#ifndef XEN_PAGE_SIZE
#define XEN_PAGE_SIZE 4096
#endif
"""

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "_xenbind",
    SOURCE,
    libraries=["xengnttab", "xenevtchn"],
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-std=gnu11"],
)
