/* libFuzzer target: the frame record parser (cext/pump/frame.c, frame.h).
 *
 * Input: 8 bytes of parameters, then the byte stream a peer wrote into the ring.
 *   [0..3] le32 max_frame (used as is: values above NCD_ETH_MAX must be clamped)
 *   [4]    features (low 4 bits: NCD_FEAT_*; the high bits must be ignored)
 *   [5]    ring size: 0 = unbounded, else 1 << (10 + b % 11) (1 KiB .. 1 MiB)
 *   [6..7] reserved (ignored; keeps the seeds aligned)
 *   [8..]  records
 *
 * Asserts (abort = crash):
 *   - ncd_frame_parse never reads outside the buffer (ASan: the stream is copied
 *     into a heap block of exactly its size);
 *   - its verdict, record count and consumed bytes equal those of an independent
 *     reference written here from docs/protocol.md ("Validation by the receiver");
 *   - consumed <= n, and the consumed prefix re-parses to OK with the same count;
 *   - every accepted record re-encodes (ncd_frame_encode) to the same bytes;
 *   - ncd_frame_strerror names every verdict.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pump.h"

#define FUZZ_NAME "fuzz_frame"
#define FUZZ_CONTEXT ""
#include "fuzz_util.h"


static uint32_t le32(const uint8_t *b)
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint16_t le16(const uint8_t *b)
{
    return (uint16_t)(b[0] | b[1] << 8);
}

/* docs/protocol.md, rules 1..7 in order, for one record whose rec_len is known. */
static int ref_check_len(uint64_t rec_len, uint64_t max_frame, uint64_t ring)
{
    if (max_frame > 65664)
        max_frame = 65664;
    if (rec_len < 24)
        return NCD_FRAME_SHORT;
    if (rec_len > 10 + max_frame)
        return NCD_FRAME_TOO_LONG;
    if (ring && 4 + rec_len > ring)
        return NCD_FRAME_OVER_RING;
    return NCD_FRAME_OK;
}

static int ref_check_hdr(const uint8_t *v, uint64_t frame_len, uint32_t feat)
{
    unsigned flags = v[0], gso_type = v[1], gso = gso_type & 0x7f;
    uint64_t hdr_len = le16(v + 2), gso_size = le16(v + 4);
    uint64_t csum_start = le16(v + 6), csum_offset = le16(v + 8);
    int needs_csum = flags & 1;

    /* rule 4 */
    if (flags & ~3u)
        return NCD_FRAME_BAD_FLAGS;
    if (flags && !(feat & NCD_FEAT_CSUM))
        return NCD_FRAME_BAD_FLAGS;
    /* rule 5 */
    if (needs_csum && csum_start + csum_offset + 2 > frame_len)
        return NCD_FRAME_BAD_CSUM;
    /* rule 6 */
    if (gso == 0)
        return (gso_type & 0x80) ? NCD_FRAME_BAD_GSO : NCD_FRAME_OK; /* ECN without GSO */
    if (gso == 1 && !(feat & NCD_FEAT_GSO_TCPV4))
        return NCD_FRAME_BAD_GSO;
    if (gso == 4 && !(feat & NCD_FEAT_GSO_TCPV6))
        return NCD_FRAME_BAD_GSO;
    if (gso == 5 && !(feat & NCD_FEAT_GSO_UDP_L4))
        return NCD_FRAME_BAD_GSO;
    if (gso != 1 && gso != 4 && gso != 5)
        return NCD_FRAME_BAD_GSO;
    /* ECN is allowed with every GSO type version 1 knows (TCP and UDP_L4: the
     * parser treats it as a modifier of any GSO type) */
    if (!needs_csum || gso_size == 0)
        return NCD_FRAME_BAD_GSO;
    /* rule 7 */
    if (hdr_len > frame_len)
        return NCD_FRAME_BAD_HDR_LEN;
    return NCD_FRAME_OK;
}

static int ref_parse(const uint8_t *b, size_t n, uint32_t max_frame, uint32_t feat, size_t ring,
                     uint32_t *records, size_t *consumed)
{
    size_t off = 0;
    uint32_t count = 0;
    int rc = NCD_FRAME_OK;

    while (off < n) {
        uint64_t rec_len;
        if (n - off < 4) {
            rc = NCD_FRAME_INCOMPLETE;
            break;
        }
        rec_len = le32(b + off);
        rc = ref_check_len(rec_len, max_frame, ring);
        if (rc)
            break;
        if (n - off - 4 < rec_len) {
            rc = NCD_FRAME_INCOMPLETE;
            break;
        }
        rc = ref_check_hdr(b + off + 4, rec_len - 10, feat);
        if (rc)
            break;
        off += 4 + rec_len;
        count++;
    }
    *records = count;
    *consumed = off;
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t max_frame, features, records = 0xdeadbeef, ref_records, again;
    size_t ring, n, consumed = (size_t)-1, ref_consumed, again_consumed, off;
    uint8_t *buf;
    int rc, ref;

    if (size < 8)
        return -1; /* reject: not added to the corpus */
#ifdef FUZZ_SELFTEST /* scripts/fuzz.sh's own test (FUZZ_SELFTEST=1): a planted crash */
    if (data[6] == 'X')
        FUZZ_FAIL("fuzz_frame: planted crash (FUZZ_SELFTEST)\n");
#endif
    max_frame = le32(data);
    features = data[4]; /* high bits on purpose: the parser must ignore them */
    ring = data[5] ? (size_t)1 << (10 + data[5] % 11) : 0;
    n = size - 8;
    buf = malloc(n ? n : 1);
    CHECK(buf);
    memcpy(buf, data + 8, n);

    rc = ncd_frame_parse(buf, n, max_frame, features, ring, &records, &consumed);
    ref = ref_parse(buf, n, max_frame, features & NCD_FEAT_ALL, ring, &ref_records,
                    &ref_consumed);
    if (rc != ref || records != ref_records || consumed != ref_consumed) {
        FUZZ_FAIL("fuzz_frame: parser %d (%s) records %u consumed %zu, reference %d (%s) "
                "records %u consumed %zu; max_frame %u features %#x ring %zu n %zu\n",
                rc, ncd_frame_strerror(rc), records, consumed, ref, ncd_frame_strerror(ref),
                ref_records, ref_consumed, max_frame, features, ring, n);
    }
    CHECK(consumed <= n);
    CHECK(rc >= NCD_FRAME_OK && rc <= NCD_FRAME_INCOMPLETE);
    CHECK(strcmp(ncd_frame_strerror(rc), "unknown") != 0);
    CHECK((rc == NCD_FRAME_OK) == (consumed == n));

    /* the good prefix parses cleanly on its own; NULL out-pointers are allowed */
    CHECK(ncd_frame_parse(buf, consumed, max_frame, features, ring, &again,
                          &again_consumed) == NCD_FRAME_OK);
    CHECK(again == records && again_consumed == consumed);
    (void)ncd_frame_parse(buf, n, max_frame, features, ring, NULL, NULL);

    /* every accepted record is exactly what the encoder makes of its parts */
    for (off = 0; off < consumed;) {
        uint32_t rec_len = le32(buf + off);
        size_t frame_len = rec_len - NCD_VNET_HDR_SIZE, got;
        uint8_t *enc = malloc(NCD_REC_HDR_SIZE + frame_len);
        CHECK(enc);
        got = ncd_frame_encode(enc, NCD_REC_HDR_SIZE + frame_len, buf + off + 4, buf + off + 14,
                               frame_len);
        CHECK(got == 4 + (size_t)rec_len);
        CHECK(memcmp(enc, buf + off, got) == 0);
        /* one byte too little room: refused, nothing claimed written */
        CHECK(ncd_frame_encode(enc, got - 1, buf + off + 4, buf + off + 14, frame_len) == 0);
        free(enc);
        off += 4 + (size_t)rec_len;
    }
    free(buf);
    return 0;
}
