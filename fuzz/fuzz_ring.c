/* libFuzzer target: the vchan ring reader/writer against a hostile peer.
 *
 * A local pair (ncd_vchan_local_server + ncd_vchan_local_client, public API of
 * cext/vchan/vchan.h).  One end is the endpoint under test ("E"); the other end's
 * vchan is never called after setup: instead the input plays the peer by writing
 * straight into shared memory -- the peer's producer index of E's read ring, the
 * peer's consumer index of E's write ring, bytes in E's read ring, the peer's live
 * flag, the notify bytes, and any other byte of the control page (orders, grants,
 * E's own published indices).  A model written from vchan.h's contract predicts
 * every result.
 *
 * Input:
 *   [0]     bit 0: E is the server (1) or the client (0); bit 1 (server): the
 *           client's live flag still says 2, "not connected yet"
 *   [1],[2] read_min / write_min of the server: 0, or 1 << (b % 17) (up to 64 KiB)
 *   [3..6]  le32: the client's starting index on the right ring (server -> client)
 *   [7..10] le32: the client's starting index on the left ring (client -> server)
 *           (so that 32-bit index wrap-around is reachable)
 *   then operations, one opcode byte each followed by its arguments (see ops below).
 *
 * Asserts (abort = crash), for every operation:
 *   - E never touches memory outside its rings and the control page (ASan; the
 *     separately allocated rings are exactly ring-sized);
 *   - read / read_iov / data_ready / wait_data return exactly what the peer's
 *     index allows: min(request, prod - cons) when 0 <= prod - cons <= size, and
 *     -1 with errno EPROTO (and a close reason, stats.bad_peer == 1, is_open 0)
 *     when the index is out of range or behind the highest producer E has seen;
 *     from then on every call fails with EPROTO;
 *   - the same for write / write_iov / buffer_space / wait_space / unconsumed with
 *     the peer's consumer index (0 <= prod - cons <= size), plus EPIPE once the
 *     peer's live flag said closed, and EPROTO for a live flag outside 0/1/2 (or
 *     2 where it may not be 2);
 *   - the bytes read are the ring's bytes at E's private index; the bytes written
 *     land at E's private index and nowhere else; iovs are inside the ring, start
 *     at E's index and wrap to the ring start;
 *   - E writes nothing in shared memory except its own indices, the notify bytes,
 *     its own live flag (to 0) and its write window: never the peer's index, the
 *     orders, the grant refs or its read ring;
 *   - the published index is E's private index (a peer overwriting it is ignored);
 *   - sizes never change, whatever the peer writes in the orders.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>

#include "vchan.h"

static unsigned g_opno;
static char g_ctx[32];
#define FUZZ_NAME "fuzz_ring"
#define FUZZ_CONTEXT (snprintf(g_ctx, sizeof g_ctx, ", op %u", g_opno), g_ctx)
#include "fuzz_util.h"

#define PAGE 4096u
#define MAXRING 65536u

/* control page offsets (struct vchan_interface) */
#define OFF_LEFT_CONS 0u
#define OFF_LEFT_PROD 4u
#define OFF_RIGHT_CONS 8u
#define OFF_RIGHT_PROD 12u
#define OFF_CLI_LIVE 20u
#define OFF_SRV_LIVE 21u
#define OFF_CLI_NOTIFY 22u
#define OFF_SRV_NOTIFY 23u
#define VCHAN_NOTIFY_WRITE 0x1 /* <xen/io/libxenvchan.h> */
#define VCHAN_NOTIFY_READ 0x2

struct in {
    const uint8_t *p;
    size_t n;
};

static int take8(struct in *in, uint8_t *v)
{
    if (!in->n)
        return 0;
    *v = *in->p++;
    in->n--;
    return 1;
}

static uint32_t takeN(struct in *in, unsigned bytes)
{
    uint32_t v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        uint8_t b = 0;
        take8(in, &b);
        v |= (uint32_t)b << (8 * i);
    }
    return v;
}

static uint32_t ld32(const uint8_t *page, unsigned off)
{
    uint32_t v;
    memcpy(&v, page + off, 4);
    return v;
}

static void st32(uint8_t *page, unsigned off, uint32_t v)
{
    memcpy(page + off, &v, 4);
}

/* memcmp() without libFuzzer's memcmp hook (which costs more than everything else
 * on ring-sized buffers and gives no useful feedback here): 0 when equal. */
__attribute__((no_sanitize("coverage"))) static int differ(const void *a, const void *b,
                                                           size_t n)
{
    const uint8_t *x = a, *y = b;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t u, v;
        memcpy(&u, x + i, 8);
        memcpy(&v, y + i, 8);
        if (u != v)
            return 1;
    }
    for (; i < n; i++)
        if (x[i] != y[i])
            return 1;
    return 0;
}

/* ---- the model of E ---- */

struct model {
    struct ncd_vchan *v; /* E */
    int server;
    uint8_t *page;
    uint8_t *rd, *wr; /* ring memory (discovered through the public API) */
    uint32_t rd_size, wr_size;
    uint32_t rd_own, wr_own;         /* E's private indices, as the model sees them */
    uint32_t rd_max;                 /* the highest producer E has seen (never goes back) */
    uint32_t rd_granted, wr_granted; /* last window of *_iov still uncommitted */
    /* The peer index E validated when it handed out its last window (read: the
     * peer's prod, write: the peer's cons): whatever E publishes for that window
     * stays within it (cons <= that prod, prod <= that cons + size), whatever the
     * peer did to its index since. */
    uint32_t rd_lim, wr_base;
    int bad;                         /* a hostile value was seen: closed for good */
    int seen;                        /* peer_seen: 0 never, 1 connected, 2 closed (latched) */
    /* offsets in the page */
    unsigned peer_prod, own_cons;  /* E's read ring: the peer's prod, E's cons */
    unsigned peer_cons, own_prod;  /* E's write ring: the peer's cons, E's prod */
    unsigned peer_live, own_live;
    unsigned peer_notify, own_notify; /* the byte E sets (requests), the byte E clears */
    /* Rings in separate memory (order >= 12) are kept read-only while E runs, so a
     * stray write of E into them faults at once; the write ring is opened only for
     * the calls that write into it (write: then compared with a snapshot). */
    int sep_rd, sep_wr, wr_check;
    uint8_t snap_page[PAGE], snap_wr[MAXRING];
};

static void m_mark_bad(struct model *m)
{
    m->bad = 1;
}

static int64_t m_peek_data(struct model *m)
{
    uint32_t ready;
    if (m->bad)
        return -1;
    ready = ld32(m->page, m->peer_prod) - m->rd_own;
    if (ready > m->rd_size || ready < m->rd_max - m->rd_own) {
        m_mark_bad(m);
        return -1;
    }
    m->rd_max = m->rd_own + ready;
    return ready;
}

static int64_t m_peek_space(struct model *m)
{
    uint32_t used;
    if (m->bad)
        return -1;
    used = m->wr_own - ld32(m->page, m->peer_cons);
    if (used > m->wr_size) {
        m_mark_bad(m);
        return -1;
    }
    return m->wr_size - used;
}

/* peer_live() of vchan.c as vchan.h specifies it: 0 closed, 1 connected, 2 only
 * a client that has not connected yet (seen by the server before it ever saw 1). */
static int m_live(struct model *m)
{
    uint8_t live;
    if (m->bad || m->seen == 2)
        return 0;
    live = m->page[m->peer_live];
    switch (live) {
    case 0:
        m->seen = 2;
        return 0;
    case 1:
        if (!m->seen)
            m->seen = 1;
        return 1;
    case 2:
        if (m->server && !m->seen)
            return 2;
        m_mark_bad(m);
        return 0;
    default:
        m_mark_bad(m);
        return 0;
    }
}

/* ---- shared-memory discipline ---- */

static void protect(uint8_t *ring, uint32_t size, int writable)
{
    CHECK(mprotect(ring, size, writable ? PROT_READ | PROT_WRITE : PROT_READ) == 0);
}

static void snap(struct model *m)
{
    memcpy(m->snap_page, m->page, PAGE);
    if (m->sep_wr && m->wr_check)
        memcpy(m->snap_wr, m->wr, m->wr_size);
}

/* Is ring offset `pos` of the write ring in the window [start, start + len)? */
static int in_window(uint32_t pos, uint32_t start, uint32_t len, uint32_t size)
{
    return ((pos - start) & (size - 1)) < len && len > 0;
}

/* After one call of E: only the allowed bytes changed.  The write window is the
 * ring range [wstart, wstart + wlen) (mod size) that E itself may have written. */
static void check_writes(struct model *m, uint32_t wstart, uint32_t wlen)
{
    int wr_in_page = !m->sep_wr;

    for (unsigned i = 0; i < PAGE && differ(m->page, m->snap_page, PAGE); i++) {
        if (m->page[i] == m->snap_page[i])
            continue;
        /* E's own indices: only ever (re)published as the model's private index, so a
         * commit the model says publishes nothing may not move them either */
        if (i >= m->own_cons && i < m->own_cons + 4 && ld32(m->page, m->own_cons) == m->rd_own)
            continue;
        if (i >= m->own_prod && i < m->own_prod + 4 && ld32(m->page, m->own_prod) == m->wr_own)
            continue;
        /* requests: E only sets WRITE/READ bits in the peer's byte and only clears
         * bits in its own (the peer's requests it has honoured) */
        if (i == m->peer_notify && !(m->snap_page[i] & ~m->page[i]) &&
            !((m->page[i] & ~m->snap_page[i]) & ~(VCHAN_NOTIFY_WRITE | VCHAN_NOTIFY_READ)))
            continue;
        if (i == m->own_notify && !(m->page[i] & ~m->snap_page[i]))
            continue;
        if (i == m->own_live && m->page[i] == 0 && m->bad) /* closing after a hostile value */
            continue;
        if (wr_in_page && m->page + i >= m->wr && m->page + i < m->wr + m->wr_size &&
            in_window((uint32_t)(m->page + i - m->wr), wstart, wlen, m->wr_size))
            continue;
        FUZZ_FAIL("fuzz_ring: E wrote control-page byte %u (%#x -> %#x)\n", i,
                m->snap_page[i], m->page[i]);
    }
    if (m->sep_wr && m->wr_check && differ(m->snap_wr, m->wr, m->wr_size))
        for (uint32_t i = 0; i < m->wr_size; i++)
            if (m->wr[i] != m->snap_wr[i])
                CHECK(in_window(i, wstart, wlen, m->wr_size));
}

static void check_bad_state(struct model *m)
{
    struct ncd_vchan_stats st;
    ncd_vchan_get_stats(m->v, &st);
    if (m->bad) {
        CHECK(ncd_vchan_close_reason(m->v) != NULL);
        CHECK(st.bad_peer == 1);
    } else {
        CHECK(ncd_vchan_close_reason(m->v) == NULL);
        CHECK(st.bad_peer == 0);
    }
    CHECK(ncd_vchan_read_size(m->v) == m->rd_size);
    CHECK(ncd_vchan_write_size(m->v) == m->wr_size);
}

static void check_published_cons(struct model *m, uint32_t took)
{
    if (took) {
        CHECK(ld32(m->page, m->own_cons) == m->rd_own);
        CHECK(m->rd_lim - m->rd_own <= m->rd_size); /* never past the validated prod */
    }
}

static void check_published_prod(struct model *m, uint32_t took)
{
    if (took) {
        CHECK(ld32(m->page, m->own_prod) == m->wr_own);
        CHECK(m->wr_own - m->wr_base <= m->wr_size); /* never a ring past the validated cons */
    }
}

/* iovs of a window of `len` bytes starting at ring index `own` */
static void check_window(const struct iovec *iov, int cnt, const uint8_t *ring, uint32_t size,
                         uint32_t own, uint32_t len)
{
    uint32_t idx = own & (size - 1);
    if (len == 0) {
        CHECK(cnt == 0);
        return;
    }
    CHECK(cnt == 1 || cnt == 2);
    CHECK(iov[0].iov_base == ring + idx);
    if (cnt == 1) {
        CHECK(iov[0].iov_len == len);
        CHECK(idx + len <= size);
    } else {
        CHECK(iov[0].iov_len == size - idx);
        CHECK(iov[1].iov_base == ring);
        CHECK(iov[0].iov_len + iov[1].iov_len == len);
        CHECK(iov[0].iov_len < len);
    }
}

/* Does buf[0..len) equal the ring's bytes from index own on (wrapping)? */
static int ring_equal(const uint8_t *ring, uint32_t size, uint32_t own, const uint8_t *buf,
                      uint32_t len)
{
    uint32_t idx = own & (size - 1), first = size - idx < len ? size - idx : len;
    return !differ(ring + idx, buf, first) && !differ(ring, buf + first, len - first);
}

/* ---- operations of E ---- */

static uint8_t g_buf[MAXRING + 2];
static uint8_t g_src[MAXRING + 2];
static uint8_t g_pattern;

static void op_read(struct model *m, uint32_t n)
{
    int64_t ready;
    uint32_t want;
    ssize_t got;

    snap(m);
    errno = 0;
    got = ncd_vchan_read(m->v, g_buf, n);
    /* A stream read is a read_iov + copy + read_commit of its own (vchan.c, "stream
     * read / write: a window, a copy, a commit"): its read_iov is now "the last
     * read_iov" whose window the commits are clamped to (vchan.h), and the read
     * commits all of it, so a window an earlier read_iov handed out is gone: a
     * later read_commit consumes nothing.  (Before the restructure read() left
     * rd.granted alone, and a stale commit after it could move cons past prod.) */
    m->rd_granted = 0;
    ready = m_peek_data(m);
    if (ready < 0) {
        CHECK(got == -1 && errno == EPROTO);
    } else {
        m->rd_lim = ld32(m->page, m->peer_prod);
        want = (uint64_t)ready < n ? (uint32_t)ready : n;
        CHECK(got == (ssize_t)want);
        CHECK(ring_equal(m->rd, m->rd_size, m->rd_own, g_buf, want));
        m->rd_own += want;
        check_published_cons(m, want);
    }
    check_writes(m, 0, 0);
}

static void op_read_iov(struct model *m, uint32_t max, uint32_t c1, uint32_t c2)
{
    struct iovec iov[2];
    int64_t ready;
    int cnt;

    snap(m);
    errno = 0;
    cnt = ncd_vchan_read_iov(m->v, iov, max);
    ready = m_peek_data(m);
    if (ready < 0) {
        CHECK(cnt == -1 && errno == EPROTO);
        m->rd_granted = 0;
    } else {
        uint32_t len = (uint64_t)ready < max ? (uint32_t)ready : max;
        m->rd_lim = ld32(m->page, m->peer_prod);
        check_window(iov, cnt, m->rd, m->rd_size, m->rd_own, len);
        /* the window is readable and holds the ring's bytes */
        for (int i = 0, k = 0; i < cnt; k += (int)iov[i].iov_len, i++)
            CHECK(ring_equal(m->rd, m->rd_size, m->rd_own + (uint32_t)k, iov[i].iov_base,
                             (uint32_t)iov[i].iov_len));
        m->rd_granted = len;
    }
    check_writes(m, 0, 0);
    for (int k = 0; k < 2; k++) {
        uint32_t c = k ? c2 : c1, take;
        if (k && c == 0xffff)
            break;
        snap(m);
        ncd_vchan_read_commit(m->v, c);
        take = c < m->rd_granted ? c : m->rd_granted;
        m->rd_granted -= take;
        if (!m->bad) {
            m->rd_own += take;
            check_published_cons(m, take);
        }
        check_writes(m, 0, 0);
    }
}

static void op_read_commit(struct model *m, uint32_t c)
{
    uint32_t take = c < m->rd_granted ? c : m->rd_granted;
    snap(m);
    ncd_vchan_read_commit(m->v, c);
    m->rd_granted -= take;
    if (!m->bad) {
        m->rd_own += take;
        check_published_cons(m, take);
    }
    check_writes(m, 0, 0);
}

static void op_write(struct model *m, uint32_t n)
{
    int64_t space;
    ssize_t got;
    int live;
    uint32_t start = m->wr_own & (m->wr_size - 1), want = 0;

    for (uint32_t i = 0; i < n; i++)
        g_src[i] = (uint8_t)(g_pattern + i * 7);
    g_pattern++;
    if (m->sep_wr) {
        protect(m->wr, m->wr_size, 1);
        m->wr_check = 1;
    }
    snap(m);
    errno = 0;
    got = ncd_vchan_write(m->v, g_src, n);
    /* As for read: a stream write is write_iov + copy + write_commit (vchan.c), so
     * it ends the window of any earlier write_iov (vchan.h: commits are clamped to
     * what "the last write_iov" handed out, and write() commits all of its own;
     * write_iov drops the old window even when it fails).  A later write_commit
     * publishes nothing: the old window's bytes were overwritten by this write and
     * lie behind our index now.  (Before the restructure write() left wr.granted
     * alone, and a write_commit after a write that filled the ring published prod
     * more than a ring ahead of the peer's cons -- the model predicted that too.) */
    m->wr_granted = 0;
    if (m->bad) {
        CHECK(got == -1 && errno == EPROTO);
    } else if (!(live = m_live(m))) {
        CHECK(got == -1 && errno == (m->bad ? EPROTO : EPIPE));
    } else if ((space = m_peek_space(m)) < 0) {
        CHECK(got == -1 && errno == EPROTO);
    } else {
        m->wr_base = ld32(m->page, m->peer_cons);
        want = (uint64_t)space < n ? (uint32_t)space : n;
        CHECK(got == (ssize_t)want);
        CHECK(ring_equal(m->wr, m->wr_size, m->wr_own, g_src, want));
        m->wr_own += want;
        check_published_prod(m, want);
    }
    check_writes(m, start, want);
    if (m->sep_wr) {
        m->wr_check = 0;
        protect(m->wr, m->wr_size, 0);
    }
}

static void op_write_iov(struct model *m, uint32_t max, uint32_t c1, uint32_t c2)
{
    struct iovec iov[2];
    int64_t space;
    int cnt;
    uint32_t len = 0;

    snap(m);
    errno = 0;
    cnt = ncd_vchan_write_iov(m->v, iov, max);
    m->wr_granted = 0;
    if (m->bad) {
        CHECK(cnt == -1 && errno == EPROTO);
    } else if (!m_live(m)) {
        CHECK(cnt == -1 && errno == (m->bad ? EPROTO : EPIPE));
    } else if ((space = m_peek_space(m)) < 0) {
        CHECK(cnt == -1 && errno == EPROTO);
    } else {
        len = (uint64_t)space < max ? (uint32_t)space : max;
        m->wr_base = ld32(m->page, m->peer_cons);
        check_window(iov, cnt, m->wr, m->wr_size, m->wr_own, len);
        m->wr_granted = len;
    }
    check_writes(m, 0, 0); /* write_iov itself writes no ring byte */
    /* the caller fills the whole window (ASan: all of it is ours) */
    if (m->sep_wr)
        protect(m->wr, m->wr_size, 1);
    for (int i = 0; i < (cnt > 0 ? cnt : 0); i++)
        memset(iov[i].iov_base, 0x5a ^ g_pattern, iov[i].iov_len);
    if (m->sep_wr)
        protect(m->wr, m->wr_size, 0);
    g_pattern++;
    for (int k = 0; k < 2; k++) {
        uint32_t c = k ? c2 : c1, take;
        if (k && c == 0xffff)
            break;
        snap(m);
        ncd_vchan_write_commit(m->v, c);
        take = c < m->wr_granted ? c : m->wr_granted;
        m->wr_granted -= take;
        if (!m->bad) {
            m->wr_own += take;
            check_published_prod(m, take);
        }
        check_writes(m, 0, 0);
    }
}

static void op_write_commit(struct model *m, uint32_t c)
{
    uint32_t take = c < m->wr_granted ? c : m->wr_granted;
    snap(m);
    ncd_vchan_write_commit(m->v, c);
    m->wr_granted -= take;
    if (!m->bad) {
        m->wr_own += take;
        check_published_prod(m, take);
    }
    check_writes(m, 0, 0);
}

static void op_data_ready(struct model *m)
{
    ssize_t got;
    int64_t want;
    snap(m);
    errno = 0;
    got = ncd_vchan_data_ready(m->v);
    want = m_peek_data(m);
    if (want < 0)
        CHECK(got == -1 && errno == EPROTO);
    else
        CHECK(got == want);
    check_writes(m, 0, 0);
}

static void op_buffer_space(struct model *m)
{
    ssize_t got;
    int64_t want;
    snap(m);
    errno = 0;
    got = ncd_vchan_buffer_space(m->v);
    want = m_peek_space(m);
    if (want < 0)
        CHECK(got == -1 && errno == EPROTO);
    else
        CHECK(got == want);
    check_writes(m, 0, 0);
}

static void op_is_open(struct model *m)
{
    int got;
    snap(m);
    got = ncd_vchan_is_open(m->v);
    CHECK(got == m_live(m));
    check_writes(m, 0, 0);
}

static void op_unconsumed(struct model *m)
{
    size_t got;
    int64_t space;
    snap(m);
    got = ncd_vchan_unconsumed(m->v);
    space = m_peek_space(m);
    CHECK(got == (space < 0 ? 0 : m->wr_size - (size_t)space));
    check_writes(m, 0, 0);
}

/* wait_data / wait_space with no spin and no timeout: one look (vchan.h) */
static void op_wait(struct model *m, int data, uint32_t n)
{
    ssize_t got, want;
    uint32_t limit = data ? m->rd_size : m->wr_size;
    int64_t have;
    int e = 0;

    snap(m);
    errno = 0;
    got = data ? ncd_vchan_wait_data(m->v, n, 0, 0) : ncd_vchan_wait_space(m->v, n, 0, 0);
    if (n == 0)
        n = 1;
    if (n > limit) {
        want = -1;
        e = EINVAL;
    } else if ((have = data ? m_peek_data(m) : m_peek_space(m)) < 0) {
        want = -1;
        e = EPROTO;
    } else if (data && have >= n) {
        want = have;
    } else {
        int live = m_live(m);
        if (live == 0) {
            if (m->bad) {
                want = -1;
                e = EPROTO;
            } else {
                want = -1;
                e = EPIPE;
                if (data && (have = m_peek_data(m)) >= n)
                    want = have, e = 0;
            }
        } else {
            want = have >= n ? have : 0;
        }
    }
    if (got != want || (want < 0 && errno != e)) {
        FUZZ_FAIL("fuzz_ring: wait_%s(%u) = %zd errno %d, model %zd errno %d\n",
                data ? "data" : "space", n, got, errno, want, e);
    }
    check_writes(m, 0, 0);
}

/* ---- setup ---- */

static size_t sel_size(uint8_t b)
{
    return b ? (size_t)1 << (b % 17) : 0;
}

static struct model g_m;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct model *m = &g_m;
    struct ncd_vchan *srv = NULL, *cli = NULL;
    struct iovec iov[2];
    struct in in = {data, size};
    char err[256];
    uint8_t role, rsel, wsel, op, waiting;
    uint32_t x, y;
    int cnt;

    if (size < 11)
        return -1;
    take8(&in, &role);
    take8(&in, &rsel);
    take8(&in, &wsel);
    x = takeN(&in, 4);
    y = takeN(&in, 4);
    waiting = role & 2; /* server only: the client's flag still says "not yet there" (2) */
    role &= 1;

    CHECK(ncd_vchan_local_server(&srv, sel_size(rsel), sel_size(wsel), err, sizeof err) == 0);
    memset(m, 0, offsetof(struct model, snap_page));
    m->page = ncd_vchan_shared_page(srv);
    if (!role) {
        /* the client starts wherever the server's page says: nothing to read, all free */
        st32(m->page, OFF_RIGHT_CONS, x);
        st32(m->page, OFF_RIGHT_PROD, x);
        st32(m->page, OFF_LEFT_CONS, y);
        st32(m->page, OFF_LEFT_PROD, y);
    }
    CHECK(ncd_vchan_local_client(&cli, srv, err, sizeof err) == 0);

    m->server = role;
    m->v = role ? srv : cli;
    m->rd_size = (uint32_t)ncd_vchan_read_size(m->v);
    m->wr_size = (uint32_t)ncd_vchan_write_size(m->v);
    CHECK(m->rd_size <= MAXRING && m->wr_size <= MAXRING);
    if (role) {
        /* server: reads left, writes right; its private indices start at 0 */
        m->peer_prod = OFF_LEFT_PROD, m->own_cons = OFF_LEFT_CONS;
        m->peer_cons = OFF_RIGHT_CONS, m->own_prod = OFF_RIGHT_PROD;
        m->peer_live = OFF_CLI_LIVE, m->own_live = OFF_SRV_LIVE;
        m->peer_notify = OFF_CLI_NOTIFY, m->own_notify = OFF_SRV_NOTIFY;
        x = y = 0;
        st32(m->page, OFF_LEFT_PROD, 0);
        st32(m->page, OFF_LEFT_CONS, 0);
        st32(m->page, OFF_RIGHT_PROD, 0);
        st32(m->page, OFF_RIGHT_CONS, 0);
        if (waiting)
            m->page[OFF_CLI_LIVE] = 2;
    } else {
        m->peer_prod = OFF_RIGHT_PROD, m->own_cons = OFF_RIGHT_CONS;
        m->peer_cons = OFF_LEFT_CONS, m->own_prod = OFF_LEFT_PROD;
        m->peer_live = OFF_SRV_LIVE, m->own_live = OFF_CLI_LIVE;
        m->peer_notify = OFF_SRV_NOTIFY, m->own_notify = OFF_CLI_NOTIFY;
    }
    m->rd_own = x;
    m->wr_own = y;

    /* find the rings through the public API: a full window starts at own & mask */
    cnt = ncd_vchan_write_iov(m->v, iov, m->wr_size);
    CHECK(cnt >= 1);
    m->wr = (uint8_t *)iov[0].iov_base - (y & (m->wr_size - 1));
    CHECK(ncd_vchan_write_iov(m->v, iov, 0) == 0);
    st32(m->page, m->peer_prod, x + m->rd_size);
    cnt = ncd_vchan_read_iov(m->v, iov, m->rd_size);
    CHECK(cnt >= 1);
    m->rd = (uint8_t *)iov[0].iov_base - (x & (m->rd_size - 1));
    /* E has seen that prod now and a producer never goes back: E consumes the
     * window instead, and starts from x + size with an empty ring */
    ncd_vchan_read_commit(m->v, m->rd_size);
    m->rd_own = m->rd_max = m->rd_lim = x + m->rd_size;
    if (role)
        (void)m_live(m); /* write_iov above saw cli_live 1: the server has seen the client */
    else
        m->seen = 1;
    memset(m->rd, 0xee, m->rd_size); /* the peer's (not yet meaningful) ring bytes */
    m->sep_rd = !(m->rd >= m->page && m->rd < m->page + PAGE);
    m->sep_wr = !(m->wr >= m->page && m->wr < m->page + PAGE);
    if (m->sep_rd)
        protect(m->rd, m->rd_size, 0);
    if (m->sep_wr)
        protect(m->wr, m->wr_size, 0);

    for (g_opno = 0; take8(&in, &op); g_opno++) {
        switch (op % 20) {
        case 0: /* peer: prod = E's cons + delta */
            st32(m->page, m->peer_prod, m->rd_own + takeN(&in, 4));
            break;
        case 1: /* peer: prod = E's cons + ring size + (-128..127): the edge */
            st32(m->page, m->peer_prod, m->rd_own + m->rd_size + (uint32_t)(int8_t)takeN(&in, 1));
            break;
        case 2: /* peer: cons = E's prod - delta */
            st32(m->page, m->peer_cons, m->wr_own - takeN(&in, 4));
            break;
        case 3: /* peer: cons = E's prod - ring size - (-128..127): the edge */
            st32(m->page, m->peer_cons, m->wr_own - m->wr_size - (uint32_t)(int8_t)takeN(&in, 1));
            break;
        case 4: { /* peer: bytes into E's read ring at ring index off */
            uint32_t off = takeN(&in, 2);
            uint8_t len = 0, b;
            take8(&in, &len);
            if (m->sep_rd)
                protect(m->rd, m->rd_size, 1);
            for (unsigned i = 0; i < len && take8(&in, &b); i++)
                m->rd[(off + i) & (m->rd_size - 1)] = b;
            if (m->sep_rd)
                protect(m->rd, m->rd_size, 0);
            break;
        }
        case 5: { /* peer: its live flag */
            uint8_t b = 0;
            take8(&in, &b);
            m->page[m->peer_live] = b;
            break;
        }
        case 6: { /* peer: a notify byte */
            uint8_t b = 0, which = 0;
            take8(&in, &which);
            take8(&in, &b);
            m->page[which & 1 ? m->peer_notify : m->own_notify] = b;
            break;
        }
        case 7: { /* peer: any byte of the control page (orders, grants, E's indices) */
            uint32_t off = takeN(&in, 2) % PAGE;
            uint8_t b = 0;
            take8(&in, &b);
            m->page[off] = b; /* the peer may write all of the page, in-page rings too */
            break;
        }
        case 8:
            op_read(m, takeN(&in, 2) % (MAXRING + 2));
            break;
        case 9: {
            uint32_t max = takeN(&in, 2), c1 = takeN(&in, 2), c2 = takeN(&in, 2);
            op_read_iov(m, max == 0xffff ? (uint32_t)-1 : max, c1, c2);
            break;
        }
        case 10:
            op_read_commit(m, takeN(&in, 2));
            break;
        case 11:
            op_write(m, takeN(&in, 2) % (MAXRING + 2));
            break;
        case 12: {
            uint32_t max = takeN(&in, 2), c1 = takeN(&in, 2), c2 = takeN(&in, 2);
            op_write_iov(m, max == 0xffff ? (uint32_t)-1 : max, c1, c2);
            break;
        }
        case 13:
            op_write_commit(m, takeN(&in, 2));
            break;
        case 14:
            op_data_ready(m);
            break;
        case 15:
            op_buffer_space(m);
            break;
        case 16:
            op_is_open(m);
            break;
        case 17:
            op_unconsumed(m);
            break;
        case 18:
            op_wait(m, 1, takeN(&in, 2) % (MAXRING + 2));
            break;
        case 19:
            op_wait(m, 0, takeN(&in, 2) % (MAXRING + 2));
            break;
        }
        check_bad_state(m);
    }
    /* closing is safe whatever the peer did */
    if (m->sep_rd)
        protect(m->rd, m->rd_size, 1);
    if (m->sep_wr)
        protect(m->wr, m->wr_size, 1);
    ncd_vchan_close(cli);
    ncd_vchan_close(srv);
    return 0;
}
