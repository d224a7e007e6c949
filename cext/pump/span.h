/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * A span: up to two iovecs over ring memory (a window that may wrap), and the few
 * operations the pump and the switch do on one (slice, copy out/in, address at an
 * offset). Every offset is checked against the span's own lengths: callers pass
 * offsets within a record they already validated, and a short span yields fewer
 * bytes, never an access outside it.
 */
#ifndef NCD_SPAN_H
#define NCD_SPAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

struct span {
    struct iovec iov[2];
    int cnt;
    size_t len;
};

static inline void span_init(struct span *s, int cnt)
{
    s->cnt = cnt < 0 ? 0 : (cnt > 2 ? 2 : cnt);
    s->len = 0;
    for (int i = 0; i < s->cnt; i++)
        s->len += s->iov[i].iov_len;
}

/* bytes [off, off+len) of s as at most two iovecs */
static inline int span_slice(const struct span *s, size_t off, size_t len, struct iovec *out)
{
    int n = 0;

    for (int i = 0; i < s->cnt && len; i++) {
        size_t l = s->iov[i].iov_len;
        if (off >= l) {
            off -= l;
            continue;
        }
        size_t take = l - off < len ? l - off : len;
        out[n].iov_base = (uint8_t *)s->iov[i].iov_base + off;
        out[n].iov_len = take;
        n++;
        len -= take;
        off = 0;
    }
    return n;
}

static inline void span_sub(const struct span *s, size_t off, size_t len, struct span *out)
{
    span_init(out, 0);
    out->cnt = span_slice(s, off, len, out->iov);
    span_init(out, out->cnt);
}

static inline void span_copy_out(const struct span *s, size_t off, void *dst, size_t len)
{
    struct iovec part[2];
    int n = span_slice(s, off, len, part);
    uint8_t *d = dst;

    for (int i = 0; i < n; i++) {
        memcpy(d, part[i].iov_base, part[i].iov_len);
        d += part[i].iov_len;
    }
}

static inline void span_copy_in(const struct span *s, size_t off, const void *src, size_t len)
{
    struct iovec part[2];
    int n = span_slice(s, off, len, part);
    const uint8_t *c = src;

    for (int i = 0; i < n; i++) {
        memcpy(part[i].iov_base, c, part[i].iov_len);
        c += part[i].iov_len;
    }
}

/* address of byte off of s and how many bytes follow it contiguously */
static inline uint8_t *span_at(const struct span *s, size_t off, size_t *contig)
{
    for (int i = 0; i < s->cnt; i++) {
        if (off < s->iov[i].iov_len) {
            *contig = s->iov[i].iov_len - off;
            return (uint8_t *)s->iov[i].iov_base + off;
        }
        off -= s->iov[i].iov_len;
    }
    *contig = 0;
    return NULL;
}

#endif
