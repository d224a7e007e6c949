/* ncd frame record format, version 1 (see docs/protocol.md, the normative text).
 *
 * A vchan carries a byte stream; frames travel on it as a sequence of records:
 *
 *   offset 0   le32  rec_len      bytes that follow this field (vnet header + frame)
 *   offset 4   10 B  virtio_net_hdr, every 16-bit field little-endian
 *   offset 14  rec_len - 10 bytes  Ethernet frame (destination MAC first)
 *
 * Records are packed back to back with no padding and may wrap around the end
 * of the ring. Everything here is pure computation on bytes: no I/O, no vchan.
 */
#ifndef NCD_PUMP_FRAME_H
#define NCD_PUMP_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NCD_PROTOCOL_VERSION 1u

#define NCD_REC_LEN_SIZE 4u   /* the le32 length field */
#define NCD_VNET_HDR_SIZE 10u /* struct virtio_net_hdr without num_buffers */
#define NCD_REC_HDR_SIZE (NCD_REC_LEN_SIZE + NCD_VNET_HDR_SIZE)

#define NCD_ETH_MIN 14u /* an Ethernet header and nothing else */
/* 64 KiB of GSO payload plus headroom for Ethernet, two VLAN tags and an IPv6
 * header: the largest frame a TAP with IFF_VNET_HDR hands out with GSO on. */
#define NCD_ETH_MAX 65664u
#define NCD_REC_LEN_MIN (NCD_VNET_HDR_SIZE + NCD_ETH_MIN)
#define NCD_REC_LEN_MAX (NCD_VNET_HDR_SIZE + NCD_ETH_MAX)

/* virtio_net_hdr values (linux/virtio_net.h) */
#define NCD_VNET_F_NEEDS_CSUM 0x01u
#define NCD_VNET_F_DATA_VALID 0x02u
#define NCD_VNET_GSO_NONE 0u
#define NCD_VNET_GSO_TCPV4 1u
#define NCD_VNET_GSO_TCPV6 4u
#define NCD_VNET_GSO_UDP_L4 5u
#define NCD_VNET_GSO_ECN 0x80u

/* Feature bits, one per `feature-*` xenstore key (docs/protocol.md). The
 * receiver advertises what it accepts; a record using anything else is bad. */
#define NCD_FEAT_CSUM 0x01u      /* feature-csum: NEEDS_CSUM / DATA_VALID flags */
#define NCD_FEAT_GSO_TCPV4 0x02u /* feature-gso-tcpv4 */
#define NCD_FEAT_GSO_TCPV6 0x04u /* feature-gso-tcpv6 */
#define NCD_FEAT_GSO_UDP_L4 0x08u /* feature-gso-udp-l4 */
#define NCD_FEAT_ALL 0x0fu

/* Verdicts of the parser; 0 = good. Names in ncd_frame_err_name(). */
enum ncd_frame_err {
    NCD_FRAME_OK = 0,
    NCD_FRAME_SHORT = 1,         /* record shorter than vnet header + Ethernet header */
    NCD_FRAME_TOO_LONG = 2,      /* longer than the negotiated maximum frame */
    NCD_FRAME_OVER_RING = 3,     /* can never fit in the ring it travels in */
    NCD_FRAME_BAD_FLAGS = 4,     /* unknown flag bits, or csum flags not negotiated */
    NCD_FRAME_BAD_GSO = 5,       /* unknown gso_type, not negotiated, or gso_size 0 */
    NCD_FRAME_BAD_CSUM = 6,      /* csum_start + csum_offset + 2 beyond the frame */
    NCD_FRAME_BAD_HDR_LEN = 7,   /* GSO hdr_len beyond the frame */
    NCD_FRAME_INCOMPLETE = 8,    /* stream parser: truncated tail (not an error mid-stream) */
};

struct ncd_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len, gso_size, csum_start, csum_offset; /* host order after decode */
};

static inline uint32_t ncd_le32_get(const uint8_t b[4])
{
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

static inline void ncd_le32_put(uint8_t b[4], uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static inline uint16_t ncd_le16_get(const uint8_t b[2])
{
    return (uint16_t)(b[0] | (b[1] << 8));
}

static inline void ncd_vnet_decode(const uint8_t raw[NCD_VNET_HDR_SIZE], struct ncd_vnet_hdr *h)
{
    h->flags = raw[0];
    h->gso_type = raw[1];
    h->hdr_len = ncd_le16_get(raw + 2);
    h->gso_size = ncd_le16_get(raw + 4);
    h->csum_start = ncd_le16_get(raw + 6);
    h->csum_offset = ncd_le16_get(raw + 8);
}

/* Check a record length read from the stream: max_frame is the negotiated
 * largest Ethernet frame (<= NCD_ETH_MAX), ring_size the ring the record
 * travels in (0 = no ring bound). */
static inline int ncd_frame_check_len(uint32_t rec_len, uint32_t max_frame, size_t ring_size)
{
    if (rec_len < NCD_REC_LEN_MIN)
        return NCD_FRAME_SHORT;
    if (max_frame > NCD_ETH_MAX)
        max_frame = NCD_ETH_MAX;
    if (rec_len > NCD_VNET_HDR_SIZE + max_frame)
        return NCD_FRAME_TOO_LONG;
    if (ring_size && (size_t)rec_len + NCD_REC_LEN_SIZE > ring_size)
        return NCD_FRAME_OVER_RING;
    return NCD_FRAME_OK;
}

/* Check a decoded vnet header against the frame length and the features the
 * receiver advertised. */
static inline int ncd_frame_check_vnet(const struct ncd_vnet_hdr *h, uint32_t frame_len,
                                       uint32_t features)
{
    uint8_t gso = (uint8_t)(h->gso_type & ~NCD_VNET_GSO_ECN);

    if (h->flags & ~(NCD_VNET_F_NEEDS_CSUM | NCD_VNET_F_DATA_VALID))
        return NCD_FRAME_BAD_FLAGS;
    if (h->flags && !(features & NCD_FEAT_CSUM))
        return NCD_FRAME_BAD_FLAGS;
    if (h->flags & NCD_VNET_F_NEEDS_CSUM) {
        if ((uint32_t)h->csum_start + h->csum_offset + 2u > frame_len)
            return NCD_FRAME_BAD_CSUM;
    }
    switch (gso) {
    case NCD_VNET_GSO_NONE:
        if (h->gso_type & NCD_VNET_GSO_ECN)
            return NCD_FRAME_BAD_GSO;
        return NCD_FRAME_OK;
    case NCD_VNET_GSO_TCPV4:
        if (!(features & NCD_FEAT_GSO_TCPV4))
            return NCD_FRAME_BAD_GSO;
        break;
    case NCD_VNET_GSO_TCPV6:
        if (!(features & NCD_FEAT_GSO_TCPV6))
            return NCD_FRAME_BAD_GSO;
        break;
    case NCD_VNET_GSO_UDP_L4:
        if (!(features & NCD_FEAT_GSO_UDP_L4))
            return NCD_FRAME_BAD_GSO;
        break;
    default:
        return NCD_FRAME_BAD_GSO;
    }
    /* A GSO frame needs partial checksum offload, a segment size and headers
     * that lie inside the frame (what the kernel's virtio_net_hdr_to_skb wants). */
    if (!(h->flags & NCD_VNET_F_NEEDS_CSUM) || h->gso_size == 0)
        return NCD_FRAME_BAD_GSO;
    if (h->hdr_len > frame_len)
        return NCD_FRAME_BAD_HDR_LEN;
    return NCD_FRAME_OK;
}

static inline const char *ncd_frame_err_name(int err)
{
    switch (err) {
    case NCD_FRAME_OK: return "ok";
    case NCD_FRAME_SHORT: return "record shorter than vnet header + Ethernet header";
    case NCD_FRAME_TOO_LONG: return "record longer than the negotiated maximum frame";
    case NCD_FRAME_OVER_RING: return "record larger than the ring";
    case NCD_FRAME_BAD_FLAGS: return "bad or unnegotiated virtio_net_hdr flags";
    case NCD_FRAME_BAD_GSO: return "bad or unnegotiated virtio_net_hdr gso_type/gso_size";
    case NCD_FRAME_BAD_CSUM: return "virtio_net_hdr checksum position beyond the frame";
    case NCD_FRAME_BAD_HDR_LEN: return "virtio_net_hdr hdr_len beyond the frame";
    case NCD_FRAME_INCOMPLETE: return "incomplete record";
    default: return "unknown";
    }
}

#endif /* NCD_PUMP_FRAME_H */
