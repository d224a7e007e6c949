/* Record codec entry points: encode one record, parse a stream of records. */
#include "pump.h"

size_t ncd_frame_encode(uint8_t *out, size_t outlen, const uint8_t *vnet_hdr,
                        const uint8_t *frame, size_t frame_len)
{
    size_t total = NCD_REC_HDR_SIZE + frame_len;

    if (frame_len < NCD_ETH_MIN || frame_len > NCD_ETH_MAX || outlen < total)
        return 0;
    ncd_le32_put(out, (uint32_t)(NCD_VNET_HDR_SIZE + frame_len));
    memcpy(out + NCD_REC_LEN_SIZE, vnet_hdr, NCD_VNET_HDR_SIZE);
    memcpy(out + NCD_REC_HDR_SIZE, frame, frame_len);
    return total;
}

int ncd_frame_parse(const uint8_t *buf, size_t n, uint32_t max_frame, uint32_t features,
                    size_t ring_size, uint32_t *records, size_t *consumed)
{
    size_t off = 0;
    uint32_t count = 0;
    int rc = NCD_FRAME_OK;

    while (off < n) {
        size_t left = n - off;
        uint32_t rec_len;
        struct ncd_vnet_hdr h;

        if (left < NCD_REC_LEN_SIZE) {
            rc = NCD_FRAME_INCOMPLETE;
            break;
        }
        rec_len = ncd_le32_get(buf + off);
        rc = ncd_frame_check_len(rec_len, max_frame, ring_size);
        if (rc != NCD_FRAME_OK)
            break;
        if (left - NCD_REC_LEN_SIZE < rec_len) {
            rc = NCD_FRAME_INCOMPLETE;
            break;
        }
        ncd_vnet_decode(buf + off + NCD_REC_LEN_SIZE, &h);
        rc = ncd_frame_check_vnet(&h, rec_len - NCD_VNET_HDR_SIZE, features);
        if (rc != NCD_FRAME_OK)
            break;
        off += NCD_REC_LEN_SIZE + rec_len;
        count++;
    }
    if (records)
        *records = count;
    if (consumed)
        *consumed = off;
    return rc;
}

const char *ncd_frame_strerror(int err)
{
    return ncd_frame_err_name(err);
}
