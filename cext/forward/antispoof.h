/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ncd anti-spoofing: the source lock of a port (docs/forwarding.md, "Anti-spoofing").
 *
 * One implementation, used by the switch (frames entering from a port) and by the
 * frame pump (frames from the guest, ring -> TAP).  Pure computation on a private
 * copy of the frame's first bytes: the caller checks *its copy* and sends that copy,
 * so the peer cannot change what was checked.
 */
#ifndef NCD_ANTISPOOF_H
#define NCD_ANTISPOOF_H

#include <stdint.h>

#define NCD_LOCK_MAX_IPS 16u /* per family */
/* Frame bytes the check may look at: Ethernet, one VLAN tag, IPv6 + ICMPv6 ND
 * (header, target, options): callers copy min(len, NCD_LOCK_HEAD) bytes. */
#define NCD_LOCK_HEAD 128u

struct ncd_lock {
    uint8_t mac[6];  /* the only source MAC allowed (unless trunk) */
    uint8_t trunk;   /* 1: any unicast source MAC/IP (a downstream driver domain) */
    uint8_t enabled; /* 0: no lock at all (everything passes) */
    uint32_t n_ipv4, n_ipv6; /* 0: that family is not checked */
    uint8_t ipv4[NCD_LOCK_MAX_IPS][4];
    uint8_t ipv6[NCD_LOCK_MAX_IPS][16];
};

/* 1 when the frame's source is not the lock's to use (drop it, count
 * spoofed_source); 0 when it may pass.  h = the first hl bytes of the frame
 * (hl = min(frame length, NCD_LOCK_HEAD), at least 14).  A group source MAC is
 * refused whenever the lock is enabled, trunk or not. */
int ncd_lock_spoofed(const struct ncd_lock *l, const uint8_t *h, uint32_t hl);

#endif
