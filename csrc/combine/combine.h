#pragma once

#include <cuda_runtime.h>

#include "common/decode_params.h"

namespace flash_mla_backend {

// Merges the partial outputs of split requests (out_accum, lse_accum) into out and lse.
// Requests with a single split were written by the decode kernel and are left alone.
template <typename Element>
void launch_combine(const DecodeParams& params, cudaStream_t stream);

}  // namespace flash_mla_backend
