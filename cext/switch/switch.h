/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd switch: ports and a learning L2 switch run by a C thread (docs/forwarding.md).
 *
 * A port is one place frames enter and leave the daemon:
 *   MAPPED   a vchan whose pages we map (a vif we back: the guest's memory),
 *            every ring page registered in the foreign-page tracker;
 *   GRANTED  a vchan whose pages we grant (a device we front: our own memory);
 *   TAP      a packet-mode fd (TAP with IFF_VNET_HDR, SOCK_SEQPACKET socket).
 * The kind of a vchan port is found from the tracker (a vchan with tracked pages
 * is MAPPED).
 *
 * One thread per switch reads every port and copies each frame once, from the
 * source ring straight into the destination ring(s) (memcpy mode) or has the
 * hypervisor do it with one xengnttab_grant_copy call per batch (grant mode).
 * Records on the rings are the ncd record format (cext/pump/frame.h).
 *
 * Threads: add/remove/stats/fdb/accounting may be called from any thread at any
 * time; ncd_switch_remove_port() returns only once the switch thread has passed
 * a quiescent point after the removal, so the caller may then close the vchan
 * (unmap its pages) or the fd.  ncd_switch_destroy() must not race other calls.
 * The thread never prints: a port that stops on its own records a reason
 * (ncd_switch_port_reason) and makes events_fd readable.
 */
#ifndef NCD_SWITCH_H
#define NCD_SWITCH_H

#include <stddef.h>
#include <stdint.h>

struct ncd_vchan;
struct ncd_switch; /* opaque */

#define NCD_SWITCH_MAX_PORTS 64u
#define NCD_SWITCH_FDB_SIZE 4096u     /* learned MACs (1024 buckets of 4) */
#define NCD_SWITCH_ACCT_SIZE 1024u    /* (origin, destination) pairs */
#define NCD_SWITCH_MAX_IPS 8u         /* per family per port */
#define NCD_SWITCH_DEFAULT_AGEING_MS 300000u
#define NCD_DOMID_SELF 0x7FF0u        /* Xen's DOMID_SELF: "this domain" */

enum ncd_switch_copy {
    NCD_SWITCH_COPY_MEMCPY = 0, /* copy between mapped rings */
    NCD_SWITCH_COPY_GRANT = 1,  /* xengnttab_grant_copy from the origin's grant */
};

enum ncd_switch_port_kind {
    NCD_SWITCH_PORT_MAPPED = 1,
    NCD_SWITCH_PORT_GRANTED = 2,
    NCD_SWITCH_PORT_TAP = 3,
};

enum ncd_switch_port_state {
    NCD_SWITCH_PORT_UP = 0,
    NCD_SWITCH_PORT_REMOVED = 1,     /* reserved: a removed port is gone (ENOENT) */
    NCD_SWITCH_PORT_PEER_CLOSED = 2, /* the vchan closed (what was complete was forwarded) */
    NCD_SWITCH_PORT_BAD_PEER = 3,    /* bad record / hostile ring value: close the channel */
    NCD_SWITCH_PORT_FD_ERROR = 4,    /* the TAP fd failed */
    NCD_SWITCH_PORT_UNTRACKED = 5,   /* a mapped ring page vanished from the tracker */
};

struct ncd_switch_config {
    uint32_t copy_mode; /* enum ncd_switch_copy */
    uint32_t ageing_ms; /* MAC ageing; 0 = NCD_SWITCH_DEFAULT_AGEING_MS */
    uint32_t batch;     /* frames per source port per round; 0 = 64 */
    uint32_t manual_clock; /* 1: time only moves by ncd_switch_set_time (tests) */
    uint16_t self_domid;   /* accounted origin of our own memory (TAP); 0 = NCD_DOMID_SELF */
};

struct ncd_switch_port_config {
    struct ncd_vchan *vchan; /* a vchan port, or NULL for a TAP port */
    int fd;                  /* TAP port: packet-mode fd (made O_NONBLOCK, never closed) */
    uint16_t domid;          /* the domain on the other side (guest of a vif) */
    uint8_t mac[6];          /* the MAC this port may send with (unless trunk) */
    uint8_t trunk;           /* 1: any source MAC/IP (a downstream driver domain, the uplink) */
    uint8_t pad;
    uint32_t max_frame;      /* negotiated largest frame, both ways; 0 = NCD_ETH_MAX */
    uint32_t rx_features;    /* NCD_FEAT_* this port may send us */
    uint32_t tx_features;    /* NCD_FEAT_* we may send to this port */
    uint32_t n_ipv4, n_ipv6; /* 0: that family is not checked */
    uint8_t ipv4[NCD_SWITCH_MAX_IPS][4];
    uint8_t ipv6[NCD_SWITCH_MAX_IPS][16];
};

/* Per-port counters, monotonically increasing. "rx" = entered the switch from
 * this port, "tx" = left the switch through this port. */
struct ncd_switch_port_stats {
    uint64_t rx_frames, rx_bytes;    /* Ethernet bytes */
    uint64_t tx_frames, tx_bytes;
    uint64_t flooded;                /* rx frames sent to every other port */
    uint64_t spoofed_source;         /* rx frames dropped by the anti-spoofing check */
    uint64_t filtered_same_port;     /* rx frames whose destination lives on this port */
    uint64_t no_destination;         /* rx frames with no other port to go to */
    uint64_t bad_record;             /* records from the peer that failed validation */
    uint64_t drop_ring_full;         /* tx: this port's ring (or fd) was full */
    uint64_t drop_offload;           /* tx: an offload this port did not negotiate that
                                        could not be fixed (unsupported headers, too
                                        many segments, headers larger than max_frame) */
    uint64_t drop_too_big;           /* tx: larger than this port's max_frame or ring */
    uint64_t drop_copy_failed;       /* tx: a grant copy segment failed */
    uint64_t drop_fd_write;          /* tx: writev to the TAP failed */
    uint64_t grant_copy_segs;        /* tx: grant-copy segments issued towards this port */
    uint64_t batches;                /* rx rounds that moved at least one record */
    uint64_t mac_moves;              /* source MACs relearned onto this port */
    uint64_t bad_ring;               /* hostile ring values from the peer (index, live flag) */
    /* offload fix-ups (docs/forwarding.md, "Offloads across ports") */
    uint64_t offload_fixed;          /* tx: frames made acceptable (checksum completed,
                                        flag cleared, segmented) for this port */
    uint64_t gso_segments;           /* tx: segments software GSO produced for this port */
    uint64_t drop_bad_headers;       /* rx: GSO frames whose headers are malformed (IP
                                        version/IHL/length, TCP/UDP header, protocol) */
    uint64_t notify_spurious;        /* events that carried no work (late EOI, vchan_eoi.c) */
};

/* Bytes and frames of one (origin domain, destination domain) pair. */
struct ncd_switch_acct {
    uint16_t origin, dest;
    uint64_t frames, bytes;
};

struct ncd_switch_fdb_entry {
    uint8_t mac[6];
    int32_t port;
    uint64_t age_ms;
};

struct ncd_switch_info {
    uint64_t rounds, wakeups, grant_copy_calls, grant_copy_segs, fdb_entries;
    uint32_t ports;
    uint32_t copy_mode;
};

int ncd_switch_create(struct ncd_switch **out, const struct ncd_switch_config *cfg, char *err,
                      size_t errlen);
/* Add a port; returns its id (0..NCD_SWITCH_MAX_PORTS-1) or -1 with err. */
int ncd_switch_add_port(struct ncd_switch *sw, const struct ncd_switch_port_config *pc, char *err,
                        size_t errlen);
/* Remove a port: after return the switch thread never touches its vchan/fd
 * again (quiescent-state handshake, see docs/forwarding.md).  `final` (may be
 * NULL) gets the port's last counters.  0, or -1 (errno ENOENT). */
int ncd_switch_remove_port(struct ncd_switch *sw, int port, struct ncd_switch_port_stats *final);
int ncd_switch_port_stats(struct ncd_switch *sw, int port, struct ncd_switch_port_stats *out);
/* enum ncd_switch_port_state, or -1 (no such port). */
int ncd_switch_port_state(struct ncd_switch *sw, int port);
int ncd_switch_port_kind(struct ncd_switch *sw, int port);
/* Copies the port's reason (why it stopped) into buf; "" while UP. */
void ncd_switch_port_reason(struct ncd_switch *sw, int port, char *buf, size_t len);
/* Up to max (origin, dest) entries; returns the count. */
unsigned ncd_switch_accounting(struct ncd_switch *sw, struct ncd_switch_acct *out, unsigned max);
/* Up to max learned, not yet aged, entries; returns the count. */
unsigned ncd_switch_fdb(struct ncd_switch *sw, struct ncd_switch_fdb_entry *out, unsigned max);
void ncd_switch_get_info(struct ncd_switch *sw, struct ncd_switch_info *out);
/* The switch's clock in ms (manual or CLOCK_MONOTONIC); set it with manual_clock. */
uint64_t ncd_switch_time(struct ncd_switch *sw);
void ncd_switch_set_time(struct ncd_switch *sw, uint64_t now_ms);
/* eventfd readable when a port stopped on its own (read it, then look at states). */
int ncd_switch_events_fd(struct ncd_switch *sw);
/* Stop the thread and free; the ports' vchans/fds are left to the caller. */
void ncd_switch_destroy(struct ncd_switch *sw);

#endif
