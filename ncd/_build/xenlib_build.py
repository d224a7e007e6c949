"""cffi API-mode module ``ncd.xen._xenlib``: Xen's libxenstore (what the product calls
from Python; grant tables and event channels it uses from C, cext/vchan).

Compiled against Debian's header (/usr/include/xenstore.h) and linked by soname
(``-lxenstore``), so the dynamic linker picks the library at run time: Xen's own on a
Xen host; on xensim, xensim's xenstored answers through ``XENSTORED_PATH``.

``python ncd/_build/xenlib_build.py`` builds the module in place (next to ``ncd/xen``).
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parents[2]

CDEF = r"""
void free(void *ptr);
int malloc_trim(size_t pad);  /* glibc: the daemon returns its heap's free pages */

/* ---- libxenstore ---- */
struct xs_handle;
typedef uint32_t xs_transaction_t;
struct xs_permissions { unsigned int id; unsigned int perms; };
#define XS_PERM_NONE ...
#define XS_PERM_READ ...
#define XS_PERM_WRITE ...
#define XS_PERM_OWNER ...
#define XS_WATCH_PATH ...
#define XS_WATCH_TOKEN ...
#define XBT_NULL ...

struct xs_handle *xs_open(unsigned long flags);
void xs_close(struct xs_handle *xsh);
char **xs_directory(struct xs_handle *h, xs_transaction_t t, const char *path,
                    unsigned int *num);
void *xs_read(struct xs_handle *h, xs_transaction_t t, const char *path, unsigned int *len);
bool xs_write(struct xs_handle *h, xs_transaction_t t, const char *path, const void *data,
              unsigned int len);
bool xs_mkdir(struct xs_handle *h, xs_transaction_t t, const char *path);
bool xs_rm(struct xs_handle *h, xs_transaction_t t, const char *path);
struct xs_permissions *xs_get_permissions(struct xs_handle *h, xs_transaction_t t,
                                          const char *path, unsigned int *num);
bool xs_set_permissions(struct xs_handle *h, xs_transaction_t t, const char *path,
                        struct xs_permissions *perms, unsigned int num_perms);
bool xs_watch(struct xs_handle *h, const char *path, const char *token);
int xs_fileno(struct xs_handle *h);
char **xs_check_watch(struct xs_handle *h);
char **xs_read_watch(struct xs_handle *h, unsigned int *num);
bool xs_unwatch(struct xs_handle *h, const char *path, const char *token);
xs_transaction_t xs_transaction_start(struct xs_handle *h);
bool xs_transaction_end(struct xs_handle *h, xs_transaction_t t, bool abort);
char *xs_get_domain_path(struct xs_handle *h, unsigned int domid);
bool xs_is_domain_introduced(struct xs_handle *h, unsigned int domid);
"""

SOURCE = r"""
#include <stdbool.h>
#include <stdint.h>
#include <malloc.h>
#include <stdlib.h>
#include <xenstore.h>
"""

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "ncd.xen._xenlib",
    SOURCE,
    libraries=["xenstore"],
    extra_compile_args=["-Wall", "-Wextra", "-Werror", "-std=gnu11"],
)

if __name__ == "__main__":
    ffi.compile(tmpdir=str(ROOT), verbose=False)
