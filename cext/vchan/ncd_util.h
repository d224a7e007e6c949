/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Small helpers shared by the C hot path (cext/vchan, cext/pump): the one error
 * helper and the one spin-wait hint.  Header-only, so every build that compiles
 * any of these sources (the cffi extension, bench/ring_bench.c) gets them.
 */
#ifndef NCD_UTIL_H
#define NCD_UTIL_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/*
 * Failure of a setup call: formats the message into err (when err/errlen are
 * given), sets errno to e (unless e is 0: errno is left as it is) and returns -1,
 * so a caller writes `return ncd_fail(err, errlen, e, "what: %s", strerror(e));`.
 */
static inline int ncd_fail(char *err, size_t errlen, int e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static inline int ncd_fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    if (e)
        errno = e;
    return -1;
}

/* Inside a spin loop: tell the CPU we are waiting (PAUSE / YIELD). */
#if defined(__x86_64__) || defined(__i386__)
#define ncd_cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define ncd_cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define ncd_cpu_relax() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#endif

#endif
