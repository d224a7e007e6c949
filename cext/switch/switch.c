/* SPDX-License-Identifier: GPL-2.0-only */
/* ncd switch: see switch.h and docs/forwarding.md.
 *
 * Threads and ownership
 *   - control callers (Python, any thread): add/remove ports, read counters;
 *     they serialise on sw->lock;
 *   - the switch thread: the only one that touches rings, fds, the MAC table,
 *     the accounting table's keys, the destination windows and the grant-copy
 *     segments.  It sees the port set only through its private `active` list,
 *     rebuilt at a quiescent point (top of its loop, no ring pointer held) when
 *     sw->ctl_gen moved.
 *
 * Teardown handshake (the argument is in docs/forwarding.md, "Teardown"):
 *   remover:  lock; p->remove_req = 1; ctl_gen++ (release); wake; wait until
 *             p->quiesced (condvar, same lock); unlink; unlock; free p.
 *   thread:   at a quiescent point: ctl_gen (acquire) != seen -> lock; drop
 *             ports with remove_req from `active`; quiesced = 1; broadcast;
 *             unlock.
 * Every access the thread made to p's ring memory happened before its unlock
 * (program order, then the mutex's release); the remover's return happens after
 * its lock acquisition that observed quiesced = 1; hence every such access
 * happens-before the caller's munmap.  The thread never reaches p again: it is
 * no longer in `active`, and grant copies are synchronous within a round.
 */
#define _GNU_SOURCE
#include "switch.h"
#include "../pump/span.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <xengnttab.h>

#include "../forward/answer.h"
#include "../forward/antispoof.h"
#include "../forward/credit.h"
#include "../forward/offload.h"
#include "../pump/frame.h"
#include "../tracker/tracker.h"
#include "../vchan/ncd_util.h"
#include "../vchan/vchan.h"

#define DEFAULT_BATCH 64u
#define HEAD_MAX NCD_LOCK_HEAD /* frame bytes snapshotted privately: headers we inspect */
#define MAX_SEGS 2048u /* grant-copy segments per call */
#define MAX_PEND 256u  /* records waiting for commit per destination */
#define COMMIT_BYTES (32u * 1024u)
/* adaptive spin before sleeping (docs/forwarding.md, "Wake-ups") */
#define SPIN_NS 150000  /* longest spin: 150 us */
/* offload fix-ups: frames built privately (checksum completed, GSO segments);
 * bounded: two maximal frames, reused once their grant copies are done */
#define ARENA_SIZE (2u * NCD_ETH_MAX)
#define FDB_WAYS 4u
#define FDB_BUCKETS (NCD_SWITCH_FDB_SIZE / FDB_WAYS)
#define GNTCOPY_SRC_GREF (1u << 0) /* GNTCOPY_source_gref, xen/grant_table.h */
#define GNTCOPY_DST_GREF (1u << 1) /* GNTCOPY_dest_gref */

#define LD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define CNT(p, f, n) __atomic_fetch_add(&(p)->st.f, (uint64_t)(n), __ATOMIC_RELAXED)
#define INFO(sw, f, n) __atomic_fetch_add(&(sw)->info.f, (uint64_t)(n), __ATOMIC_RELAXED)

struct pend {
    uint32_t end;   /* window offset just past this record */
    uint32_t len;   /* Ethernet bytes */
    uint16_t origin;
    uint8_t failed; /* a grant-copy segment of it failed */
};

struct port {
    int id;
    int kind;
    struct ncd_switch_port_config cfg;
    struct ncd_lock lock; /* source lock (anti-spoofing), from cfg */
    struct ncd_vchan *v;
    int fd;   /* TAP fd, or -1 */
    int evfd; /* vchan event-channel fd, or -1 */
    struct ncd_vchan_eoi eoi; /* late EOI of the event channel (switch thread only) */
    int is_socket;
    uint32_t max_frame, rsize, wsize, commit;
    /* under sw->lock */
    int remove_req, quiesced;
    /* state: reason[] written before state is released (switch thread only) */
    int state;
    char reason[160];
    struct ncd_switch_port_stats st;
    /* switch thread only: destination window */
    struct span w;
    int w_valid, dirty;
    size_t w_used, w_done;
    struct pend pend[MAX_PEND];
    unsigned npend;
    /* switch thread only: source window */
    struct span r;
    size_t r_used, r_done, r_remain;
    size_t r_need; /* r_idle: ring data its next complete record needs */
    int r_idle; /* the last round stopped at an incomplete record (or nothing) */
    /* switch thread only: the rate limit on what this port sends (credit.h) */
    struct ncd_credit credit;
    int rate_blocked;   /* the last round stopped on a spent credit, until rate_wake */
    uint64_t rate_wake; /* us */
    /* under sw->lock: a new rate from ncd_switch_port_set_rate, applied by sync_ports */
    uint64_t rate_bytes, rate_usec;
    int rate_posted;
    uint8_t *bounce; /* TAP source: one frame */
    /* switch thread only: full destinations (docs/forwarding.md, "Full destinations") */
    struct port *hold_for; /* source: the full destination its next frame waits for */
    uint64_t hold_until;   /* source: when that wait ends (switch clock, ms) */
    int stuck;             /* destination: a hold on it expired; no holds until it has room */
    uint32_t hold_need;    /* source: the bytes the held frame needs in hold_for's ring */
    struct ncd_answer answer; /* switch thread only: how soon it answers (see spin()) */
};

struct fdb_ent {
    uint64_t key;  /* mac48 << 16 | (port + 1); 0 = empty */
    uint64_t seen; /* ms */
};

struct acct_ent {
    uint64_t key; /* 1 << 32 | origin << 16 | dest; 0 = empty (release-published) */
    uint64_t frames, bytes;
};

struct ncd_switch {
    struct ncd_switch_config cfg;
    uint32_t ageing_ms, batch, hold_ms;
    int64_t wait_avg_ns; /* switch thread only: average idle wait, see spin() */
    unsigned spin_misses; /* switch thread only: spins in a row that found nothing */
    int64_t round_ns;    /* switch thread only: when the current round started */
    pthread_t thread;
    int thread_started, running;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint32_t ctl_gen; /* bumped (release) under lock by add/remove */
    int stop;
    int wake_fd, events_fd;
    uint64_t manual_now;
    struct port *slots[NCD_SWITCH_MAX_PORTS]; /* under lock */
    /* switch thread only */
    struct port *active[NCD_SWITCH_MAX_PORTS];
    unsigned nactive;
    struct port *dirty[NCD_SWITCH_MAX_PORTS];
    unsigned ndirty;
    struct port *cur_src;
    uint64_t now;
    xengnttab_handle *xgt;
    xengnttab_grant_copy_segment_t *segs;
    struct port **seg_port;
    uint16_t *seg_pend;
    unsigned nsegs;
    uint8_t *arena; /* offload fix-ups (ARENA_SIZE): what grant copies may still read */
    size_t arena_off;
    struct fdb_ent fdb[NCD_SWITCH_FDB_SIZE];
    struct acct_ent acct[NCD_SWITCH_ACCT_SIZE];
    struct ncd_switch_info info;
};

/* ---- spans: cext/pump/span.h ---------------------------------------------- */

/* ---- clock, ports' state ----------------------------------------------------- */

static uint64_t clock_ms(struct ncd_switch *sw)
{
    struct timespec ts;

    if (sw->cfg.manual_clock) /* acquire pairs with the release in ncd_switch_set_time */
        return __atomic_load_n(&sw->manual_now, __ATOMIC_ACQUIRE);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int port_up(const struct port *p)
{
    return __atomic_load_n(&p->state, __ATOMIC_RELAXED) == NCD_SWITCH_PORT_UP;
}

static void port_fail(struct ncd_switch *sw, struct port *p, int state, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Switch thread: the port stops (no fprintf: the reason is recorded for Python). */
static void port_fail(struct ncd_switch *sw, struct port *p, int state, const char *fmt, ...)
{
    uint64_t one = 1;
    va_list ap;

    if (!port_up(p))
        return;
    va_start(ap, fmt);
    vsnprintf(p->reason, sizeof p->reason, fmt, ap);
    va_end(ap);
    /* release: pairs with the acquire in ncd_switch_port_reason, so a reader that
     * sees the state also sees the whole reason */
    __atomic_store_n(&p->state, state, __ATOMIC_RELEASE);
    if (write(sw->events_fd, &one, sizeof one) < 0) {
        /* an eventfd write only fails on counter overflow: nothing to report */
    }
}

static void hostile(struct ncd_switch *sw, struct port *p, const char *what)
{
    const char *r = ncd_vchan_close_reason(p->v);
    if (!r && errno == EPIPE)
        return; /* closed meanwhile: the round notices and ends the port */
    if (port_up(p))
        CNT(p, bad_ring, 1);
    port_fail(sw, p, NCD_SWITCH_PORT_BAD_PEER, "%s: %s", what, r ? r : "hostile ring value");
}

/* ---- MAC table ---------------------------------------------------------------- */

static uint64_t mac48(const uint8_t *m)
{
    return ((uint64_t)m[0] << 40) | ((uint64_t)m[1] << 32) | ((uint64_t)m[2] << 24) |
           ((uint64_t)m[3] << 16) | ((uint64_t)m[4] << 8) | (uint64_t)m[5];
}

static struct fdb_ent *fdb_bucket(struct ncd_switch *sw, uint64_t mac)
{
    uint64_t h = mac * 0x9E3779B97F4A7C15ull;
    return &sw->fdb[((h >> 40) % FDB_BUCKETS) * FDB_WAYS];
}

static int fdb_live(const struct ncd_switch *sw, const struct fdb_ent *e, uint64_t now)
{
    uint64_t k = LD(&e->key), seen = LD(&e->seen);
    return k != 0 && now - seen < sw->ageing_ms;
}

/* port id the MAC was learned on, or -1 (unknown or aged out) */
static int fdb_lookup(struct ncd_switch *sw, const uint8_t *m)
{
    uint64_t mac = mac48(m);
    struct fdb_ent *b = fdb_bucket(sw, mac);

    for (unsigned i = 0; i < FDB_WAYS; i++)
        if (LD(&b[i].key) >> 16 == mac && fdb_live(sw, &b[i], sw->now))
            return (int)(LD(&b[i].key) & 0xFFFFu) - 1;
    return -1;
}

static void fdb_learn(struct ncd_switch *sw, const uint8_t *m, struct port *p)
{
    uint64_t mac = mac48(m), key = mac << 16 | (uint64_t)(p->id + 1);
    struct fdb_ent *b = fdb_bucket(sw, mac), *victim = NULL;

    for (unsigned i = 0; i < FDB_WAYS; i++) {
        uint64_t k = LD(&b[i].key);
        if (k >> 16 == mac && k != 0) {
            if (k != key) {
                if (fdb_live(sw, &b[i], sw->now))
                    CNT(p, mac_moves, 1); /* the MAC moved: relearn */
                ST(&b[i].key, key);
            }
            ST(&b[i].seen, sw->now);
            return;
        }
    }
    for (unsigned i = 0; i < FDB_WAYS && !victim; i++)
        if (!fdb_live(sw, &b[i], sw->now))
            victim = &b[i];
    if (!victim) {
        victim = &b[0];
        for (unsigned i = 1; i < FDB_WAYS; i++)
            if (LD(&b[i].seen) < LD(&victim->seen))
                victim = &b[i];
    }
    ST(&victim->seen, sw->now);
    ST(&victim->key, key);
}

static void fdb_purge(struct ncd_switch *sw, int port)
{
    for (unsigned i = 0; i < NCD_SWITCH_FDB_SIZE; i++) {
        uint64_t k = LD(&sw->fdb[i].key);
        if (k && (int)(k & 0xFFFFu) - 1 == port)
            ST(&sw->fdb[i].key, (uint64_t)0);
    }
}

/* ---- accounting ------------------------------------------------------------------ */

static uint64_t acct_key(uint16_t origin, uint16_t dest)
{
    return (1ull << 32) | ((uint64_t)origin << 16) | dest;
}

/* The slot of key (found, or the empty one it goes in); NULL: table full.
 * Only the switch thread calls it. */
static struct acct_ent *acct_slot(struct ncd_switch *sw, uint64_t key)
{
    unsigned h = (unsigned)((key * 0x9E3779B97F4A7C15ull) >> 54) % NCD_SWITCH_ACCT_SIZE;

    for (unsigned i = 0; i < NCD_SWITCH_ACCT_SIZE; i++) {
        struct acct_ent *e = &sw->acct[(h + i) % NCD_SWITCH_ACCT_SIZE];
        uint64_t k = __atomic_load_n(&e->key, __ATOMIC_RELAXED);
        if (k == 0 || k == key)
            return e;
    }
    return NULL;
}

static void account(struct ncd_switch *sw, uint16_t origin, uint16_t dest, uint64_t bytes)
{
    uint64_t key = acct_key(origin, dest);
    struct acct_ent *e = acct_slot(sw, key);

    if (!e)
        return; /* table full (more than 1024 pairs): not accounted */
    if (__atomic_load_n(&e->key, __ATOMIC_RELAXED) == 0) {
        /* only this thread inserts; release pairs with the acquire in
         * ncd_switch_accounting (counters start at zero before the key shows) */
        __atomic_store_n(&e->key, key, __ATOMIC_RELEASE);
    }
    __atomic_fetch_add(&e->frames, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&e->bytes, bytes, __ATOMIC_RELAXED);
}

/* The last port of domain domid left: its pairs go, or a long-lived switch whose
 * guests are destroyed and recreated would fill the table with gone domains and
 * stop accounting new ones.  Switch thread, under sw->lock (sync_ports): account()
 * runs only on this thread and ncd_switch_accounting() takes the lock, so nobody
 * sees the table half rebuilt.  Open addressing: survivors are re-inserted. */
static void acct_forget(struct ncd_switch *sw, uint16_t domid)
{
    static _Thread_local struct acct_ent keep[NCD_SWITCH_ACCT_SIZE];
    unsigned n = 0;

    for (unsigned i = 0; i < NCD_SWITCH_ACCT_SIZE; i++) {
        uint64_t k = LD(&sw->acct[i].key);
        if (!k)
            continue;
        if ((uint16_t)(k >> 16) != domid && (uint16_t)k != domid)
            keep[n++] = (struct acct_ent){k, LD(&sw->acct[i].frames), LD(&sw->acct[i].bytes)};
    }
    if (n == NCD_SWITCH_ACCT_SIZE)
        return; /* domid has no pair: nothing to rebuild */
    for (unsigned i = 0; i < NCD_SWITCH_ACCT_SIZE; i++)
        sw->acct[i] = (struct acct_ent){0, 0, 0};
    for (unsigned i = 0; i < n; i++)
        *acct_slot(sw, keep[i].key) = keep[i]; /* n < size: a slot is always found */
}

/* ---- grant copies and commits ------------------------------------------------------ */

/* Issue the pending grant copies (one call), then commit every destination
 * written since the last flush and the current source up to its last complete
 * record.  The source is committed only after the copies are done: until then
 * the peer must not reuse that ring space. */
static void flush(struct ncd_switch *sw)
{
    if (sw->nsegs) {
        int rc = xengnttab_grant_copy(sw->xgt, sw->nsegs, sw->segs);
        INFO(sw, grant_copy_calls, 1);
        INFO(sw, grant_copy_segs, sw->nsegs);
        for (unsigned i = 0; i < sw->nsegs; i++)
            if (rc < 0 || sw->segs[i].status != 0)
                sw->seg_port[i]->pend[sw->seg_pend[i]].failed = 1;
        sw->nsegs = 0;
    }
    for (unsigned i = 0; i < sw->ndirty; i++) {
        struct port *d = sw->dirty[i];
        size_t end = d->w_done;
        unsigned k;

        for (k = 0; k < d->npend && !d->pend[k].failed; k++) {
            end = d->pend[k].end;
            CNT(d, tx_frames, 1);
            CNT(d, tx_bytes, d->pend[k].len);
            account(sw, d->pend[k].origin, d->cfg.domid, d->pend[k].len);
        }
        /* a failed record and everything behind it in this batch is dropped:
         * the window position rolls back to the last good record */
        CNT(d, drop_copy_failed, d->npend - k);
        d->w_used = end;
        if (end > d->w_done && port_up(d))
            ncd_vchan_write_commit(d->v, end - d->w_done);
        d->w_done = end;
        d->npend = 0;
        d->dirty = 0;
    }
    sw->ndirty = 0;
    struct port *s = sw->cur_src;
    if (s && s->v && s->r_used > s->r_done) {
        ncd_vchan_read_commit(s->v, s->r_used - s->r_done);
        s->r_done = s->r_used;
    }
}

/* Reserve room for `segs` more segments, flushing first when they do not fit. */
static void reserve_segs(struct ncd_switch *sw, unsigned segs)
{
    if (sw->nsegs + segs > MAX_SEGS)
        flush(sw);
}

/* Copy len bytes from src (offset so) into dst's window (offset doff): memcpy
 * between memory we may touch, grant-copy segments where a side is foreign in
 * grant mode.  0, or -1 when a mapped ring page is no longer tracked. */
static int copy_payload(struct ncd_switch *sw, struct port *sp, const struct span *src, size_t so,
                        struct port *d, size_t doff, size_t len)
{
    int grant = sw->cfg.copy_mode == NCD_SWITCH_COPY_GRANT;

    while (len) {
        size_t sc, dc, n;
        uint8_t *sa = span_at(src, so, &sc), *da = span_at(&d->w, doff, &dc);
        if (!sa || !da)
            return -1; /* cannot happen: both were sized before */
        n = len < sc ? len : sc;
        n = n < dc ? n : dc;
        if (!grant) {
            memcpy(da, sa, n);
        } else {
            struct ncd_mem_origin so_, do_;
            int sf = ncd_tracker_classify(NULL, sa, n, &so_);
            int df = ncd_tracker_classify(NULL, da, n, &do_);
            if (sp && sp->kind == NCD_SWITCH_PORT_MAPPED && !sf) {
                port_fail(sw, sp, NCD_SWITCH_PORT_UNTRACKED,
                          "mapped ring page %p is not in the tracker", (void *)sa);
                return -1;
            }
            if (d->kind == NCD_SWITCH_PORT_MAPPED && !df) {
                port_fail(sw, d, NCD_SWITCH_PORT_UNTRACKED,
                          "mapped ring page %p is not in the tracker", (void *)da);
                return -1;
            }
            n = n < so_.len ? n : so_.len;
            n = n < do_.len ? n : do_.len;
            if (!sf && !df) {
                memcpy(da, sa, n); /* both ours: no grant involved */
            } else {
                xengnttab_grant_copy_segment_t *g = &sw->segs[sw->nsegs];
                memset(g, 0, sizeof *g);
                if (sf) {
                    g->flags |= GNTCOPY_SRC_GREF;
                    g->source.foreign.ref = so_.gref;
                    g->source.foreign.domid = so_.domid;
                    g->source.foreign.offset = (uint16_t)so_.offset;
                } else {
                    g->source.virt = sa;
                }
                if (df) {
                    g->flags |= GNTCOPY_DST_GREF;
                    g->dest.foreign.ref = do_.gref;
                    g->dest.foreign.domid = do_.domid;
                    g->dest.foreign.offset = (uint16_t)do_.offset;
                } else {
                    g->dest.virt = da;
                }
                g->len = (uint16_t)n;
                sw->seg_port[sw->nsegs] = d;
                sw->seg_pend[sw->nsegs] = (uint16_t)d->npend;
                sw->nsegs++;
                CNT(d, grant_copy_segs, 1);
            }
        }
        so += n;
        doff += n;
        len -= n;
    }
    return 0;
}

/* ---- one frame to one destination ------------------------------------------------- */

struct frame {
    uint8_t vnet[NCD_VNET_HDR_SIZE]; /* validated private copy */
    struct ncd_vnet_hdr h;
    uint8_t head[HEAD_MAX];          /* private copy of the first frame bytes */
    uint32_t head_len, len;
    struct span body; /* the whole frame in the source (ring or bounce) */
    uint16_t origin;
    /* offload fix-ups: the GSO headers, parsed once per frame (fix = 0: not yet,
     * 1: parsed into g, -1: malformed or unsupported, gso_err says which) */
    int fix, gso_err;
    struct ncd_gso g;
    uint8_t hdr[NCD_GSO_HDR_MAX]; /* private copy of the headers g describes */
};

/* worst-case grant-copy segments of one frame: a split at every page boundary
 * on either side plus both ring wraps */
static unsigned segs_for(uint32_t len)
{
    return 2u * (len / NCD_TRACKER_PAGE_SIZE) + 6u;
}

static void send_tap(struct ncd_switch *sw, struct port *d, const struct frame *f)
{
    struct iovec iov[4];
    int cnt = 2;

    iov[0].iov_base = (void *)f->vnet;
    iov[0].iov_len = NCD_VNET_HDR_SIZE;
    iov[1].iov_base = (void *)f->head;
    iov[1].iov_len = f->head_len;
    cnt += span_slice(&f->body, f->head_len, f->len - f->head_len, iov + 2);
    for (;;) {
        ssize_t n;
        if (d->is_socket) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
            n = sendmsg(d->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            n = writev(d->fd, iov, cnt);
        }
        if (n >= 0) {
            if ((size_t)n != NCD_VNET_HDR_SIZE + f->len) {
                CNT(d, drop_fd_write, 1);
                return;
            }
            CNT(d, tx_frames, 1);
            CNT(d, tx_bytes, f->len);
            account(sw, f->origin, d->cfg.domid, f->len);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            CNT(d, drop_ring_full, 1); /* never wait for one destination */
        else
            CNT(d, drop_fd_write, 1);
        return;
    }
}

/* 0 = the window has room for need bytes; -1 = ring full (or closed) */
static int window_room(struct ncd_switch *sw, struct port *d, size_t need)
{
    if (d->w_valid && d->w.len - d->w_used >= need)
        return 0;
    if (d->w_valid && d->w_used != d->w_done) {
        flush(sw); /* hand over what is written, then look for more room */
        if (!port_up(d))
            return -1;
    }
    size_t had = d->w_valid ? d->w.len - d->w_used : 0;
    int cnt = ncd_vchan_write_iov(d->v, d->w.iov, d->wsize);
    if (cnt < 0) {
        d->w_valid = 0;
        if (errno != EPIPE || ncd_vchan_close_reason(d->v))
            hostile(sw, d, "vchan write ring");
        return -1;
    }
    span_init(&d->w, cnt);
    /* more room than the window had left: the peer consumed, so its notifications
     * about it carried work even when the thread saw them only after the fact (a
     * hold or a spin takes them late): late EOI must not defer this port's unmask */
    if (d->w.len > had && ncd_vchan_eoi_work(&d->eoi, d->v) < 0)
        port_fail(sw, d, NCD_SWITCH_PORT_BAD_PEER, "event channel unmask failed");
    d->w_valid = 1;
    d->w_used = d->w_done = 0;
    return d->w.len >= need ? 0 : -1;
}

static void send_vchan(struct ncd_switch *sw, struct port *s, struct port *d,
                       const struct frame *f)
{
    size_t need = NCD_REC_HDR_SIZE + f->len;
    uint8_t lenb[NCD_REC_LEN_SIZE];

    if (need > d->wsize) {
        CNT(d, drop_too_big, 1);
        return;
    }
    if (sw->cfg.copy_mode == NCD_SWITCH_COPY_GRANT)
        reserve_segs(sw, segs_for(f->len));
    if (d->npend == MAX_PEND)
        flush(sw);
    if (window_room(sw, d, need) < 0) {
        CNT(d, drop_ring_full, 1);
        return;
    }
    /* the record header and the inspected head from our private copies */
    ncd_le32_put(lenb, (uint32_t)(NCD_VNET_HDR_SIZE + f->len));
    span_copy_in(&d->w, d->w_used, lenb, sizeof lenb);
    span_copy_in(&d->w, d->w_used + NCD_REC_LEN_SIZE, f->vnet, NCD_VNET_HDR_SIZE);
    span_copy_in(&d->w, d->w_used + NCD_REC_HDR_SIZE, f->head, f->head_len);
    if (copy_payload(sw, s, &f->body, f->head_len, d, d->w_used + NCD_REC_HDR_SIZE + f->head_len,
                     f->len - f->head_len) < 0) {
        /* a page left the tracker: port_fail() stopped the port concerned; the
         * segments already queued for this record are marked failed */
        if (d->npend < MAX_PEND) {
            d->pend[d->npend] = (struct pend){.end = (uint32_t)(d->w_used + need),
                                              .len = f->len, .origin = f->origin, .failed = 1};
            d->npend++;
            d->w_used += need;
            if (!d->dirty) {
                d->dirty = 1;
                sw->dirty[sw->ndirty++] = d;
            }
        }
        return;
    }
    d->pend[d->npend++] = (struct pend){.end = (uint32_t)(d->w_used + need), .len = f->len,
                                        .origin = f->origin};
    ncd_answer_sent(&d->answer, sw->round_ns); /* see spin(): how soon d answers */
    d->w_used += need;
    if (!d->dirty) {
        d->dirty = 1;
        sw->dirty[sw->ndirty++] = d;
    }
}

/* f can go to d as it is (no offload fix-up, no size problem). */
static int direct(const struct port *d, const struct frame *f)
{
    return f->len <= d->max_frame &&
           ncd_frame_check_vnet(&f->h, f->len, d->cfg.tx_features) == NCD_FRAME_OK;
}

/* A unicast frame from vchan port s to vchan port d (docs/forwarding.md, "Full
 * destinations"): 1 = d's ring cannot take it now, hold it (it stays unconsumed
 * in s's ring and s is read no further until d has room or the hold expires);
 * 0 = go on: d has room, or holding is not allowed (a TAP on either side, a
 * fix-up, d not connected, d stuck) or has expired, and send_vchan() delivers or
 * drops and counts as before.  Only s waits: the thread goes on with the other
 * ports, and sleeps at most until the earliest hold expires. */
static int hold(struct ncd_switch *sw, struct port *s, struct port *d, const struct frame *f)
{
    size_t need = NCD_REC_HDR_SIZE + f->len;

    if (sw->hold_ms == UINT32_MAX || !s->v || !d->v || need > d->wsize || !direct(d, f) ||
        ncd_vchan_is_open(d->v) != 1)
        return 0;
    if (d->npend == MAX_PEND)
        flush(sw);
    int room = window_room(sw, d, need) == 0;
    if (room)
        d->stuck = 0;
    if (room || !port_up(d) || d->stuck) {
        s->hold_for = NULL;
        return 0;
    }
    s->hold_need = (uint32_t)need;
    if (s->hold_for != d) {
        s->hold_for = d;
        s->hold_until = sw->now + sw->hold_ms;
        CNT(d, ring_full_waits, 1);
    } else if (sw->now >= s->hold_until) {
        /* held for the whole bound: d is stuck, frames for it drop at once (for
         * every source) until it has room again */
        s->hold_for = NULL;
        d->stuck = 1;
        return 0;
    }
    /* Ask d's reader to notify when it consumes, then look again: a consumption
     * between our look and the request is not missed (the request's full barrier
     * pairs with the one in the reader's read_commit before it reads the notify
     * bits, as in libxenvchan). */
    ncd_vchan_request_notify(d->v, 1, 0);
    if (window_room(sw, d, need) == 0) {
        s->hold_for = NULL;
        return 0;
    }
    return 1;
}

/* s = the source port when f's memory is its ring (checked against the tracker
 * in grant mode), NULL when f was built in our own memory (the arena). */
static void deliver(struct ncd_switch *sw, struct port *s, struct port *d, const struct frame *f)
{
    if (d->kind == NCD_SWITCH_PORT_TAP)
        send_tap(sw, d, f);
    else if (ncd_vchan_is_open(d->v) != 1)
        CNT(d, drop_ring_full, 1); /* not connected (yet, or any more) */
    else
        send_vchan(sw, s, d, f);
}

/* ---- offload fix-ups (docs/forwarding.md, "Offloads across ports") ------------------ */

/* Bytes [off, off+n) of the frame: the checked head from the private copy, the
 * rest from the source (what we checked is what we send). */
static void frame_copy_out(const struct frame *f, uint32_t off, uint8_t *dst, uint32_t n)
{
    if (off < f->head_len) {
        uint32_t k = f->head_len - off < n ? f->head_len - off : n;
        memcpy(dst, f->head + off, k);
        dst += k;
        off += k;
        n -= k;
    }
    if (n)
        span_copy_out(&f->body, off, dst, n);
}

/* Private room for one frame of len bytes.  Grant copies queued from the arena
 * read it until the next flush: it is reused only after one. */
static uint8_t *arena_get(struct ncd_switch *sw, uint32_t len)
{
    if (sw->arena_off + len > ARENA_SIZE) {
        if (sw->nsegs)
            flush(sw);
        sw->arena_off = 0;
    }
    uint8_t *a = sw->arena + sw->arena_off;
    sw->arena_off += len;
    return a;
}

/* A frame in the arena, without offloads (flags 0, no GSO). */
static void deliver_built(struct ncd_switch *sw, struct port *d, const struct frame *src,
                          uint8_t *buf, uint32_t len)
{
    struct frame g;

    memset(g.vnet, 0, sizeof g.vnet);
    memset(&g.h, 0, sizeof g.h);
    g.head_len = 0;
    g.len = len;
    g.origin = src->origin;
    g.body.iov[0].iov_base = buf;
    g.body.iov[0].iov_len = len;
    span_init(&g.body, 1);
    deliver(sw, NULL, d, &g);
}

/* Parse f's GSO headers once per frame (a flood fixes it for several ports);
 * a malformed frame is counted once, on its source port. 0 = parsed. */
static int gso_headers(struct port *s, struct frame *f)
{
    if (!f->fix) {
        uint32_t n = f->len < NCD_GSO_HDR_MAX ? f->len : NCD_GSO_HDR_MAX;
        frame_copy_out(f, 0, f->hdr, n);
        f->gso_err = ncd_gso_parse(f->hdr, n, f->len,
                                   (uint8_t)(f->h.gso_type & ~NCD_VNET_GSO_ECN), &f->g);
        f->fix = f->gso_err == NCD_GSO_OK ? 1 : -1;
        if (f->gso_err != NCD_GSO_OK && f->gso_err != NCD_GSO_UNSUPPORTED)
            CNT(s, drop_bad_headers, 1);
    }
    return f->fix > 0 ? 0 : -1;
}

/* Software GSO: f's payload in segments of at most mss bytes, each a complete
 * frame with its own lengths, sequence number and checksums. */
static void segment(struct ncd_switch *sw, struct port *s, struct port *d, struct frame *f)
{
    if (gso_headers(s, f) < 0) {
        if (f->gso_err == NCD_GSO_UNSUPPORTED)
            CNT(d, drop_offload, 1);
        return;
    }
    const struct ncd_gso *g = &f->g;
    if (d->max_frame <= g->hl) {
        CNT(d, drop_offload, 1); /* not even one payload byte fits */
        return;
    }
    uint32_t mss = d->max_frame - g->hl;
    if (f->h.gso_size < mss)
        mss = f->h.gso_size;
    uint32_t nseg = ncd_gso_count(g, mss), pay = g->end - g->hl;
    if (nseg > NCD_GSO_MAX_SEGS) {
        CNT(d, drop_offload, 1);
        return;
    }
    CNT(d, offload_fixed, 1);
    CNT(d, gso_segments, nseg);
    for (uint32_t i = 0, off = 0; i < nseg && port_up(d); i++) {
        uint32_t n = pay - off < mss ? pay - off : mss;
        uint8_t *seg = arena_get(sw, g->hl + n);
        memcpy(seg, f->hdr, g->hl);
        frame_copy_out(f, g->hl + off, seg + g->hl, n);
        ncd_gso_fix_segment(seg, g, i, off, n, i + 1 == nseg);
        deliver_built(sw, d, f, seg, g->hl + n);
        off += n;
    }
}

/* f uses offloads (or a size) d did not negotiate: make it acceptable, or drop
 * it with a reason; never silently. */
static void fix_up(struct ncd_switch *sw, struct port *s, struct port *d, struct frame *f)
{
    if (f->h.gso_type != NCD_VNET_GSO_NONE) {
        segment(sw, s, d, f);
        return;
    }
    if (f->len > d->max_frame) {
        CNT(d, drop_too_big, 1); /* no GSO: it would take IP fragmentation */
        return;
    }
    if (f->h.flags & NCD_VNET_F_NEEDS_CSUM) {
        /* complete the partial checksum in a private copy (ncd_frame_check_vnet
         * checked csum_start + csum_offset + 2 <= len on entry) */
        uint8_t *buf = arena_get(sw, f->len);
        frame_copy_out(f, 0, buf, f->len);
        if (ncd_csum_complete(buf, f->len, f->h.csum_start, f->h.csum_offset) < 0) {
            CNT(d, drop_offload, 1);
            return;
        }
        CNT(d, offload_fixed, 1);
        deliver_built(sw, d, f, buf, f->len);
        return;
    }
    /* DATA_VALID only: the checksum is complete already; the flag just goes */
    struct frame g = *f;
    g.h.flags = 0;
    g.vnet[0] = 0;
    CNT(d, offload_fixed, 1);
    deliver(sw, s, d, &g);
}

static void send_to(struct ncd_switch *sw, struct port *s, struct port *d, struct frame *f)
{
    if (direct(d, f))
        deliver(sw, s, d, f);
    else
        fix_up(sw, s, d, f);
}

/* The switching decision for one frame that entered on s: 0 = done with it
 * (delivered, dropped or filtered), 1 = held (see hold(): it stays in s's ring
 * and nothing was counted; it is decided again in a later round). */
static int forward(struct ncd_switch *sw, struct port *s, struct frame *f)
{
    if (ncd_lock_spoofed(&s->lock, f->head, f->head_len)) {
        CNT(s, rx_frames, 1);
        CNT(s, rx_bytes, f->len);
        CNT(s, spoofed_source, 1);
        return 0;
    }
    /* origin of the frame's bytes: the tracker for a mapped ring (and it must
     * know the page), else whoever owns the memory we read */
    if (s->kind == NCD_SWITCH_PORT_MAPPED) {
        struct ncd_mem_origin o;
        size_t c;
        const uint8_t *a = span_at(&f->body, 0, &c);
        if (!ncd_tracker_classify(NULL, a, c, &o)) {
            CNT(s, rx_frames, 1);
            CNT(s, rx_bytes, f->len);
            port_fail(sw, s, NCD_SWITCH_PORT_UNTRACKED,
                      "mapped ring page %p is not in the tracker", (const void *)a);
            return 0;
        }
        f->origin = o.domid;
    } else if (s->kind == NCD_SWITCH_PORT_GRANTED) {
        f->origin = s->cfg.domid; /* our pages, written by the port's peer */
    } else {
        f->origin = sw->cfg.self_domid;
    }
    fdb_learn(sw, f->head + 6, s);

    int to = -1;
    struct port *d = NULL;
    if (!(f->head[0] & 1))
        to = fdb_lookup(sw, f->head);
    for (unsigned i = 0; to >= 0 && to != s->id && i < sw->nactive; i++)
        if (sw->active[i]->id == to && port_up(sw->active[i]))
            d = sw->active[i];
    if (d && hold(sw, s, d, f))
        return 1;
    CNT(s, rx_frames, 1);
    CNT(s, rx_bytes, f->len);
    if (to == s->id) {
        CNT(s, filtered_same_port, 1); /* never back out of its own port */
        return 0;
    }
    if (d) {
        send_to(sw, s, d, f);
        return 0;
    }
    unsigned sent = 0;
    CNT(s, flooded, 1);
    for (unsigned i = 0; i < sw->nactive && port_up(s); i++) {
        struct port *d = sw->active[i];
        if (d == s || !port_up(d))
            continue;
        send_to(sw, s, d, f);
        sent++;
    }
    if (!sent)
        CNT(s, no_destination, 1);
    return 0;
}

/* ---- sources ------------------------------------------------------------------------ */

static void bad_record(struct ncd_switch *sw, struct port *p, uint32_t rec_len, int err)
{
    CNT(p, bad_record, 1);
    port_fail(sw, p, NCD_SWITCH_PORT_BAD_PEER, "bad record from peer (length %u): %s", rec_len,
              ncd_frame_err_name(err));
}

/* Up to batch records from a vchan port. Returns records moved. */
static unsigned rx_vchan(struct ncd_switch *sw, struct port *s)
{
    unsigned frames = 0;
    int held = 0;
    int cnt = ncd_vchan_read_iov(s->v, s->r.iov, s->rsize);

    s->r_remain = 0;
    s->r_idle = 0;
    if (cnt < 0) {
        s->hold_for = NULL;
        hostile(sw, s, "vchan read ring");
        return 0;
    }
    span_init(&s->r, cnt);
    s->r_used = s->r_done = 0;
    sw->cur_src = s;
    /* the rate limit: the clock read once per round, only when one is set */
    uint64_t now = ncd_credit_limited(&s->credit) ? ncd_credit_now() : 0;
    s->rate_blocked = 0;
    while (frames < sw->batch && port_up(s)) {
        size_t left = s->r.len - s->r_used;
        uint8_t lenb[NCD_REC_LEN_SIZE];
        struct frame f;

        if (left < NCD_REC_LEN_SIZE) {
            s->r_idle = 1;
            s->r_need = NCD_REC_LEN_SIZE;
            break;
        }
        span_copy_out(&s->r, s->r_used, lenb, sizeof lenb);
        uint32_t rec_len = ncd_le32_get(lenb); /* read once; this copy is the truth */
        int err = ncd_frame_check_len(rec_len, s->max_frame, s->rsize);
        if (err) {
            bad_record(sw, s, rec_len, err);
            break;
        }
        if (left - NCD_REC_LEN_SIZE < rec_len) {
            s->r_idle = 1; /* incomplete: the writer has not committed all of it yet */
            s->r_need = NCD_REC_LEN_SIZE + (size_t)rec_len;
            break;
        }
        if (now && !ncd_credit_take(&s->credit, rec_len - NCD_VNET_HDR_SIZE, now,
                                    &s->rate_wake)) {
            s->rate_blocked = 1; /* left in the ring until the refill */
            break;
        }
        span_copy_out(&s->r, s->r_used + NCD_REC_LEN_SIZE, f.vnet, NCD_VNET_HDR_SIZE);
        ncd_vnet_decode(f.vnet, &f.h);
        f.len = rec_len - NCD_VNET_HDR_SIZE;
        err = ncd_frame_check_vnet(&f.h, f.len, s->cfg.rx_features);
        if (err) {
            bad_record(sw, s, rec_len, err);
            break;
        }
        f.head_len = f.len < HEAD_MAX ? f.len : HEAD_MAX;
        span_sub(&s->r, s->r_used + NCD_REC_HDR_SIZE, f.len, &f.body);
        span_copy_out(&f.body, 0, f.head, f.head_len);
        f.fix = 0;
        if (forward(sw, s, &f)) {
            /* the record stays in the ring, unconsumed: it is charged once, in the
             * round it goes (every round of a hold would charge it again) */
            if (now)
                ncd_credit_untake(&s->credit, f.len);
            held = 1;
            break;
        }
        s->r_used += NCD_REC_LEN_SIZE + rec_len;
        frames++;
        if (s->r_used - s->r_done >= s->commit)
            flush(sw);
    }
    flush(sw);
    sw->cur_src = NULL;
    if (!held)
        s->hold_for = NULL; /* its frame went (or its destination went away) */
    s->r_remain = s->r.len - s->r_used;
    if (frames) {
        CNT(s, batches, 1);
        ncd_answer_seen(&s->answer, sw->round_ns);
    }
    if (now) {
        ST(&s->st.rate_limited, s->credit.waits);
        ST(&s->st.rate_delay_usec, s->credit.wait_usec);
    }
    return frames;
}

/* Up to batch frames from a TAP port (each read into the port's bounce buffer:
 * its destination is known only once its header is). */
static unsigned rx_tap(struct ncd_switch *sw, struct port *s)
{
    unsigned frames = 0;

    while (frames < sw->batch && port_up(s)) {
        struct frame f;
        struct iovec iov[2] = {
            {.iov_base = f.vnet, .iov_len = NCD_VNET_HDR_SIZE},
            {.iov_base = s->bounce, .iov_len = s->max_frame + 1u},
        };
        ssize_t n;
        int trunc = 0;

        if (s->is_socket) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
            n = recvmsg(s->fd, &mh, MSG_DONTWAIT);
            if (n >= 0 && (mh.msg_flags & MSG_TRUNC))
                trunc = 1;
        } else {
            n = readv(s->fd, iov, 2);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                port_fail(sw, s, NCD_SWITCH_PORT_FD_ERROR, "frame fd read: %s", strerror(errno));
            break;
        }
        if (n == 0) {
            port_fail(sw, s, NCD_SWITCH_PORT_FD_ERROR, "frame fd: end of file");
            break;
        }
        frames++;
        if (trunc || (size_t)n < NCD_REC_LEN_MIN ||
            (size_t)n > NCD_VNET_HDR_SIZE + (size_t)s->max_frame) {
            CNT(s, bad_record, 1); /* local kernel's frame: dropped, the port stays */
            continue;
        }
        f.len = (uint32_t)n - NCD_VNET_HDR_SIZE;
        ncd_vnet_decode(f.vnet, &f.h);
        if (ncd_frame_check_vnet(&f.h, f.len, s->cfg.rx_features) != NCD_FRAME_OK) {
            CNT(s, bad_record, 1);
            continue;
        }
        f.head_len = f.len < HEAD_MAX ? f.len : HEAD_MAX;
        memcpy(f.head, s->bounce, f.head_len);
        f.body.iov[0].iov_base = s->bounce;
        f.body.iov[0].iov_len = f.len;
        span_init(&f.body, 1);
        f.fix = 0;
        forward(sw, s, &f); /* never held: a TAP source is not a vchan */
        /* the bounce buffer is reused by the next read: grant copies out of it first */
        if (sw->nsegs)
            flush(sw);
    }
    flush(sw);
    if (frames)
        CNT(s, batches, 1);
    return frames;
}

/* ---- the thread ------------------------------------------------------------------------ */

/* Quiescent point: no ring pointer is held here. Picks up added/removed ports. */
/* Under sw->lock: does a port not being removed belong to domid? */
static int domain_has_port(const struct ncd_switch *sw, uint16_t domid)
{
    for (unsigned i = 0; i < NCD_SWITCH_MAX_PORTS; i++) {
        const struct port *p = sw->slots[i];
        if (p && !p->remove_req && p->cfg.domid == domid)
            return 1;
    }
    return 0;
}

static void sync_ports(struct ncd_switch *sw, uint32_t *seen)
{
    /* acquire pairs with the release increment in add/remove (under the lock) */
    if (__atomic_load_n(&sw->ctl_gen, __ATOMIC_ACQUIRE) == *seen)
        return;
    pthread_mutex_lock(&sw->lock);
    sw->nactive = 0;
    for (unsigned i = 0; i < NCD_SWITCH_MAX_PORTS; i++) {
        struct port *p = sw->slots[i];
        if (!p)
            continue;
        if (p->remove_req) {
            if (!p->quiesced) {
                fdb_purge(sw, p->id);
                if (!domain_has_port(sw, p->cfg.domid))
                    acct_forget(sw, p->cfg.domid);
                p->quiesced = 1; /* published by the unlock below (mutex release) */
            }
            continue;
        }
        if (p->rate_posted) { /* ncd_switch_port_set_rate, under the lock */
            ncd_credit_set(&p->credit, p->rate_bytes, p->rate_usec, ncd_credit_now());
            p->rate_posted = 0;
        }
        sw->active[sw->nactive++] = p;
    }
    /* a hold for a port being removed ends (p is freed only after our unlock) */
    for (unsigned i = 0; i < sw->nactive; i++)
        if (sw->active[i]->hold_for && sw->active[i]->hold_for->remove_req)
            sw->active[i]->hold_for = NULL;
    *seen = sw->ctl_gen;
    pthread_cond_broadcast(&sw->cond);
    pthread_mutex_unlock(&sw->lock);
}

static void check_closed(struct ncd_switch *sw, struct port *p)
{
    if (p->v && port_up(p) && p->r_idle && ncd_vchan_is_open(p->v) == 0) {
        ssize_t r = ncd_vchan_data_ready(p->v);
        const char *why = ncd_vchan_close_reason(p->v);
        if (why) {
            CNT(p, bad_ring, 1);
            port_fail(sw, p, NCD_SWITCH_PORT_BAD_PEER, "vchan closed: %s", why);
        }
        else if (r <= (ssize_t)p->r_remain)
            port_fail(sw, p, NCD_SWITCH_PORT_PEER_CLOSED, "peer closed the vchan");
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Work a round would find on a vchan port, judged from the peers' indices alone
 * (no notification asked, no syscall): a complete record past what the last round
 * left (a peer moving its index a byte at a time must not keep us spinning), or
 * room for a held frame. TAP ports are not looked at (that takes a syscall). */
static int work_seen(struct ncd_switch *sw)
{
    for (unsigned i = 0; i < sw->nactive; i++) {
        struct port *p = sw->active[i];
        if (!p->v || !port_up(p))
            continue;
        if (p->hold_for) {
            int64_t room = port_up(p->hold_for) ? ncd_vchan_peek_space(p->hold_for->v) : 1;
            if (room < 0 || (uint64_t)room >= p->hold_need)
                return 1;
        } else if (p->rate_blocked) {
            continue; /* its refill ends the wait, not its peer's data: no spinning */
        } else if (ncd_vchan_is_open(p->v) == 1) {
            int64_t r = ncd_vchan_peek_data(p->v);
            size_t need = p->r_idle ? p->r_need : p->r_remain + 1;
            if (r < 0 || (uint64_t)r >= need)
                return 1; /* a record, or a hostile value the round reports */
        }
    }
    return 0;
}

/* A vchan port was delivered a frame less than SPIN_NS ago, has not sent since, and
 * its recent answers came within SPIN_NS: the other half of a request/response
 * (a ping's echo reply) is probably on its way. */
static int answer_due(const struct ncd_switch *sw, int64_t now)
{
    for (unsigned i = 0; i < sw->nactive; i++) {
        const struct port *p = sw->active[i];
        if (p->v && ncd_answer_due(&p->answer, now, SPIN_NS))
            return 1;
    }
    return 0;
}

/* Bounded adaptive spin before sleeping: 1 = work showed up within SPIN_NS.
 * It is used only while peers answer within the spin: the thread spins while its
 * recent idle waits averaged less than SPIN_NS (a stream whose next frame comes
 * within microseconds), or while a port it just delivered to has been answering
 * within SPIN_NS (a ping's responder: the spin catches the reply, not the next
 * request 10 ms later, since the requester's answers average milliseconds); never
 * when idle (seconds): an idle switch sleeps at once. */
static int spin(struct ncd_switch *sw, uint32_t seen)
{
    int64_t start = now_ns(), end = start + SPIN_NS;

    if (sw->wait_avg_ns >= SPIN_NS && !answer_due(sw, start))
        return 0;
    for (unsigned i = 0;; i++) {
        /* acquire pairs with the release increment in add/remove, and with the
         * release store of stop in ncd_switch_destroy */
        if (work_seen(sw) || __atomic_load_n(&sw->ctl_gen, __ATOMIC_ACQUIRE) != seen ||
            __atomic_load_n(&sw->stop, __ATOMIC_ACQUIRE)) {
            ncd_answer_waited(&sw->wait_avg_ns, now_ns() - start);
            sw->spin_misses = 0;
            return 1;
        }
        if (i % 16 == 15) {
            if (now_ns() >= end) {
                ncd_answer_missed(&sw->wait_avg_ns, &sw->spin_misses, SPIN_NS);
                break;
            }
            /* a runnable peer on this CPU (on 2 vCPUs, often the one we wait for)
             * goes first: the spin saves the sleep and the peer's notification,
             * it must not take the peer's CPU */
            sched_yield();
        }
        ncd_cpu_relax();
    }
    return 0;
}

static void *switch_main(void *arg)
{
    struct ncd_switch *sw = arg;
    uint32_t seen = (uint32_t)-1;

    pthread_setname_np(pthread_self(), "ncd-switch");
    /* acquire pairs with the release in ncd_switch_destroy */
    while (!__atomic_load_n(&sw->stop, __ATOMIC_ACQUIRE)) {
        unsigned moved = 0;
        int waiting_client = 0;

        sync_ports(sw, &seen);
        sw->now = clock_ms(sw);
        sw->round_ns = now_ns();
        INFO(sw, rounds, 1);
        for (unsigned i = 0; i < sw->nactive; i++) {
            struct port *p = sw->active[i];
            if (!port_up(p))
                continue;
            if (p->v) {
                int open = ncd_vchan_is_open(p->v);
                if (open == 2) {
                    waiting_client = 1;
                    continue;
                }
                unsigned m = rx_vchan(sw, p);
                /* the peer's data moved without an event: it is working, unmask now */
                if (m && ncd_vchan_eoi_work(&p->eoi, p->v) < 0)
                    port_fail(sw, p, NCD_SWITCH_PORT_BAD_PEER, "event channel unmask failed");
                moved += m;
                check_closed(sw, p);
            } else {
                moved += rx_tap(sw, p);
            }
        }
        if (moved)
            continue; /* work left: no sleeping, bounded by progress */
        int64_t idle_since = now_ns();
        if (spin(sw, seen)) {
            INFO(sw, spins_won, 1);
            continue;
        }

        /* About to sleep: ask every peer to notify on write, then look again so
         * that a commit between our look and the request is not missed (the
         * request's full barrier pairs with the peer's barrier before it reads
         * the notify bits, as in libxenvchan). */
        int again = 0, timeout = waiting_client ? 100 : 1000;
        struct pollfd pfd[1 + NCD_SWITCH_MAX_PORTS];
        struct port *pp[1 + NCD_SWITCH_MAX_PORTS];
        unsigned n = 1;
        pfd[0] = (struct pollfd){.fd = sw->wake_fd, .events = POLLIN};
        pp[0] = NULL;
        for (unsigned i = 0; i < sw->nactive; i++) {
            struct port *p = sw->active[i];
            if (!port_up(p))
                continue;
            if (p->v) {
                if (p->hold_for) {
                    /* held: its new data waits; the destination's reader wakes us
                     * (hold() asked it to), else the hold's end does */
                    uint64_t left = p->hold_until > sw->now ? p->hold_until - sw->now : 0;
                    if (left + 1 < (uint64_t)timeout)
                        timeout = (int)left + 1;
                } else if (p->rate_blocked) { /* no notification needed: the refill wakes us */
                    int t = ncd_credit_poll_ms(p->rate_wake, ncd_credit_now());
                    if (t == 0)
                        again = 1;
                    else if (t < timeout)
                        timeout = t;
                } else if (ncd_vchan_is_open(p->v) == 1) {
                    ncd_vchan_request_notify(p->v, 0, 1);
                    ssize_t r = ncd_vchan_data_ready(p->v);
                    if (r < 0) {
                        hostile(sw, p, "vchan read ring");
                        continue;
                    }
                    if ((size_t)r > p->r_remain)
                        again = 1;
                }
                ncd_vchan_eoi_arm(&p->eoi, p->v); /* to tell the peer's work from a storm */
                ST(&p->st.notify_spurious, ncd_vchan_eoi_spurious(&p->eoi));
                pfd[n] = (struct pollfd){.fd = ncd_vchan_eoi_fd(&p->eoi, p->v), .events = POLLIN};
                timeout = ncd_vchan_eoi_timeout(&p->eoi, timeout);
            } else {
                pfd[n] = (struct pollfd){.fd = p->fd, .events = POLLIN};
            }
            pp[n++] = p;
        }
        if (again)
            continue;
        int rc = poll(pfd, n, timeout);
        INFO(sw, wakeups, 1);
        ncd_answer_waited(&sw->wait_avg_ns, now_ns() - idle_since);
        if (rc < 0)
            continue; /* EINTR; anything else repeats harmlessly */
        if (pfd[0].revents & POLLIN) {
            uint64_t v;
            if (read(sw->wake_fd, &v, sizeof v) < 0) {
                /* EAGAIN: someone else's wake-up already consumed */
            }
        }
        for (unsigned i = 1; i < n; i++) {
            struct port *p = pp[i];
            if (p->v) {
                if (((pfd[i].revents & POLLIN) && ncd_vchan_eoi_event(&p->eoi, p->v) < 0) ||
                    ncd_vchan_eoi_tick(&p->eoi, p->v) < 0)
                    port_fail(sw, p, NCD_SWITCH_PORT_BAD_PEER, "event channel: %s",
                              strerror(errno));
                else if (pfd[i].revents & (POLLERR | POLLNVAL))
                    port_fail(sw, p, NCD_SWITCH_PORT_BAD_PEER, "event channel fd failed");
            } else if (pfd[i].revents & (POLLERR | POLLNVAL) ||
                       ((pfd[i].revents & POLLHUP) && !(pfd[i].revents & POLLIN))) {
                port_fail(sw, p, NCD_SWITCH_PORT_FD_ERROR, "frame fd: hang-up or error");
            }
        }
    }
    pthread_mutex_lock(&sw->lock);
    sw->running = 0;
    pthread_cond_broadcast(&sw->cond);
    pthread_mutex_unlock(&sw->lock);
    return NULL;
}

/* ---- public API ----------------------------------------------------------------------- */

static int fail(char *err, size_t errlen, int e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    errno = e;
    return -1;
}

static void wake(struct ncd_switch *sw)
{
    uint64_t one = 1;
    if (write(sw->wake_fd, &one, sizeof one) < 0) {
        /* cannot fail for our eventfd short of overflow; the flag is set anyway */
    }
}

int ncd_switch_create(struct ncd_switch **out, const struct ncd_switch_config *cfg, char *err,
                      size_t errlen)
{
    struct ncd_switch *sw;
    int rc;

    *out = NULL;
    if (!cfg || cfg->copy_mode > NCD_SWITCH_COPY_GRANT)
        return fail(err, errlen, EINVAL, "ncd_switch_create: bad copy mode");
    sw = calloc(1, sizeof *sw);
    if (!sw)
        return fail(err, errlen, ENOMEM, "ncd_switch_create: out of memory");
    sw->cfg = *cfg;
    if (!sw->cfg.self_domid)
        sw->cfg.self_domid = NCD_DOMID_SELF;
    sw->ageing_ms = cfg->ageing_ms ? cfg->ageing_ms : NCD_SWITCH_DEFAULT_AGEING_MS;
    sw->batch = cfg->batch ? cfg->batch : DEFAULT_BATCH;
    sw->hold_ms = cfg->hold_ms ? cfg->hold_ms : NCD_SWITCH_DEFAULT_HOLD_MS;
    sw->wait_avg_ns = SPIN_NS; /* no spin until waits have been short */
    sw->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    sw->events_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&sw->lock, NULL);
    pthread_cond_init(&sw->cond, NULL);
    if (sw->wake_fd < 0 || sw->events_fd < 0) {
        int e = errno;
        ncd_switch_destroy(sw);
        return fail(err, errlen, e, "ncd_switch_create: eventfd: %s", strerror(e));
    }
    sw->arena = malloc(ARENA_SIZE);
    if (!sw->arena) {
        ncd_switch_destroy(sw);
        return fail(err, errlen, ENOMEM, "ncd_switch_create: out of memory");
    }
    if (cfg->copy_mode == NCD_SWITCH_COPY_GRANT) {
        sw->segs = calloc(MAX_SEGS, sizeof *sw->segs);
        sw->seg_port = calloc(MAX_SEGS, sizeof *sw->seg_port);
        sw->seg_pend = calloc(MAX_SEGS, sizeof *sw->seg_pend);
        if (!sw->segs || !sw->seg_port || !sw->seg_pend) {
            ncd_switch_destroy(sw);
            return fail(err, errlen, ENOMEM, "ncd_switch_create: out of memory");
        }
        sw->xgt = xengnttab_open(NULL, 0);
        if (!sw->xgt) {
            int e = errno;
            ncd_switch_destroy(sw);
            return fail(err, errlen, e, "ncd_switch_create: xengnttab_open: %s", strerror(e));
        }
    }
    sw->running = 1;
    rc = pthread_create(&sw->thread, NULL, switch_main, sw);
    if (rc) {
        sw->running = 0;
        ncd_switch_destroy(sw);
        return fail(err, errlen, rc, "ncd_switch_create: pthread_create: %s", strerror(rc));
    }
    sw->thread_started = 1;
    *out = sw;
    return 0;
}

int ncd_switch_add_port(struct ncd_switch *sw, const struct ncd_switch_port_config *pc, char *err,
                        size_t errlen)
{
    struct port *p;
    struct stat sb;
    int id = -1;

    if (!pc)
        return fail(err, errlen, EINVAL, "ncd_switch_add_port: no config");
    if (pc->max_frame && (pc->max_frame < NCD_ETH_MIN || pc->max_frame > NCD_ETH_MAX))
        return fail(err, errlen, EINVAL, "ncd_switch_add_port: max_frame %u outside %u..%u",
                    pc->max_frame, NCD_ETH_MIN, NCD_ETH_MAX);
    if ((pc->rx_features | pc->tx_features) & ~NCD_FEAT_ALL)
        return fail(err, errlen, EINVAL, "ncd_switch_add_port: unknown feature bits");
    if (pc->n_ipv4 > NCD_SWITCH_MAX_IPS || pc->n_ipv6 > NCD_SWITCH_MAX_IPS)
        return fail(err, errlen, EINVAL, "ncd_switch_add_port: at most %u addresses per family",
                    NCD_SWITCH_MAX_IPS);
    if (!pc->trunk && (pc->mac[0] & 1))
        return fail(err, errlen, EINVAL, "ncd_switch_add_port: a group MAC cannot be locked");
    p = calloc(1, sizeof *p);
    if (!p)
        return fail(err, errlen, ENOMEM, "ncd_switch_add_port: out of memory");
    p->cfg = *pc;
    p->lock.enabled = 1; /* every port: trunk lifts the MAC/IP checks, not the group one */
    p->lock.trunk = pc->trunk;
    memcpy(p->lock.mac, pc->mac, 6);
    p->lock.n_ipv4 = pc->n_ipv4;
    p->lock.n_ipv6 = pc->n_ipv6;
    memcpy(p->lock.ipv4, pc->ipv4, sizeof pc->ipv4);
    memcpy(p->lock.ipv6, pc->ipv6, sizeof pc->ipv6);
    p->v = pc->vchan;
    p->fd = p->evfd = -1;
    ncd_credit_init(&p->credit, pc->rate_bytes, pc->rate_usec, ncd_credit_now());
    ncd_answer_init(&p->answer, SPIN_NS);
    p->max_frame = pc->max_frame ? pc->max_frame : NCD_ETH_MAX;
    if (p->v) {
        p->evfd = ncd_vchan_fd(p->v);
        p->rsize = (uint32_t)ncd_vchan_read_size(p->v);
        p->wsize = (uint32_t)ncd_vchan_write_size(p->v);
        p->kind = ncd_vchan_tracked_pages(p->v) ? NCD_SWITCH_PORT_MAPPED
                                                 : NCD_SWITCH_PORT_GRANTED;
        if (p->evfd < 0 || p->rsize < NCD_REC_LEN_SIZE + NCD_REC_LEN_MIN) {
            free(p);
            return fail(err, errlen, EINVAL, "ncd_switch_add_port: vchan unusable for frames");
        }
        p->commit = p->rsize / 4 < COMMIT_BYTES ? p->rsize / 4 : COMMIT_BYTES;
    } else {
        int fl;
        if (pc->fd < 0 || fstat(pc->fd, &sb) < 0) {
            free(p);
            return fail(err, errlen, EBADF, "ncd_switch_add_port: bad fd %d", pc->fd);
        }
        fl = fcntl(pc->fd, F_GETFL);
        if (fl < 0 || fcntl(pc->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            int e = errno;
            free(p);
            return fail(err, errlen, e, "ncd_switch_add_port: O_NONBLOCK: %s", strerror(e));
        }
        p->fd = pc->fd;
        p->kind = NCD_SWITCH_PORT_TAP;
        p->is_socket = S_ISSOCK(sb.st_mode);
        p->bounce = malloc(p->max_frame + 1u);
        if (!p->bounce) {
            free(p);
            return fail(err, errlen, ENOMEM, "ncd_switch_add_port: out of memory");
        }
    }
    pthread_mutex_lock(&sw->lock);
    for (unsigned i = 0; i < NCD_SWITCH_MAX_PORTS; i++) {
        if (!sw->slots[i]) {
            id = (int)i;
            break;
        }
    }
    if (id >= 0) {
        p->id = id;
        sw->slots[id] = p;
        /* release: the thread's acquire load of ctl_gen, then its lock, see p whole */
        __atomic_store_n(&sw->ctl_gen, sw->ctl_gen + 1u, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&sw->lock);
    if (id < 0) {
        free(p->bounce);
        free(p);
        return fail(err, errlen, ENOSPC, "ncd_switch_add_port: %u ports already",
                    NCD_SWITCH_MAX_PORTS);
    }
    wake(sw);
    return id;
}

static void stats_snapshot(const struct port *p, struct ncd_switch_port_stats *out)
{
    const uint64_t *src = (const uint64_t *)&p->st;
    uint64_t *dst = (uint64_t *)out;

    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

static struct port *slot(struct ncd_switch *sw, int port)
{
    if (port < 0 || port >= (int)NCD_SWITCH_MAX_PORTS)
        return NULL;
    struct port *p = sw->slots[port];
    return p && !p->remove_req ? p : NULL;
}

int ncd_switch_remove_port(struct ncd_switch *sw, int port, struct ncd_switch_port_stats *final)
{
    struct port *p;

    pthread_mutex_lock(&sw->lock);
    p = slot(sw, port);
    if (!p) {
        pthread_mutex_unlock(&sw->lock);
        errno = ENOENT;
        return -1;
    }
    p->remove_req = 1;
    /* release, under the lock: pairs with the thread's acquire in sync_ports */
    __atomic_store_n(&sw->ctl_gen, sw->ctl_gen + 1u, __ATOMIC_RELEASE);
    wake(sw);
    /* the handshake: wait for the thread's quiescent point (or its end) */
    while (!p->quiesced && sw->running)
        pthread_cond_wait(&sw->cond, &sw->lock);
    sw->slots[port] = NULL;
    pthread_mutex_unlock(&sw->lock);
    if (final)
        stats_snapshot(p, final);
    free(p->bounce);
    free(p);
    return 0;
}

int ncd_switch_port_set_rate(struct ncd_switch *sw, int port, uint64_t bytes, uint64_t usec)
{
    struct port *p;

    pthread_mutex_lock(&sw->lock);
    p = slot(sw, port);
    if (p) {
        p->rate_bytes = bytes;
        p->rate_usec = usec;
        p->rate_posted = 1;
        /* release, under the lock: the thread's sync_ports (acquire, then the lock)
         * picks the posted rate up */
        __atomic_store_n(&sw->ctl_gen, sw->ctl_gen + 1u, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&sw->lock);
    if (!p) {
        errno = ENOENT;
        return -1;
    }
    wake(sw);
    return 0;
}

int ncd_switch_port_stats(struct ncd_switch *sw, int port, struct ncd_switch_port_stats *out)
{
    struct port *p;

    pthread_mutex_lock(&sw->lock);
    p = slot(sw, port);
    if (p)
        stats_snapshot(p, out);
    pthread_mutex_unlock(&sw->lock);
    if (!p)
        errno = ENOENT;
    return p ? 0 : -1;
}

int ncd_switch_port_state(struct ncd_switch *sw, int port)
{
    struct port *p;
    int s = -1;

    pthread_mutex_lock(&sw->lock);
    p = slot(sw, port);
    if (p) /* acquire pairs with the release in port_fail */
        s = __atomic_load_n(&p->state, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&sw->lock);
    return s;
}

int ncd_switch_port_kind(struct ncd_switch *sw, int port)
{
    struct port *p;
    int k = -1;

    pthread_mutex_lock(&sw->lock);
    p = slot(sw, port);
    if (p)
        k = p->kind;
    pthread_mutex_unlock(&sw->lock);
    return k;
}

void ncd_switch_port_reason(struct ncd_switch *sw, int port, char *buf, size_t len)
{
    struct port *p;

    if (!len)
        return;
    buf[0] = 0;
    pthread_mutex_lock(&sw->lock);
    p = slot(sw, port);
    /* acquire pairs with the release in port_fail: the reason is complete */
    if (p && __atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != NCD_SWITCH_PORT_UP)
        snprintf(buf, len, "%s", p->reason);
    pthread_mutex_unlock(&sw->lock);
}

unsigned ncd_switch_accounting(struct ncd_switch *sw, struct ncd_switch_acct *out, unsigned max)
{
    unsigned n = 0;

    pthread_mutex_lock(&sw->lock); /* excludes acct_forget's rebuild */
    for (unsigned i = 0; i < NCD_SWITCH_ACCT_SIZE && n < max; i++) {
        /* acquire pairs with the release that published the key */
        uint64_t k = __atomic_load_n(&sw->acct[i].key, __ATOMIC_ACQUIRE);
        if (!k)
            continue;
        out[n].origin = (uint16_t)(k >> 16);
        out[n].dest = (uint16_t)k;
        out[n].frames = LD(&sw->acct[i].frames);
        out[n].bytes = LD(&sw->acct[i].bytes);
        n++;
    }
    pthread_mutex_unlock(&sw->lock);
    return n;
}

unsigned ncd_switch_fdb(struct ncd_switch *sw, struct ncd_switch_fdb_entry *out, unsigned max)
{
    uint64_t now = clock_ms(sw);
    unsigned n = 0;

    /* diagnostics: relaxed reads, an entry may be seen mid-update */
    for (unsigned i = 0; i < NCD_SWITCH_FDB_SIZE && n < max; i++) {
        uint64_t k = LD(&sw->fdb[i].key), seen = LD(&sw->fdb[i].seen);
        if (!k || now - seen >= sw->ageing_ms)
            continue;
        for (int b = 0; b < 6; b++)
            out[n].mac[b] = (uint8_t)(k >> (56 - 8 * b));
        out[n].port = (int32_t)(k & 0xFFFFu) - 1;
        out[n].age_ms = now - seen;
        n++;
    }
    return n;
}

void ncd_switch_get_info(struct ncd_switch *sw, struct ncd_switch_info *out)
{
    uint64_t now = clock_ms(sw), live = 0;

    out->rounds = LD(&sw->info.rounds);
    out->wakeups = LD(&sw->info.wakeups);
    out->grant_copy_calls = LD(&sw->info.grant_copy_calls);
    out->grant_copy_segs = LD(&sw->info.grant_copy_segs);
    out->spins_won = LD(&sw->info.spins_won);
    for (unsigned i = 0; i < NCD_SWITCH_FDB_SIZE; i++)
        if (LD(&sw->fdb[i].key) && now - LD(&sw->fdb[i].seen) < sw->ageing_ms)
            live++;
    out->fdb_entries = live;
    out->copy_mode = sw->cfg.copy_mode;
    out->ports = 0;
    pthread_mutex_lock(&sw->lock);
    for (unsigned i = 0; i < NCD_SWITCH_MAX_PORTS; i++)
        if (slot(sw, (int)i))
            out->ports++;
    pthread_mutex_unlock(&sw->lock);
}

uint64_t ncd_switch_time(struct ncd_switch *sw)
{
    return clock_ms(sw);
}

void ncd_switch_set_time(struct ncd_switch *sw, uint64_t now_ms)
{
    /* release pairs with the acquire in clock_ms */
    __atomic_store_n(&sw->manual_now, now_ms, __ATOMIC_RELEASE);
    wake(sw);
}

int ncd_switch_events_fd(struct ncd_switch *sw)
{
    return sw->events_fd;
}

void ncd_switch_destroy(struct ncd_switch *sw)
{
    if (!sw)
        return;
    if (sw->thread_started) {
        /* release pairs with the acquire at the top of switch_main's loop */
        __atomic_store_n(&sw->stop, 1, __ATOMIC_RELEASE);
        wake(sw);
        pthread_join(sw->thread, NULL);
    }
    for (unsigned i = 0; i < NCD_SWITCH_MAX_PORTS; i++) {
        if (sw->slots[i]) {
            free(sw->slots[i]->bounce);
            free(sw->slots[i]);
        }
    }
    if (sw->xgt)
        xengnttab_close(sw->xgt);
    free(sw->segs);
    free(sw->seg_port);
    free(sw->seg_pend);
    free(sw->arena);
    if (sw->wake_fd >= 0)
        close(sw->wake_fd);
    if (sw->events_fd >= 0)
        close(sw->events_fd);
    pthread_cond_destroy(&sw->cond);
    pthread_mutex_destroy(&sw->lock);
    free(sw);
}
