// Checks of what the host cannot check without a synchronisation: that a schedule was made from
// the lengths the decode is given. (The block ids a request reads are checked where each kernel
// reads them.) The decode kernels give the requests that fail NaN (see decode/decode_kernels.h).
#pragma once

#include "common/decode_params.h"

namespace flash_mla_backend {

// Row `part` of tile_scheduler_metadata. The request range is clamped to the batch, so that a
// schedule that is not get_mla_metadata's cannot send the kernel past cache_seqlens (its
// fingerprint then fails, and the requests get NaN).
__device__ __forceinline__ SchedulerPart load_scheduler_part(const DecodeParams& p, int part) {
  const int* md = p.tile_scheduler_metadata + part * kTileSchedulerMetadataSize;
  return SchedulerPart{max(md[0], 0), min(md[1], p.batch - 1), md[2], md[3], md[4], md[5]};
}

// Whether the part's requests have the lengths its schedule was made from. Warp-collective: the
// lanes share the loads and every lane gets the answer.
__device__ __forceinline__ bool part_matches_lengths(const DecodeParams& p, const SchedulerPart& part) {
  uint32_t sum = 0;
  for (int req = part.begin_req + int(threadIdx.x % 32); req <= part.end_req; req += 32)
    sum += length_fingerprint_term(req, p.cache_seqlens[req]);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum == uint32_t(part.length_fingerprint);
}

// part_matches_lengths for a CTA's part, computed the first time a request needs it and then
// remembered. Warp-collective like it: call it at the same points in every lane of a warp.
class PartLengthCheck {
 public:
  __device__ bool matches(const DecodeParams& p, const SchedulerPart& part) {
    if (state_ < 0) state_ = part_matches_lengths(p, part) ? 1 : 0;
    return state_ == 1;
  }

 private:
  int state_ = -1;  // -1: not checked yet, else 0 / 1
};

}  // namespace flash_mla_backend
