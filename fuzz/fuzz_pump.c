/* libFuzzer target: the frame pump's receive path (cext/pump/pump.c rx) reading a
 * hostile record stream out of a vchan ring.
 *
 * A local pair: the pump runs on the server end with its frame fd one end of a
 * SOCK_SEQPACKET socketpair; the peer (the client end) writes the input's bytes into
 * the ring, as much as fits, again and again until all is written or the pump has
 * stopped.  The records may wrap around the ring end anywhere.
 *
 * Input:
 *   [0]     rx features (low 4 bits)
 *   [1]     max_frame: 0 -> 1518, 1 -> 65664, else 14 + b * 257 (capped at 65664)
 *   [2]     read ring: 1 << (10 + b % 7) bytes (1 KiB .. 64 KiB)
 *   [3..4]  le16: where in the ring the stream starts (so records wrap anywhere)
 *   [5..]   the byte stream the peer writes
 *
 * Asserts (abort = crash):
 *   - the frames written to the fd are exactly the records ncd_frame_parse accepts
 *     (the vnet header and the frame of each, in order; fuzz_frame holds
 *     ncd_frame_parse against the protocol's reference rules);
 *   - a stream with a bad record ends the pump in BAD_PEER with bad_record == 1
 *     and rx_frames == the records before it; a good or merely incomplete stream
 *     leaves it RUNNING, having consumed exactly the complete records;
 *   - nothing out of bounds (ASan) in the zero-copy span / iovec arithmetic.
 * The waits are for definite events (a frame, the pump's done fd, ring space), each
 * bounded by 10 s: only a hang trips them.
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "pump.h"
#include "vchan.h"

#define FUZZ_NAME "fuzz_pump"
#define FUZZ_CONTEXT ""
#include "fuzz_util.h"

#define HANG_MS 10000

static uint8_t g_frame[NCD_REC_LEN_MAX + 16];

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct run {
    const uint8_t *stream;
    size_t n;
    size_t rec_off[4096]; /* offsets of the expected records (first 4096) */
    uint32_t expect, got;
    int app; /* our end of the socketpair */
};

/* Receive every frame that is there now (non-blocking); check each one. */
static void drain(struct run *r)
{
    for (;;) {
        ssize_t k = recv(r->app, g_frame, sizeof g_frame, MSG_DONTWAIT);
        if (k < 0) {
            CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
            return;
        }
        CHECK(r->got < r->expect);
        if (r->got < 4096) {
            size_t off = r->rec_off[r->got];
            uint32_t rec_len = ncd_le32_get(r->stream + off);
            CHECK((size_t)k == rec_len);
            CHECK(memcmp(g_frame, r->stream + off + 4, rec_len) == 0);
        }
        r->got++;
    }
}

/* Sleep until a frame or the pump's end (or a short slice passes). */
static void wait_some(struct run *r, int done_fd, int ms)
{
    struct pollfd pf[2] = {{.fd = r->app, .events = POLLIN}, {.fd = done_fd, .events = POLLIN}};
    (void)poll(pf, 2, ms);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct run run;
    struct run *r = &run;
    struct ncd_vchan *srv = NULL, *cli = NULL;
    struct ncd_pump *pump = NULL;
    struct ncd_pump_config cfg;
    struct ncd_pump_stats st;
    char err[256];
    uint32_t features, max_frame, records = 0;
    size_t ring, start, written = 0, consumed = 0;
    int sv[2], verdict, bad, done_fd;
    int64_t deadline;

    if (size < 5)
        return -1;
    features = data[0] & NCD_FEAT_ALL;
    max_frame = data[1] == 0 ? 1518 : data[1] == 1 ? NCD_ETH_MAX : 14u + data[1] * 257u;
    if (max_frame > NCD_ETH_MAX)
        max_frame = NCD_ETH_MAX;
    ring = (size_t)1 << (10 + data[2] % 7);
    start = (size_t)(data[3] | data[4] << 8) % ring;
    r->stream = data + 5;
    r->n = size - 5;
    r->got = 0;

    verdict = ncd_frame_parse(r->stream, r->n, max_frame, features, ring, &records, &consumed);
    bad = verdict != NCD_FRAME_OK && verdict != NCD_FRAME_INCOMPLETE;
    r->expect = records;
    for (size_t off = 0, i = 0; i < records && i < 4096; i++) {
        r->rec_off[i] = off;
        off += 4 + ncd_le32_get(r->stream + off);
    }

    /* the server reads `ring` bytes; the client writes them (the pump's tx side needs a
     * write ring that holds a record: give it the smallest, 1 KiB, and an idle fd) */
    CHECK(ncd_vchan_local_server(&srv, ring, 1024, err, sizeof err) == 0);
    CHECK(ncd_vchan_local_client(&cli, srv, err, sizeof err) == 0);
    CHECK(ncd_vchan_read_size(srv) == ring);
    /* move both ends to `start` with filler the pump never sees as records */
    for (size_t moved = 0; moved < start;) {
        static const uint8_t zero[4096];
        size_t chunk = start - moved < sizeof zero ? start - moved : sizeof zero;
        char junk[4096];
        CHECK(ncd_vchan_write(cli, zero, chunk) == (ssize_t)chunk);
        CHECK(ncd_vchan_read(srv, junk, chunk) == (ssize_t)chunk);
        moved += chunk;
    }
    CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0);
    {
        int big = 1 << 20;
        (void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        (void)setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    }
    r->app = sv[1];
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = sv[0];
    cfg.max_frame = max_frame;
    cfg.rx_features = features;
    cfg.tx_features = 0;
    if (ncd_pump_start(&pump, srv, &cfg, err, sizeof err) < 0)
        FUZZ_FAIL("fuzz_pump: ncd_pump_start: %s\n", err);
    done_fd = ncd_pump_done_fd(pump);

    deadline = now_ms() + HANG_MS;
    /* feed: everything is written, or the pump stopped */
    while (written < r->n && ncd_pump_state(pump) == NCD_PUMP_RUNNING) {
        ssize_t w = ncd_vchan_write(cli, r->stream + written, r->n - written);
        CHECK(w >= 0);
        written += (size_t)w;
        drain(r);
        if (w == 0)
            wait_some(r, done_fd, 5);
        CHECK(now_ms() < deadline);
    }
    if (bad) {
        /* the pump must notice and stop; it delivers every record before the bad one */
        while (ncd_pump_state(pump) == NCD_PUMP_RUNNING || r->got < r->expect) {
            drain(r);
            if (ncd_pump_state(pump) != NCD_PUMP_RUNNING && r->got >= r->expect)
                break;
            wait_some(r, done_fd, 5);
            if (now_ms() >= deadline)
                FUZZ_FAIL("fuzz_pump: bad stream (%s) not detected: state %d, %u/%u frames\n",
                          ncd_frame_strerror(verdict), ncd_pump_state(pump), r->got, r->expect);
        }
        CHECK(ncd_pump_state(pump) == NCD_PUMP_BAD_PEER);
        ncd_pump_get_stats(pump, &st);
        CHECK(st.bad_record == 1);
    } else {
        /* all written: the pump consumes every complete record and no more */
        while (r->got < r->expect || ncd_vchan_unconsumed(cli) != r->n - consumed) {
            CHECK(ncd_pump_state(pump) == NCD_PUMP_RUNNING);
            drain(r);
            if (r->got >= r->expect && ncd_vchan_unconsumed(cli) == r->n - consumed)
                break;
            wait_some(r, done_fd, 5);
            if (now_ms() >= deadline)
                FUZZ_FAIL("fuzz_pump: stream (%s) not consumed: %u/%u frames, %zu left, "
                          "expected %zu\n",
                          ncd_frame_strerror(verdict), r->got, r->expect,
                          ncd_vchan_unconsumed(cli), r->n - consumed);
        }
        CHECK(ncd_pump_state(pump) == NCD_PUMP_RUNNING);
        ncd_pump_get_stats(pump, &st);
        CHECK(st.bad_record == 0);
    }
    ncd_pump_stop(pump);
    drain(r);
    CHECK(r->got == r->expect);
    ncd_pump_get_stats(pump, &st);
    CHECK(st.rx_frames == r->expect);
    ncd_pump_free(pump);
    close(sv[0]);
    close(sv[1]);
    ncd_vchan_close(cli);
    ncd_vchan_close(srv);
    return 0;
}
