/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd offload fix-ups (docs/forwarding.md, "Offloads across ports"): what a
 * forwarder does to a frame whose offloads the destination did not negotiate.
 *
 *   - a partial checksum (virtio NEEDS_CSUM) is completed: RFC 1071 over
 *     csum_start..end, stored at csum_start + csum_offset;
 *   - GSO (TCPv4, TCPv6, UDP_L4) is segmented in software: the headers are
 *     parsed and validated here, each segment gets its IP length (and IPv4 ID),
 *     TCP sequence number and flags or UDP length, and full checksums.
 *
 * Pure computation on private memory, no I/O.  Every header field comes from an
 * untrusted peer: it is read only through ncd_pkt_at(), which checks the bytes
 * asked for against both the private copy and the frame length.
 */
#ifndef NCD_OFFLOAD_H
#define NCD_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

/* Frame bytes the GSO parser looks at (a private copy of them): Ethernet, two
 * VLAN tags, IPv4 with options or IPv6, TCP with options (at most 142). */
#define NCD_GSO_HDR_MAX 256u
/* At most this many segments from one frame (a TCP MSS below 32 would need
 * more): beyond it the frame is not segmented (the destination drops it). */
#define NCD_GSO_MAX_SEGS 2048u

/* A bounds-checked view of untrusted bytes. */
struct ncd_pkt {
    const uint8_t *b;
    uint32_t len;
};

/* &p->b[off] when bytes [off, off + n) lie inside the view, else NULL. */
static inline const uint8_t *ncd_pkt_at(const struct ncd_pkt *p, uint32_t off, uint32_t n)
{
    if (off > p->len || n > p->len - off)
        return NULL;
    return p->b + off;
}

enum ncd_gso_err {
    NCD_GSO_OK = 0,
    NCD_GSO_BAD_L2 = 1,      /* truncated VLAN tag, or not IPv4/IPv6 */
    NCD_GSO_BAD_IP = 2,      /* IP version, IHL, length, a fragment */
    NCD_GSO_BAD_L4 = 3,      /* TCP/UDP header beyond the frame or the IP packet,
                                data offset, protocol not the gso_type's */
    NCD_GSO_UNSUPPORTED = 4, /* valid but not segmentable here (IPv6 extension headers) */
};

/* A parsed, validated GSO frame: offsets into the frame. */
struct ncd_gso {
    uint32_t l3, l4, hl; /* IP header, L4 header, payload start (= headers' length) */
    uint32_t end;        /* end of the IP packet (<= frame length) */
    uint8_t v6, proto;   /* IPv6?; 6 TCP, 17 UDP */
    uint16_t ip_id;      /* IPv4 identification of the first segment */
    uint32_t seq;        /* TCP sequence number of the first payload byte */
};

/* Parse the headers of a GSO frame (gso_type without the ECN bit).  hdr is a
 * private copy of the frame's first hdr_len bytes, frame_len the frame's length.
 * Returns enum ncd_gso_err. */
int ncd_gso_parse(const uint8_t *hdr, uint32_t hdr_len, uint32_t frame_len, uint8_t gso_type,
                  struct ncd_gso *g);

/* Number of segments of at most mss payload bytes (>= 1). */
static inline uint32_t ncd_gso_count(const struct ncd_gso *g, uint32_t mss)
{
    uint32_t pay = g->end - g->hl;
    return pay ? (pay + mss - 1) / mss : 1u;
}

/* seg holds one segment: the frame's headers (g->hl bytes) then n payload bytes,
 * which were at payload offset off of the frame; idx is its index, last whether
 * it is the last one.  Sets lengths, IPv4 ID and header checksum, TCP sequence
 * and flags (FIN/PSH on the last segment only, CWR on the first only) or UDP
 * length, and the full TCP/UDP checksum. */
void ncd_gso_fix_segment(uint8_t *seg, const struct ncd_gso *g, uint32_t idx, uint32_t off,
                         uint32_t n, int last);

/* RFC 1071: add bytes to a running sum (any length; chain only at even lengths),
 * fold to 16 bits.  Both in host byte order of 16-bit words: store the folded
 * result with memcpy. */
uint64_t ncd_csum_add(uint64_t sum, const void *p, size_t n);
uint16_t ncd_csum_fold(uint64_t sum);

/* Complete a partial checksum in frame f (len bytes): the sum of
 * f[start..len) (whose checksum field holds the pseudo-header sum, as virtio's
 * NEEDS_CSUM leaves it), complemented, stored at start + off.  -1 when the field
 * is not inside the frame. */
int ncd_csum_complete(uint8_t *f, uint32_t len, uint32_t start, uint32_t off);

#endif
