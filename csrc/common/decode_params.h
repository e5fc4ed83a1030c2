// What every decode kernel reads: the problem, the schedule, and where partial results go.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace flash_mla_backend {

constexpr int kPageSize = 64;
constexpr int kHeadDimQK = 576;
constexpr int kHeadDimV = 512;
constexpr int kTileSchedulerMetadataSize = 8;
// Scheduler cost of starting a request, in pages of KV (kept equal to reference.FIXED_REQUEST_COST).
constexpr int kFixedRequestCost = 5;
constexpr float kLn2 = 0.69314718055994530942f;

// One row of tile_scheduler_metadata. A part with no work has begin_req > end_req.
struct SchedulerPart {
  int begin_req;    // first request of the part
  int end_req;      // last request of the part (inclusive)
  int begin_page;   // first page of begin_req
  int end_page;     // end page (exclusive) of end_req
  int first_split;  // split index of begin_req's piece; later requests start at num_splits[req]
  // The sum of length_fingerprint_term over the part's requests, for the cache_seqlens the
  // schedule was made from: a decode given other lengths finds out on the device.
  int length_fingerprint;
};

// One request's share of a part's length fingerprint (murmur3's 32-bit finaliser of the
// length mixed with the request index, so that lengths moved between requests change it too).
__host__ __device__ inline uint32_t length_fingerprint_term(int req, int seqlen) {
  uint32_t h = uint32_t(seqlen) ^ (uint32_t(req) * 0x9E3779B9u);
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Row of out_accum / lse_accum for split `split` of request `req`, whose first split index is
// num_splits[req]. Every split past a request's first starts at a part boundary, so before
// request req there are num_splits[req] - req such boundaries (at most num_sm_parts - 1 in all):
// a request's first piece takes an even row, its later pieces odd rows, and only split requests
// write partials, so no two pieces share a row and all rows are below 2 * num_sm_parts.
__host__ __device__ inline int accum_row(int req, int first_split_of_req, int split) {
  return 2 * (first_split_of_req + split - req) + (split > 0 ? 1 : 0);
}
// Rows of the partial-result workspace for a schedule of num_sm_parts parts (one part splits
// nothing). Kept equal to interface._num_accum_rows.
__host__ __device__ inline int num_accum_rows(int num_sm_parts) { return num_sm_parts > 1 ? 2 * num_sm_parts : 0; }

struct DecodeParams {
  const void* q;             // [batch, s_q, h_q, 576]
  const void* k_cache;       // [num_blocks, 64, h_kv, 576]; V = first 512 columns
  const int* block_table;    // [batch, max_pages]
  const int* cache_seqlens;  // [batch]
  const int* tile_scheduler_metadata;  // [num_sm_parts, 8]
  const int* num_splits;               // [batch + 1], exclusive prefix sum of splits per request
  void* out;                 // [batch, s_q, h_q, 512]
  float* lse;                // [batch, h_q, s_q], contiguous, natural log
  // Partial results of split requests, by accum_row:
  float* out_accum;          // [num_accum_rows(num_sm_parts), h_kv, rows_per_kv_head, 512]
  float* lse_accum;          // [num_accum_rows(num_sm_parts), h_kv, rows_per_kv_head], log2
  // Dequantisation scales (one float each, read on the device so that a CUDA graph replays with
  // the current values): real q = q * *descale_q for an FP8 q, real K and V = cache *
  // *descale_k for an FP8 cache; nullptr where that input is not FP8.
  const float* descale_q;
  const float* descale_k;

  int64_t q_batch_stride, q_seq_stride, q_head_stride;
  int64_t k_block_stride, k_token_stride, k_head_stride;
  int64_t block_table_batch_stride;
  int64_t o_batch_stride, o_seq_stride, o_head_stride;

  int batch, s_q, h_q, h_kv;
  int heads_per_kv;      // h_q / h_kv
  int rows_per_kv_head;  // s_q * heads_per_kv; query row r is (token r / heads_per_kv, head r % heads_per_kv)
  int max_pages;         // block_table's width; a longer request gets NaN
  int num_blocks;        // k_cache.size(0); a request with a block id outside [0, num_blocks) gets NaN
  int num_sm_parts;
  float scale_log2;      // softmax_scale * log2(e)
  bool causal;
};

#ifdef __CUDACC__
// The base-2 score scale with the FP8 dequantisation folded in: scores come from the raw values.
__device__ __forceinline__ float score_scale_log2(const DecodeParams& p) {
  float scale = p.scale_log2;
  if (p.descale_q != nullptr) scale *= *p.descale_q;
  if (p.descale_k != nullptr) scale *= *p.descale_k;
  return scale;
}

// The factor that turns P . V over the raw cache values into the real output.
__device__ __forceinline__ float value_scale(const DecodeParams& p) {
  return p.descale_k != nullptr ? *p.descale_k : 1.f;
}
#endif

// Query row r of a kv head is (token r / heads_per_kv, head kv_head * heads_per_kv + r % heads_per_kv).
struct QueryRow {
  int token, head;
  __host__ __device__ QueryRow(const DecodeParams& p, int kv_head, int q_row)
      : token(q_row / p.heads_per_kv), head(kv_head * p.heads_per_kv + q_row % p.heads_per_kv) {}
};

}  // namespace flash_mla_backend
