#include "combine/combine.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <stdexcept>
#include <string>

#include "common/dependent_launch.cuh"

namespace flash_mla_backend {
namespace {

constexpr int kThreads = 128;       // 4 warps
constexpr int kFloat4InFlight = 8;  // partial-output loads each lane keeps in flight

__device__ __forceinline__ void store4(__nv_bfloat16* dst, float4 v) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}

__device__ __forceinline__ void store4(__half* dst, float4 v) {
  __half2 lo = __floats2half2_rn(v.x, v.y), hi = __floats2half2_rn(v.z, v.w);
  *reinterpret_cast<uint2*>(dst) = make_uint2(*reinterpret_cast<uint32_t*>(&lo), *reinterpret_cast<uint32_t*>(&hi));
}

// One CTA per kRowsPerCta query rows of a (request, kv head); the 4 / kRowsPerCta warps of a row
// each merge a slice of its 512 columns (lane l of slice w holds float4 columns
// (i * warps_per_row + w) * 32 + l), every warp computing the row's total LSE itself. The split
// loop keeps kFloat4InFlight loads per lane in flight: few rows with many splits (b = 1) are
// latency-bound otherwise.
// (The minimum of 1 CTA per SM lets ptxas take the registers that issue all in-flight loads
// before their sums; with its default it interleaved them, ~3 in flight.)
template <typename Element, int kRowsPerCta>
__global__ void __launch_bounds__(kThreads, 1) combine_kernel(const __grid_constant__ DecodeParams p) {
  constexpr int kWarpsPerRow = kThreads / 32 / kRowsPerCta;
  constexpr int kFloat4PerLane = kHeadDimV / 4 / (32 * kWarpsPerRow);
  constexpr int kSplitsInFlight = kFloat4InFlight / kFloat4PerLane;
  static_assert(kFloat4PerLane * 32 * kWarpsPerRow * 4 == kHeadDimV && kSplitsInFlight >= 1, "columns split evenly");
  wait_for_decode();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int req = blockIdx.z, kv_head = blockIdx.y;
  const int q_row = blockIdx.x * kRowsPerCta + warp / kWarpsPerRow, slice = warp % kWarpsPerRow;
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

  auto column4 = [&](int i) { return (i * kWarpsPerRow + slice) * 32 + lane; };  // float4 index in the row
  const float init = in_workspace ? 0.f : CUDART_NAN_F;
  float4 acc[kFloat4PerLane];
#pragma unroll
  for (int i = 0; i < kFloat4PerLane; ++i) acc[i] = make_float4(init, init, init, init);
  if (in_workspace && (seen || any_nan)) {
    for (int s0 = 0; s0 < num_splits; s0 += kSplitsInFlight) {
      // The loads of kSplitsInFlight splits first (unpredicated, so that they issue together:
      // past the end they reread the last split, which then weighs 0), then their sums.
      float lse[kSplitsInFlight];
      float4 v[kSplitsInFlight][kFloat4PerLane];
      int64_t rows[kSplitsInFlight];
#pragma unroll
      for (int u = 0; u < kSplitsInFlight; ++u) rows[u] = partial_index(min(s0 + u, num_splits - 1));
#pragma unroll
      for (int u = 0; u < kSplitsInFlight; ++u) {
        lse[u] = p.lse_accum[rows[u]];
#pragma unroll
        for (int i = 0; i < kFloat4PerLane; ++i)
          v[u][i] = __ldcs(reinterpret_cast<const float4*>(p.out_accum + rows[u] * kHeadDimV) + column4(i));
      }
#pragma unroll
      for (int u = 0; u < kSplitsInFlight; ++u) {
        const float weight = s0 + u < num_splits ? exp2f(lse[u] - total_lse) : 0.f;
#pragma unroll
        for (int i = 0; i < kFloat4PerLane; ++i) {
          acc[i].x += weight * v[u][i].x;
          acc[i].y += weight * v[u][i].y;
          acc[i].z += weight * v[u][i].z;
          acc[i].w += weight * v[u][i].w;
        }
      }
    }
  }

  const QueryRow qr(p, kv_head, q_row);
  Element* out =
      static_cast<Element*>(p.out) + req * p.o_batch_stride + qr.token * p.o_seq_stride + qr.head * p.o_head_stride;
#pragma unroll
  for (int i = 0; i < kFloat4PerLane; ++i) store4(out + column4(i) * 4, acc[i]);
  if (slice == 0 && lane == 0)
    p.lse[(int64_t(req) * p.h_q + qr.head) * p.s_q + qr.token] = total_lse == -CUDART_INF_F ? CUDART_INF_F : total_lse * kLn2;
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: combine kernel: ") + what + ": " + cudaGetErrorString(err));
}

// What the launch needs to know of a combine kernel on a device, asked once per device.
struct CombineKernelFacts {
  int resident_ctas = 0;          // CTAs the whole GPU holds at once
  bool waits_for_decode = false;  // its machine code waits for the decode (sm_90 and later), so
                                  // it may start before the decode has finished
};

template <typename Kernel>
const CombineKernelFacts& facts(Kernel* kernel, int device) {
  constexpr int kMaxDevices = 64;
  static CombineKernelFacts cached[kMaxDevices];
  CombineKernelFacts& f = cached[device < kMaxDevices ? device : kMaxDevices - 1];
  if (f.resident_ctas == 0) {
    cudaFuncAttributes attributes{};
    check(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes");
    int sms = 0, ctas_per_sm = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas_per_sm, kernel, kThreads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    f.waits_for_decode = attributes.binaryVersion >= 90;
    f.resident_ctas = sms * (ctas_per_sm > 0 ? ctas_per_sm : 1);
  }
  return f;
}

// Row groups of rows_per_cta per (request, kv head): the grid's x dimension.
int row_groups(const DecodeParams& params, int rows_per_cta) {
  return (params.rows_per_kv_head + rows_per_cta - 1) / rows_per_cta;
}

// Launches the kRowsPerCta form if its CTAs all fit on the GPU at once (or if it has the most
// rows per CTA); returns whether it did.
template <typename Element, int kRowsPerCta>
bool launch_if_resident(const DecodeParams& params, cudaStream_t stream, int device) {
  auto* kernel = combine_kernel<Element, kRowsPerCta>;
  const CombineKernelFacts& f = facts(kernel, device);
  const dim3 grid(unsigned(row_groups(params, kRowsPerCta)), params.h_kv, params.batch);
  if (kRowsPerCta < kThreads / 32 && int64_t(grid.x) * grid.y * grid.z > f.resident_ctas) return false;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  if (f.waits_for_decode) {
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  check(cudaLaunchKernelEx(&config, kernel, params), "launch");
  return true;
}

}  // namespace

template <typename Element>
void launch_combine(const DecodeParams& params, cudaStream_t stream) {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  // The fewest rows per CTA (the most loads in flight per row) whose CTAs all fit at once.
  launch_if_resident<Element, 1>(params, stream, device) || launch_if_resident<Element, 2>(params, stream, device) ||
      launch_if_resident<Element, 4>(params, stream, device);
}

template void launch_combine<__nv_bfloat16>(const DecodeParams&, cudaStream_t);
template void launch_combine<__half>(const DecodeParams&, cudaStream_t);

}  // namespace flash_mla_backend
