// The decode kernels the extension was built with, looked up by name from Python's planner.
#pragma once

#include <cuda_runtime.h>

#include "common/decode_params.h"

namespace flash_mla_backend {

using DecodeLauncher = void (*)(const DecodeParams& params, cudaStream_t stream);

// The (q, k_cache) dtypes a launcher takes. The kernels compute in the 16-bit type (bf16 for an
// FP8 q, whose values bf16 holds exactly) and write the output in it.
enum class DecodeInputs : int { kBf16, kFp16, kBf16QFp8Cache, kFp16QFp8Cache, kFp8QFp8Cache, kCount };

struct DecodeKernel {
  const char* name;
  int block_m;        // query rows per CTA tile; the planner sizes the schedule by it
  int smem_bytes;     // dynamic shared memory per CTA
  int min_cc_major, min_cc_minor;
  bool arch_specific;  // machine code for exactly min_cc (sm_90a), not for newer GPUs
  DecodeLauncher launchers[int(DecodeInputs::kCount)];  // indexed by DecodeInputs; nullptr where not taken

  DecodeLauncher launcher(DecodeInputs inputs) const { return launchers[int(inputs)]; }
  bool takes_fp8_cache() const { return launcher(DecodeInputs::kBf16QFp8Cache) != nullptr; }
};

// Contract of every decode kernel, for each scheduler part (see SchedulerPart) and each
// (request, kv head, query row) it covers over the part's page range:
//  - keys at or past cache_seqlens[req] do not contribute, whatever their cache rows hold (NaN
//    included); causally hidden keys (inside the length, a later query token's) get probability 0
//    but are real cache rows, read like the visible ones (as the reference does: a NaN there
//    reaches the output in both);
//  - a request with a single split writes `out` (normalised) and `lse` (natural log, +inf when
//    no key is visible) directly; a split request writes its normalised partial output to
//    out_accum and its log2 LSE (-inf when no key is visible) to lse_accum at its accum_row,
//    and the combine kernel merges them;
//  - misuse the host cannot see gives NaN (output and LSE) to the requests it touches and
//    leaves the others exact, with no read outside the inputs: cache_seqlens outside
//    [0, max_pages * 64]; a block id outside [0, num_blocks) among the pages the request
//    reads; a part whose length fingerprint does not match the lengths (a schedule made from
//    other cache_seqlens) poisons every request the part holds.
// Arrays terminated by an entry with name == nullptr.
const DecodeKernel* sm80_decode_kernels();
const DecodeKernel* sm90_decode_kernels();
const DecodeKernel* sm90_narrow_decode_kernels();

}  // namespace flash_mla_backend
