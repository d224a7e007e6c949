/* SPDX-License-Identifier: GPL-2.0-only */
/* ncd anti-spoofing: see antispoof.h and docs/forwarding.md ("Anti-spoofing").
 * The one implementation of the source lock, for the switch and the pump. */
#include "antispoof.h"

#include <string.h>

static uint16_t be16(const uint8_t *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

static int ip_listed(const uint8_t *a, const uint8_t (*list)[4], uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!memcmp(a, list[i], 4))
            return 1;
    return 0;
}

static int ip6_listed(const uint8_t *a, const uint8_t (*list)[16], uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (!memcmp(a, list[i], 16))
            return 1;
    return 0;
}

static const uint8_t ZERO16[16];

/* ND options (link-layer address) must carry the lock's MAC. 1 = spoofed. */
static int nd_opts_spoofed(const struct ncd_lock *l, const uint8_t *h, uint32_t off, uint32_t hl)
{
    while (off + 2 <= hl) {
        uint32_t olen = (uint32_t)h[off + 1] * 8u;
        if (olen == 0)
            return 1; /* a zero-length option is invalid (RFC 4861) */
        if ((h[off] == 1 || h[off] == 2) && olen == 8 && off + 8 <= hl &&
            memcmp(h + off + 2, l->mac, 6))
            return 1;
        off += olen;
    }
    return 0;
}

/* 1 when the frame's source is not the lock's to use. h = first hl bytes of
 * the frame (a private copy: what we check is what we send). */
int ncd_lock_spoofed(const struct ncd_lock *l, const uint8_t *h, uint32_t hl)
{
    uint32_t l3 = 14;
    uint16_t type;

    if (!l->enabled)
        return 0;
    if (hl < 14)
        return 1; /* cannot happen: frames are at least an Ethernet header */
    if (h[6] & 1)
        return 1; /* a group source address is never valid, trunk or not */
    if (l->trunk)
        return 0;
    if (memcmp(h + 6, l->mac, 6))
        return 1;
    type = be16(h + 12);
    if (type == 0x8100 || type == 0x88A8) {
        if (hl < 18)
            return 1;
        type = be16(h + 16);
        l3 = 18;
    }
    if (type == 0x0806) { /* ARP: sender hardware and protocol address */
        if (hl < l3 + 28)
            return 1;
        if (memcmp(h + l3 + 8, l->mac, 6))
            return 1;
        if (l->n_ipv4 && memcmp(h + l3 + 14, ZERO16, 4) &&
            !ip_listed(h + l3 + 14, l->ipv4, l->n_ipv4))
            return 1;
        return 0;
    }
    if (type == 0x0800 && l->n_ipv4) {
        if (hl < l3 + 20)
            return 1;
        const uint8_t *src = h + l3 + 12;
        if (ip_listed(src, l->ipv4, l->n_ipv4))
            return 0;
        /* 0.0.0.0 only for a DHCP client (UDP 68 -> 67) */
        uint32_t ihl = (uint32_t)(h[l3] & 15u) * 4u;
        if (!memcmp(src, ZERO16, 4) && h[l3 + 9] == 17 && ihl >= 20 && hl >= l3 + ihl + 4 &&
            be16(h + l3 + ihl) == 68 && be16(h + l3 + ihl + 2) == 67)
            return 0;
        return 1;
    }
    if (type == 0x86DD && l->n_ipv6) {
        if (hl < l3 + 40)
            return 1;
        const uint8_t *src = h + l3 + 8;
        uint8_t nh = h[l3 + 6];
        uint32_t icmp = l3 + 40;
        if (!memcmp(src, ZERO16, 16)) {
            /* the unspecified address: duplicate address detection (NS) and MLD
             * reports (behind a hop-by-hop header) only */
            if (nh == 0)
                return 0;
            if (nh != 58 || hl < icmp + 1 || (h[icmp] != 135 && h[icmp] != 143))
                return 1;
        } else if (!ip6_listed(src, l->ipv6, l->n_ipv6)) {
            return 1;
        }
        if (nh == 58 && hl >= icmp + 1) {
            uint8_t t = h[icmp];
            if (t == 136) { /* neighbour advertisement: the target must be ours */
                if (hl < icmp + 24 || !ip6_listed(h + icmp + 8, l->ipv6, l->n_ipv6))
                    return 1;
                return nd_opts_spoofed(l, h, icmp + 24, hl);
            }
            if (t == 135)
                return nd_opts_spoofed(l, h, icmp + 24, hl);
            if (t == 133)
                return nd_opts_spoofed(l, h, icmp + 8, hl);
        }
        return 0;
    }
    return 0;
}
