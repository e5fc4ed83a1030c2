#pragma once

#include <cuda_runtime.h>

namespace flash_mla_backend {

// Fills tile_scheduler_metadata [num_sm_parts, 8] and num_splits [batch + 1] from cache_seqlens,
// on the GPU (one CTA), with the algorithm of flash_mla_backend.reference.mla_metadata.
void launch_mla_metadata(const int* cache_seqlens, int batch, int num_sm_parts, int* tile_scheduler_metadata,
                         int* num_splits, cudaStream_t stream);

}  // namespace flash_mla_backend
