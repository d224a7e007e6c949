/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd vchan: a libxenvchan-compatible (Xen 4.17) shared-memory byte channel.
 *
 * Wire layout: struct vchan_interface of <xen/io/libxenvchan.h>, byte for byte.
 *   - the server grants one control page (unmap-notify on srv_live) and, for
 *     ring orders >= 12, 2^(order-12) ring pages per direction, listed in
 *     grants[] (left ring first, then right);
 *   - orders 10 and 11 live inside the control page at offsets 1024 / 2048;
 *   - "left" is client->server, "right" is server->client;
 *   - live flags: 0 closed, 1 connected, 2 (cli_live only) client not yet there;
 *   - notify bits: VCHAN_NOTIFY_WRITE / VCHAN_NOTIFY_READ in the peer's byte.
 * A libxenvchan peer interoperates in both roles.
 *
 * Trust: everything in the shared page is written by the peer as well.  Our own
 * indices are kept privately and only *published* to the page; the peer's
 * index is read once per operation and validated (0 <= prod - cons <= size, and
 * prod never behind the highest producer index seen before);
 * orders and grant refs are read once at connect and validated; live flags are
 * validated on every read.  A bad value closes the channel: is_open() becomes
 * 0, read/write/iov calls fail with errno EPROTO, ncd_vchan_close_reason()
 * says why and stats.bad_peer counts it.  Nothing is printed: the caller logs
 * the reason (ncd.vchan, the pump's ncd_pump_reason()).
 *
 * Threads: one thread may run the read side (data_ready, peek_data, wait_data,
 * read, read_iov, read_commit) while another runs the write side (buffer_space,
 * peek_space, wait_space, write, write_iov, write_commit); each side itself is
 * single-threaded.  wait() is called from one thread only.  close() must not
 * race anything.
 *
 * Grants: Linux gntalloc allows 1024 grants per guest by default
 * (gntalloc.limit).  A vchan uses 1 + ceil(read/4096) + ceil(write/4096)
 * grants when a ring is > 2048 bytes (in-page rings are free).  With the
 * defaults below (128 KiB each way) that is 65 grants: 15 vchans (vifs) per
 * guest.  64 KiB each way -> 33 grants -> 31 vchans; 1 MiB each way -> 513
 * grants -> 1 vchan.  When grants run out, server_init fails with ENOSPC
 * (Linux) and a message naming the limit and the count needed.
 */
#ifndef NCD_VCHAN_H
#define NCD_VCHAN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define NCD_VCHAN_MIN_RING 1024u
#define NCD_VCHAN_MAX_RING (1u << 20)          /* 1 MiB each way */
#define NCD_VCHAN_DEFAULT_RING (128u * 1024u)  /* 65 grants per vchan */
#define NCD_VCHAN_GNTALLOC_LIMIT 1024u         /* Linux gntalloc default */

struct ncd_vchan; /* opaque */

struct ncd_vchan_stats {
    uint64_t notify_sent;     /* event-channel notifications we sent */
    uint64_t notify_recv;     /* events consumed by ncd_vchan_wait() */
    uint64_t ring_full_waits; /* write attempts that found no (or too little) space */
    uint64_t bad_peer;        /* hostile values detected (0 or 1: the first closes) */
    uint64_t notify_failed;   /* event-channel notifications that failed to go out */
};

/* Grants a vchan would use for these minimum sizes (see the note above). */
unsigned ncd_vchan_grants_needed(size_t read_min, size_t write_min);

/*
 * Server: binds an unbound event channel for peer_domid, grants the control
 * page (unmap-notify on srv_live) and the ring pages.  read_min is what the
 * server reads (left ring), write_min what it writes (right ring); 0 means
 * "smallest"; each at most NCD_VCHAN_MAX_RING.  Ring sizes are chosen like
 * libxenvchan_server_init (in-page orders 10/11 when both fit, else the next
 * power of two >= 4096).  On success *ctrl_gref / *evtchn_port are what goes to
 * xenstore (ring-ref, event-channel).  Returns 0, or -1 with errno set and a
 * message in err.  The xenstore part is done by the caller (ncd.vchan).
 */
int ncd_vchan_server_init(struct ncd_vchan **out, uint16_t peer_domid, size_t read_min,
                          size_t write_min, uint32_t *ctrl_gref, uint32_t *evtchn_port,
                          char *err, size_t errlen);

/*
 * Client: binds to the server's event channel, maps ctrl_gref of peer_domid
 * with unmap-notify on cli_live, reads the orders and grant refs once,
 * validates them, maps the rings, sets cli_live = 1 and wakes the server.
 * Returns 0, or -1 with errno (EPROTO for a bad control page) and err.
 */
int ncd_vchan_client_init(struct ncd_vchan **out, uint16_t peer_domid, uint32_t ctrl_gref,
                          uint32_t evtchn_port, char *err, size_t errlen);

/* Event-channel fd: readable when the peer notified us.  Then call wait(). */
int ncd_vchan_fd(struct ncd_vchan *v);
/* Consume one pending event and unmask the port.  The event channel fd is
 * non-blocking: 0 also when none is pending (a wakeup raced), -1 with errno. */
int ncd_vchan_wait(struct ncd_vchan *v);
/* Late EOI for a thread that sleeps on the event channel (vchan_eoi.c): events
 * that carry no work leave the port masked for a growing, bounded delay.
 * Zero-initialise; one thread uses it.  Before sleeping: arm() (the first
 * snapshot of the peer's indices; later events compare with the one before), then poll
 * eoi_fd() (-1: leave it out) with eoi_timeout(); when it is readable: event()
 * instead of ncd_vchan_wait(); after every wakeup: tick(); when the peer's data
 * was consumed outside an event: work().  They return 0 (event(): 1 when it took
 * an event, 0 when none was pending), or -1 with errno (pending/unmask failed). */
struct ncd_vchan_eoi {
    int64_t seen[3];   /* at the previous event: the peer's read-ring producer,
                        * write-ring consumer, live flag */
    int armed;         /* seen[] holds a snapshot */
    unsigned streak;   /* spurious events in a row */
    int64_t unmask_at; /* CLOCK_MONOTONIC ns the deferred unmask is due; 0: unmasked */
    uint64_t spurious; /* events that carried no work (relaxed atomic; any thread reads) */
};
void ncd_vchan_eoi_arm(struct ncd_vchan_eoi *e, struct ncd_vchan *v);
int ncd_vchan_eoi_event(struct ncd_vchan_eoi *e, struct ncd_vchan *v);
int ncd_vchan_eoi_fd(const struct ncd_vchan_eoi *e, struct ncd_vchan *v);
int ncd_vchan_eoi_timeout(const struct ncd_vchan_eoi *e, int timeout_ms);
int ncd_vchan_eoi_tick(struct ncd_vchan_eoi *e, struct ncd_vchan *v);
int ncd_vchan_eoi_work(struct ncd_vchan_eoi *e, struct ncd_vchan *v);
uint64_t ncd_vchan_eoi_spurious(const struct ncd_vchan_eoi *e);

/* 0 closed (peer closed, we closed, or hostile), 1 open, 2 server waiting for
 * the client.  Data the peer wrote before closing stays readable. */
int ncd_vchan_is_open(struct ncd_vchan *v);

/* Bytes readable now; also asks the peer to notify us when it writes.
 * -1 (errno EPROTO) if the peer is hostile. */
ssize_t ncd_vchan_data_ready(struct ncd_vchan *v);
/* Bytes writable now; also asks the peer to notify us when it reads.
 * -1 (EPROTO hostile, EPIPE closed). */
ssize_t ncd_vchan_buffer_space(struct ncd_vchan *v);

/* Stream read: copies up to n bytes, returns the count; 0 when nothing is
 * ready (check is_open() for EOF); -1 with EPROTO if hostile. */
ssize_t ncd_vchan_read(struct ncd_vchan *v, void *buf, size_t n);
/* Stream write: copies up to n bytes, returns the count (0 = ring full);
 * -1 with EPIPE if the channel is closed, EPROTO if hostile. */
ssize_t ncd_vchan_write(struct ncd_vchan *v, const void *buf, size_t n);

/*
 * Zero-copy (for the pump).
 * read_iov: fills iov[0..1] with up to `max` readable bytes in ring memory
 * (two entries when the data wraps); returns the iovcnt (0 = nothing ready),
 * -1 with EPROTO if hostile.  When it returns fewer than `max` bytes it has
 * asked the peer to notify on write.  The iovs stay valid until the commit.
 * read_commit: consume n bytes (n <= the bytes of the last read_iov; larger n
 * is clamped), publish cons after a full barrier, notify the peer if it asked.
 * The rest of the window stays valid: several commits may follow one *_iov
 * call (their sum is clamped to what it handed out), so a caller can hand the
 * space of each large record back while it works on the next.  read() and
 * write() are a read_iov / write_iov and a commit of that whole window of their
 * own, so they end any window handed out before: a commit after them is
 * clamped to 0 (it publishes nothing).
 * write_iov / write_commit: the same for free space in the write ring; the
 * caller fills the iovs, then write_commit(n) publishes prod after a release
 * barrier and notifies the peer if it asked.  write_iov returns -1 with EPIPE
 * once the channel is closed.
 */
int ncd_vchan_read_iov(struct ncd_vchan *v, struct iovec iov[2], size_t max);
void ncd_vchan_read_commit(struct ncd_vchan *v, size_t n);
int ncd_vchan_write_iov(struct ncd_vchan *v, struct iovec iov[2], size_t max);
void ncd_vchan_write_commit(struct ncd_vchan *v, size_t n);

/*
 * Blocking waits (cext/vchan/vchan_wait.c): until at least n bytes are readable
 * (wait_data) or writable (wait_space).  First spins for up to spin_us
 * microseconds re-reading only the peer's index (no notification requested, so a
 * busy peer makes no syscall for us), then requests a notification and sleeps on
 * the event channel.  timeout_ms < 0 waits for ever.  Returns the bytes
 * readable / writable (>= n), 0 on timeout, or -1 with errno: EINVAL (n larger
 * than the ring), EPIPE (peer closed; for wait_data: and fewer than n bytes are
 * left), EPROTO (hostile peer).  One thread waits on a vchan at a time, and not
 * while a pump runs on it.
 */
ssize_t ncd_vchan_wait_data(struct ncd_vchan *v, size_t n, unsigned spin_us, int timeout_ms);
ssize_t ncd_vchan_wait_space(struct ncd_vchan *v, size_t n, unsigned spin_us, int timeout_ms);

/* Readable / writable bytes from one validated read of the peer's index, without
 * asking the peer to notify (for spinning: vchan_wait.c, the switch); -1 when
 * hostile or closed by a bad value. */
int64_t ncd_vchan_peek_data(struct ncd_vchan *v);
int64_t ncd_vchan_peek_space(struct ncd_vchan *v);

/* Set our notify requests in the peer's notify byte (then a full barrier):
 * on_read: "notify me when you consume", on_write: "notify me when you write".
 * Re-check data_ready / buffer_space after calling it. */
void ncd_vchan_request_notify(struct ncd_vchan *v, int on_read, int on_write);

/* Static string naming the hostile value that closed the channel, else NULL. */
const char *ncd_vchan_close_reason(struct ncd_vchan *v);
void ncd_vchan_get_stats(struct ncd_vchan *v, struct ncd_vchan_stats *out);
/* Ring sizes in bytes (our read ring, our write ring). */
size_t ncd_vchan_read_size(struct ncd_vchan *v);
size_t ncd_vchan_write_size(struct ncd_vchan *v);
/* Bytes we have written that the peer has not consumed yet (0 if hostile). */
size_t ncd_vchan_unconsumed(struct ncd_vchan *v);
/* Foreign-page tracker (cext/tracker/tracker.h): a client registers every page it
 * maps (control page + ring pages, each with the peer's domid and grant ref) in
 * ncd_tracker_process() with ctxt = the vchan, and close() unregisters them.  The
 * count of pages this vchan has tracked now: 0 for servers and local pairs. */
unsigned ncd_vchan_tracked_pages(struct ncd_vchan *v);

/* Mark our side closed, notify, release grants, mappings and port; free v.
 * NULL is ignored.  Call exactly once per handle. */
void ncd_vchan_close(struct ncd_vchan *v);

/*
 * Relay infd -> vchan and vchan -> outfd at once (zero-copy readv/writev into the
 * rings) until: infd reached EOF and the peer consumed everything (returns 0), or
 * the peer closed and what was left in the ring went to outfd (returns 0).  Both
 * fds must be non-blocking.  -1 with errno and err on failure (EPROTO: hostile
 * peer; EINTR: a signal arrived, call again to continue).
 */
int ncd_vchan_relay(struct ncd_vchan *v, int infd, int outfd, char *err, size_t errlen);

/*
 * In-memory pairs (tests, benchmarks): both ends live in this process, the
 * control page and rings in ordinary memory, "grant refs" index the server's
 * pages, notifications go to an eventfd of the peer (fd() is that eventfd).
 * local_client validates the control page exactly like client_init.
 */
int ncd_vchan_local_server(struct ncd_vchan **out, size_t read_min, size_t write_min,
                           char *err, size_t errlen);
int ncd_vchan_local_client(struct ncd_vchan **out, struct ncd_vchan *server, char *err,
                           size_t errlen);
/* The 4096-byte shared control page (struct vchan_interface), for tests. */
void *ncd_vchan_shared_page(struct ncd_vchan *v);

#endif
