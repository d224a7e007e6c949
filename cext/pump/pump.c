/* ncd frame pump: see pump.h. One thread, both directions, zero-copy. */
#define _GNU_SOURCE
#include "pump.h"
#include "span.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../forward/answer.h"
#include "../vchan/ncd_util.h"
#include "../vchan/vchan.h"

#define DEFAULT_BATCH 64u
/* Within a batch, hand ring space over every COMMIT_BYTES (at most a quarter of
 * the ring): with large frames the peer then works on one record while we move
 * the next, instead of waiting for the whole batch.  Small frames still commit
 * once per batch. */
#define COMMIT_BYTES (32u * 1024u)
/* The bounded adaptive spin before sleeping (spin() below): at most cfg.spin_usec,
 * and only while the idle waits have been shorter than that on average, or the
 * peer is answering what we just handed it within that.  On a VM a sleeping thread
 * costs tens of microseconds to wake (docs/performance.md, "The floors"). */
#define SPIN_POLL_EVERY 16u /* spin iterations between looks at the fds (a syscall) */

/* Counters: written by the pump thread, read by anyone. */
#define CNT_ADD(p, f, n) __atomic_fetch_add(&(p)->st.f, (uint64_t)(n), __ATOMIC_RELAXED)
#define CNT_SET(p, f, n) __atomic_store_n(&(p)->st.f, (uint64_t)(n), __ATOMIC_RELAXED)
#define CNT_GET(p, f) __atomic_load_n(&(p)->st.f, __ATOMIC_RELAXED)

struct ncd_pump {
    struct ncd_vchan *v;
    struct ncd_pump_config cfg;
    uint32_t max_frame;
    uint32_t tx_max_rec; /* largest record we may read from the fd (vnet hdr + frame) */
    uint32_t tx_commit, rx_commit; /* commit every this many bytes within a batch */
    int is_socket;
    int wake_fd, done_fd;
    pthread_t thread;
    pthread_mutex_t lock; /* serialises stop/join */
    int joined;
    int stop;   /* atomic */
    int state;  /* atomic; reason[] is published before state (release) */
    char reason[192];
    struct ncd_pump_stats st;
    /* tx: zero-copy needs room for a maximal record; below that, a bounce buffer */
    uint8_t *bounce;
    size_t bounce_len; /* bytes of a frame waiting in bounce (0 = none) */
    /* ring space still to be waited for before tx proceeds */
    size_t tx_need;
    /* ring data rx needs for its next complete record (set when rx is idle) */
    size_t rx_need;
    int rx_waiting_fd; /* rx is waiting for POLLOUT */
    int tx_wait_counted;
    struct ncd_vchan_eoi eoi; /* late EOI of the event channel (vchan_eoi.c) */
    /* rx rate limit (pump thread only; a new rate arrives through credit_ctl) */
    struct ncd_credit credit;
    struct ncd_credit_ctl credit_ctl;
    uint64_t rate_wake; /* rx waits for the credit until then (DIR_RATE), us */
    /* spinning (pump thread only): the average idle wait, and how soon the peer
     * answers what tx hands it (cext/forward/answer.h) */
    int64_t spin_ns; /* cfg.spin_usec in ns; 0 = never spin */
    int64_t wait_avg_ns;
    unsigned spin_misses; /* spins in a row that found nothing */
    struct ncd_answer answer;
};

/* ---- two-iovec ring spans: span.h ------------------------------------ */

/* ---- state ---------------------------------------------------------------- */

static void set_state(struct ncd_pump *p, int state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_state(struct ncd_pump *p, int state, const char *fmt, ...)
{
    if (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != NCD_PUMP_RUNNING)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->reason, sizeof p->reason, fmt, ap);
    va_end(ap);
    /* nothing printed here: Python reads ncd_pump_reason() and logs it once */
    /* reason[] before state: pairs with the acquire loads in ncd_pump_reason() and
     * ncd_pump_state() */
    __atomic_store_n(&p->state, state, __ATOMIC_RELEASE);
}

static void snapshot_vchan_stats(struct ncd_pump *p)
{
    struct ncd_vchan_stats vs;
    ncd_vchan_get_stats(p->v, &vs);
    CNT_SET(p, notify_sent, vs.notify_sent);
    CNT_SET(p, notify_spurious, ncd_vchan_eoi_spurious(&p->eoi));
}

static void hostile(struct ncd_pump *p, const char *what)
{
    const char *r = ncd_vchan_close_reason(p->v);
    set_state(p, NCD_PUMP_BAD_PEER, "%s: %s", what, r ? r : "hostile ring value");
}

/* ---- fd -> ring ------------------------------------------------------------ */

/* DIR_RATE (rx only): the rate limit's credit is spent until p->rate_wake */
enum { DIR_MORE, DIR_IDLE, DIR_BLOCKED, DIR_FATAL, DIR_RATE };

/* One frame from the fd into iov (<= 3 entries). Returns bytes, 0 = nothing
 * to read now, -1 = fatal (state set). *trunc tells a socket truncated it. */
static ssize_t fd_read_frame(struct ncd_pump *p, struct iovec *iov, int cnt, int *trunc)
{
    ssize_t n;

    *trunc = 0;
    for (;;) {
        if (p->is_socket) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
            n = recvmsg(p->cfg.fd, &mh, MSG_DONTWAIT);
            if (n >= 0 && (mh.msg_flags & MSG_TRUNC))
                *trunc = 1;
        } else {
            n = readv(p->cfg.fd, iov, cnt);
        }
        if (n > 0)
            return n;
        if (n == 0) {
            set_state(p, NCD_PUMP_FD_ERROR, "frame fd: end of file");
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        set_state(p, NCD_PUMP_FD_ERROR, "frame fd read: %s", strerror(errno));
        return -1;
    }
}

/* Validate what the fd gave us before it goes to the peer: the peer would
 * close the channel on a record it did not agree to. 1 = send it. */
static int tx_acceptable(struct ncd_pump *p, const uint8_t vnet[NCD_VNET_HDR_SIZE], size_t n,
                         int trunc)
{
    struct ncd_vnet_hdr h;

    if (trunc || n > p->tx_max_rec) {
        CNT_ADD(p, drop_tx_truncated, 1);
        return 0;
    }
    if (n < NCD_REC_LEN_MIN) {
        CNT_ADD(p, drop_tx_short, 1);
        return 0;
    }
    ncd_vnet_decode(vnet, &h);
    if (ncd_frame_check_vnet(&h, (uint32_t)(n - NCD_VNET_HDR_SIZE), p->cfg.tx_features)) {
        CNT_ADD(p, drop_tx_offload, 1);
        return 0;
    }
    return 1;
}

static uint32_t commit_every(uint32_t ring)
{
    return ring / 4 < COMMIT_BYTES ? ring / 4 : COMMIT_BYTES;
}

/* Commit what this run moved since the last commit (window bytes done..used). */
static void commit_part(struct ncd_pump *p, int tx, size_t used, size_t *done)
{
    if (used == *done)
        return;
    if (tx) {
        ncd_vchan_write_commit(p->v, used - *done);
        CNT_ADD(p, tx_batches, 1);
        if (p->spin_ns) /* no clock read per commit when the pump never spins */
            ncd_answer_sent(&p->answer, ncd_answer_now());
    } else {
        ncd_vchan_read_commit(p->v, used - *done);
        CNT_ADD(p, rx_batches, 1);
    }
    *done = used;
}

static void tx_account(struct ncd_pump *p, size_t n)
{
    CNT_ADD(p, tx_frames, 1);
    CNT_ADD(p, tx_bytes, n - NCD_VNET_HDR_SIZE);
}

static int tx_run(struct ncd_pump *p)
{
    struct span s;
    size_t used = 0, done = 0, rec_room = NCD_REC_LEN_SIZE + p->tx_max_rec;
    uint32_t iters = 0;
    int ret = DIR_MORE;

    s.cnt = ncd_vchan_write_iov(p->v, s.iov, p->cfg.write_ring_size);
    if (s.cnt < 0) {
        if (errno == EPIPE && !ncd_vchan_close_reason(p->v))
            return DIR_IDLE; /* closed meanwhile: the main loop drains rx and ends */
        hostile(p, "vchan write ring");
        return DIR_FATAL;
    }
    span_init(&s, s.cnt);

    /* iters counts drops too: a flood of unsendable frames cannot starve rx */
    while (iters++ < p->cfg.batch) {
        uint8_t lenb[NCD_REC_LEN_SIZE];
        ssize_t n;
        int trunc;

        if (p->bounce) {
            /* small ring: frame first into the bounce buffer, then copied in */
            if (!p->bounce_len) {
                struct iovec b = {.iov_base = p->bounce, .iov_len = p->tx_max_rec + 1};
                n = fd_read_frame(p, &b, 1, &trunc);
                if (n <= 0) {
                    ret = n < 0 ? DIR_FATAL : DIR_IDLE;
                    break;
                }
                if ((size_t)n + NCD_REC_LEN_SIZE > p->cfg.write_ring_size && !trunc &&
                    (size_t)n <= p->tx_max_rec) {
                    CNT_ADD(p, drop_too_big, 1);
                    continue;
                }
                if (!tx_acceptable(p, p->bounce, (size_t)n, trunc))
                    continue;
                p->bounce_len = (size_t)n;
            }
            if (s.len - used < NCD_REC_LEN_SIZE + p->bounce_len) {
                p->tx_need = NCD_REC_LEN_SIZE + p->bounce_len;
                ret = DIR_BLOCKED;
                break;
            }
            ncd_le32_put(lenb, (uint32_t)p->bounce_len);
            span_copy_in(&s, used, lenb, sizeof lenb);
            span_copy_in(&s, used + NCD_REC_LEN_SIZE, p->bounce, p->bounce_len);
            used += NCD_REC_LEN_SIZE + p->bounce_len;
            tx_account(p, p->bounce_len);
            p->bounce_len = 0;
            continue;
        }

        /* zero-copy: read the frame straight into the ring behind a length gap */
        if (s.len - used < rec_room) {
            p->tx_need = rec_room;
            ret = DIR_BLOCKED;
            break;
        }
        struct iovec dst[3];
        int cnt = span_slice(&s, used + NCD_REC_LEN_SIZE, p->tx_max_rec, dst);
        /* one spare byte past the maximum so that an oversized frame shows */
        uint8_t spare;
        dst[cnt].iov_base = &spare;
        dst[cnt].iov_len = 1;
        n = fd_read_frame(p, dst, cnt + 1, &trunc);
        if (n <= 0) {
            ret = n < 0 ? DIR_FATAL : DIR_IDLE;
            break;
        }
        uint8_t vnet[NCD_VNET_HDR_SIZE];
        if ((size_t)n >= NCD_VNET_HDR_SIZE)
            span_copy_out(&s, used + NCD_REC_LEN_SIZE, vnet, sizeof vnet);
        if (!tx_acceptable(p, vnet, (size_t)n, trunc))
            continue;
        ncd_le32_put(lenb, (uint32_t)n);
        span_copy_in(&s, used, lenb, sizeof lenb);
        used += NCD_REC_LEN_SIZE + (size_t)n;
        tx_account(p, (size_t)n);
        if (used - done >= p->tx_commit)
            commit_part(p, 1, used, &done);
    }
    commit_part(p, 1, used, &done);
    return ret;
}

/* ---- ring -> fd ------------------------------------------------------------ */

/* Write one frame; returns 1 done (sent or dropped), 0 fd full, -1 fatal. */
static int fd_write_frame(struct ncd_pump *p, struct iovec *iov, int cnt, size_t total)
{
    for (;;) {
        ssize_t n;
        if (p->is_socket) {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
            n = sendmsg(p->cfg.fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            n = writev(p->cfg.fd, iov, cnt);
        }
        if (n >= 0) {
            if ((size_t)n != total) {
                CNT_ADD(p, drop_fd_write, 1); /* a short write: the fd is not packet-mode */
                return 1;
            }
            CNT_ADD(p, rx_frames, 1);
            CNT_ADD(p, rx_bytes, total - NCD_VNET_HDR_SIZE);
            return 1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0; /* poll() for POLLOUT; anything else drops the frame */
        if (errno == EIO) {
            CNT_ADD(p, drop_tap_not_ready, 1);
            return 1;
        }
        CNT_ADD(p, drop_fd_write, 1);
        return 1;
    }
}

/* A record from the peer failed validation: count it, record why (once). */
static void bad_record(struct ncd_pump *p, uint32_t rec_len, int err)
{
    CNT_ADD(p, bad_record, 1);
    set_state(p, NCD_PUMP_BAD_PEER, "bad record from peer (length %u): %s", rec_len,
              ncd_frame_err_name(err));
}

/* The rate limit for this rx run: a posted change applied, the clock read once
 * (0 = unlimited: no clock read, no credit taken). */
static uint64_t rx_credit_now(struct ncd_pump *p)
{
    uint64_t now = 0;

    if (ncd_credit_ctl_changed(&p->credit_ctl)) {
        now = ncd_credit_now();
        ncd_credit_ctl_apply(&p->credit_ctl, &p->credit, now);
    }
    if (!ncd_credit_limited(&p->credit))
        return 0;
    return now ? now : ncd_credit_now();
}

static void rx_credit_stats(struct ncd_pump *p)
{
    CNT_SET(p, rate_limited, p->credit.waits);
    CNT_SET(p, rate_delay_usec, p->credit.wait_usec);
}

/* *remain: complete-or-not bytes left unread in the ring after this run */
static int rx_run(struct ncd_pump *p, size_t *remain)
{
    struct span s;
    size_t used = 0, done = 0;
    uint32_t frames = 0;
    int ret = DIR_MORE;
    uint64_t now = rx_credit_now(p);

    *remain = 0;
    s.cnt = ncd_vchan_read_iov(p->v, s.iov, p->cfg.read_ring_size);
    if (s.cnt < 0) {
        hostile(p, "vchan read ring");
        return DIR_FATAL;
    }
    span_init(&s, s.cnt);
    p->rx_waiting_fd = 0;

    while (frames < p->cfg.batch) {
        size_t left = s.len - used;
        uint8_t lenb[NCD_REC_LEN_SIZE], vnet[NCD_VNET_HDR_SIZE];
        struct ncd_vnet_hdr h;

        if (left < NCD_REC_LEN_SIZE) {
            p->rx_need = NCD_REC_LEN_SIZE;
            ret = DIR_IDLE;
            break;
        }
        span_copy_out(&s, used, lenb, sizeof lenb);
        uint32_t rec_len = ncd_le32_get(lenb); /* read once; our copy is the truth */
        int err = ncd_frame_check_len(rec_len, p->max_frame, p->cfg.read_ring_size);
        if (err) {
            bad_record(p, rec_len, err);
            ret = DIR_FATAL;
            break;
        }
        if (left - NCD_REC_LEN_SIZE < rec_len) {
            p->rx_need = NCD_REC_LEN_SIZE + (size_t)rec_len;
            ret = DIR_IDLE;
            break;
        }
        /* the guest's transmit credit (netback charges every request, whatever
         * becomes of it): over it, the record stays in the ring until the refill */
        if (now && !ncd_credit_take(&p->credit, rec_len - NCD_VNET_HDR_SIZE, now,
                                    &p->rate_wake)) {
            ret = DIR_RATE;
            break;
        }
        span_copy_out(&s, used + NCD_REC_LEN_SIZE, vnet, sizeof vnet);
        ncd_vnet_decode(vnet, &h);
        err = ncd_frame_check_vnet(&h, rec_len - NCD_VNET_HDR_SIZE, p->cfg.rx_features);
        if (err) {
            bad_record(p, rec_len, err);
            ret = DIR_FATAL;
            break;
        }
        /* the validated header from our copy, the frame straight from the ring;
         * with a source lock, its head from the copy the lock checked (the peer
         * cannot change the checked bytes behind our back) */
        uint32_t flen = rec_len - NCD_VNET_HDR_SIZE, hl = 0;
        uint8_t head[NCD_LOCK_HEAD];
        struct iovec out[4];
        out[0].iov_base = vnet;
        out[0].iov_len = sizeof vnet;
        int cnt = 1;
        if (p->cfg.lock.enabled) {
            hl = flen < NCD_LOCK_HEAD ? flen : NCD_LOCK_HEAD;
            span_copy_out(&s, used + NCD_REC_HDR_SIZE, head, hl);
            if (ncd_lock_spoofed(&p->cfg.lock, head, hl)) {
                CNT_ADD(p, spoofed_source, 1);
                used += NCD_REC_LEN_SIZE + rec_len;
                frames++;
                if (used - done >= p->rx_commit)
                    commit_part(p, 0, used, &done);
                continue;
            }
            out[1].iov_base = head;
            out[1].iov_len = hl;
            cnt = 2;
        }
        cnt += span_slice(&s, used + NCD_REC_HDR_SIZE + hl, flen - hl, out + cnt);
        int w = fd_write_frame(p, out, cnt, rec_len);
        if (w == 0) {
            if (now) /* it stays in the ring: charged when it goes */
                ncd_credit_untake(&p->credit, flen);
            p->rx_waiting_fd = 1;
            CNT_ADD(p, fd_full_waits, 1);
            ret = DIR_BLOCKED;
            break;
        }
        used += NCD_REC_LEN_SIZE + rec_len;
        frames++;
        if (used - done >= p->rx_commit)
            commit_part(p, 0, used, &done);
    }
    commit_part(p, 0, used, &done);
    *remain = s.len - used;
    if (now)
        rx_credit_stats(p);
    return ret;
}

/* ---- spinning before a sleep ---------------------------------------------- */

/* Work the main loop would find, from the peer's indices (no syscall): a
 * complete record in the ring, or the ring space tx waits for.  Only a complete
 * record counts: a peer that moves its index a byte at a time must not keep us
 * spinning for nothing. */
static int ring_work(struct ncd_pump *p, int tx, int rx)
{
    if (rx == DIR_IDLE) {
        int64_t r = ncd_vchan_peek_data(p->v);
        if (r < 0 || (uint64_t)r >= p->rx_need)
            return 1; /* a record, or a hostile value the next run reports */
    }
    if (tx == DIR_BLOCKED) {
        int64_t sp = ncd_vchan_peek_space(p->v);
        if (sp < 0 || (uint64_t)sp >= p->tx_need)
            return 1;
    }
    return 0;
}

/* Work on the fds: a frame to read (tx idle), room to write (rx blocked on the
 * fd), a rate change or a stop. One poll() with no timeout. */
static int fd_work(struct ncd_pump *p, int tx, int rx)
{
    struct pollfd pfd[2] = {
        {.fd = p->wake_fd, .events = POLLIN},
        {.fd = p->cfg.fd, .events = (short)((tx == DIR_IDLE ? POLLIN : 0) |
                                            (rx == DIR_BLOCKED ? POLLOUT : 0))},
    };
    return poll(pfd, 2, 0) != 0; /* an error too: the main loop's poll() reports it */
}

/* Bounded adaptive spin before sleeping: 1 = work showed up within the spin
 * (p->spin_ns).  Used only while the peer keeps us busy: the recent idle waits
 * averaged less than the spin (a stream: the next frame or ACK comes within
 * microseconds), or we handed the peer something less than a spin ago and its
 * answers have been coming within one (a ping's echo reply, not the next request
 * 10 ms later).
 * An idle vif sleeps at once: its waits average seconds.  No notification is
 * asked while spinning, so a busy peer makes no syscall for us. */
static int spin(struct ncd_pump *p, int tx, int rx, int64_t start)
{
    if (!p->spin_ns ||
        (p->wait_avg_ns >= p->spin_ns && !ncd_answer_due(&p->answer, start, p->spin_ns)))
        return 0;
    for (unsigned i = 1;; i++) {
        if (ring_work(p, tx, rx) ||
            /* pairs with the release store of stop in ncd_pump_stop() */
            __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE))
            return 1;
        if (i % SPIN_POLL_EVERY == 0) {
            if (fd_work(p, tx, rx))
                return 1;
            if (ncd_answer_now() - start >= p->spin_ns) {
                ncd_answer_missed(&p->wait_avg_ns, &p->spin_misses, p->spin_ns);
                CNT_ADD(p, spins_missed, 1);
                return 0;
            }
            /* a runnable thread on this CPU (on 2 vCPUs, often the one we wait
             * for) goes first: the spin saves our sleep, it must not take the
             * peer's CPU */
            sched_yield();
        }
        ncd_cpu_relax();
    }
}

/* ---- the thread ------------------------------------------------------------ */

/* The event fd fired: take the event; its unmask waits if it carried no work. */
static int consume_event(struct ncd_pump *p)
{
    int rc = ncd_vchan_eoi_event(&p->eoi, p->v);
    if (rc > 0)
        CNT_ADD(p, notify_recv, 1);
    return rc;
}

static void *pump_main(void *arg)
{
    struct ncd_pump *p = arg;

    pthread_setname_np(pthread_self(), "ncd-pump"); /* for top -H / ps -L */

    /* pairs with the release store of stop in ncd_pump_stop() */
    while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
        size_t remain = 0;
        int tx = DIR_IDLE, rx;
        uint64_t rx_batches = CNT_GET(p, rx_batches);

        int open = ncd_vchan_is_open(p->v);
        if (open == 1)
            tx = tx_run(p);
        if (tx == DIR_FATAL)
            break;
        rx = rx_run(p, &remain);
        if (rx == DIR_FATAL)
            break;
        if (CNT_GET(p, rx_batches) != rx_batches) {
            if (p->spin_ns)
                ncd_answer_seen(&p->answer, ncd_answer_now()); /* the peer answered */
            /* the peer's data moved without an event: it is working, unmask now */
            if (ncd_vchan_eoi_work(&p->eoi, p->v) < 0) {
                set_state(p, NCD_PUMP_INTERNAL, "event channel unmask: %s", strerror(errno));
                break;
            }
        }
        if (tx == DIR_MORE || rx == DIR_MORE)
            continue; /* work left: no sleeping, bounded by progress */
        int64_t idle_since = p->spin_ns ? ncd_answer_now() : 0; /* for spinning only */
        /* rate-limited: no notification needed, the refill is the wake-up */
        int timeout = open == 2 ? 100 : -1;
        if (rx == DIR_RATE) {
            timeout = ncd_credit_poll_ms(p->rate_wake, ncd_credit_now());
            if (timeout == 0)
                continue;
        } else if (open == 1 && spin(p, tx, rx, idle_since)) {
            ncd_answer_waited(&p->wait_avg_ns, ncd_answer_now() - idle_since);
            p->spin_misses = 0;
            CNT_ADD(p, spins_won, 1);
            continue;
        }

        /* About to sleep: ask the peer for a notification, then look again so
         * that a commit between our look and the request cannot be missed. */
        int again = 0;
        if (rx == DIR_IDLE) {
            ncd_vchan_request_notify(p->v, 0, 1);
            ssize_t r = ncd_vchan_data_ready(p->v);
            if (r < 0) {
                hostile(p, "vchan read ring");
                break;
            }
            if ((size_t)r > remain)
                again = 1;
        }
        if (tx == DIR_BLOCKED) {
            if (!p->tx_wait_counted) {
                CNT_ADD(p, ring_full_waits, 1);
                p->tx_wait_counted = 1;
            }
            ncd_vchan_request_notify(p->v, 1, 0);
            ssize_t sp = ncd_vchan_buffer_space(p->v);
            if (sp >= 0 && (size_t)sp >= p->tx_need)
                again = 1;
        } else {
            p->tx_wait_counted = 0;
        }
        if (again)
            continue;
        if (open == 0 || (open == 1 && ncd_vchan_is_open(p->v) == 0)) {
            /* peer gone: everything complete it wrote has been delivered */
            if (rx == DIR_IDLE) {
                const char *r = ncd_vchan_close_reason(p->v);
                if (r)
                    set_state(p, NCD_PUMP_BAD_PEER, "vchan closed: %s", r);
                else
                    set_state(p, NCD_PUMP_PEER_CLOSED, "peer closed the vchan");
                break;
            }
        }
        snapshot_vchan_stats(p);
        ncd_vchan_eoi_arm(&p->eoi, p->v); /* what the peer owns, to tell work from storm */

        struct pollfd pfd[3] = {
            {.fd = p->wake_fd, .events = POLLIN},
            {.fd = ncd_vchan_eoi_fd(&p->eoi, p->v), .events = POLLIN},
            {.fd = p->cfg.fd, .events = 0},
        };
        if (open == 1 && tx == DIR_IDLE)
            pfd[2].events |= POLLIN;
        if (rx == DIR_BLOCKED)
            pfd[2].events |= POLLOUT;
        /* a server still waiting for its client: look again every 100 ms */
        int n = poll(pfd, 3, ncd_vchan_eoi_timeout(&p->eoi, timeout));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            set_state(p, NCD_PUMP_INTERNAL, "poll: %s", strerror(errno));
            break;
        }
        CNT_ADD(p, wakeups, 1);
        if (p->spin_ns)
            ncd_answer_waited(&p->wait_avg_ns, ncd_answer_now() - idle_since);
        if (pfd[0].revents & POLLIN) {
            uint64_t v; /* a new rate (ncd_pump_set_rate); a stop is the flag */
            if (read(p->wake_fd, &v, sizeof v) < 0) {
                /* EAGAIN: already consumed */
            }
        }
        if (((pfd[1].revents & POLLIN) && consume_event(p) < 0) ||
            ncd_vchan_eoi_tick(&p->eoi, p->v) < 0) {
            set_state(p, NCD_PUMP_INTERNAL, "event channel: %s", strerror(errno));
            break;
        }
        if (pfd[1].revents & (POLLERR | POLLNVAL)) {
            set_state(p, NCD_PUMP_INTERNAL, "event channel fd failed");
            break;
        }
        /* a hang-up we did not ask to read through would wake poll() forever */
        if ((pfd[2].revents & (POLLERR | POLLNVAL)) ||
            ((pfd[2].revents & POLLHUP) && !(pfd[2].events & POLLIN))) {
            set_state(p, NCD_PUMP_FD_ERROR, "frame fd: hang-up or error");
            break;
        }
    }
    snapshot_vchan_stats(p);
    if (__atomic_load_n(&p->state, __ATOMIC_ACQUIRE) != NCD_PUMP_RUNNING) {
        uint64_t one = 1;
        if (write(p->done_fd, &one, sizeof one) < 0) {
            /* eventfd write cannot fail short of overflow; nothing to do */
        }
    }
    return NULL;
}

/* ---- public API ------------------------------------------------------------ */

/* CPUs the pump thread may run on (it inherits the caller's affinity).  With one,
 * there is no spinning: what the pump waits for needs that CPU (the local stack,
 * the application) or another domain's (the peer), and only blocking gives either
 * of them a CPU.  Measured on Xen with one-vCPU guests: spinning there took
 * dom0 -> guest TCP from 278 to 3.8 Mbit/s (bench/RESULTS.md, "Real Xen: no
 * spinning on one CPU"). */
static int usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0)
        return 1;
    return CPU_COUNT(&set);
}

int ncd_pump_start(struct ncd_pump **out, struct ncd_vchan *v, const struct ncd_pump_config *cfg,
                   char *err, size_t errlen)
{
    struct ncd_pump *p;
    struct stat sb;
    int fl, rc;

    *out = NULL;
    if (!v || !cfg)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: no vchan or config");
    if (cfg->fd < 0 || fstat(cfg->fd, &sb) < 0)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: bad fd %d", cfg->fd);
    if (cfg->max_frame && (cfg->max_frame < NCD_ETH_MIN || cfg->max_frame > NCD_ETH_MAX))
        return ncd_fail(err, errlen, 0, "ncd_pump_start: max_frame %u outside %u..%u",
                        cfg->max_frame, NCD_ETH_MIN, NCD_ETH_MAX);
    size_t rsz = cfg->read_ring_size ? cfg->read_ring_size : ncd_vchan_read_size(v);
    size_t wsz = cfg->write_ring_size ? cfg->write_ring_size : ncd_vchan_write_size(v);
    if (rsz < NCD_REC_LEN_SIZE + NCD_REC_LEN_MIN || wsz < NCD_REC_LEN_SIZE + NCD_REC_LEN_MIN ||
        rsz > UINT32_MAX || wsz > UINT32_MAX)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: ring sizes %zu/%zu unusable for frames",
                        rsz, wsz);
    if ((cfg->rx_features | cfg->tx_features) & ~NCD_FEAT_ALL)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: unknown feature bits");
    if (ncd_vchan_fd(v) < 0)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: vchan has no event-channel fd");
    if (cfg->lock.enabled &&
        (cfg->lock.n_ipv4 > NCD_LOCK_MAX_IPS || cfg->lock.n_ipv6 > NCD_LOCK_MAX_IPS))
        return ncd_fail(err, errlen, 0, "ncd_pump_start: at most %u lock addresses per family",
                        NCD_LOCK_MAX_IPS);
    if (cfg->spin_usec > NCD_PUMP_SPIN_MAX_USEC)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: spin_usec %u above %u", cfg->spin_usec,
                        NCD_PUMP_SPIN_MAX_USEC);
    if (cfg->lock.enabled && !cfg->lock.trunk && (cfg->lock.mac[0] & 1))
        return ncd_fail(err, errlen, 0, "ncd_pump_start: a group MAC cannot be locked");

    p = calloc(1, sizeof *p);
    if (!p)
        return ncd_fail(err, errlen, 0, "ncd_pump_start: out of memory");
    p->v = v;
    p->cfg = *cfg;
    p->cfg.read_ring_size = (uint32_t)rsz;
    p->cfg.write_ring_size = (uint32_t)wsz;
    if (!p->cfg.batch)
        p->cfg.batch = DEFAULT_BATCH;
    p->max_frame = cfg->max_frame ? cfg->max_frame : NCD_ETH_MAX;
    p->tx_max_rec = NCD_VNET_HDR_SIZE + p->max_frame;
    p->tx_commit = commit_every(p->cfg.write_ring_size);
    p->rx_commit = commit_every(p->cfg.read_ring_size);
    p->is_socket = S_ISSOCK(sb.st_mode);
    p->wake_fd = p->done_fd = -1;
    p->joined = 1; /* no thread to join until pthread_create succeeds */
    pthread_mutex_init(&p->lock, NULL);
    ncd_credit_init(&p->credit, cfg->rate_bytes, cfg->rate_usec, ncd_credit_now());
    ncd_credit_ctl_init(&p->credit_ctl);
    p->spin_ns = usable_cpus() >= 2 ? (int64_t)cfg->spin_usec * 1000 : 0;
    p->wait_avg_ns = p->spin_ns; /* no spinning until the waits have been short */
    ncd_answer_init(&p->answer, p->spin_ns);

    if (wsz < NCD_REC_LEN_SIZE + (size_t)p->tx_max_rec) {
        p->bounce = malloc(p->tx_max_rec + 1);
        if (!p->bounce) {
            ncd_pump_free(p);
            return ncd_fail(err, errlen, 0, "ncd_pump_start: out of memory");
        }
    }
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake_fd < 0 || p->done_fd < 0) {
        int e = errno;
        ncd_pump_free(p);
        return ncd_fail(err, errlen, e, "ncd_pump_start: eventfd: %s", strerror(e));
    }
    fl = fcntl(cfg->fd, F_GETFL);
    if (fl < 0 || fcntl(cfg->fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = errno;
        ncd_pump_free(p);
        return ncd_fail(err, errlen, e, "ncd_pump_start: O_NONBLOCK on fd %d: %s", cfg->fd,
                        strerror(e));
    }
    rc = pthread_create(&p->thread, NULL, pump_main, p);
    if (rc) {
        ncd_pump_free(p);
        return ncd_fail(err, errlen, rc, "ncd_pump_start: pthread_create: %s", strerror(rc));
    }
    p->joined = 0;
    *out = p;
    return 0;
}

void ncd_pump_stop(struct ncd_pump *p)
{
    uint64_t one = 1;

    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    if (!p->joined) {
        __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE); /* pairs with pump_main()'s load */
        if (write(p->wake_fd, &one, sizeof one) < 0) {
            /* cannot fail for a fresh eventfd; the flag is set anyway */
        }
        pthread_join(p->thread, NULL);
        p->joined = 1;
        set_state(p, NCD_PUMP_STOPPED, "stopped");
    }
    pthread_mutex_unlock(&p->lock);
}

void ncd_pump_free(struct ncd_pump *p)
{
    if (!p)
        return;
    ncd_pump_stop(p);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    if (p->done_fd >= 0)
        close(p->done_fd);
    pthread_mutex_destroy(&p->lock);
    ncd_credit_ctl_destroy(&p->credit_ctl);
    free(p->bounce);
    free(p);
}

void ncd_pump_get_stats(struct ncd_pump *p, struct ncd_pump_stats *out)
{
    const uint64_t *src = (const uint64_t *)&p->st;
    uint64_t *dst = (uint64_t *)out;

    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

int ncd_pump_state(struct ncd_pump *p)
{
    /* pairs with the release store in set_state() */
    return __atomic_load_n(&p->state, __ATOMIC_ACQUIRE);
}

const char *ncd_pump_reason(struct ncd_pump *p)
{
    int s = __atomic_load_n(&p->state, __ATOMIC_ACQUIRE); /* pairs with set_state() */
    return s == NCD_PUMP_RUNNING ? "" : p->reason;
}

int ncd_pump_done_fd(struct ncd_pump *p)
{
    return p->done_fd;
}

void ncd_pump_set_rate(struct ncd_pump *p, uint64_t bytes, uint64_t usec)
{
    uint64_t one = 1;

    ncd_credit_ctl_post(&p->credit_ctl, bytes, usec);
    /* after the post: the thread, woken, sees it (the eventfd write/read pair and
     * the ctl's release/acquire order it) */
    if (write(p->wake_fd, &one, sizeof one) < 0) {
        /* cannot fail for our eventfd short of overflow; the change is posted anyway */
    }
}
