/* SPDX-License-Identifier: GPL-2.0-only */
/* ncd offload fix-ups: see offload.h and docs/forwarding.md. */
#include "offload.h"

#include <string.h>

#define ET_IPV4 0x0800u
#define ET_IPV6 0x86DDu
#define ET_VLAN 0x8100u
#define ET_QINQ 0x88A8u
#define GSO_TCPV4 1u /* virtio_net_hdr gso_type values (cext/pump/frame.h) */
#define GSO_TCPV6 4u
#define GSO_UDP_L4 5u
#define IPPROTO_TCP_ 6u
#define IPPROTO_UDP_ 17u
#define TCP_FIN 0x01u
#define TCP_PSH 0x08u
#define TCP_CWR 0x80u

static uint16_t be16(const uint8_t *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

static uint32_t be32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void put16(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static void put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

uint64_t ncd_csum_add(uint64_t sum, const void *p, size_t n)
{
    const uint8_t *b = p;

    /* RFC 1071 (B): the sum of 32-bit host-order words folds to the same 16-bit
     * ones' complement sum as 16-bit network-order words, byte-swapped */
    while (n >= 16) {
        uint32_t w[4];
        memcpy(w, b, 16);
        sum += (uint64_t)w[0] + w[1] + w[2] + w[3];
        b += 16;
        n -= 16;
    }
    while (n >= 4) {
        uint32_t w;
        memcpy(&w, b, 4);
        sum += w;
        b += 4;
        n -= 4;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, b, 2);
        sum += w;
        b += 2;
        n -= 2;
    }
    if (n) {
        uint8_t last[2] = {b[0], 0};
        uint16_t w;
        memcpy(&w, last, 2);
        sum += w;
    }
    return sum;
}

uint16_t ncd_csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFFu) + (sum >> 16);
    return (uint16_t)sum;
}

int ncd_csum_complete(uint8_t *f, uint32_t len, uint32_t start, uint32_t off)
{
    uint16_t c;

    if (start > len || off > len - start || len - start - off < 2)
        return -1;
    c = (uint16_t)~ncd_csum_fold(ncd_csum_add(0, f + start, len - start));
    if (c == 0 && off == 6)
        c = 0xFFFF; /* UDP: 0 means "no checksum"; send its other zero (RFC 768) */
    memcpy(f + start + off, &c, 2);
    return 0;
}

int ncd_gso_parse(const uint8_t *hdr, uint32_t hdr_len, uint32_t frame_len, uint8_t gso_type,
                  struct ncd_gso *g)
{
    /* the view: the private copy, never more than the frame */
    struct ncd_pkt p = {hdr, hdr_len < frame_len ? hdr_len : frame_len};
    const uint8_t *e, *ip, *l4;
    uint32_t l3 = 14, ihl, end;
    uint16_t et;
    uint8_t proto;

    memset(g, 0, sizeof *g);
    if (!(e = ncd_pkt_at(&p, 0, 14)))
        return NCD_GSO_BAD_L2;
    et = be16(e + 12);
    for (int tags = 0; (et == ET_VLAN || et == ET_QINQ) && tags < 2; tags++) {
        const uint8_t *t = ncd_pkt_at(&p, l3, 4);
        if (!t)
            return NCD_GSO_BAD_L2;
        et = be16(t + 2);
        l3 += 4;
    }
    if (et == ET_IPV4) {
        if (!(ip = ncd_pkt_at(&p, l3, 20)) || ip[0] >> 4 != 4)
            return NCD_GSO_BAD_IP;
        ihl = (uint32_t)(ip[0] & 15u) * 4u;
        if (ihl < 20 || !ncd_pkt_at(&p, l3, ihl))
            return NCD_GSO_BAD_IP;
        uint32_t tot = be16(ip + 2);
        if (tot == 0) {
            end = frame_len; /* a super-packet beyond 64 KiB leaves it 0 (BIG TCP) */
        } else {
            if (tot < ihl || tot > frame_len - l3)
                return NCD_GSO_BAD_IP;
            end = l3 + tot;
        }
        if (be16(ip + 6) & 0x3FFFu)
            return NCD_GSO_BAD_IP; /* a fragment (MF or an offset) cannot be GSO */
        proto = ip[9];
        g->ip_id = be16(ip + 4);
        g->l4 = l3 + ihl;
    } else if (et == ET_IPV6) {
        if (!(ip = ncd_pkt_at(&p, l3, 40)) || ip[0] >> 4 != 6)
            return NCD_GSO_BAD_IP;
        uint32_t plen = be16(ip + 4);
        if (plen == 0) {
            end = frame_len; /* BIG TCP: no jumbogram option in a GSO frame */
        } else {
            if (plen > frame_len - l3 - 40)
                return NCD_GSO_BAD_IP;
            end = l3 + 40 + plen;
        }
        proto = ip[6];
        if (proto != IPPROTO_TCP_ && proto != IPPROTO_UDP_)
            return NCD_GSO_UNSUPPORTED; /* extension headers: not segmented here */
        g->v6 = 1;
        g->l4 = l3 + 40;
    } else {
        return NCD_GSO_BAD_L2;
    }
    g->l3 = l3;
    g->end = end;
    g->proto = proto;
    switch (gso_type) {
    case GSO_TCPV4:
        if (g->v6 || proto != IPPROTO_TCP_)
            return NCD_GSO_BAD_L4;
        break;
    case GSO_TCPV6:
        if (!g->v6 || proto != IPPROTO_TCP_)
            return NCD_GSO_BAD_L4;
        break;
    case GSO_UDP_L4:
        if (proto != IPPROTO_UDP_)
            return NCD_GSO_BAD_L4;
        break;
    default:
        return NCD_GSO_BAD_L4;
    }
    if (proto == IPPROTO_TCP_) {
        if (!(l4 = ncd_pkt_at(&p, g->l4, 20)))
            return NCD_GSO_BAD_L4;
        uint32_t doff = (uint32_t)(l4[12] >> 4) * 4u;
        if (doff < 20 || !ncd_pkt_at(&p, g->l4, doff))
            return NCD_GSO_BAD_L4;
        g->hl = g->l4 + doff;
        g->seq = be32(l4 + 4);
    } else {
        if (!ncd_pkt_at(&p, g->l4, 8))
            return NCD_GSO_BAD_L4;
        g->hl = g->l4 + 8;
    }
    if (g->hl > g->end)
        return NCD_GSO_BAD_L4; /* headers past the end of the IP packet */
    return NCD_GSO_OK;
}

void ncd_gso_fix_segment(uint8_t *seg, const struct ncd_gso *g, uint32_t idx, uint32_t off,
                         uint32_t n, int last)
{
    uint8_t *ip = seg + g->l3, *l4 = seg + g->l4, ph[40];
    uint32_t l4len = g->hl - g->l4 + n;
    uint64_t sum;
    uint16_t c;

    if (!g->v6) {
        uint32_t ihl = g->l4 - g->l3;
        put16(ip + 2, ihl + l4len);
        put16(ip + 4, (uint16_t)(g->ip_id + idx));
        put16(ip + 10, 0);
        c = (uint16_t)~ncd_csum_fold(ncd_csum_add(0, ip, ihl));
        memcpy(ip + 10, &c, 2);
        memcpy(ph, ip + 12, 8); /* pseudo-header: source, destination, 0, proto, length */
        ph[8] = 0;
        ph[9] = g->proto;
        put16(ph + 10, l4len);
        sum = ncd_csum_add(0, ph, 12);
    } else {
        put16(ip + 4, l4len);
        memcpy(ph, ip + 8, 32); /* source, destination, length (32 bits), 0, next header */
        put32(ph + 32, l4len);
        ph[36] = ph[37] = ph[38] = 0;
        ph[39] = g->proto;
        sum = ncd_csum_add(0, ph, 40);
    }
    if (g->proto == IPPROTO_TCP_) {
        put32(l4 + 4, g->seq + off);
        if (!last)
            l4[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
        if (idx)
            l4[13] &= (uint8_t)~TCP_CWR;
        put16(l4 + 16, 0);
        c = (uint16_t)~ncd_csum_fold(ncd_csum_add(sum, l4, l4len));
        memcpy(l4 + 16, &c, 2);
    } else {
        put16(l4 + 4, l4len);
        put16(l4 + 6, 0);
        c = (uint16_t)~ncd_csum_fold(ncd_csum_add(sum, l4, l4len));
        if (c == 0)
            c = 0xFFFF;
        memcpy(l4 + 6, &c, 2);
    }
}
