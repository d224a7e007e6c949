/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ring_bench: frames through one vchan ring, memory to memory, no file
 * descriptor in the data path.  Built and driven by bench/bench_ring.py.
 *
 * A producer copies N records (le32 length | 10-byte virtio_net_hdr | frame, the
 * format of docs/protocol.md) from its own memory into the ring; a consumer
 * validates each record with the pump's own checks (cext/pump/frame.h) and
 * copies the frame out into its own memory, checking the frame's sequence
 * number always and its whole content every CHECK_EVERY frames.  So each frame
 * is copied exactly twice, once on each side, as the kernel does on the pump's
 * readv/writev.
 *
 * Modes (CPU: pin this process to that CPU; -1 = no pin):
 *   ncd-server PEER RING N FRAME SPIN_US CPU
 *       ncd vchan server (producer): prints "ready GREF PORT", writes N frames,
 *       waits until the client consumed them all, closes.
 *   ncd-client PEER GREF PORT N FRAME SPIN_US CPU
 *       ncd vchan client (consumer): prints "result FRAMES SECONDS CHECKED".
 *   xv-server PEER XS_PATH RING N FRAME CPU
 *   xv-client PEER XS_PATH N FRAME CPU
 *       the same with Debian's libxenvchan (blocking mode, libxenvchan_send of a
 *       whole record / libxenvchan_recv of the header, then of the frame).
 *   raw RING N FRAME
 *       two threads (CPU 0 and 1), the same producer/consumer loops over a plain
 *       in-memory ring with atomic indices and pure spinning: the hardware's
 *       ceiling for two copies across cores, no vchan at all.
 *   memcpy RING N FRAME
 *       one thread copying N frames from one buffer into a RING-sized buffer.
 * SECONDS is measured by the consumer from the first record it sees to the last.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libxenvchan.h>

#include "frame.h"
#include "vchan.h"

#include "ncd_util.h" /* ncd_cpu_relax() */

#define CHECK_EVERY 1024u
#define BATCH 64u
/* hand space over every COMMIT_BYTES within a batch, as the pump does (cext/pump/pump.c) */
#define COMMIT_BYTES (32u * 1024u)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "ring_bench: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void pin(int cpu)
{
    cpu_set_t set;
    if (cpu < 0 || cpu >= sysconf(_SC_NPROCESSORS_ONLN))
        return; /* not pinned: fewer CPUs than the layout wants */
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        die("sched_setaffinity");
}

static unsigned long num(const char *s)
{
    char *end;
    unsigned long v;
    errno = 0;
    v = strtoul(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "ring_bench: not a number: %s\n", s);
        exit(2);
    }
    return v;
}

/* ---- frames ------------------------------------------------------------------ */

struct frames {
    uint64_t n;       /* frames to move */
    uint32_t len;     /* Ethernet frame length */
    uint8_t *pattern; /* expected content (bytes 8.. of every frame) */
};

static void frames_init(struct frames *f, uint64_t n, uint32_t len)
{
    if (len < NCD_ETH_MIN || len > NCD_ETH_MAX) {
        fprintf(stderr, "ring_bench: frame length %u outside %u..%u\n", len, NCD_ETH_MIN,
                NCD_ETH_MAX);
        exit(2);
    }
    f->n = n;
    f->len = len;
    f->pattern = malloc(len);
    if (!f->pattern)
        die("malloc");
    for (uint32_t i = 0; i < len; i++)
        f->pattern[i] = (uint8_t)(i * 131u + 7u);
}

static uint32_t rec_size(const struct frames *f)
{
    return NCD_REC_HDR_SIZE + f->len;
}

/* A whole record, header included, in the producer's memory. */
static uint8_t *record_new(const struct frames *f)
{
    uint8_t *rec = aligned_alloc(64, (rec_size(f) + 63u) & ~63u);
    if (!rec)
        die("aligned_alloc");
    ncd_le32_put(rec, NCD_VNET_HDR_SIZE + f->len);
    memset(rec + NCD_REC_LEN_SIZE, 0, NCD_VNET_HDR_SIZE);
    memcpy(rec + NCD_REC_HDR_SIZE, f->pattern, f->len);
    return rec;
}

static void record_stamp(uint8_t *rec, uint64_t seq)
{
    memcpy(rec + NCD_REC_HDR_SIZE, &seq, sizeof seq);
}

/* Check a received frame: its sequence number always, all of it now and then. */
static int frame_check(const struct frames *f, const uint8_t *frame, uint64_t seq,
                       uint64_t *checked)
{
    uint64_t got;
    memcpy(&got, frame, sizeof got);
    if (got != seq) {
        fprintf(stderr, "ring_bench: frame %" PRIu64 " carries sequence %" PRIu64 "\n", seq, got);
        return -1;
    }
    if (seq % CHECK_EVERY == 0 || seq + 1 == f->n) {
        if (memcmp(frame + 8, f->pattern + 8, f->len - 8) != 0) {
            fprintf(stderr, "ring_bench: frame %" PRIu64 " content differs\n", seq);
            return -1;
        }
        (*checked)++;
    }
    return 0;
}

/* Validate a record header exactly as the pump's rx side does. */
static int header_check(const struct frames *f, const uint8_t hdr[NCD_REC_HDR_SIZE], size_t ring)
{
    uint32_t rec_len = ncd_le32_get(hdr);
    struct ncd_vnet_hdr vh;
    int err = ncd_frame_check_len(rec_len, NCD_ETH_MAX, ring);
    if (!err && rec_len != NCD_VNET_HDR_SIZE + f->len)
        err = NCD_FRAME_TOO_LONG;
    if (!err) {
        ncd_vnet_decode(hdr + NCD_REC_LEN_SIZE, &vh);
        err = ncd_frame_check_vnet(&vh, rec_len - NCD_VNET_HDR_SIZE, 0);
    }
    if (err)
        fprintf(stderr, "ring_bench: bad record: %s\n", ncd_frame_err_name(err));
    return err ? -1 : 0;
}

/* ---- scatter/gather over the (at most two) iovs of a ring window ------------- */

/* Copy len bytes between buf and the window at offset off: into the window when
 * to_ring, out of it otherwise. */
static void iov_copy(const struct iovec iov[2], size_t off, uint8_t *buf, size_t len, int to_ring)
{
    for (int k = 0; k < 2 && len; k++) {
        size_t l = iov[k].iov_len;
        if (off >= l) {
            off -= l;
            continue;
        }
        size_t c = l - off < len ? l - off : len;
        uint8_t *at = (uint8_t *)iov[k].iov_base + off;
        if (to_ring)
            memcpy(at, buf, c);
        else
            memcpy(buf, at, c);
        buf += c;
        len -= c;
        off = 0;
    }
}

/* ---- one ring, two implementations: the ncd vchan and a plain memory ring ---- */

struct ring_ops {
    ssize_t (*wait_space)(void *c, size_t n);
    int (*write_iov)(void *c, struct iovec iov[2], size_t max);
    void (*write_commit)(void *c, size_t n);
    ssize_t (*wait_data)(void *c, size_t n);
    int (*read_iov)(void *c, struct iovec iov[2], size_t max);
    void (*read_commit)(void *c, size_t n);
    size_t ring; /* size of the ring the frames travel in */
};

static unsigned g_spin_us;

static ssize_t ncd_wait_space(void *c, size_t n)
{
    return ncd_vchan_wait_space(c, n, g_spin_us, -1);
}
static int ncd_write_iov(void *c, struct iovec iov[2], size_t max)
{
    return ncd_vchan_write_iov(c, iov, max);
}
static void ncd_write_commit(void *c, size_t n)
{
    ncd_vchan_write_commit(c, n);
}
static ssize_t ncd_wait_data(void *c, size_t n)
{
    return ncd_vchan_wait_data(c, n, g_spin_us, -1);
}
static int ncd_read_iov(void *c, struct iovec iov[2], size_t max)
{
    return ncd_vchan_read_iov(c, iov, max);
}
static void ncd_read_commit(void *c, size_t n)
{
    ncd_vchan_read_commit(c, n);
}

struct raw_ring {
    uint8_t *buf;
    uint32_t size;
    _Alignas(64) uint32_t prod;
    _Alignas(64) uint32_t cons;
};

static void raw_window(struct raw_ring *r, uint32_t idx, uint32_t take, struct iovec iov[2])
{
    uint32_t at = idx & (r->size - 1), first = r->size - at;
    iov[0].iov_base = r->buf + at;
    iov[0].iov_len = first < take ? first : take;
    iov[1].iov_base = r->buf;
    iov[1].iov_len = take - iov[0].iov_len;
}
static ssize_t raw_wait_space(void *c, size_t n)
{
    struct raw_ring *r = c;
    uint32_t space;
    while ((space = r->size - (r->prod - __atomic_load_n(&r->cons, __ATOMIC_ACQUIRE))) < n)
        ncd_cpu_relax();
    return space;
}
static int raw_write_iov(void *c, struct iovec iov[2], size_t max)
{
    struct raw_ring *r = c;
    raw_window(r, r->prod, (uint32_t)max, iov);
    return 2;
}
static void raw_write_commit(void *c, size_t n)
{
    struct raw_ring *r = c;
    __atomic_store_n(&r->prod, r->prod + (uint32_t)n, __ATOMIC_RELEASE);
}
static ssize_t raw_wait_data(void *c, size_t n)
{
    struct raw_ring *r = c;
    uint32_t ready;
    while ((ready = __atomic_load_n(&r->prod, __ATOMIC_ACQUIRE) - r->cons) < n)
        ncd_cpu_relax();
    return ready;
}
static int raw_read_iov(void *c, struct iovec iov[2], size_t max)
{
    struct raw_ring *r = c;
    raw_window(r, r->cons, (uint32_t)max, iov);
    return 2;
}
static void raw_read_commit(void *c, size_t n)
{
    struct raw_ring *r = c;
    __atomic_store_n(&r->cons, r->cons + (uint32_t)n, __ATOMIC_RELEASE);
}

static size_t commit_every(size_t ring)
{
    return ring / 4 < COMMIT_BYTES ? ring / 4 : COMMIT_BYTES;
}

/* Producer: as many whole records as fit per window (at most BATCH). */
static void produce(const struct ring_ops *ops, void *c, const struct frames *f)
{
    uint8_t *rec = record_new(f);
    uint32_t rs = rec_size(f);
    size_t every = commit_every(ops->ring);
    uint64_t seq = 0;

    while (seq < f->n) {
        struct iovec iov[2] = { { 0 } };
        ssize_t space = ops->wait_space(c, rs);
        size_t off = 0, done = 0;
        unsigned batch = 0;
        if (space < 0)
            die("wait_space");
        if (ops->write_iov(c, iov, (size_t)space) < 0)
            die("write_iov");
        space = (ssize_t)(iov[0].iov_len + iov[1].iov_len);
        while (seq < f->n && off + rs <= (size_t)space && batch < BATCH) {
            record_stamp(rec, seq);
            iov_copy(iov, off, rec, rs, 1);
            off += rs;
            seq++;
            batch++;
            if (off - done >= every) {
                ops->write_commit(c, off - done);
                done = off;
            }
        }
        if (off > done)
            ops->write_commit(c, off - done);
    }
    free(rec);
}

struct consumed {
    double seconds;
    uint64_t frames, checked;
};

/* Consumer: every whole record in the window, validated and copied out. */
static int consume(const struct ring_ops *ops, void *c, const struct frames *f,
                   struct consumed *out)
{
    uint8_t *dst = aligned_alloc(64, (f->len + 63u) & ~63u);
    uint8_t hdr[NCD_REC_HDR_SIZE];
    size_t want = NCD_REC_HDR_SIZE, every = commit_every(ops->ring);
    uint64_t seq = 0;
    double t0 = 0;

    if (!dst)
        die("aligned_alloc");
    memset(out, 0, sizeof *out);
    while (seq < f->n) {
        struct iovec iov[2] = { { 0 } };
        ssize_t ready = ops->wait_data(c, want);
        size_t off = 0, done = 0, avail;
        if (ready < 0)
            die("wait_data");
        if (t0 == 0)
            t0 = now();
        if (ops->read_iov(c, iov, (size_t)ready) < 0)
            die("read_iov");
        avail = iov[0].iov_len + iov[1].iov_len;
        want = NCD_REC_HDR_SIZE;
        while (seq < f->n && off + NCD_REC_HDR_SIZE <= avail) {
            size_t rs;
            iov_copy(iov, off, hdr, NCD_REC_HDR_SIZE, 0);
            if (header_check(f, hdr, ops->ring) < 0)
                return -1;
            rs = NCD_REC_LEN_SIZE + ncd_le32_get(hdr);
            if (off + rs > avail) {
                want = rs; /* the rest of this record is still on its way */
                break;
            }
            iov_copy(iov, off + NCD_REC_HDR_SIZE, dst, f->len, 0);
            if (frame_check(f, dst, seq, &out->checked) < 0)
                return -1;
            off += rs;
            seq++;
            if (off - done >= every) {
                ops->read_commit(c, off - done);
                done = off;
            }
        }
        if (off > done)
            ops->read_commit(c, off - done);
    }
    out->seconds = now() - t0;
    out->frames = seq;
    free(dst);
    return 0;
}

static void print_result(const struct consumed *r)
{
    printf("result %" PRIu64 " %.9f %" PRIu64 "\n", r->frames, r->seconds, r->checked);
    fflush(stdout);
}

/* ---- modes ------------------------------------------------------------------- */

static const struct ring_ops NCD_OPS = {
    ncd_wait_space, ncd_write_iov, ncd_write_commit,
    ncd_wait_data,  ncd_read_iov,  ncd_read_commit, 0,
};

static void vchan_stats_line(const char *who, struct ncd_vchan *v)
{
    struct ncd_vchan_stats s;
    ncd_vchan_get_stats(v, &s);
    fprintf(stderr, "%s: notify_sent %" PRIu64 " notify_recv %" PRIu64 " ring_full_waits %" PRIu64 "\n",
            who, s.notify_sent, s.notify_recv, s.ring_full_waits);
}

static int ncd_server(int argc, char **argv)
{
    struct ncd_vchan *v;
    struct ring_ops ops = NCD_OPS;
    struct frames f;
    uint32_t gref, port;
    char err[256];
    if (argc != 8)
        return 2;
    g_spin_us = (unsigned)num(argv[6]);
    pin((int)strtol(argv[7], NULL, 10));
    frames_init(&f, num(argv[4]), (uint32_t)num(argv[5]));
    if (ncd_vchan_server_init(&v, (uint16_t)num(argv[2]), NCD_VCHAN_MIN_RING, num(argv[3]), &gref,
                              &port, err, sizeof err) < 0) {
        fprintf(stderr, "ring_bench: %s\n", err);
        return 1;
    }
    ops.ring = ncd_vchan_write_size(v);
    printf("ready %u %u\n", gref, port);
    fflush(stdout);
    produce(&ops, v, &f);
    /* all of it consumed: the whole ring is free again */
    if (ncd_vchan_wait_space(v, ops.ring, g_spin_us, 60000) < (ssize_t)ops.ring &&
        ncd_vchan_unconsumed(v) != 0) /* the client may have consumed all and closed */
        die("waiting for the consumer");
    vchan_stats_line("ncd-server", v);
    ncd_vchan_close(v);
    return 0;
}

static int ncd_client(int argc, char **argv)
{
    struct ncd_vchan *v;
    struct ring_ops ops = NCD_OPS;
    struct frames f;
    struct consumed r;
    char err[256];
    int rc;
    if (argc != 9)
        return 2;
    g_spin_us = (unsigned)num(argv[7]);
    pin((int)strtol(argv[8], NULL, 10));
    frames_init(&f, num(argv[5]), (uint32_t)num(argv[6]));
    if (ncd_vchan_client_init(&v, (uint16_t)num(argv[2]), (uint32_t)num(argv[3]),
                              (uint32_t)num(argv[4]), err, sizeof err) < 0) {
        fprintf(stderr, "ring_bench: %s\n", err);
        return 1;
    }
    ops.ring = ncd_vchan_read_size(v);
    rc = consume(&ops, v, &f, &r);
    if (rc == 0)
        print_result(&r);
    vchan_stats_line("ncd-client", v);
    ncd_vchan_close(v);
    return rc ? 1 : 0;
}

static int xv_server(int argc, char **argv)
{
    struct libxenvchan *c;
    struct frames f;
    uint8_t *rec;
    int ring;
    if (argc != 8)
        return 2;
    pin((int)strtol(argv[7], NULL, 10));
    frames_init(&f, num(argv[5]), (uint32_t)num(argv[6]));
    c = libxenvchan_server_init(NULL, (int)num(argv[2]), argv[3], NCD_VCHAN_MIN_RING, num(argv[4]));
    if (!c)
        die("libxenvchan_server_init");
    c->blocking = 1;
    ring = libxenvchan_buffer_space(c);
    printf("ready\n");
    fflush(stdout);
    rec = record_new(&f);
    for (uint64_t seq = 0; seq < f.n; seq++) {
        record_stamp(rec, seq);
        if (libxenvchan_send(c, rec, rec_size(&f)) != (int)rec_size(&f))
            die("libxenvchan_send");
    }
    while (libxenvchan_is_open(c) && libxenvchan_buffer_space(c) < ring)
        if (libxenvchan_wait(c) < 0)
            die("libxenvchan_wait");
    free(rec);
    libxenvchan_close(c);
    return 0;
}

static int xv_client(int argc, char **argv)
{
    struct libxenvchan *c;
    struct frames f;
    struct consumed r;
    uint8_t hdr[NCD_REC_HDR_SIZE], *dst;
    double t0 = 0;
    if (argc != 7)
        return 2;
    pin((int)strtol(argv[6], NULL, 10));
    frames_init(&f, num(argv[4]), (uint32_t)num(argv[5]));
    c = libxenvchan_client_init(NULL, (int)num(argv[2]), argv[3]);
    if (!c)
        die("libxenvchan_client_init");
    c->blocking = 1;
    dst = aligned_alloc(64, (f.len + 63u) & ~63u);
    if (!dst)
        die("aligned_alloc");
    memset(&r, 0, sizeof r);
    for (uint64_t seq = 0; seq < f.n; seq++) {
        if (libxenvchan_recv(c, hdr, sizeof hdr) != (int)sizeof hdr)
            die("libxenvchan_recv");
        if (t0 == 0)
            t0 = now();
        if (header_check(&f, hdr, 0) < 0)
            return 1;
        if (libxenvchan_recv(c, dst, f.len) != (int)f.len)
            die("libxenvchan_recv");
        if (frame_check(&f, dst, seq, &r.checked) < 0)
            return 1;
        r.frames++;
    }
    r.seconds = now() - t0;
    print_result(&r);
    free(dst);
    libxenvchan_close(c);
    return 0;
}

struct raw_job {
    struct raw_ring *ring;
    const struct frames *f;
    struct consumed res;
    int rc;
};

static const struct ring_ops RAW_OPS = {
    raw_wait_space, raw_write_iov, raw_write_commit,
    raw_wait_data,  raw_read_iov,  raw_read_commit, 0,
};

static void *raw_producer(void *arg)
{
    struct raw_job *j = arg;
    struct ring_ops ops = RAW_OPS;
    ops.ring = j->ring->size;
    pin(0);
    produce(&ops, j->ring, j->f);
    return NULL;
}

static void *raw_consumer(void *arg)
{
    struct raw_job *j = arg;
    struct ring_ops ops = RAW_OPS;
    ops.ring = j->ring->size;
    pin(1);
    j->rc = consume(&ops, j->ring, j->f, &j->res);
    return NULL;
}

static int raw(int argc, char **argv)
{
    static struct raw_ring ring;
    struct frames f;
    struct raw_job job = { &ring, &f, { 0, 0, 0 }, 0 };
    pthread_t tp, tc;
    unsigned long size;
    if (argc != 5)
        return 2;
    size = num(argv[2]);
    if (size < 4096 || (size & (size - 1)) || size > (1ul << 30)) {
        fprintf(stderr, "ring_bench: raw ring size must be a power of two >= 4096\n");
        return 2;
    }
    frames_init(&f, num(argv[3]), (uint32_t)num(argv[4]));
    ring.size = (uint32_t)size;
    ring.buf = aligned_alloc(4096, size);
    if (!ring.buf)
        die("aligned_alloc");
    memset(ring.buf, 0, size);
    if (pthread_create(&tc, NULL, raw_consumer, &job) || pthread_create(&tp, NULL, raw_producer, &job))
        die("pthread_create");
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);
    if (job.rc == 0)
        print_result(&job.res);
    free(ring.buf);
    return job.rc ? 1 : 0;
}

static int plain_memcpy(int argc, char **argv)
{
    struct frames f;
    struct consumed r;
    uint8_t *dst;
    unsigned long size;
    size_t at = 0;
    double t0;
    if (argc != 5)
        return 2;
    size = num(argv[2]);
    frames_init(&f, num(argv[3]), (uint32_t)num(argv[4]));
    if (size < f.len)
        size = f.len;
    dst = aligned_alloc(4096, (size + 4095) & ~4095ul);
    if (!dst)
        die("aligned_alloc");
    memset(dst, 0, size);
    memset(&r, 0, sizeof r);
    t0 = now();
    for (uint64_t i = 0; i < f.n; i++) {
        if (at + f.len > size)
            at = 0;
        memcpy(dst + at, f.pattern, f.len);
        __asm__ __volatile__("" : : "r"(dst) : "memory"); /* keep every copy */
        at += f.len;
    }
    r.seconds = now() - t0;
    r.frames = f.n;
    r.checked = memcmp(dst, f.pattern, f.len) == 0;
    print_result(&r);
    free(dst);
    return 0;
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc >= 2) {
        if (!strcmp(argv[1], "ncd-server"))
            rc = ncd_server(argc, argv);
        else if (!strcmp(argv[1], "ncd-client"))
            rc = ncd_client(argc, argv);
        else if (!strcmp(argv[1], "xv-server"))
            rc = xv_server(argc, argv);
        else if (!strcmp(argv[1], "xv-client"))
            rc = xv_client(argc, argv);
        else if (!strcmp(argv[1], "raw"))
            rc = raw(argc, argv);
        else if (!strcmp(argv[1], "memcpy"))
            rc = plain_memcpy(argc, argv);
    }
    if (rc == 2)
        fprintf(stderr, "usage: see the comment at the top of bench/ring_bench.c\n");
    return rc;
}
