/*
 * xensim extensions to libxengnttab.so.1 (symbol version XENSIM_1.0).
 *
 * Like Linux's gntalloc, xengntshr only ever grants fresh pages.  These calls
 * grant again a page that the caller's domain already owns and has mapped from
 * one of its own shares; they refuse (EPERM) a page mapped from another
 * domain: foreign pages cannot be granted onward (Netchannel2 rule).
 */
#ifndef XENSIM_H
#define XENSIM_H

#include <stdint.h>
#include <xengnttab.h>

/* Grant the page containing `addr` to `domid`.  `addr` must lie in a page this
 * process got from xengntshr_share_pages/_share_page_notify (any handle).
 * Returns 0 and stores the new grant ref in *ref, or -1 with errno:
 * EPERM if the page was mapped from another domain (xengnttab_map_*),
 * EINVAL if the address is not a simulator page, ENOSPC if the grant table is
 * full.  The grant lives until xensim_end_grant() or until `xgs` is closed. */
int xensim_grant_existing(xengntshr_handle *xgs, void *addr, uint32_t domid,
                          int writable, uint32_t *ref);

/* End a grant made by xensim_grant_existing() on this handle. */
int xensim_end_grant(xengntshr_handle *xgs, uint32_t ref);

#endif /* XENSIM_H */
