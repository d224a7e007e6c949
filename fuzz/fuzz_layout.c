/* libFuzzer target: how a client validates the server's control page.
 *
 * Entry point: the public API only (cext/vchan/vchan.h).  ncd_vchan_local_server()
 * builds a correct control page; the input is XORed over it (so all-zero input
 * keeps it valid) and ncd_vchan_local_client() connects, which "validates the
 * control page exactly like client_init" (same internal validator, currently
 * ncd_vchan_parse_layout in vchan_init.c, which this target never names).
 *
 * Input:
 *   [0] read_min of the server:  0, or 1 << (b % 21) bytes (up to 1 MiB)
 *   [1] write_min of the server: same
 *   [2..] XORed over the 4096-byte control page from offset 0 (orders, live
 *         flags, notify bytes, indices, grant refs, in-page ring bytes)
 *
 * Asserts (abort = crash):
 *   - a page outside the rules is refused with EPROTO and a message: ring orders
 *     10..20, at most one in-page ring of each of order 10 and 11 (not both
 *     rings in-page with the same order), the grant list fits in front of the
 *     first in-page ring (24 + 4 * grants <= 1024 / 2048 / 4096);
 *   - a page inside the rules is accepted exactly when its grant refs name rings
 *     the server really granted (same refs, same page count);
 *   - an accepted client has ring sizes 1 << order (client writes left, reads
 *     right), in-page rings lie at their offsets and do not overlap the grant
 *     list; every iov read_iov / write_iov hands out lies inside its ring and
 *     all of it is readable / writable (ASan); the hostile indices the page
 *     started with give EPROTO, never an out-of-range window;
 *   - nothing leaks (LeakSanitizer), on success and on every failure path.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "vchan.h"

#define FUZZ_NAME "fuzz_layout"
#define FUZZ_CONTEXT ""
#include "fuzz_util.h"


#define PAGE 4096u
#define OFF_LEFT_CONS 0
#define OFF_LEFT_PROD 4
#define OFF_RIGHT_CONS 8
#define OFF_RIGHT_PROD 12
#define OFF_LEFT_ORDER 16
#define OFF_RIGHT_ORDER 18
#define OFF_GRANTS 24

static uint32_t get32(const uint8_t *p, unsigned off)
{
    uint32_t v;
    memcpy(&v, p + off, 4); /* native order: the page is native-endian (Xen) */
    return v;
}

static uint16_t get16(const uint8_t *p, unsigned off)
{
    uint16_t v;
    memcpy(&v, p + off, 2);
    return v;
}

static size_t sel_size(uint8_t b)
{
    return b ? (size_t)1 << (b % 21) : 0;
}

static uint32_t pages_of(uint32_t order)
{
    return order >= 12 ? 1u << (order - 12) : 0;
}

/* the rules of <xen/io/libxenvchan.h> and vchan.h, independent of the code */
static int layout_ok(uint32_t lo, uint32_t ro)
{
    uint32_t limit = PAGE;
    if (lo < 10 || lo > 20 || ro < 10 || ro > 20)
        return 0;
    if (lo == ro && lo < 12)
        return 0;
    if (lo == 10 || ro == 10)
        limit = 1024;
    else if (lo == 11 || ro == 11)
        limit = 2048;
    return OFF_GRANTS + 4 * (pages_of(lo) + pages_of(ro)) <= limit;
}

/* vchan_init.c's local pair numbers refs by region in sharing order: the control page
 * is region 0, page 0 */
#define LOCAL_CONTROL_REF 0u

static int same_refs(const uint8_t *page, unsigned first, const uint32_t *want, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (get32(page, OFF_GRANTS + 4 * (first + i)) != want[i])
            return 0;
    return 1;
}

/* a client ring of n pages whose refs (starting at grant index first) name
 * exactly one ring the server granted */
static int names_server_ring(const uint8_t *page, unsigned first, uint32_t n,
                             const uint32_t *srv_refs, uint32_t srv_left, uint32_t srv_right)
{
    if (n == 0)
        return 1;
    /* The control page is a granted page too (the local pair's ref 0, shared first):
     * as on Xen, a hostile server may name it as a one-page ring, and mapping it is
     * in bounds (the client only ever touches its own mapping of that page). */
    if (n == 1 && get32(page, OFF_GRANTS + 4 * first) == LOCAL_CONTROL_REF)
        return 1;
    return (n == srv_left && same_refs(page, first, srv_refs, n)) ||
           (n == srv_right && same_refs(page, first, srv_refs + srv_left, n));
}

static void check_iovs(const struct iovec *iov, int cnt, size_t max, size_t ring_size,
                       const uint8_t *page, uint32_t order, int writable)
{
    size_t total = 0;
    CHECK(cnt >= 0 && cnt <= 2);
    for (int i = 0; i < cnt; i++) {
        const uint8_t *b = iov[i].iov_base;
        CHECK(iov[i].iov_len > 0 && iov[i].iov_len <= ring_size);
        total += iov[i].iov_len;
        if (order < 12) {
            size_t off = order == 10 ? 1024 : 2048;
            CHECK(b >= page + off && b + iov[i].iov_len <= page + off + ring_size);
        }
        /* every byte handed out must be ours to touch (ASan checks separate rings) */
        if (writable) {
            memset(iov[i].iov_base, 0xa5, iov[i].iov_len);
        } else {
            volatile uint8_t sink = 0;
            for (size_t j = 0; j < iov[i].iov_len; j += 64)
                sink ^= b[j];
            sink ^= b[iov[i].iov_len - 1];
            (void)sink;
        }
    }
    CHECK(total <= max && total <= ring_size);
    if (cnt == 2) /* a wrapped window continues at the ring start */
        CHECK((const uint8_t *)iov[1].iov_base + iov[1].iov_len <= (const uint8_t *)iov[0].iov_base);
}

static void exercise(struct ncd_vchan *v, const uint8_t *page, uint32_t rd_order,
                     uint32_t wr_order)
{
    struct iovec iov[2];
    size_t rs = ncd_vchan_read_size(v), ws = ncd_vchan_write_size(v);
    int cnt, open;

    open = ncd_vchan_is_open(v);
    CHECK(open >= 0 && open <= 2);
    cnt = ncd_vchan_read_iov(v, iov, rs);
    if (cnt < 0) {
        CHECK(errno == EPROTO);
        CHECK(ncd_vchan_close_reason(v) != NULL);
    } else {
        check_iovs(iov, cnt, rs, rs, page, rd_order, 0);
        ncd_vchan_read_commit(v, rs);
    }
    cnt = ncd_vchan_write_iov(v, iov, ws);
    if (cnt < 0) {
        CHECK(errno == EPROTO || errno == EPIPE);
    } else {
        check_iovs(iov, cnt, ws, ws, page, wr_order, 1);
        ncd_vchan_write_commit(v, ws);
    }
    CHECK(ncd_vchan_unconsumed(v) <= ws);
    CHECK(ncd_vchan_data_ready(v) <= (ssize_t)rs);
    CHECK(ncd_vchan_buffer_space(v) <= (ssize_t)ws);
    CHECK(ncd_vchan_tracked_pages(v) == 0); /* local pairs map nothing */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ncd_vchan *srv = NULL, *cli = NULL;
    char err[256];
    uint8_t *page;
    uint32_t srv_refs[1024], srv_lo, srv_ro, srv_left, srv_right, lo, ro, lp, rp;
    size_t n;
    int rc, ok_layout, ok_refs;

    if (size < 2)
        return -1;
    rc = ncd_vchan_local_server(&srv, sel_size(data[0]), sel_size(data[1]), err, sizeof err);
    CHECK(rc == 0);
    page = ncd_vchan_shared_page(srv);
    /* what the server granted: left (server reads) pages first, then right */
    srv_lo = get16(page, OFF_LEFT_ORDER);
    srv_ro = get16(page, OFF_RIGHT_ORDER);
    srv_left = pages_of(srv_lo);
    srv_right = pages_of(srv_ro);
    CHECK(srv_left + srv_right <= 1024);
    for (uint32_t i = 0; i < srv_left + srv_right; i++)
        srv_refs[i] = get32(page, OFF_GRANTS + 4 * i);

    n = size - 2 < PAGE ? size - 2 : PAGE;
    for (size_t i = 0; i < n; i++)
        page[i] ^= data[2 + i];

    lo = get16(page, OFF_LEFT_ORDER);
    ro = get16(page, OFF_RIGHT_ORDER);
    ok_layout = layout_ok(lo, ro);
    lp = ok_layout ? pages_of(lo) : 0;
    rp = ok_layout ? pages_of(ro) : 0;
    ok_refs = ok_layout && names_server_ring(page, 0, lp, srv_refs, srv_left, srv_right) &&
              names_server_ring(page, lp, rp, srv_refs, srv_left, srv_right);

    err[0] = 0;
    errno = 0;
    rc = ncd_vchan_local_client(&cli, srv, err, sizeof err);
    if (rc < 0) {
        CHECK(cli == NULL);
        CHECK(errno == EPROTO);
        CHECK(err[0] != 0);
        if (ok_refs) {
            FUZZ_FAIL("fuzz_layout: valid page refused: orders %u/%u: %s\n", lo, ro, err);
        }
    } else {
        if (!ok_layout) {
            FUZZ_FAIL("fuzz_layout: invalid page accepted: orders %u/%u\n", lo, ro);
        }
        CHECK(ok_refs); /* ... and only with grant refs of rings the server granted */
        CHECK(cli != NULL);
        CHECK(ncd_vchan_write_size(cli) == (size_t)1 << lo); /* client writes left */
        CHECK(ncd_vchan_read_size(cli) == (size_t)1 << ro);
        /* in-page rings do not overlap the grant list or each other */
        if (lo < 12 || ro < 12) {
            uint32_t first = (lo == 10 || ro == 10) ? 1024 : 2048;
            CHECK(OFF_GRANTS + 4 * (lp + rp) <= first);
        }
        exercise(cli, page, ro, lo);
        /* the honest server sees whatever the client left in the page */
        exercise(srv, page, srv_lo, srv_ro);
        ncd_vchan_close(cli);
    }
    ncd_vchan_close(srv);
    return 0;
}
