/* SPDX-License-Identifier: GPL-2.0-only */
/* ncd foreign-page tracker: see tracker.h for the model, handles and threading. */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "tracker.h"

#define ID_SHIFT 48
#define GEN_SHIFT 24
#define GEN_MASK 0xFFFFFFu
#define IDX_MASK 0xFFFFFFu
#define NO_SLOT UINT32_MAX
#define PAGE_MASK ((uint64_t)NCD_TRACKER_PAGE_SIZE - 1u)

/* Relaxed single loads/stores of words that lock-free readers may see
 * mid-update (the seqlock tells them to retry). */
#define LD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

#include "../vchan/ncd_util.h" /* ncd_cpu_relax() */

struct trk_entry {
    uint64_t page;
    uint64_t ctxt; /* (uintptr_t) of the owner's pointer */
    uint32_t gref;
    uint32_t gen;       /* 1..GEN_MASK */
    uint32_t next_free; /* free-list link while unused */
    uint16_t domid;
    uint8_t used;
    uint8_t pad;
};

struct trk_index {
    uint64_t page; /* sorted ascending */
    uint32_t slot;
    uint32_t pad;
};

/* Lives at the start of its own MAP_SHARED region, followed by the tables. */
struct ncd_tracker {
    uint32_t id;
    uint32_t capacity;
    uint32_t count;     /* entries in use == index length (seqlock-protected) */
    uint32_t free_head; /* recycled slots */
    uint32_t fresh;     /* slots [fresh, capacity) never used yet */
    uint32_t seq;       /* seqlock: odd while a writer changes the index */
    size_t map_len;
    struct trk_entry *entries;
    struct trk_index *index;
    pthread_mutex_t lock; /* PTHREAD_PROCESS_SHARED: serialises writers */
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ncd_tracker *registry[NCD_TRACKER_MAX_TRACKERS];
static uint32_t last_id;

static size_t align_up(size_t n, size_t a)
{
    return (n + a - 1) / a * a;
}

static uint64_t make_handle(const struct ncd_tracker *t, uint32_t gen, uint32_t slot)
{
    return ((uint64_t)t->id << ID_SHIFT) | ((uint64_t)(gen & GEN_MASK) << GEN_SHIFT) |
           (uint64_t)(slot & IDX_MASK);
}

/* Registers t under a fresh id whose registry slot is free; 0 or -1 (EMFILE). */
static int registry_add(struct ncd_tracker *t)
{
    uint32_t tries, id = 0;
    int ok = 0;
    pthread_mutex_lock(&registry_lock);
    for (tries = 0; tries < 0x10000u; tries++) {
        id = (last_id + 1u + tries) & 0xFFFFu;
        if (id == 0)
            continue;
        if (!registry[id % NCD_TRACKER_MAX_TRACKERS]) {
            ok = 1;
            break;
        }
    }
    if (ok) {
        last_id = id;
        t->id = id;
        __atomic_store_n(&registry[id % NCD_TRACKER_MAX_TRACKERS], t, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&registry_lock);
    if (!ok)
        errno = EMFILE;
    return ok ? 0 : -1;
}

struct ncd_tracker *ncd_tracker_create(uint32_t capacity)
{
    struct ncd_tracker *t;
    pthread_mutexattr_t attr;
    size_t hdr, ent, idx, len;
    void *mem;

    if (capacity == 0 || capacity > NCD_TRACKER_MAX_CAPACITY) {
        errno = EINVAL;
        return NULL;
    }
    hdr = align_up(sizeof *t, 64);
    ent = align_up((size_t)capacity * sizeof(struct trk_entry), 64);
    idx = (size_t)capacity * sizeof(struct trk_index);
    len = align_up(hdr + ent + idx, NCD_TRACKER_PAGE_SIZE);
    mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    t = mem; /* fresh anonymous memory is zero: every slot unused, gen 0 */
    t->capacity = capacity;
    t->free_head = NO_SLOT;
    t->map_len = len;
    t->entries = (struct trk_entry *)((char *)mem + hdr);
    t->index = (struct trk_index *)((char *)mem + hdr + ent);
    if (pthread_mutexattr_init(&attr) != 0 ||
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED) != 0 ||
        pthread_mutex_init(&t->lock, &attr) != 0) {
        munmap(mem, len);
        errno = ENOMEM;
        return NULL;
    }
    pthread_mutexattr_destroy(&attr);
    if (registry_add(t) < 0) {
        pthread_mutex_destroy(&t->lock);
        munmap(mem, len);
        errno = EMFILE;
        return NULL;
    }
    return t;
}

void ncd_tracker_destroy(struct ncd_tracker *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&registry_lock);
    if (registry[t->id % NCD_TRACKER_MAX_TRACKERS] == t)
        __atomic_store_n(&registry[t->id % NCD_TRACKER_MAX_TRACKERS], NULL, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&registry_lock);
    pthread_mutex_destroy(&t->lock);
    munmap(t, t->map_len);
}

static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static struct ncd_tracker *process_tracker;
static int process_errno;

static void process_init(void)
{
    process_tracker = ncd_tracker_create(NCD_TRACKER_PROCESS_CAPACITY);
    if (!process_tracker)
        process_errno = errno;
}

struct ncd_tracker *ncd_tracker_process(void)
{
    pthread_once(&process_once, process_init);
    if (!process_tracker)
        errno = process_errno;
    return process_tracker;
}

struct ncd_tracker *ncd_tracker_find(uint64_t handle)
{
    uint32_t id = (uint32_t)(handle >> ID_SHIFT);
    struct ncd_tracker *t;
    if (id == 0)
        return NULL;
    t = __atomic_load_n(&registry[id % NCD_TRACKER_MAX_TRACKERS], __ATOMIC_ACQUIRE);
    return (t && t->id == id) ? t : NULL;
}

uint32_t ncd_tracker_id(const struct ncd_tracker *t)
{
    return t->id;
}

uint32_t ncd_tracker_capacity(const struct ncd_tracker *t)
{
    return t->capacity;
}

uint32_t ncd_tracker_count(struct ncd_tracker *t)
{
    return __atomic_load_n(&t->count, __ATOMIC_ACQUIRE);
}

uint32_t ncd_tracker_count_ctxt(struct ncd_tracker *t, const void *ctxt)
{
    uint32_t i, n = 0;
    uint64_t c = (uint64_t)(uintptr_t)ctxt;
    pthread_mutex_lock(&t->lock);
    for (i = 0; i < t->fresh; i++)
        if (t->entries[i].used && t->entries[i].ctxt == c)
            n++;
    pthread_mutex_unlock(&t->lock);
    return n;
}

/* ---- writers (hold t->lock) ---- */

static void write_begin(struct ncd_tracker *t)
{
    ST(&t->seq, t->seq + 1u);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static void write_end(struct ncd_tracker *t)
{
    __atomic_store_n(&t->seq, t->seq + 1u, __ATOMIC_RELEASE);
}

/* First index position whose page >= page (writers: the index is stable). */
static uint32_t index_lower_bound(const struct ncd_tracker *t, uint64_t page)
{
    uint32_t lo = 0, hi = t->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        if (t->index[mid].page < page)
            lo = mid + 1u;
        else
            hi = mid;
    }
    return lo;
}

/* Validate a handle against t; returns the slot or NO_SLOT with errno. */
static uint32_t check_handle(const struct ncd_tracker *t, uint64_t handle)
{
    uint32_t id = (uint32_t)(handle >> ID_SHIFT);
    uint32_t gen = (uint32_t)(handle >> GEN_SHIFT) & GEN_MASK;
    uint32_t slot = (uint32_t)handle & IDX_MASK;
    if (id != t->id || slot >= t->capacity) {
        errno = EINVAL;
        return NO_SLOT;
    }
    if (!t->entries[slot].used || t->entries[slot].gen != gen) {
        errno = ESTALE;
        return NO_SLOT;
    }
    return slot;
}

int ncd_tracker_track(struct ncd_tracker *t, uint16_t domid, uint32_t gref, const void *page,
                      void *ctxt, uint64_t *handle)
{
    uint64_t p = (uint64_t)(uintptr_t)page;
    struct trk_entry *e;
    uint32_t pos, i, slot, gen;

    if (p == 0 || (p & PAGE_MASK) != 0) {
        errno = EINVAL;
        return -1;
    }
    pthread_mutex_lock(&t->lock);
    pos = index_lower_bound(t, p);
    if (pos < t->count && t->index[pos].page == p) {
        pthread_mutex_unlock(&t->lock);
        errno = EEXIST;
        return -1;
    }
    if (t->free_head != NO_SLOT) {
        slot = t->free_head;
        t->free_head = t->entries[slot].next_free;
    } else if (t->fresh < t->capacity) {
        slot = t->fresh++;
    } else {
        pthread_mutex_unlock(&t->lock);
        errno = ENOSPC;
        return -1;
    }
    e = &t->entries[slot];
    gen = e->gen ? e->gen : 1u;
    write_begin(t);
    ST(&e->page, p);
    ST(&e->ctxt, (uint64_t)(uintptr_t)ctxt);
    ST(&e->gref, gref);
    ST(&e->domid, domid);
    ST(&e->gen, gen);
    ST(&e->used, (uint8_t)1);
    for (i = t->count; i > pos; i--) {
        ST(&t->index[i].page, t->index[i - 1].page);
        ST(&t->index[i].slot, t->index[i - 1].slot);
    }
    ST(&t->index[pos].page, p);
    ST(&t->index[pos].slot, slot);
    ST(&t->count, t->count + 1u);
    write_end(t);
    *handle = make_handle(t, gen, slot);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

static void remove_slot(struct ncd_tracker *t, uint32_t slot)
{
    struct trk_entry *e = &t->entries[slot];
    uint32_t pos = index_lower_bound(t, e->page), i, gen;

    write_begin(t);
    if (pos < t->count && t->index[pos].page == e->page) {
        for (i = pos; i + 1u < t->count; i++) {
            ST(&t->index[i].page, t->index[i + 1u].page);
            ST(&t->index[i].slot, t->index[i + 1u].slot);
        }
        ST(&t->count, t->count - 1u);
    }
    gen = (e->gen + 1u) & GEN_MASK;
    ST(&e->gen, gen ? gen : 1u);
    ST(&e->used, (uint8_t)0);
    ST(&e->page, (uint64_t)0);
    write_end(t);
    e->next_free = t->free_head;
    t->free_head = slot;
}

int ncd_tracker_untrack(struct ncd_tracker *t, uint64_t handle)
{
    uint32_t slot;
    pthread_mutex_lock(&t->lock);
    slot = check_handle(t, handle);
    if (slot == NO_SLOT) {
        int e = errno;
        pthread_mutex_unlock(&t->lock);
        errno = e;
        return -1;
    }
    remove_slot(t, slot);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

uint32_t ncd_tracker_untrack_ctxt(struct ncd_tracker *t, const void *ctxt)
{
    uint32_t i, n = 0;
    uint64_t c = (uint64_t)(uintptr_t)ctxt;
    pthread_mutex_lock(&t->lock);
    for (i = 0; i < t->fresh; i++) {
        if (t->entries[i].used && t->entries[i].ctxt == c) {
            remove_slot(t, i);
            n++;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}

int ncd_tracker_lookup(struct ncd_tracker *t, uint64_t handle, struct ncd_track_entry *out)
{
    uint32_t slot;
    const struct trk_entry *e;
    pthread_mutex_lock(&t->lock);
    slot = check_handle(t, handle);
    if (slot == NO_SLOT) {
        int err = errno;
        pthread_mutex_unlock(&t->lock);
        errno = err;
        return -1;
    }
    e = &t->entries[slot];
    out->handle = handle;
    out->page = e->page;
    out->ctxt = (void *)(uintptr_t)e->ctxt;
    out->gref = e->gref;
    out->domid = e->domid;
    pthread_mutex_unlock(&t->lock);
    return 0;
}

/* ---- lock-free readers ---- */

struct found {
    uint64_t handle;
    uint32_t gref;
    uint16_t domid;
};

/* Seqlock read of "which entry holds page p"; 1 found, 0 not. */
static int find_page(struct ncd_tracker *t, uint64_t p, struct found *f)
{
    for (;;) {
        uint32_t s1 = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        uint32_t lo = 0, hi, slot = NO_SLOT;
        int hit = 0;
        if (s1 & 1u) {
            ncd_cpu_relax();
            continue;
        }
        hi = LD(&t->count);
        if (hi > t->capacity) /* torn read: bound it, the seqlock retries */
            hi = t->capacity;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2u;
            uint64_t mp = LD(&t->index[mid].page);
            if (mp < p) {
                lo = mid + 1u;
            } else if (mp > p) {
                hi = mid;
            } else {
                slot = LD(&t->index[mid].slot);
                break;
            }
        }
        if (slot < t->capacity) {
            const struct trk_entry *e = &t->entries[slot];
            uint32_t gen = LD(&e->gen);
            f->gref = LD(&e->gref);
            f->domid = LD(&e->domid);
            hit = LD(&e->used) && LD(&e->page) == p;
            f->handle = make_handle(t, gen, slot);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (LD(&t->seq) == s1)
            return hit;
    }
}

uint64_t ncd_tracker_lookup_addr(struct ncd_tracker *t, const void *addr)
{
    struct found f;
    uint64_t p = (uint64_t)(uintptr_t)addr & ~PAGE_MASK;
    if (p == 0 || !find_page(t, p, &f))
        return 0;
    return f.handle;
}

int ncd_tracker_classify(struct ncd_tracker *t, const void *addr, size_t len,
                         struct ncd_mem_origin *out)
{
    uint64_t a = (uint64_t)(uintptr_t)addr;
    uint32_t off = (uint32_t)(a & PAGE_MASK);
    size_t room = NCD_TRACKER_PAGE_SIZE - off;
    struct found f;

    memset(out, 0, sizeof *out);
    out->offset = off;
    out->len = (uint32_t)(len < room ? len : room);
    if (!t)
        t = ncd_tracker_process();
    if (!t || (a & ~PAGE_MASK) == 0 || !find_page(t, a & ~PAGE_MASK, &f))
        return 0;
    out->foreign = 1;
    out->domid = f.domid;
    out->gref = f.gref;
    out->handle = f.handle;
    return 1;
}

int ncd_tracker_classify_range(struct ncd_tracker *t, const void *addr, size_t len,
                               struct ncd_mem_origin *out, unsigned max)
{
    uintptr_t a = (uintptr_t)addr;
    unsigned n = 0;
    struct ncd_mem_origin seg;

    if (!t)
        t = ncd_tracker_process();
    while (len > 0) {
        ncd_tracker_classify(t, (const void *)a, len, &seg);
        if (n > 0 && !seg.foreign && !out[n - 1].foreign &&
            (uint64_t)out[n - 1].len + seg.len <= UINT32_MAX) {
            out[n - 1].len += seg.len; /* adjacent local bytes: one segment */
        } else {
            if (n == max) {
                errno = E2BIG;
                return -1;
            }
            out[n++] = seg;
        }
        a += seg.len;
        len -= seg.len;
    }
    return (int)n;
}
