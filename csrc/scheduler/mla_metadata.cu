// The split-KV scheduler. Each request costs its page count plus kFixedRequestCost units; part p
// takes units [p * cap, (p + 1) * cap) with cap = ceil(total / num_sm_parts). A boundary that falls
// in a request's fixed cost moves to the request's start, so every split holds at least one page.
// Each part's row also carries a fingerprint of its requests' lengths (SchedulerPart), which the
// decode kernels compare with the lengths they are given.
#include "scheduler/mla_metadata.h"

#include "common/decode_params.h"

namespace flash_mla_backend {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ int num_pages(int seqlen) { return (max(seqlen, 0) + kPageSize - 1) / kPageSize; }

// Exclusive prefix sum over the CTA; also returns the CTA's total.
__device__ int exclusive_scan(int value, int& total, int* warp_totals) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = value;
  for (int offset = 1; offset < 32; offset *= 2) {
    const int other = __shfl_up_sync(0xffffffff, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  int warp_offset = 0;
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) warp_offset += warp_totals[w];
    total += warp_totals[w];
  }
  __syncthreads();  // warp_totals is reused by the next scan
  return warp_offset + inclusive - value;
}

__global__ void __launch_bounds__(kThreads) mla_metadata_kernel(const int* __restrict__ cache_seqlens, int batch,
                                                                int num_parts, int* __restrict__ metadata,
                                                                int* __restrict__ num_splits) {
  extern __shared__ int boundaries[];  // per boundary p in [0, num_parts]: request, page, ordinal
  int* boundary_req = boundaries;
  int* boundary_page = boundary_req + num_parts + 1;
  int* boundary_ordinal = boundary_page + num_parts + 1;
  __shared__ int warp_totals[kWarps];

  int total_cost = 0;
  for (int base = 0; base < batch; base += kThreads) {
    const int i = base + threadIdx.x;
    int chunk_total;
    exclusive_scan(i < batch ? num_pages(cache_seqlens[i]) + kFixedRequestCost : 0, chunk_total, warp_totals);
    total_cost += chunk_total;
  }
  const int cap = (total_cost + num_parts - 1) / num_parts;
  for (int p = threadIdx.x; p <= num_parts; p += kThreads) {
    boundary_req[p] = p == 0 ? 0 : batch;
    boundary_page[p] = 0;
    boundary_ordinal[p] = 0;
  }
  __syncthreads();

  int cost_before = 0, splits_before = 0;
  for (int base = 0; base < batch; base += kThreads) {
    const int i = base + threadIdx.x;
    const int cost = i < batch ? num_pages(cache_seqlens[i]) + kFixedRequestCost : 0;
    int chunk_cost;
    const int prefix = cost_before + exclusive_scan(cost, chunk_cost, warp_totals);
    int splits = 1;
    if (i < batch) {
      const int first_p = max(1, (prefix + cap - 1) / cap);
      const int last_p = min(num_parts - 1, (prefix + cost - 1) / cap);
      for (int p = first_p; p <= last_p; ++p) {
        const int offset = p * cap - prefix;
        const int page = offset > kFixedRequestCost ? offset - kFixedRequestCost : 0;
        if (page > 0) ++splits;
        boundary_req[p] = i;
        boundary_page[p] = page;
        boundary_ordinal[p] = page > 0 ? splits - 1 : 0;
      }
    }
    int chunk_splits;
    const int split_prefix = splits_before + exclusive_scan(i < batch ? splits : 0, chunk_splits, warp_totals);
    if (i < batch) num_splits[i] = split_prefix;
    cost_before += chunk_cost;
    splits_before += chunk_splits;
  }
  if (threadIdx.x == 0) num_splits[batch] = splits_before;
  __syncthreads();  // boundaries and num_splits are complete

  for (int p = threadIdx.x; p < num_parts; p += kThreads) {
    int* row = metadata + p * kTileSchedulerMetadataSize;
    const int begin_req = boundary_req[p], begin_page = boundary_page[p];
    const int end_req_pos = boundary_req[p + 1], end_page_pos = boundary_page[p + 1];
    for (int k = 0; k < kTileSchedulerMetadataSize; ++k) row[k] = 0;
    if (begin_req > end_req_pos || (begin_req == end_req_pos && begin_page >= end_page_pos)) {
      row[1] = -1;  // no work: begin_req 0 > end_req -1
      continue;
    }
    const bool ends_at_request_start = end_page_pos == 0;
    row[0] = begin_req;
    row[1] = ends_at_request_start ? end_req_pos - 1 : end_req_pos;
    row[2] = begin_page;
    row[3] = ends_at_request_start ? num_pages(cache_seqlens[end_req_pos - 1]) : end_page_pos;
    row[4] = num_splits[begin_req] + boundary_ordinal[p];
    uint32_t fingerprint = 0;
    for (int req = row[0]; req <= row[1]; ++req) fingerprint += length_fingerprint_term(req, cache_seqlens[req]);
    row[5] = int(fingerprint);
  }
}

}  // namespace

void launch_mla_metadata(const int* cache_seqlens, int batch, int num_sm_parts, int* tile_scheduler_metadata,
                         int* num_splits, cudaStream_t stream) {
  const size_t smem = 3 * (num_sm_parts + 1) * sizeof(int);
  mla_metadata_kernel<<<1, kThreads, smem, stream>>>(cache_seqlens, batch, num_sm_parts, tile_scheduler_metadata,
                                                     num_splits);
}

}  // namespace flash_mla_backend
