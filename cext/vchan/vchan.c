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
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "vchan_int.h"

static inline int is_bad(struct ncd_vchan *v)
{
    return __atomic_load_n(&v->closed, __ATOMIC_ACQUIRE);
}

int ncd_vchan_send_event(struct ncd_vchan *v)
{
    int rc = 0;
    if (v->evt) {
        rc = xenevtchn_notify(v->evt, v->port);
    } else if (v->peer_efd >= 0) {
        uint64_t one = 1;
        if (write(v->peer_efd, &one, sizeof one) != (ssize_t)sizeof one && errno != EAGAIN)
            rc = -1;
    }
    if (rc == 0)
        STAT_ADD(v, notify_sent);
    return rc;
}

void ncd_vchan_mark_bad(struct ncd_vchan *v, const char *reason)
{
    int expected = 0;
    if (!__atomic_compare_exchange_n(&v->closed, &expected, 1, 0, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE))
        return;
    v->bad_reason = reason;
    STAT_ADD(v, bad_peer);
    fprintf(stderr, "ncd-vchan: closing channel with dom%u (%s): hostile peer: %s\n",
            (unsigned)v->peer_domid, v->is_server ? "server" : "client", reason);
    if (v->ring) {
        SHR_STORE(v->is_server ? &v->ring->srv_live : &v->ring->cli_live, (uint8_t)0);
        vchan_mb();
        ncd_vchan_send_event(v);
    }
}

/* The peer's notify requests for us are in our own byte; we clear and honour them. */
static int send_notify(struct ncd_vchan *v, uint8_t bit)
{
    uint8_t *mine = v->is_server ? &v->ring->srv_notify : &v->ring->cli_notify;
    uint8_t prev;
    vchan_mb(); /* indices are published before we decide to notify */
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
    vchan_mb(); /* post the request before re-reading any index */
}

void ncd_vchan_request_notify(struct ncd_vchan *v, int on_read, int on_write)
{
    uint8_t bits = (uint8_t)((on_read ? VCHAN_NOTIFY_READ : 0) | (on_write ? VCHAN_NOTIFY_WRITE : 0));
    if (bits && !is_bad(v))
        request_notify(v, bits);
}

/* Readable bytes, validated: -1 (and the channel closed) on a bad prod. */
int64_t ncd_vchan_peek_data(struct ncd_vchan *v)
{
    uint32_t prod, ready;
    if (is_bad(v))
        return -1;
    prod = SHR_LOAD(&v->rd.shr->prod);
    ready = prod - v->rd.own;
    if (ready > v->rd.size) {
        ncd_vchan_mark_bad(v, "read ring: producer index is more than the ring size ahead");
        return -1;
    }
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

/* Writable bytes, validated: -1 (and the channel closed) on a bad cons. */
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

static int peer_live(struct ncd_vchan *v)
{
    uint8_t live;
    if (is_bad(v))
        return 0;
    if (__atomic_load_n(&v->peer_seen, __ATOMIC_ACQUIRE) == 2)
        return 0; /* latched: a closed peer never reopens */
    live = SHR_LOAD(v->is_server ? &v->ring->cli_live : &v->ring->srv_live);
    switch (live) {
    case 0:
        __atomic_store_n(&v->peer_seen, 2, __ATOMIC_RELEASE);
        return 0;
    case 1:
        if (__atomic_load_n(&v->peer_seen, __ATOMIC_RELAXED) == 0)
            __atomic_store_n(&v->peer_seen, 1, __ATOMIC_RELEASE);
        return 1;
    case 2:
        if (v->is_server && __atomic_load_n(&v->peer_seen, __ATOMIC_RELAXED) == 0)
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

static void consume(struct ncd_vchan *v, uint32_t n)
{
    vchan_mb(); /* data reads complete before we hand the space back */
    v->rd.own += n;
    SHR_STORE(&v->rd.shr->cons, v->rd.own);
    send_notify(v, VCHAN_NOTIFY_READ);
}

static void produce(struct ncd_vchan *v, uint32_t n)
{
    vchan_wmb(); /* data writes are visible before the index */
    v->wr.own += n;
    SHR_STORE(&v->wr.shr->prod, v->wr.own);
    send_notify(v, VCHAN_NOTIFY_WRITE);
}

ssize_t ncd_vchan_read(struct ncd_vchan *v, void *buf, size_t n)
{
    int64_t ready = fast_data_ready(v, n);
    uint32_t take, idx, first;
    if (ready < 0) {
        errno = EPROTO;
        return -1;
    }
    take = (uint64_t)ready < n ? (uint32_t)ready : (uint32_t)n;
    if (take == 0)
        return 0;
    vchan_rmb(); /* data reads happen after the prod read */
    idx = v->rd.own & (v->rd.size - 1);
    first = v->rd.size - idx;
    if (first > take)
        first = take;
    memcpy(buf, v->rd.buf + idx, first);
    if (first < take)
        memcpy((uint8_t *)buf + first, v->rd.buf, take - first);
    consume(v, take);
    return take;
}

ssize_t ncd_vchan_write(struct ncd_vchan *v, const void *buf, size_t n)
{
    int64_t space;
    uint32_t take, idx, first;
    if (is_bad(v)) {
        errno = EPROTO;
        return -1;
    }
    if (!peer_live(v)) {
        errno = is_bad(v) ? EPROTO : EPIPE;
        return -1;
    }
    space = fast_buffer_space(v, n);
    if (space < 0) {
        errno = EPROTO;
        return -1;
    }
    take = (uint64_t)space < n ? (uint32_t)space : (uint32_t)n;
    if (take == 0)
        return 0;
    vchan_mb(); /* read the indices, then write data */
    idx = v->wr.own & (v->wr.size - 1);
    first = v->wr.size - idx;
    if (first > take)
        first = take;
    memcpy(v->wr.buf + idx, buf, first);
    if (first < take)
        memcpy(v->wr.buf, (const uint8_t *)buf + first, take - first);
    produce(v, take);
    return take;
}

static int fill_iov(struct ncd_ring *r, struct iovec iov[2], uint32_t take)
{
    uint32_t idx = r->own & (r->size - 1);
    uint32_t first = r->size - idx;
    r->granted = take;
    if (take == 0)
        return 0;
    if (first >= take) {
        iov[0].iov_base = r->buf + idx;
        iov[0].iov_len = take;
        return 1;
    }
    iov[0].iov_base = r->buf + idx;
    iov[0].iov_len = first;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = take - first;
    return 2;
}

int ncd_vchan_read_iov(struct ncd_vchan *v, struct iovec iov[2], size_t max)
{
    int64_t ready = fast_data_ready(v, max);
    if (ready < 0) {
        v->rd.granted = 0;
        errno = EPROTO;
        return -1;
    }
    vchan_rmb(); /* the caller reads data after the prod read */
    return fill_iov(&v->rd, iov, (uint64_t)ready < max ? (uint32_t)ready : (uint32_t)max);
}

void ncd_vchan_read_commit(struct ncd_vchan *v, size_t n)
{
    uint32_t take = n < v->rd.granted ? (uint32_t)n : v->rd.granted;
    v->rd.granted -= take; /* the rest of the window stays ours */
    if (take && !is_bad(v))
        consume(v, take);
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
    vchan_mb(); /* read the indices, then the caller writes data */
    return fill_iov(&v->wr, iov, (uint64_t)space < max ? (uint32_t)space : (uint32_t)max);
}

void ncd_vchan_write_commit(struct ncd_vchan *v, size_t n)
{
    uint32_t take = n < v->wr.granted ? (uint32_t)n : v->wr.granted;
    v->wr.granted -= take; /* the rest of the window stays ours */
    if (take && !is_bad(v))
        produce(v, take);
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
            return -1;
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
