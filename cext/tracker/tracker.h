/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd foreign-page tracker (the Netchannel2 idea, in userspace).
 *
 * Pages mapped from another domain cannot be granted onward (Xen and xensim
 * refuse with EPERM).  Anything that forwards frames between channels must
 * therefore know, for a given address, whether it lies in a foreign page and
 * which (domid, grant ref) it came from, so it copies (or grant-copies from the
 * origin's grant) instead of granting.  The tracker is that table.
 *
 * Layout: one region of anonymous MAP_SHARED memory per tracker (shared by the
 * daemon's threads and by processes forked after create), holding
 *   - a header (tracker id, capacity, counts, a process-shared mutex, a seqlock),
 *   - `capacity` entries (domid, gref, page address, ctxt, generation, free link),
 *   - a sorted index of the tracked page addresses (page -> entry index).
 * Addresses are the ones of the process that tracked them; a forked child sees
 * the same table, and the same mappings if it inherited them.
 *
 * Handles (64 bits, never 0):
 *   bits 63..48  tracker id (1..65535; names the tracker, see ncd_tracker_find)
 *   bits 47..24  generation of the slot (bumped on untrack; stale handles fail)
 *   bits 23..0   slot index (< capacity <= NCD_TRACKER_MAX_CAPACITY)
 *
 * Which tracker: ncd keeps ONE tracker per daemon process,
 * ncd_tracker_process(), created on first use with NCD_TRACKER_PROCESS_CAPACITY
 * slots; every vchan client registers the pages it maps there with ctxt = the
 * vchan.  Further trackers (tests, a future per-channel split) may coexist; a
 * handle alone finds its tracker through ncd_tracker_find().
 *
 * Threads: writers (track, untrack*) serialise on the mutex; lookup_addr and
 * classify are lock-free (seqlock readers: no syscalls, O(log n), retry while a
 * writer is inside); lookup(handle) and the counts take the mutex.
 */
#ifndef NCD_TRACKER_H
#define NCD_TRACKER_H

#include <stddef.h>
#include <stdint.h>

#define NCD_TRACKER_PAGE_SIZE 4096u
#define NCD_TRACKER_MAX_CAPACITY ((1u << 24) - 1u)
#define NCD_TRACKER_PROCESS_CAPACITY 65536u
#define NCD_TRACKER_MAX_TRACKERS 256u /* live at once in one process */

struct ncd_tracker; /* opaque */

struct ncd_track_entry {
    uint64_t handle;
    uint64_t page; /* page-aligned address of the mapped page */
    void *ctxt;    /* who mapped it (a struct ncd_vchan * for vchans) */
    uint32_t gref; /* grant ref in the origin domain */
    uint16_t domid; /* origin domain */
};

/* The first bytes of [addr, addr+len): which memory they are in. */
struct ncd_mem_origin {
    int foreign;     /* 1: a tracked foreign page, 0: local memory */
    uint16_t domid;  /* foreign only: origin domain */
    uint32_t gref;   /* foreign only: origin grant ref */
    uint32_t offset; /* offset of addr inside its page */
    uint32_t len;    /* bytes of the range inside this page (<= len asked) */
    uint64_t handle; /* foreign only: the tracker handle, else 0 */
};

/* New tracker with `capacity` slots (1..NCD_TRACKER_MAX_CAPACITY).
 * NULL with errno EINVAL (capacity), EMFILE (too many trackers), ENOMEM. */
struct ncd_tracker *ncd_tracker_create(uint32_t capacity);
/* Free the tracker; its handles become invalid.  NULL is ignored.  Must not
 * race other calls on the same tracker; never destroy ncd_tracker_process(). */
void ncd_tracker_destroy(struct ncd_tracker *t);
/* The daemon's tracker (created on first call); NULL with errno on failure. */
struct ncd_tracker *ncd_tracker_process(void);
/* The live tracker named by a handle's top bits, or NULL. */
struct ncd_tracker *ncd_tracker_find(uint64_t handle);

uint32_t ncd_tracker_id(const struct ncd_tracker *t);
uint32_t ncd_tracker_capacity(const struct ncd_tracker *t);
/* Entries in use. */
uint32_t ncd_tracker_count(struct ncd_tracker *t);
/* Entries in use whose ctxt is `ctxt`. */
uint32_t ncd_tracker_count_ctxt(struct ncd_tracker *t, const void *ctxt);

/* Record that the page at `page` (page-aligned) was mapped from (domid, gref).
 * 0 and *handle, or -1 with errno: EINVAL (page NULL or not aligned),
 * EEXIST (that page is already tracked), ENOSPC (table full). */
int ncd_tracker_track(struct ncd_tracker *t, uint16_t domid, uint32_t gref, const void *page,
                      void *ctxt, uint64_t *handle);
/* Forget an entry.  0, or -1 with errno: EINVAL (another tracker's handle,
 * index out of range), ESTALE (free slot or stale generation). */
int ncd_tracker_untrack(struct ncd_tracker *t, uint64_t handle);
/* Forget every entry whose ctxt is `ctxt`; returns how many. */
uint32_t ncd_tracker_untrack_ctxt(struct ncd_tracker *t, const void *ctxt);
/* The entry of a handle: 0, or -1 with errno as untrack. */
int ncd_tracker_lookup(struct ncd_tracker *t, uint64_t handle, struct ncd_track_entry *out);
/* Handle of the tracked page containing addr, 0 if none.  Lock-free. */
uint64_t ncd_tracker_lookup_addr(struct ncd_tracker *t, const void *addr);
/* Classify the first segment of [addr, addr+len) (up to the end of addr's page):
 * returns 1 (foreign, domid/gref/offset filled) or 0 (local).  Lock-free.
 * t NULL means ncd_tracker_process() (local if it cannot be created). */
int ncd_tracker_classify(struct ncd_tracker *t, const void *addr, size_t len,
                         struct ncd_mem_origin *out);
/* The whole range split page by page into at most `max` segments; returns the
 * number written, or -1 with errno E2BIG if `max` is too small. */
int ncd_tracker_classify_range(struct ncd_tracker *t, const void *addr, size_t len,
                               struct ncd_mem_origin *out, unsigned max);

#endif
