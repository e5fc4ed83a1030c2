#include "combine/combine.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

namespace flash_mla_backend {
namespace {

constexpr int kRowsPerCta = 4;  // one warp per query row
constexpr int kColsPerLane = kHeadDimV / 32;

__device__ __forceinline__ void store4(__nv_bfloat16* dst, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}

__device__ __forceinline__ void store4(__half* dst, float4 v) {
  __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}

template <typename Element>
__global__ void __launch_bounds__(32 * kRowsPerCta) combine_kernel(const __grid_constant__ DecodeParams p) {
  const int req = blockIdx.z, kv_head = blockIdx.y;
  const int q_row = blockIdx.x * kRowsPerCta + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int first_split = p.num_splits[req];
  const int num_splits = p.num_splits[req + 1] - first_split;
  if (num_splits <= 1 || q_row >= p.rows_per_kv_head) return;

  // Index of split s's partial row for this (kv head, query row).
  auto partial_index = [&](int s) {
    return (int64_t(accum_row(req, first_split, s)) * p.h_kv + kv_head) * p.rows_per_kv_head + q_row;
  };
  // A num_splits that is not get_mla_metadata's can name rows outside the workspace (the decode
  // kernels wrote nothing there): NaN, without reading them.
  const bool in_workspace =
      accum_row(req, first_split, 0) >= 0 && accum_row(req, first_split, num_splits - 1) < num_accum_rows(p.num_sm_parts);

  // Total LSE over the splits (base 2). fmaxf skips NaN, so NaN is tracked on its own.
  float max_lse = -CUDART_INF_F;
  bool any_nan = !in_workspace;
  for (int s = lane; in_workspace && s < num_splits; s += 32) {
    const float lse = p.lse_accum[partial_index(s)];
    max_lse = fmaxf(max_lse, lse);
    any_nan |= isnan(lse);
  }
  for (int offset = 16; offset > 0; offset /= 2) max_lse = fmaxf(max_lse, __shfl_xor_sync(0xffffffff, max_lse, offset));
  any_nan = __any_sync(0xffffffff, any_nan);
  float sum = 0.f;
  if (max_lse != -CUDART_INF_F)
    for (int s = lane; s < num_splits; s += 32) sum += exp2f(p.lse_accum[partial_index(s)] - max_lse);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
  const bool seen = max_lse != -CUDART_INF_F;
  const float total_lse = any_nan ? CUDART_NAN_F : seen ? max_lse + log2f(sum) : -CUDART_INF_F;

  const float init = in_workspace ? 0.f : CUDART_NAN_F;
  float4 acc[kColsPerLane / 4];
#pragma unroll
  for (int i = 0; i < kColsPerLane / 4; ++i) acc[i] = make_float4(init, init, init, init);
  if (seen || any_nan) {
    for (int s = 0; in_workspace && s < num_splits; ++s) {
      const int64_t row = partial_index(s);
      const float weight = exp2f(p.lse_accum[row] - total_lse);
      const float4* partial = reinterpret_cast<const float4*>(p.out_accum + row * kHeadDimV);
#pragma unroll
      for (int i = 0; i < kColsPerLane / 4; ++i) {
        const float4 v = partial[i * 32 + lane];
        acc[i].x += weight * v.x;
        acc[i].y += weight * v.y;
        acc[i].z += weight * v.z;
        acc[i].w += weight * v.w;
      }
    }
  }

  const QueryRow qr(p, kv_head, q_row);
  Element* out =
      static_cast<Element*>(p.out) + req * p.o_batch_stride + qr.token * p.o_seq_stride + qr.head * p.o_head_stride;
#pragma unroll
  for (int i = 0; i < kColsPerLane / 4; ++i) store4(out + (i * 32 + lane) * 4, acc[i]);
  if (lane == 0)
    p.lse[(int64_t(req) * p.h_q + qr.head) * p.s_q + qr.token] = total_lse == -CUDART_INF_F ? CUDART_INF_F : total_lse * kLn2;
}

}  // namespace

template <typename Element>
void launch_combine(const DecodeParams& params, cudaStream_t stream) {
  dim3 grid((params.rows_per_kv_head + kRowsPerCta - 1) / kRowsPerCta, params.h_kv, params.batch);
  combine_kernel<Element><<<grid, 32 * kRowsPerCta, 0, stream>>>(params);
}

template void launch_combine<__nv_bfloat16>(const DecodeParams&, cudaStream_t);
template void launch_combine<__half>(const DecodeParams&, cudaStream_t);

}  // namespace flash_mla_backend
