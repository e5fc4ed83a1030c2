// Portable MLA decode kernel (sm_80 and newer): mma.sync tensor-core math, cp.async loads.
//
// One CTA per (query-row tile, kv head, scheduler part). The CTA walks the requests of its part;
// for each it keeps the tile's Q in shared memory and streams the part's keys in blocks of 32
// (double-buffered), with an online softmax in base 2.
//
// Warp (row_group, col_split): the warps of one row group share 16 query rows. For Q.K^T each
// computes the scores of its own slice of the 32 keys; the row maxima and sums are exchanged
// through shared memory and the probabilities written there, so that for P.V each warp owns
// 512 / kColSplits value columns of the output for all 32 keys.
//
// FP8 inputs are converted to Element on their way into shared memory (exactly: see
// common/fp8_e4m3.h), so the math is the 16-bit kernel's; the dequantisation scales are folded
// into the score scale and the output. An FP8 cache block lands in a byte staging buffer by
// cp.async and is converted into the single Element key buffer before it is used; the two
// staging buffers take the place of the second key buffer.
#pragma once

#include <cuda_runtime.h>
#include <math_constants.h>

#include <climits>
#include <type_traits>

#include "common/decode_params.h"
#include "common/dependent_launch.cuh"
#include "common/fp8_e4m3.h"
#include "common/input_checks.cuh"
#include "common/ptx_sm80.cuh"
#include "common/row_output.cuh"

namespace flash_mla_backend {
namespace sm80 {

template <typename Element_, int kRowGroups_, int kColSplits_, bool kFp8Q_ = false, bool kFp8Cache_ = false>
struct DecodeConfig {
  using Element = Element_;
  static constexpr int kRowGroups = kRowGroups_;
  static constexpr int kColSplits = kColSplits_;
  static constexpr bool kFp8Q = kFp8Q_;
  static constexpr bool kFp8Cache = kFp8Cache_;
  static constexpr int kBlockM = 16 * kRowGroups;
  static constexpr int kBlockN = 32;  // keys per pipeline step
  static constexpr int kThreads = 32 * kRowGroups * kColSplits;
  static constexpr int kKeysPerWarp = kBlockN / kColSplits;
  static constexpr int kScoreTiles = kKeysPerWarp / 8;  // mma n-tiles of the scores per warp
  static constexpr int kValueColsPerWarp = kHeadDimV / kColSplits;
  static constexpr int kValueTiles = kValueColsPerWarp / 8;
  static constexpr int kChunksPerRow = kHeadDimQK / 8;  // 16-byte chunks in a 576-wide row
  static constexpr int kProbStride = kBlockN + 8;       // padding keeps ldmatrix on P conflict-free

  static constexpr int kQElems = kBlockM * kHeadDimQK;
  static constexpr int kKElems = kBlockN * kHeadDimQK;
  static constexpr int kFp8BlockBytes = kBlockN * kHeadDimQK;  // one FP8 cache block, staged
  static constexpr int kFp8ChunksPerRow = kHeadDimQK / 16;      // 16-byte chunks of an FP8 row
  static constexpr int kProbElems = kBlockM * kProbStride;
  static constexpr int kSmemBytes =
      (kQElems + 2 * kKElems + kProbElems) * int(sizeof(Element)) + 2 * kColSplits * kBlockM * int(sizeof(float));

  static_assert(kScoreTiles >= 1 && kKeysPerWarp % 8 == 0, "each warp scores a multiple of 8 keys");
  static_assert(kValueTiles % 2 == 0, "value tiles are loaded in pairs");
  static_assert(2 * kFp8BlockBytes <= kKElems * int(sizeof(Element)), "FP8 staging fits the second key buffer");
  static_assert(kFp8Cache || !kFp8Q, "an FP8 q comes with an FP8 cache");
};

// Element offset of 16-byte chunk `chunk` of row `row` in a 576-wide tile. XOR-ing the chunk
// with the row spreads the 8 rows an ldmatrix reads over all shared-memory banks.
__device__ __forceinline__ int swizzled_offset(int row, int chunk) {
  return row * kHeadDimQK + ((chunk ^ (row & 7)) << 3);
}

template <typename Cfg>
class DecodeCta {
  using Element = typename Cfg::Element;
  using Mma = MmaTraits<Element>;

 public:
  __device__ DecodeCta(const DecodeParams& p, char* smem)
      : p_(p),
        s_q_(reinterpret_cast<Element*>(smem)),
        s_k_(s_q_ + Cfg::kQElems),
        s_prob_(s_k_ + 2 * Cfg::kKElems),
        s_row_max_(reinterpret_cast<float*>(s_prob_ + Cfg::kProbElems)),
        s_row_sum_(s_row_max_ + Cfg::kColSplits * Cfg::kBlockM),
        score_scale_log2_(score_scale_log2(p)),
        m_block_(blockIdx.x),
        kv_head_(blockIdx.y),
        warp_(threadIdx.x / 32),
        lane_(threadIdx.x % 32),
        row_group_(warp_ / Cfg::kColSplits),
        col_split_(warp_ % Cfg::kColSplits) {}

  __device__ void run() {
    const SchedulerPart part = load_scheduler_part(p_, blockIdx.z);
    // The part's length fingerprint, checked by each warp on its own (all get the same answer) while
    // the first request's first loads are in flight. A stale schedule still walks pages inside the
    // requests' lengths, so only the output depends on the answer.
    PartLengthCheck part_check;
    for (int req = part.begin_req; req <= part.end_req; ++req) {
      const int split = req == part.begin_req ? part.first_split : p_.num_splits[req];
      const int page_begin = req == part.begin_req ? part.begin_page : 0;
      const int page_end = req == part.end_req ? part.end_page : INT_MAX;
      process_request(req, page_begin, page_end, split, part, part_check);
    }
  }

 private:
  // Query rows of this thread's accumulator fragments: row_in_tile(0) and row_in_tile(1).
  __device__ int row_in_tile(int half) const { return 16 * row_group_ + lane_ / 4 + 8 * half; }

  // A request with an invalid length reads nothing; one of a part whose lengths changed, or with
  // a block id outside the cache (never read: those keys load as zeros), gets NaN too.
  __device__ void process_request(int req, int page_begin, int page_end, int split, const SchedulerPart& part,
                                  PartLengthCheck& part_check) {
    const int seqlen = p_.cache_seqlens[req];
    const bool valid_length = seqlen >= 0 && seqlen <= p_.max_pages * kPageSize;
    int key_begin = page_begin * kPageSize;
    int key_end = valid_length ? min(seqlen, page_end == INT_MAX ? seqlen : page_end * kPageSize) : 0;
    if (p_.causal) {
      // The tile's last query token sees the most keys.
      const int last_row = min((m_block_ + 1) * Cfg::kBlockM, p_.rows_per_kv_head) - 1;
      key_end = min(key_end, seqlen - p_.s_q + last_row / p_.heads_per_kv + 1);
    }
    const int num_blocks = key_end > key_begin ? (key_end - key_begin + Cfg::kBlockN - 1) / Cfg::kBlockN : 0;

    float acc[Cfg::kValueTiles][4];
    float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
    float row_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < Cfg::kValueTiles; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    bool blocks_outside_cache = false;  // this thread's share of the block-id check (load_keys)
    if (num_blocks > 0) {
      load_q(req);
      load_keys(req, key_begin, key_end, 0, blocks_outside_cache);
      cp_async_commit();
      part_check.matches(p_, part);  // while the first loads are in flight
      for (int block = 0; block < num_blocks; ++block) {
        if (block + 1 < num_blocks) {
          load_keys(req, key_begin + (block + 1) * Cfg::kBlockN, key_end, (block + 1) & 1, blocks_outside_cache);
          cp_async_commit();
          cp_async_wait<1>();
        } else {
          cp_async_wait<0>();
        }
        __syncthreads();
        int key_buffer = block & 1;
        if constexpr (Cfg::kFp8Cache) {
          convert_staged_keys(block & 1);
          key_buffer = 0;
          __syncthreads();
        }
        attend_block(seqlen, key_begin + block * Cfg::kBlockN, key_end, key_buffer, acc, row_max, row_sum);
        // The next step overwrites this key buffer, the probabilities and the row statistics; the
        // last step's barrier also gathers the block-id check.
        if (block + 1 < num_blocks)
          __syncthreads();
        else
          blocks_outside_cache = __syncthreads_or(blocks_outside_cache);
      }
    }
    const bool valid = part_check.matches(p_, part) && valid_length && !blocks_outside_cache;
    write_result(req, split, valid, acc, row_max, row_sum);
  }

  __device__ void load_q(int req) {
    if constexpr (Cfg::kFp8Q) {
      load_fp8_q(req);
    } else {
      const Element* q = static_cast<const Element*>(p_.q) + req * p_.q_batch_stride;
      for (int idx = threadIdx.x; idx < Cfg::kBlockM * Cfg::kChunksPerRow; idx += Cfg::kThreads) {
        const int row = idx / Cfg::kChunksPerRow, chunk = idx % Cfg::kChunksPerRow;
        const int q_row = m_block_ * Cfg::kBlockM + row;
        const bool valid = q_row < p_.rows_per_kv_head;
        const Element* src = q;
        if (valid) {
          const QueryRow qr(p_, kv_head_, q_row);
          src += qr.token * p_.q_seq_stride + qr.head * p_.q_head_stride + chunk * 8;
        }
        cp_async_16(smem_address(s_q_ + swizzled_offset(row, chunk)), src, valid);
      }
    }
  }

  // Synchronous: each thread converts the 16 FP8 values it loads into two Element chunks (the
  // loop's first __syncthreads publishes them). Rows past the tile are zero.
  __device__ void load_fp8_q(int req) {
    const uint8_t* q = static_cast<const uint8_t*>(p_.q) + req * p_.q_batch_stride;
    for (int idx = threadIdx.x; idx < Cfg::kBlockM * Cfg::kFp8ChunksPerRow; idx += Cfg::kThreads) {
      const int row = idx / Cfg::kFp8ChunksPerRow, chunk = idx % Cfg::kFp8ChunksPerRow;
      const int q_row = m_block_ * Cfg::kBlockM + row;
      uint4 raw = make_uint4(0u, 0u, 0u, 0u);
      if (q_row < p_.rows_per_kv_head) {
        const QueryRow qr(p_, kv_head_, q_row);
        raw = *reinterpret_cast<const uint4*>(q + qr.token * p_.q_seq_stride + qr.head * p_.q_head_stride +
                                              chunk * 16);
      }
      store_converted(s_q_, row, chunk, raw);
    }
  }

  // 16 FP8 values of row `row`, bytes [16 chunk, 16 chunk + 16), as Element chunks 2 chunk and
  // 2 chunk + 1 of a swizzled 576-wide tile.
  __device__ static void store_converted(Element* tile, int row, int chunk, uint4 raw) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    uint32_t converted[8];
    convert_e4m3x16<Element>(words, converted);
    *reinterpret_cast<uint4*>(tile + swizzled_offset(row, 2 * chunk)) =
        make_uint4(converted[0], converted[1], converted[2], converted[3]);
    *reinterpret_cast<uint4*>(tile + swizzled_offset(row, 2 * chunk + 1)) =
        make_uint4(converted[4], converted[5], converted[6], converted[7]);
  }

  // Starts the copy of keys [first_key, first_key + kBlockN) into key buffer `buffer` (for an
  // FP8 cache: staging buffer `buffer`); keys at or past key_end become zeros. The keys lie in
  // one page (first_key is a multiple of kBlockN, which divides the page): if its block id lies
  // outside the cache, they all become zeros and outside_cache is set.
  __device__ void load_keys(int req, int first_key, int key_end, int buffer, bool& outside_cache) {
    using Stored = std::conditional_t<Cfg::kFp8Cache, uint8_t, Element>;
    constexpr int kStoredPerChunk = 16 / int(sizeof(Stored));
    constexpr int kChunks = kHeadDimQK / kStoredPerChunk;
    static_assert(kPageSize % Cfg::kBlockN == 0, "a key block lies in one page");
    const int block = p_.block_table[int64_t(req) * p_.block_table_batch_stride + first_key / kPageSize];
    const bool in_cache = uint32_t(block) < uint32_t(p_.num_blocks);
    outside_cache |= !in_cache;
    const Stored* k_cache = static_cast<const Stored*>(p_.k_cache);
    const Stored* page = k_cache + int64_t(block) * p_.k_block_stride + (first_key % kPageSize) * p_.k_token_stride +
                         kv_head_ * p_.k_head_stride;
    for (int idx = threadIdx.x; idx < Cfg::kBlockN * kChunks; idx += Cfg::kThreads) {
      const int row = idx / kChunks, chunk = idx % kChunks;
      const bool valid = in_cache && first_key + row < key_end;
      // (An invalid chunk reads nothing; its address is the cache's start.)
      const Stored* src = valid ? page + row * p_.k_token_stride + chunk * kStoredPerChunk : k_cache;
      const uint32_t dst = Cfg::kFp8Cache
                               ? smem_address(fp8_staging(buffer) + row * kHeadDimQK + chunk * 16)
                               : smem_address(s_k_ + buffer * Cfg::kKElems + swizzled_offset(row, chunk));
      cp_async_16(dst, src, valid);
    }
  }

  // The staged FP8 block (row-major bytes) into key buffer 0; zero bytes stay zeros.
  __device__ void convert_staged_keys(int buffer) const {
    const uint8_t* staged = fp8_staging(buffer);
    for (int idx = threadIdx.x; idx < Cfg::kBlockN * Cfg::kFp8ChunksPerRow; idx += Cfg::kThreads) {
      const int row = idx / Cfg::kFp8ChunksPerRow, chunk = idx % Cfg::kFp8ChunksPerRow;
      store_converted(s_k_, row, chunk, *reinterpret_cast<const uint4*>(staged + row * kHeadDimQK + chunk * 16));
    }
  }

  __device__ uint8_t* fp8_staging(int buffer) const {
    return reinterpret_cast<uint8_t*>(s_k_ + Cfg::kKElems) + buffer * Cfg::kFp8BlockBytes;
  }

  __device__ void attend_block(int seqlen, int first_key, int key_end, int buffer, float (&acc)[Cfg::kValueTiles][4],
                               float (&row_max)[2], float (&row_sum)[2]) {
    const Element* keys = s_k_ + buffer * Cfg::kKElems;
    float scores[Cfg::kScoreTiles][4];
    compute_scores(keys, scores);

    // Scale into base 2 and mask keys past the end and causally hidden keys.
    float block_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int n = 0; n < Cfg::kScoreTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = first_key + col_split_ * Cfg::kKeysPerWarp + n * 8 + 2 * (lane_ % 4) + (e & 1);
        const int q_row = m_block_ * Cfg::kBlockM + row_in_tile(e / 2);
        bool visible = key < key_end;
        if (p_.causal) visible = visible && key <= seqlen - p_.s_q + q_row / p_.heads_per_kv;
        scores[n][e] = visible ? scores[n][e] * score_scale_log2_ : -CUDART_INF_F;
        block_max[e / 2] = fmaxf(block_max[e / 2], scores[n][e]);
      }
    }
    share_across_quad_and_warps(block_max, s_row_max_, [](float a, float b) { return fmaxf(a, b); });
    __syncthreads();

    float new_max[2], rescale[2], block_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      new_max[half] = row_max[half];
#pragma unroll
      for (int c = 0; c < Cfg::kColSplits; ++c)
        new_max[half] = fmaxf(new_max[half], s_row_max_[c * Cfg::kBlockM + row_in_tile(half)]);
      // A row with nothing visible yet keeps max -inf; subtracting 0 keeps its exponentials at 0, not NaN.
      const float reference = new_max[half] == -CUDART_INF_F ? 0.f : new_max[half];
      rescale[half] = exp2f(row_max[half] - reference);
      row_max[half] = new_max[half];
      new_max[half] = reference;
    }
#pragma unroll
    for (int n = 0; n < Cfg::kScoreTiles; ++n) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float p0 = exp2f(scores[n][2 * half] - new_max[half]);
        const float p1 = exp2f(scores[n][2 * half + 1] - new_max[half]);
        block_sum[half] += p0 + p1;
        const int col = col_split_ * Cfg::kKeysPerWarp + n * 8 + 2 * (lane_ % 4);
        *reinterpret_cast<uint32_t*>(s_prob_ + row_in_tile(half) * Cfg::kProbStride + col) = Mma::pack(p0, p1);
      }
    }
    share_across_quad_and_warps(block_sum, s_row_sum_, [](float a, float b) { return a + b; });
    __syncthreads();

#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float total = 0.f;
#pragma unroll
      for (int c = 0; c < Cfg::kColSplits; ++c) total += s_row_sum_[c * Cfg::kBlockM + row_in_tile(half)];
      row_sum[half] = row_sum[half] * rescale[half] + total;
    }
#pragma unroll
    for (int n = 0; n < Cfg::kValueTiles; ++n) {
      acc[n][0] *= rescale[0];
      acc[n][1] *= rescale[0];
      acc[n][2] *= rescale[1];
      acc[n][3] *= rescale[1];
    }
    accumulate_values(keys, acc);
  }

  // S[16 rows of this row group, this warp's keys] = Q . K^T over all 576 columns.
  __device__ void compute_scores(const Element* keys, float (&scores)[Cfg::kScoreTiles][4]) const {
#pragma unroll
    for (int n = 0; n < Cfg::kScoreTiles; ++n) scores[n][0] = scores[n][1] = scores[n][2] = scores[n][3] = 0.f;
    const int q_row = 16 * row_group_ + lane_ % 16;
    const int first_key = col_split_ * Cfg::kKeysPerWarp;
#pragma unroll 4
    for (int kstep = 0; kstep < kHeadDimQK / 16; kstep += 2) {
      uint32_t a[2][4];
      ldmatrix_x4(a[0], smem_address(s_q_ + swizzled_offset(q_row, 2 * kstep + lane_ / 16)));
      ldmatrix_x4(a[1], smem_address(s_q_ + swizzled_offset(q_row, 2 * kstep + 2 + lane_ / 16)));
      if constexpr (Cfg::kScoreTiles == 1) {
        // One x4 load: 8 keys, the 4 chunks of two k-steps.
        uint32_t b[4];
        ldmatrix_x4(b, smem_address(keys + swizzled_offset(first_key + lane_ % 8, 2 * kstep + lane_ / 8)));
        Mma::mma(scores[0], a[0], b[0], b[1]);
        Mma::mma(scores[0], a[1], b[2], b[3]);
      } else {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
#pragma unroll
          for (int n = 0; n < Cfg::kScoreTiles; n += 2) {
            // One x4 load: two 8-key tiles, both chunks of one k-step.
            uint32_t b[4];
            const int key = first_key + n * 8 + (lane_ / 16) * 8 + lane_ % 8;
            ldmatrix_x4(b, smem_address(keys + swizzled_offset(key, 2 * (kstep + k) + (lane_ / 8) % 2)));
            Mma::mma(scores[n], a[k], b[0], b[1]);
            Mma::mma(scores[n + 1], a[k], b[2], b[3]);
          }
        }
      }
    }
  }

  // O[16 rows, this warp's value columns] += P[16 rows, 32 keys] . V[32 keys, columns].
  __device__ void accumulate_values(const Element* keys, float (&acc)[Cfg::kValueTiles][4]) const {
    const int first_chunk = col_split_ * Cfg::kValueColsPerWarp / 8;
#pragma unroll
    for (int kstep = 0; kstep < Cfg::kBlockN / 16; ++kstep) {
      uint32_t a[4];
      ldmatrix_x4(a, smem_address(s_prob_ + (16 * row_group_ + lane_ % 16) * Cfg::kProbStride + kstep * 16 +
                                  (lane_ / 16) * 8));
      const int key = kstep * 16 + lane_ % 8 + ((lane_ / 8) % 2) * 8;
#pragma unroll
      for (int n = 0; n < Cfg::kValueTiles; n += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, smem_address(keys + swizzled_offset(key, first_chunk + n + lane_ / 16)));
        Mma::mma(acc[n], a, b[0], b[1]);
        Mma::mma(acc[n + 1], a, b[2], b[3]);
      }
    }
  }

  // Reduces over the 4 lanes that share a row, then publishes this warp's value per row.
  template <typename Op>
  __device__ void share_across_quad_and_warps(float (&value)[2], float* shared, Op op) const {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      value[half] = op(value[half], __shfl_xor_sync(0xffffffff, value[half], 1));
      value[half] = op(value[half], __shfl_xor_sync(0xffffffff, value[half], 2));
      if (lane_ % 4 == 0) shared[col_split_ * Cfg::kBlockM + row_in_tile(half)] = value[half];
    }
  }

  __device__ void write_result(int req, int split, bool valid, const float (&acc)[Cfg::kValueTiles][4],
                               const float (&row_max)[2], const float (&row_sum)[2]) const {
    const bool final_output = p_.num_splits[req + 1] - p_.num_splits[req] == 1;
    const int first_col = col_split_ * Cfg::kValueColsPerWarp + 2 * (lane_ % 4);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int q_row = m_block_ * Cfg::kBlockM + row_in_tile(half);
      if (q_row >= p_.rows_per_kv_head) continue;
      const RowOutput<Element> row(p_, req, kv_head_, q_row, split, final_output, valid, row_max[half],
                                   row_sum[half]);
      row.template store_pairs<Cfg::kValueTiles>(
          first_col, [&](int n) { return make_float2(acc[n][2 * half], acc[n][2 * half + 1]); });
      if (col_split_ == 0 && lane_ % 4 == 0) row.store_lse();
    }
  }

  const DecodeParams& p_;
  Element* const s_q_;
  Element* const s_k_;
  Element* const s_prob_;
  float* const s_row_max_;
  float* const s_row_sum_;
  const float score_scale_log2_;
  const int m_block_, kv_head_, warp_, lane_, row_group_, col_split_;
};

template <typename Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) decode_kernel(const __grid_constant__ DecodeParams params) {
  extern __shared__ __align__(128) char smem[];
  allow_dependent_launch();  // the combine kernel waits for this grid's completion itself
  DecodeCta<Cfg>(params, smem).run();
}

}  // namespace sm80
}  // namespace flash_mla_backend
