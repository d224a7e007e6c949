/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd vchan ring I/O (the counterpart of libxenvchan's io.c).
 *
 * Index discipline: our own index (cons of the read ring, prod of the write
 * ring) lives in a private copy and is only ever stored to the shared page;
 * the peer's index is loaded once per operation and validated against the
 * private copy, so a hostile value can never move a copy outside the ring.
 * Offsets are always `index & (size - 1)` with the private size.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "vchan_int.h"

/* Pairs with the release store of v->bad in ncd_vchan_mark_bad(): a reader that
 * sees the flag also sees bad_reason. */
static inline int is_bad(struct ncd_vchan *v)
{
    return __atomic_load_n(&v->bad, __ATOMIC_ACQUIRE);
}

int ncd_vchan_send_event(struct ncd_vchan *v)
{
    int rc = 0;
    if (v->evt) {
        rc = xenevtchn_notify(v->evt, v->port);
    } else if (v->peer_efd >= 0) {
        uint64_t one = 1;
        /* EAGAIN: the counter is saturated, the peer has a wakeup pending anyway */
        if (write(v->peer_efd, &one, sizeof one) != (ssize_t)sizeof one && errno != EAGAIN)
            rc = -1;
    }
    if (rc == 0)
        STAT_ADD(v, notify_sent);
    else
        STAT_ADD(v, notify_failed); /* the peer may sleep through this: count it */
    return rc;
}

/* Tell the peer our live flag changed: the flag store is ordered before the
 * event by the full barrier; the peer reads the flag after it consumed the event
 * (ncd_vchan_wait(), a syscall and so a full barrier on its side). */
void ncd_vchan_publish_live(struct ncd_vchan *v, uint8_t live)
{
    SHR_STORE(v->is_server ? &v->ring->srv_live : &v->ring->cli_live, live);
    vchan_mb();
    ncd_vchan_send_event(v);
}

void ncd_vchan_mark_bad(struct ncd_vchan *v, const char *reason)
{
    const char *none = NULL;
    /* the first reason wins; losers return (their caller fails with EPROTO) */
    if (!__atomic_compare_exchange_n(&v->bad_reason, &none, reason, 0, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE))
        return;
    __atomic_store_n(&v->bad, 1, __ATOMIC_RELEASE); /* pairs with the acquire in is_bad() */
    STAT_ADD(v, bad_peer);
    if (v->ring)
        ncd_vchan_publish_live(v, 0);
}

/* The peer's notify requests for us are in our own byte; we clear and honour them. */
static int send_notify(struct ncd_vchan *v, uint8_t bit)
{
    uint8_t *mine = v->is_server ? &v->ring->srv_notify : &v->ring->cli_notify;
    uint8_t prev;
    /* Our index store is visible before we read the request bits.  Pairs with the
     * full barrier in request_notify(): the peer posts its request, then re-reads
     * our index, so either it sees the new index or we see its request. */
    vchan_mb();
    prev = __atomic_fetch_and(mine, (uint8_t)~bit, __ATOMIC_SEQ_CST);
    if (prev & bit)
        return ncd_vchan_send_event(v);
    return 0;
}

/* Our requests go to the peer's byte. */
static void request_notify(struct ncd_vchan *v, uint8_t bits)
{
    uint8_t *theirs = v->is_server ? &v->ring->cli_notify : &v->ring->srv_notify;
    __atomic_fetch_or(theirs, bits, __ATOMIC_SEQ_CST);
    /* The request is posted before we re-read the peer's index.  Pairs with the
     * full barrier in send_notify() (the peer publishes its index, then reads our
     * request). */
    vchan_mb();
}

void ncd_vchan_request_notify(struct ncd_vchan *v, int on_read, int on_write)
{
    uint8_t bits = (uint8_t)((on_read ? VCHAN_NOTIFY_READ : 0) | (on_write ? VCHAN_NOTIFY_WRITE : 0));
    if (bits && !is_bad(v))
        request_notify(v, bits);
}

/* Readable bytes, validated: -1 (and the channel marked bad) on a bad prod.
 * A producer only moves forward: once seen at peer_max, a prod behind it is fatal
 * whether it stays ahead of our cons (we would re-read bytes it took back, or wait
 * for ever on a record it cut short) or falls behind it (ready wraps to ~2^32).
 * Offsets from our cons keep the comparison inside one ring's span, so it holds
 * across the 2^32 wrap.  peer_max is private to the read side: no barrier of its
 * own; the data behind prod is ordered by the acquire fence in
 * ncd_vchan_read_iov() (pairs with the release in ncd_vchan_write_commit()). */
int64_t ncd_vchan_peek_data(struct ncd_vchan *v)
{
    uint32_t prod, ready;
    if (is_bad(v))
        return -1;
    prod = SHR_LOAD(&v->rd.shr->prod);
    ready = prod - v->rd.own;
    if (ready > v->rd.size) {
        ncd_vchan_mark_bad(v, ready > UINT32_MAX - v->rd.size
                                  ? "read ring: producer index moved back behind the consumer index"
                                  : "read ring: producer index is more than the ring size ahead");
        return -1;
    }
    if (ready < v->rd.peer_max - v->rd.own) {
        ncd_vchan_mark_bad(v, "read ring: producer index moved backwards");
        return -1;
    }
    v->rd.peer_max = prod;
    return ready;
}

static int64_t fast_data_ready(struct ncd_vchan *v, size_t request)
{
    int64_t ready = ncd_vchan_peek_data(v);
    if (ready < 0 || (uint64_t)ready >= request)
        return ready;
    /* we will drain what is there: ask to be told about more */
    request_notify(v, VCHAN_NOTIFY_WRITE);
    return ncd_vchan_peek_data(v);
}

/* Writable bytes, validated: -1 (and the channel marked bad) on a bad cons. */
int64_t ncd_vchan_peek_space(struct ncd_vchan *v)
{
    uint32_t cons, used;
    if (is_bad(v))
        return -1;
    cons = SHR_LOAD(&v->wr.shr->cons);
    used = v->wr.own - cons;
    if (used > v->wr.size) {
        ncd_vchan_mark_bad(v, "write ring: consumer index is outside the written range");
        return -1;
    }
    return v->wr.size - used;
}

static int64_t fast_buffer_space(struct ncd_vchan *v, size_t request)
{
    int64_t space = ncd_vchan_peek_space(v);
    if (space < 0 || (uint64_t)space >= request)
        return space;
    request_notify(v, VCHAN_NOTIFY_READ);
    space = ncd_vchan_peek_space(v);
    if (space >= 0 && (uint64_t)space < request)
        STAT_ADD(v, ring_full_waits);
    return space;
}

/* Move peer_seen from `from` to `to`; returns the state it is in afterwards.  A
 * GONE (stored by another thread meanwhile) is never overwritten. */
static int peer_seen_move(struct ncd_vchan *v, int from, int to)
{
    int cur = from;
    if (__atomic_compare_exchange_n(&v->peer_seen, &cur, to, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return to;
    return cur;
}

/* 0 closed, 1 open, 2 server waiting for its client; validates the live flag. */
static int peer_live(struct ncd_vchan *v)
{
    int seen;
    uint8_t live;
    if (is_bad(v))
        return 0;
    /* pairs with the release store of GONE and the CAS in peer_seen_move() */
    seen = __atomic_load_n(&v->peer_seen, __ATOMIC_ACQUIRE);
    if (seen == NCD_PEER_GONE)
        return 0; /* latched: a closed peer never reopens */
    live = SHR_LOAD(v->is_server ? &v->ring->cli_live : &v->ring->srv_live);
    switch (live) {
    case 0:
        /* final: no CAS needed; pairs with the acquire load above / in the CAS */
        __atomic_store_n(&v->peer_seen, NCD_PEER_GONE, __ATOMIC_RELEASE);
        return 0;
    case 1:
        if (seen == NCD_PEER_NOT_SEEN)
            seen = peer_seen_move(v, NCD_PEER_NOT_SEEN, NCD_PEER_LIVE);
        return seen == NCD_PEER_GONE ? 0 : 1;
    case 2:
        if (v->is_server && seen == NCD_PEER_NOT_SEEN)
            return 2;
        ncd_vchan_mark_bad(v, v->is_server ? "cli_live went back to 2 (not connected)"
                                           : "srv_live is 2 (only a client may be 2)");
        return 0;
    default:
        ncd_vchan_mark_bad(v, "live flag out of range (not 0, 1 or 2)");
        return 0;
    }
}

int ncd_vchan_is_open(struct ncd_vchan *v)
{
    return peer_live(v);
}

ssize_t ncd_vchan_data_ready(struct ncd_vchan *v)
{
    int64_t r;
    if (is_bad(v)) {
        errno = EPROTO;
        return -1;
    }
    request_notify(v, VCHAN_NOTIFY_WRITE);
    r = ncd_vchan_peek_data(v);
    if (r < 0)
        errno = EPROTO;
    return (ssize_t)r;
}

ssize_t ncd_vchan_buffer_space(struct ncd_vchan *v)
{
    int64_t r;
    if (is_bad(v)) {
        errno = EPROTO;
        return -1;
    }
    request_notify(v, VCHAN_NOTIFY_READ);
    r = ncd_vchan_peek_space(v);
    if (r < 0)
        errno = EPROTO;
    return (ssize_t)r;
}

/* ---- the window: iov + commit (the only place with wrap-around arithmetic) ---- */

/* Hand out min(avail, max) bytes of r from our private index on, in one or two
 * iovecs (two when the window wraps); the commit clamp remembers the amount. */
static int fill_iov(struct ncd_ring *r, struct iovec iov[2], int64_t avail, size_t max)
{
    uint32_t take = (uint64_t)avail < max ? (uint32_t)avail : (uint32_t)max;
    uint32_t idx = r->own & (r->size - 1);
    uint32_t first = r->size - idx;
    r->granted = take;
    if (take == 0)
        return 0;
    iov[0].iov_base = r->buf + idx;
    if (first >= take) {
        iov[0].iov_len = take;
        return 1;
    }
    iov[0].iov_len = first;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = take - first;
    return 2;
}

/* Take up to n of the bytes the last *_iov handed out (the rest stays ours). */
static uint32_t take_granted(struct ncd_ring *r, size_t n)
{
    uint32_t take = n < r->granted ? (uint32_t)n : r->granted;
    r->granted -= take;
    return take;
}

/* Move our private index of r on by take, publish it at *shared and honour the
 * peer's request for `bit` (the caller has put its barrier before). */
static void publish_index(struct ncd_vchan *v, struct ncd_ring *r, uint32_t *shared,
                          uint32_t take, uint8_t bit)
{
    r->own += take;
    SHR_STORE(shared, r->own);
    send_notify(v, bit);
}

int ncd_vchan_read_iov(struct ncd_vchan *v, struct iovec iov[2], size_t max)
{
    int64_t ready = fast_data_ready(v, max);
    if (ready < 0) {
        v->rd.granted = 0;
        errno = EPROTO;
        return -1;
    }
    /* The caller reads data only after our read of prod.  Pairs with the release
     * barrier in ncd_vchan_write_commit() (data, then prod). */
    vchan_rmb();
    return fill_iov(&v->rd, iov, ready, max);
}

void ncd_vchan_read_commit(struct ncd_vchan *v, size_t n)
{
    uint32_t take = take_granted(&v->rd, n);
    if (!take || is_bad(v))
        return;
    /* Our data reads are complete before the space goes back to the peer.  Pairs
     * with the full barrier in ncd_vchan_write_iov() (the peer reads cons, then
     * writes data). */
    vchan_mb();
    publish_index(v, &v->rd, &v->rd.shr->cons, take, VCHAN_NOTIFY_READ);
}

int ncd_vchan_write_iov(struct ncd_vchan *v, struct iovec iov[2], size_t max)
{
    int64_t space;
    v->wr.granted = 0;
    if (is_bad(v)) {
        errno = EPROTO;
        return -1;
    }
    if (!peer_live(v)) {
        errno = is_bad(v) ? EPROTO : EPIPE;
        return -1;
    }
    space = fast_buffer_space(v, max);
    if (space < 0) {
        errno = EPROTO;
        return -1;
    }
    /* Our read of cons is complete before the caller writes data into the space.
     * Pairs with the full barrier in ncd_vchan_read_commit() (data read, then cons). */
    vchan_mb();
    return fill_iov(&v->wr, iov, space, max);
}

void ncd_vchan_write_commit(struct ncd_vchan *v, size_t n)
{
    uint32_t take = take_granted(&v->wr, n);
    if (!take || is_bad(v))
        return;
    /* The data is visible before the index that hands it over.  Pairs with the
     * acquire barrier in ncd_vchan_read_iov() (prod read, then data). */
    vchan_wmb();
    publish_index(v, &v->wr, &v->wr.shr->prod, take, VCHAN_NOTIFY_WRITE);
}

/* ---- stream read / write: a window, a copy, a commit ---- */

/* Copy between buf and the window iov[0..cnt): into the ring if to_ring (buf is
 * only read then), else out of it.  Returns the bytes copied. */
static size_t window_copy(const struct iovec *iov, int cnt, uint8_t *buf, int to_ring)
{
    size_t done = 0;
    int i;
    for (i = 0; i < cnt; i++) {
        if (to_ring)
            memcpy(iov[i].iov_base, buf + done, iov[i].iov_len);
        else
            memcpy(buf + done, iov[i].iov_base, iov[i].iov_len);
        done += iov[i].iov_len;
    }
    return done;
}

ssize_t ncd_vchan_read(struct ncd_vchan *v, void *buf, size_t n)
{
    struct iovec iov[2];
    int cnt = ncd_vchan_read_iov(v, iov, n);
    size_t got = cnt > 0 ? window_copy(iov, cnt, buf, 0) : 0;
    if (cnt < 0)
        return -1;
    ncd_vchan_read_commit(v, got);
    return (ssize_t)got;
}

ssize_t ncd_vchan_write(struct ncd_vchan *v, const void *buf, size_t n)
{
    struct iovec iov[2];
    int cnt = ncd_vchan_write_iov(v, iov, n);
    size_t put = cnt > 0 ? window_copy(iov, cnt, (uint8_t *)buf, 1) : 0;
    if (cnt < 0)
        return -1;
    ncd_vchan_write_commit(v, put);
    return (ssize_t)put;
}

size_t ncd_vchan_unconsumed(struct ncd_vchan *v)
{
    int64_t space = ncd_vchan_peek_space(v);
    return space < 0 ? 0 : v->wr.size - (uint32_t)space;
}

const char *ncd_vchan_close_reason(struct ncd_vchan *v)
{
    return is_bad(v) ? v->bad_reason : NULL;
}

void ncd_vchan_get_stats(struct ncd_vchan *v, struct ncd_vchan_stats *out)
{
    out->notify_sent = __atomic_load_n(&v->stats.notify_sent, __ATOMIC_RELAXED);
    out->notify_recv = __atomic_load_n(&v->stats.notify_recv, __ATOMIC_RELAXED);
    out->ring_full_waits = __atomic_load_n(&v->stats.ring_full_waits, __ATOMIC_RELAXED);
    out->bad_peer = __atomic_load_n(&v->stats.bad_peer, __ATOMIC_RELAXED);
    out->notify_failed = __atomic_load_n(&v->stats.notify_failed, __ATOMIC_RELAXED);
}

size_t ncd_vchan_read_size(struct ncd_vchan *v)
{
    return v->rd.size;
}

size_t ncd_vchan_write_size(struct ncd_vchan *v)
{
    return v->wr.size;
}

int ncd_vchan_fd(struct ncd_vchan *v)
{
    return v->evt ? xenevtchn_fd(v->evt) : v->efd;
}

int ncd_vchan_wait(struct ncd_vchan *v)
{
    if (v->evt) {
        xenevtchn_port_or_error_t p = xenevtchn_pending(v->evt);
        if (p < 0)
            return errno == EAGAIN ? 0 : -1; /* none pending: a wakeup raced */
        if (xenevtchn_unmask(v->evt, (evtchn_port_t)p) < 0)
            return -1;
    } else {
        uint64_t cnt;
        if (read(v->efd, &cnt, sizeof cnt) != (ssize_t)sizeof cnt)
            return -1;
    }
    STAT_ADD(v, notify_recv);
    return 0;
}
