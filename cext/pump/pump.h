/* ncd frame pump: one pthread per channel moving frames between a file
 * descriptor and a vchan, both directions, zero-copy through ring memory.
 *
 *   fd -> ring ("tx"): readv() of one frame (vnet header + Ethernet frame)
 *                      straight into the write ring, then the le32 length in
 *                      front of it, commit once per batch (or every
 *                      32 KiB: large frames one by one).
 *   ring -> fd ("rx"): validate the record, writev() straight out of the read
 *                      ring (the vnet header from a private, validated copy;
 *                      with a source lock also the first NCD_LOCK_HEAD frame
 *                      bytes, the copy the lock checked), commit once per
 *                      batch (or every 32 KiB).
 *
 * The fd must deliver one frame per read() and take one frame per write():
 * a TAP opened with IFF_VNET_HDR (and TUNSETVNETLE where the host is big
 * endian), a SOCK_SEQPACKET/SOCK_DGRAM socket, or a packet-mode pipe.
 * The thread never touches Python; Python starts/stops it and reads counters.
 */
#ifndef NCD_PUMP_H
#define NCD_PUMP_H

#include <stddef.h>
#include <stdint.h>

#include "../forward/antispoof.h"
#include "../forward/credit.h"
#include "frame.h"

struct ncd_vchan;
struct ncd_pump; /* opaque */

struct ncd_pump_config {
    int fd;                   /* frame fd; the pump sets O_NONBLOCK on it, never closes it */
    uint32_t max_frame;       /* largest Ethernet frame either way, 14..NCD_ETH_MAX (0 = max) */
    uint32_t rx_features;     /* NCD_FEAT_* we advertised: what the peer may send us */
    uint32_t tx_features;     /* NCD_FEAT_* the peer advertised: what we may send it */
    uint32_t read_ring_size;  /* ring we read (peer -> us), bytes; 0 = the vchan's */
    uint32_t write_ring_size; /* ring we write (us -> peer), bytes; 0 = the vchan's */
    uint32_t batch;           /* max frames per direction per wakeup (0 = 64) */
    /* Source lock on frames from the peer (ring -> fd), as the switch applies to
     * its ports (cext/forward/antispoof.h); lock.enabled = 0 (the default): none.
     * A frame that breaks it is dropped and counted (spoofed_source). */
    struct ncd_lock lock;
    /* Rate limit on frames from the peer (ring -> fd: what a guest transmits), a
     * credit of rate_bytes per rate_usec (cext/forward/credit.h, netback's
     * credit_bytes/credit_usec); either 0 (the default): unlimited. When the credit
     * is spent the thread leaves the frames in the ring until the refill (the peer's
     * ring backs up; nothing is dropped). Changed live by ncd_pump_set_rate(). */
    uint64_t rate_bytes, rate_usec;
    /* Bounded adaptive spin before sleeping, at most spin_usec microseconds
     * (0 = never spin, sleep at once; at most NCD_PUMP_SPIN_MAX_USEC): only while
     * the peer keeps the pump busy (pump.c, spin()), and never when the caller may
     * run on one CPU only (the thread inherits its affinity). */
    uint32_t spin_usec;
};

#define NCD_PUMP_SPIN_MAX_USEC 10000u

/* Why the thread stopped (ncd_pump_state). */
enum ncd_pump_state {
    NCD_PUMP_RUNNING = 0,
    NCD_PUMP_STOPPED = 1,     /* ncd_pump_stop() */
    NCD_PUMP_PEER_CLOSED = 2, /* the vchan closed; what the peer wrote was delivered first */
    NCD_PUMP_BAD_PEER = 3,    /* a bad record or hostile ring value: the channel must close */
    NCD_PUMP_FD_ERROR = 4,    /* the fd failed for reading (EOF, EBADF, ...) */
    NCD_PUMP_INTERNAL = 5,    /* poll/eventfd failure */
};

/* All counters are monotonically increasing 64-bit values. */
struct ncd_pump_stats {
    uint64_t tx_frames, tx_bytes;   /* fd -> ring: frames and Ethernet bytes */
    uint64_t rx_frames, rx_bytes;   /* ring -> fd */
    uint64_t drop_too_big;          /* frame from fd larger than the write ring */
    uint64_t drop_tx_short;         /* fd gave less than a vnet header + Ethernet header */
    uint64_t drop_tx_offload;       /* fd frame uses an offload the peer did not advertise */
    uint64_t drop_tx_truncated;     /* fd frame larger than max_frame (socket MSG_TRUNC) */
    uint64_t drop_fd_write;         /* writev to the fd failed (other than EAGAIN/EIO) */
    uint64_t drop_tap_not_ready;    /* writev to the fd gave EIO (TAP down) */
    uint64_t bad_record;            /* records from the peer that failed validation */
    uint64_t ring_full_waits;       /* tx waited for the peer to free ring space */
    uint64_t fd_full_waits;         /* rx waited for POLLOUT on the fd */
    uint64_t notify_recv;           /* event-channel events consumed by the pump */
    uint64_t notify_sent;           /* copied from the vchan's own counter */
    uint64_t wakeups;               /* poll() returns */
    uint64_t tx_batches, rx_batches; /* commits (each at most one notify) */
    uint64_t spoofed_source;        /* rx frames dropped by the source lock (cfg.lock) */
    uint64_t notify_spurious;       /* events that carried no work (late EOI, vchan_eoi.c) */
    uint64_t rate_limited;          /* rx frames that waited for the rate limit's refill */
    uint64_t rate_delay_usec;       /* microseconds those frames waited */
    uint64_t spins_won;             /* sleeps avoided: work came while spinning */
    uint64_t spins_missed;          /* spins that ended with nothing (then a sleep) */
};

/* Start the thread. Returns 0, or -1 with a message in err. */
int ncd_pump_start(struct ncd_pump **out, struct ncd_vchan *v, const struct ncd_pump_config *cfg,
                   char *err, size_t errlen);
/* Wake the thread and join it. Safe to call more than once, also after the
 * thread ended on its own. The vchan stays intact (close it afterwards). */
void ncd_pump_stop(struct ncd_pump *p);
/* Stop (if needed) and free. */
void ncd_pump_free(struct ncd_pump *p);
/* Snapshot of the counters; callable from any thread at any time. */
void ncd_pump_get_stats(struct ncd_pump *p, struct ncd_pump_stats *out);
int ncd_pump_state(struct ncd_pump *p);
/* Human-readable reason when state is not RUNNING/STOPPED; "" otherwise. */
const char *ncd_pump_reason(struct ncd_pump *p);
/* eventfd that becomes readable when the thread ends on its own (for asyncio). */
int ncd_pump_done_fd(struct ncd_pump *p);
/* Change the rate limit of a running pump (any thread; bytes or usec 0 = unlimited):
 * the thread applies it at its next look, woken for it if it sleeps. */
void ncd_pump_set_rate(struct ncd_pump *p, uint64_t bytes, uint64_t usec);

/* Codec entry points (also used by tests and the fuzzer). */
/* Write one record (length + vnet header + frame) into out; returns its size,
 * or 0 if out is too small or the frame length is out of range. */
size_t ncd_frame_encode(uint8_t *out, size_t outlen, const uint8_t *vnet_hdr,
                        const uint8_t *frame, size_t frame_len);
/* Parse a stream of records. Returns NCD_FRAME_OK when buf ends exactly at a
 * record boundary, NCD_FRAME_INCOMPLETE when it ends inside a record, or the
 * first error; *records / *consumed tell how far it got. */
int ncd_frame_parse(const uint8_t *buf, size_t n, uint32_t max_frame, uint32_t features,
                    size_t ring_size, uint32_t *records, size_t *consumed);
const char *ncd_frame_strerror(int err);

#endif /* NCD_PUMP_H */
