// Hopper (sm_90a) MLA decode kernel: wgmma from shared memory, TMA loads of the KV pages with one
// mbarrier per 64 x 64 piece, a dedicated producer warp.
//
// One CTA per (64-row query tile, kv head, scheduler part), as every decode kernel (see
// decode/decode_kernels.h). 384 threads:
//   - warpgroups 0 and 1 (warps 0-7): math, 232 registers per thread after setmaxnreg;
//   - warpgroup 2: the producer (40 registers); its first thread walks the part's pages and loads
//     each 64 x 576 page as nine 64 x 64 pieces (128B-swizzled, 8 KB each) into one of two page
//     buffers, flagging pages whose block id lies outside the cache; its second warp checks the
//     part's length fingerprint. (A lone producer warp would cost as many registers: ptxas sizes
//     the register budget by whole warpgroups.) Both checks stay off the math warpgroups' path.
//
// Per page, both math warpgroups work in lockstep:
//   1. S = Q . K^T for all 64 keys of the page, warpgroup w over k-steps 18w..18w+17 of the 576
//      columns (wgmma m64n64k16, Q and K from shared memory, waiting on each piece's mbarrier);
//      the two partial tiles are summed through shared memory (barrier) so that warpgroup w
//      holds the scores of keys 32w..32w+31.
//   2. mask (select -inf), row maxima exchanged through shared memory (barrier), online softmax in
//      base 2, P (bf16/fp16) written to a 64 x 64 swizzled tile in the page's rotary piece (dead
//      after Q.K^T); the page's rows past the sequence
//      end are zeroed in shared memory so that NaN in unused cache slots never reaches P.V
//      (barrier).
//   3. O[:, 256w..256w+255] += P . V (wgmma m64n256k16; V is the K tile read MN-major), then the
//      page buffer is released to the producer through its "empty" mbarrier.
// Both warpgroups hold the same running max (computed from the same values), and each its own
// partial row sum, added at the end.
//
// FP8 (e4m3) caches, lockstep only: the producer's first thread TMA-loads each piece's 4 KB of raw
// bytes (64 tokens x 64 columns, unswizzled) into the upper half of the piece's 8 KB slot; the
// whole producer warpgroup then converts the piece in place into the 128B-swizzled 16-bit layout
// (exactly: common/fp8_e4m3.h) and arrives on the piece's "full" barrier, so the math is the
// 16-bit kernel's and 16-bit MMAs keep the accuracy. The dequantisation scales are folded into the
// score scale and the output; an e4m3 q is converted on its way into shared memory.
#include "decode/decode_kernels.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/dependent_launch.cuh"
#include "common/input_checks.cuh"
#include "common/row_output.cuh"
#include "decode/sm90/ablation.h"
#include "decode/sm90/e4m3_pieces.h"
#include "decode/sm90/kv_pieces.h"
#include "decode/sm90/launch_sm90.h"
#include "decode/sm90/ptx_sm90.cuh"
#include "decode/sm90/q_tile.h"

namespace flash_mla_backend {
namespace sm90 {

constexpr int kBlockM = 64;                        // query rows per CTA
constexpr int kMathThreads = 256;                  // two math warpgroups
constexpr int kThreads = kMathThreads + 128;       // + the producer warpgroup
constexpr int kStages = 2;                               // page buffers
// FP8 caches: a piece's raw e4m3 bytes land in the upper half of its slot and are converted in place.
constexpr int kRawPieceOffset = kPieceBytes - kRawPieceBytes;

static_assert(kBlockM == 64 && kPageSize == 64, "the kernel is written for 64-row tiles and 64-token pages");

// Shared memory, in bytes from a 1024-byte aligned base (128B-swizzle atoms need that alignment).
struct Smem {
  static constexpr int kQ = 0;                                     // Q tile, 9 pieces (kTileBytes)
  static constexpr int kKV = kQ + kTileBytes;                      // kStages pages, 9 pieces each
  // X: WG0's partial scores for keys 32-63 (fp32 [4][128 threads][4]), read by WG1. (WG1's
  // partial for keys 0-31 and the P tile live in piece 8 of the current page buffer.)
  static constexpr int kX = kKV + kStages * kTileBytes;
  static constexpr int kRowMax = kX + kPieceBytes;                 // float [2 warpgroups][64 rows]
  static constexpr int kRowSum = kRowMax + 2 * kBlockM * 4;        // float [2][64]
  static constexpr int kFullBar = kRowSum + 2 * kBlockM * 4;       // uint64 [kStages][9]
  // uint64 [kStages][9]: FP8 caches, the piece's raw bytes have landed (its "full" barrier then
  // means converted).
  static constexpr int kRawFullBar = kFullBar + kStages * kPiecesQK * 8;
  // uint64 [kStages][2]: the buffer may be reloaded (lockstep: [slot][0] only; seesaw: [slot][w]
  // for the pieces whose last reader is math warpgroup w).
  static constexpr int kEmptyBar = kRawFullBar + kStages * kPiecesQK * 8;
  static constexpr int kPartCheckBar = kEmptyBar + kStages * 2 * 8;     // uint64: the part check is done
  static constexpr int kPartMatches = kPartCheckBar + 8;               // uint32: its answer (0 / 1)
  static constexpr int kBadBlock = kPartMatches + 4;  // uint32 [kStages]: the buffer's block id is outside the cache
  static constexpr int kValid = kBadBlock + kStages * 4;  // uint32 [2]: each math warpgroup's view of the request
  static constexpr int kEnd = kValid + 2 * 4;
  static constexpr int kAlign = 1024;
  static constexpr int kBytes = kEnd + kAlign;  // the slack lets the kernel align the base itself
};
static_assert(Smem::kBytes <= 227 * 1024, "must fit the 227 KB a block can opt into on sm_90");

// How the two math warpgroups share a CTA's pages (both kernels of this file; the header comment
// describes kLockstep, the comment above attend_pair kSeesaw).
enum class Schedule { kLockstep, kSeesaw };

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kMathBarrier = 1;                          // named barrier of the 256 math threads
constexpr int kConvertBarrier = 6;                       // FP8 caches: the 128 producer threads
constexpr int kPartCheckWarp = kMathThreads / 32 + 1;    // the producer warpgroup's second warp
constexpr int kValueColsPerWarpgroup = kHeadDimV / 2;    // 256
constexpr int kKeysPerWarpgroup = kPageSize / 2;         // 32
constexpr int kKStepsQK = kHeadDimQK / 16;               // 36 wgmma k-steps over the 576 columns
constexpr int kKStepsPerWarpgroup = kKStepsQK / 2;       // 18: each warpgroup reduces half of them
constexpr int kRopePiece = kPiecesQK - 1;                // 8: read by WG1's Q.K^T only, then free
static_assert(kKStepsQK % 2 == 0, "the Q.K^T k-steps split evenly between the two math warpgroups");

// Element: the 16-bit type the math runs in (bf16 for an e4m3 q); kFp8Q, kFp8Cache: q, the cache
// are e4m3.
template <typename Element, Schedule kSchedule, bool kFp8Q, bool kFp8Cache>
class DecodeCta {
  using Mma = Wgmma<Element>;
  static constexpr bool kSeesaw = kSchedule == Schedule::kSeesaw;
  static_assert(!kFp8Cache || !kSeesaw, "FP8 caches run on the lockstep schedule");
  static_assert(kFp8Cache || !kFp8Q, "an FP8 q comes with an FP8 cache");
  // Registers per thread after setmaxnreg: 2 x 128 x 232 + 128 x 40 (FP8 caches: 224 + 56, for
  // the producer warpgroup's conversion) = 64512 of the SM's 65536.
  static constexpr int kMathRegisters = kFp8Cache ? 224 : 232;
  static constexpr int kProducerRegisters = kFp8Cache ? 56 : 40;

 public:
  __device__ DecodeCta(const DecodeParams& p, const CUtensorMap* kv_map, bool kv_tokens_inner, uint32_t base,
                       char* base_ptr)
      : p_(p),
        kv_map_(kv_map),
        kv_tokens_inner_(kv_tokens_inner),
        q_smem_(base + Smem::kQ),
        kv_smem_(base + Smem::kKV),
        x_smem_(base + Smem::kX),
        full_bar_(base + Smem::kFullBar),
        raw_full_bar_(base + Smem::kRawFullBar),
        empty_bar_(base + Smem::kEmptyBar),
        part_check_bar_(base + Smem::kPartCheckBar),
        part_matches_(reinterpret_cast<volatile uint32_t*>(base_ptr + Smem::kPartMatches)),
        bad_block_(reinterpret_cast<volatile uint32_t*>(base_ptr + Smem::kBadBlock)),
        valid_(reinterpret_cast<volatile uint32_t*>(base_ptr + Smem::kValid)),
        row_max_(reinterpret_cast<float*>(base_ptr + Smem::kRowMax)),
        row_sum_(reinterpret_cast<float*>(base_ptr + Smem::kRowSum)),
        m_block_(blockIdx.x),
        kv_head_(blockIdx.y),
        tid_(threadIdx.x),
        warp_(threadIdx.x / 32),
        lane_(threadIdx.x % 32),
        // Broadcast from lane 0, so that ptxas knows the warpgroup index is uniform in a warp and
        // keeps the wgmmas of a branch on it pipelined.
        wg_(__shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0)),
        score_scale_log2_(score_scale_log2(p)) {
    part_ = load_scheduler_part(p, blockIdx.z);
    const int last_row = min((m_block_ + 1) * kBlockM, p.rows_per_kv_head) - 1;
    last_token_ = last_row / p.heads_per_kv;
  }

  __device__ void run() {
    if (tid_ == 0) {
      for (int i = 0; i < kStages * kPiecesQK; ++i) {
        mbarrier_init(full_bar_ + 8 * i, kFp8Cache ? 128 : 1);  // FP8: the converting threads
        mbarrier_init(raw_full_bar_ + 8 * i, 1);
      }
      for (int i = 0; i < kStages * 2; ++i) mbarrier_init(empty_bar_ + 8 * i, kSeesaw ? 128 : kMathThreads);
      mbarrier_init(part_check_bar_, 1);
      mbarrier_init_fence();
    }
    fence_proxy_async_smem();
    allow_dependent_launch();  // the combine kernel waits for this grid's completion itself
    __syncthreads();  // the last barrier of all 384 threads
    // One if/else on the warpgroup, so that setmaxnreg moves registers from the producer
    // warpgroup to the math warpgroups.
    if (wg_ == 2) {
      setmaxnreg_dec<kProducerRegisters>();
      if (warp_ == kPartCheckWarp) check_part();
      if (kFp8Cache || tid_ == kMathThreads) produce();  // FP8 caches: the whole warpgroup converts
    } else {
      setmaxnreg_inc<kMathRegisters>();
      consume();
    }
  }

 private:
  __device__ PageRange page_range(int req) const { return visible_pages(p_, part_, req, last_token_); }

  __device__ uint32_t full_bar(int slot, int piece) const { return full_bar_ + 8 * (slot * kPiecesQK + piece); }
  __device__ uint32_t raw_full_bar(int slot, int piece) const {
    return raw_full_bar_ + 8 * (slot * kPiecesQK + piece);
  }
  __device__ uint32_t empty_bar(int slot, int reader = 0) const { return empty_bar_ + 8 * (2 * slot + reader); }
  __device__ uint32_t kv_slot(int slot) const { return kv_smem_ + slot * kTileBytes; }

  // Where the pieces of a page go and in which order they are read and loaded. Lockstep: pieces
  // 0-8, one release (all 256 math threads). Seesaw: buffer `slot` belongs to math warpgroup
  // `slot`, which reads its pieces in Q.K^T in the order piece_at(slot, 0..8); the first
  // first_piece_of_reader(slot, 1) of them are read last by warpgroup 0 (its half of the values,
  // plus, in buffer 1, the P tile in the rotary piece), the rest by warpgroup 1; each group has
  // its own release.
  __device__ static constexpr int piece_at(int slot, int i) {
    return kSeesaw && slot == 1 && i >= kPiecesV / 2 ? (i == kPiecesV / 2 ? kRopePiece : i - 1) : i;
  }
  __device__ static constexpr int first_piece_of_reader(int slot, int reader) {
    return reader == 0 ? 0 : kSeesaw ? kPiecesV / 2 + slot : kPiecesQK;
  }

  // ------------------------------------------------------------------------------------------
  // Producer: one thread issues the loads. Lockstep: page g of the part goes to buffer g % 2.
  // Seesaw: a request's pages go in pairs, the first of a pair to buffer 0, the second to buffer
  // 1. Before reloading the pieces of a buffer it waits until their last readers have released
  // the page there. FP8 caches: every thread of the producer warpgroup converts each page after
  // its raw bytes land.
  // ------------------------------------------------------------------------------------------
  // Calls visit(slot, loads, block_entry) for each page of the part in order: its buffer, the
  // number of pages that buffer held before, and the page's block-table entry.
  template <typename Visit>
  __device__ void walk_pages(Visit&& visit) const {
    int g = 0;
    int loads0 = 0, loads1 = 0;  // pages loaded into buffer 0 and 1 so far (scalars: no local memory)
    for (int req = part_.begin_req; req <= part_.end_req; ++req) {
      const PageRange range = page_range(req);
      const int* block_table = p_.block_table + int64_t(req) * p_.block_table_batch_stride;
      for (int page = range.begin; page < range.end; ++page, ++g) {
        const int slot = (kSeesaw ? page - range.begin : g) % kStages;
        visit(slot, slot == 0 ? loads0 : loads1, block_table + (ablated(kL2OnlyLoads) ? range.begin : page));
        loads0 += slot == 0;
        loads1 += slot == 1;
      }
    }
  }

  // A block id outside the cache is still loaded (TMA fills coordinates outside the tensor with
  // zeros), so the math threads walk the same pages as ever; the buffer's flag, written before
  // the pieces' barriers are armed (their arrival releases it), makes the request NaN.
  __device__ void produce() {
    const bool issuer = tid_ == kMathThreads;
    if (issuer) prefetch_tensormap(kv_map_);
    walk_pages([&](int slot, int loads, const int* block_entry) {
      if (issuer) {
        const int block = *block_entry;
        const uint32_t parity = uint32_t((loads - 1) & 1);
#pragma unroll 1
        for (int reader = 0; reader < (kSeesaw ? 2 : 1); ++reader) {
          if (loads > 0) mbarrier_wait(empty_bar(slot, reader), parity);
          if (reader == 0) bad_block_[slot] = uint32_t(block) >= uint32_t(p_.num_blocks);
          const int end = kSeesaw && reader == 0 ? first_piece_of_reader(slot, 1) : kPiecesQK;
#pragma unroll 1
          for (int i = first_piece_of_reader(slot, reader); i < end; ++i) load_piece(slot, piece_at(slot, i), block);
        }
      }
      if constexpr (kFp8Cache) convert_page(slot, uint32_t(loads & 1));
    });
  }

  // One piece of a page into its place in buffer `slot` (FP8 caches: the raw bytes, into the
  // upper half), completing on the piece's barrier.
  __device__ void load_piece(int slot, int piece, int block) const {
    const uint32_t bar = kFp8Cache ? raw_full_bar(slot, piece) : full_bar(slot, piece);
    mbarrier_arrive_expect_tx(bar, kFp8Cache ? kRawPieceBytes : kPieceBytes);
    // Coordinates (innermost first): column, then kv head and token in page in the map's order,
    // then block.
    tma_load_4d(kv_slot(slot) + piece * kPieceBytes + (kFp8Cache ? kRawPieceOffset : 0), kv_map_, bar,
                piece * kPieceCols, kv_tokens_inner_ ? 0 : kv_head_, kv_tokens_inner_ ? kv_head_ : 0, block);
  }

  // Pieces converted in pairs (one barrier and fence per pair; measured 4% faster than one piece
  // at a time, 2026-12-07), one that math warpgroup 1 reads first (4-8) and one that warpgroup 0
  // reads first (0-3), so that both can start early: (4, 0), (5, 1), (6, 2), (7, 3), (8).
  static constexpr int kConversionSteps = (kPiecesQK + 1) / 2;
  __device__ static constexpr int converted_piece(int step, int k) { return k == 0 ? kPiecesV / 2 + step : step; }
  __device__ static constexpr int pieces_in_step(int step) { return step < kPiecesV / 2 ? 2 : 1; }

  // FP8 caches: the page in buffer `slot` (phase parity `parity`) from raw e4m3 (in the upper half
  // of each piece) to the 128B-swizzled Element layout, in place (e4m3_pieces.h). Every thread
  // reads all its bytes of a step's pieces before any thread writes into them.
  __device__ void convert_page(int slot, uint32_t parity) const {
    const int thread = tid_ - kMathThreads;
#pragma unroll 1
    for (int step = 0; step < kConversionSteps; ++step) {
      const int pieces = pieces_in_step(step);
      uint32_t raw[2][2][4];
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (k == pieces) break;
        const uint32_t src = kv_slot(slot) + converted_piece(step, k) * kPieceBytes + kRawPieceOffset;
        mbarrier_wait(raw_full_bar(slot, converted_piece(step, k)), parity);
        load_raw_chunks(src, thread, raw[k]);
      }
      named_barrier_sync(kConvertBarrier, kConvertThreads);
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        if (k == pieces) break;
        store_converted_chunks<Element>(raw[k], kv_slot(slot) + converted_piece(step, k) * kPieceBytes, thread);
      }
      fence_proxy_async_smem();  // read by wgmma next
#pragma unroll
      for (int k = 0; k < 2; ++k)
        if (k < pieces) mbarrier_arrive(full_bar(slot, converted_piece(step, k)));
    }
  }

  // One producer warp: whether the part's requests have the lengths the schedule was made from,
  // published through an mbarrier that the math threads wait on before their first output.
  __device__ void check_part() {
    const bool matches = part_matches_lengths(p_, part_);
    if (lane_ == 0) {
      *part_matches_ = matches ? 1u : 0u;
      mbarrier_arrive(part_check_bar_);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Math warpgroups.
  // ------------------------------------------------------------------------------------------
  // Tile row of this thread's accumulator values with index 4j + 2h + e (h = 0, 1).
  __device__ int row_of(int h) const { return 16 * (warp_ % 4) + lane_ / 4 + 8 * h; }

  __device__ void consume() {
    int g = 0;                    // lockstep: pages consumed so far, as counted by the producer
    int loads[kStages] = {0, 0};  // seesaw: pages consumed from each buffer so far
    for (int req = part_.begin_req; req <= part_.end_req; ++req) {
      const int seqlen = p_.cache_seqlens[req];
      bool valid = seqlen >= 0 && seqlen <= p_.max_pages * kPageSize;
      const PageRange range = page_range(req);

      float acc[kValueColsPerWarpgroup / 2];  // O[64 rows, this warpgroup's 256 columns], wgmma layout
#pragma unroll
      for (int i = 0; i < kValueColsPerWarpgroup / 2; ++i) acc[i] = 0.f;
      float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};  // base-2 scaled scores
      float row_sum[2] = {0.f, 0.f};                      // this thread's partial sums

      if (range.end > range.begin) {
        load_q(req);
        // Keys visible to this thread's two rows: [0, key_limit).
        int key_limit[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int token = (m_block_ * kBlockM + row_of(h)) / p_.heads_per_kv;
          key_limit[h] = p_.causal ? min(seqlen, seqlen - p_.s_q + token + 1) : seqlen;
        }
        if constexpr (kSeesaw) {
          for (int page = range.begin; page < range.end; page += 2)
            valid &= attend_pair(page, page + 1 < range.end, loads, seqlen, key_limit, acc, row_max, row_sum);
        } else {
          for (int page = range.begin; page < range.end; ++page, ++g)
            valid &= attend_page(page, g, seqlen, key_limit, acc, row_max, row_sum);
        }
      }
      mbarrier_wait(part_check_bar_, 0);  // returns at once after the first request
      write_result(req, *part_matches_ != 0 && valid, acc, row_max, row_sum);
    }
  }

  // Q rows of this tile -> shared memory (q_tile.h), published to both math warpgroups.
  __device__ void load_q(int req) {
    load_q_tile<Element, kFp8Q, kBlockM, 3>(p_, q_smem_, m_block_, kv_head_, req, tid_);
    named_barrier_sync(kMathBarrier, kMathThreads);
  }

  // Partial S[64 x 64] over k-steps 18 W .. 18 W + 17 (16 columns each) of the page in `kv`,
  // waiting on each piece's "full" mbarrier before its first k-step.
  template <int W>
  __device__ void partial_scores(float (&sp)[32], int slot, uint32_t parity, uint32_t kv) const {
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kKStepsPerWarpgroup; ++t) {
      constexpr int kFirst = W * kKStepsPerWarpgroup;
      const int step = kFirst + t;
      const int piece = step / 4;
      if (t == 0 || step % 4 == 0) mbarrier_wait(full_bar(slot, piece), parity);
      const uint32_t col_bytes = uint32_t(piece * kPieceBytes + (step % 4) * 32);
      if constexpr (!ablated(kNoScoreMma))
        Mma::m64n64k16_kk(sp, make_smem_desc(q_smem_ + col_bytes, 16, 1024), make_smem_desc(kv + col_bytes, 16, 1024));
    }
    wgmma_commit();
    wgmma_wait<0>();
  }

  // exp2 of a base-2 score minus its row's maximum (a stand-in without the exp2 in the kNoExp2
  // ablation).
  __device__ static float probability(float x) { return ablated(kNoExp2) ? x + 1.f : exp2f(x); }

  // Returns whether the page's block id lies in the cache (the producer's flag).
  __device__ bool attend_page(int page, int g, int seqlen, const int (&key_limit)[2], float (&acc)[128],
                              float (&row_max)[2], float (&row_sum)[2]) {
    const int slot = g % kStages;
    const uint32_t parity = uint32_t((g / kStages) & 1);
    const uint32_t kv = kv_slot(slot);

    // 1. Partial S[64 rows, all 64 keys] = Q . K^T over this warpgroup's half of the 576 columns
    //    (k-steps 18 wg_ .. 18 wg_ + 17; WG0 reads pieces 0-4, WG1 pieces 4-8).
    float sp[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) sp[i] = 0.f;
    fence_operands(sp);
    // Compile-time piece indices in each branch keep the barrier addresses and descriptors in
    // uniform registers (a thread-dependent piece index made ptxas serialize the wgmma chain).
    if (wg_ == 0)
      partial_scores<0>(sp, slot, parity, kv);
    else
      partial_scores<1>(sp, slot, parity, kv);
    fence_operands(sp);
    // Written before the pieces waited on above were armed; rewritten only after this thread
    // releases the buffer.
    const bool block_in_cache = bad_block_[slot] == 0;

    // 1b. Sum the partials: each warpgroup keeps the full scores of its 32 keys (accumulator
    //     groups 4 wg_ .. 4 wg_ + 3 of the m64n64 layout, i.e. v1's 16 registers) and hands the
    //     other 16 values to the thread with the same index in the other warpgroup. WG1 writes to
    //     the rotary piece of this page (only its own Q.K^T, now complete, reads it); WG0 writes
    //     to X (its last reader, WG1 on the previous page, passed the row-max barrier before WG0
    //     could get here).
    const uint32_t rope = kv + kRopePiece * kPieceBytes;
    const int wg_tid = tid_ % 128;
    {
      const uint32_t send = (wg_ == 0 ? x_smem_ : rope) + wg_tid * 16;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        float x[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) x[e] = wg_ == 0 ? sp[16 + 4 * v + e] : sp[4 * v + e];
        st_shared_v4(send + v * 128 * 16, x);
      }
    }
    named_barrier_sync(kMathBarrier, kMathThreads);  // both partials are in shared memory
    float s[16];
    {
      const uint32_t recv = (wg_ == 0 ? rope : x_smem_) + wg_tid * 16;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        float x[4];
        ld_shared_v4(recv + v * 128 * 16, x);
#pragma unroll
        for (int e = 0; e < 4; ++e) s[4 * v + e] = (wg_ == 0 ? sp[4 * v + e] : sp[16 + 4 * v + e]) + x[e];
      }
    }

    // 2. Mask, scale into base 2, row maxima over both warpgroups.
    const int key0 = page * kPageSize + wg_ * kKeysPerWarpgroup + 2 * (lane_ % 4);
    float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2;
        const int key = key0 + 8 * j + (e & 1);
        // A select, never a multiply: the scores of unused cache slots may be NaN.
        const float v = key < key_limit[h] ? s[4 * j + e] * score_scale_log2_ : -CUDART_INF_F;
        s[4 * j + e] = v;
        tile_max[h] = fmaxf(tile_max[h], v);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      if (lane_ % 4 == 0) row_max_[wg_ * kBlockM + row_of(h)] = tile_max[h];
    }
    // Both warpgroups' maxima are written; WG0 has read WG1's partial from the rotary piece (the
    // P tile goes there next) and WG1 has read X.
    named_barrier_sync(kMathBarrier, kMathThreads);

    float scale[2], ref[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // The same expression in both warpgroups, so both hold bit-identical maxima.
      const float new_max = fmaxf(row_max[h], fmaxf(row_max_[row_of(h)], row_max_[kBlockM + row_of(h)]));
      ref[h] = reference(new_max);
      scale[h] = exp2f(row_max[h] - ref[h]);
      row_max[h] = new_max;
    }

    // P -> the rotary piece of this page (64 x 64, K-major, 128B swizzle), this warpgroup's 32
    // columns.
    float tile_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float p0 = probability(s[4 * j + 2 * h] - ref[h]);
        const float p1 = probability(s[4 * j + 2 * h + 1] - ref[h]);
        tile_sum[h] += p0 + p1;
        const int row = row_of(h);
        const int chunk = (wg_ * (kKeysPerWarpgroup / 8) + j) ^ (row % 8);
        const uint32_t addr = rope + row * 128 + chunk * 16 + (lane_ % 4) * 4;
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(MmaTraits<Element>::pack(p0, p1)) : "memory");
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * scale[h] + tile_sum[h];

    if (is_tail(page, seqlen)) {
      // Each warpgroup's Q.K^T waited on only half of the pieces (WG0 0-4, WG1 4-8): observe the
      // arrival of every value piece before overwriting rows of it (the phase cannot move on
      // before this thread arrives on "empty", so the waits return at once).
#pragma unroll 1
      for (int piece = 0; piece < kPiecesV; ++piece) mbarrier_wait(full_bar(slot, piece), parity);
      zero_value_rows<kMathThreads>(kv, seqlen - page * kPageSize, tid_);
    }
    rescale(acc, scale);
    fence_proxy_async_smem();  // P and the zeroed rows are read by wgmma next
    named_barrier_sync(kMathBarrier, kMathThreads);

    // 3. O[:, this warpgroup's 256 columns] += P . V.
    fence_operands(acc);
    pv_from_smem(acc, slot);
    wgmma_wait<0>();
    fence_operands(acc);
    mbarrier_arrive(empty_bar(slot));  // this thread is done with the page buffer
    return block_in_cache;
  }

  // O *= scale per row, skipped in warps where no row's maximum moved.
  __device__ static void rescale(float (&acc)[128], const float (&scale)[2]) {
    if (__any_sync(0xffffffffu, scale[0] != 1.f || scale[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < kValueColsPerWarpgroup / 8; ++j) {
        acc[4 * j + 0] *= scale[0];
        acc[4 * j + 1] *= scale[0];
        acc[4 * j + 2] *= scale[1];
        acc[4 * j + 3] *= scale[1];
      }
    }
  }

  // The B operand of P.V for k-step kk: V rows 16 kk.., this warpgroup's 256 columns (pieces
  // 4 wg_ ..) of buffer `slot`: 64-column chunks one piece apart (LBO), 8-row groups 1024 bytes
  // apart (SBO).
  __device__ uint64_t value_desc(int slot, int kk) const {
    return make_smem_desc(kv_slot(slot) + wg_ * (kPiecesV / 2) * kPieceBytes + kk * 16 * 128, kPieceBytes, 1024);
  }

  // Issues O[:, this warpgroup's 256 columns] += P . V for the page in buffer `slot`, P from the
  // 64 x 64 tile in its rotary piece; the caller waits.
  __device__ void pv_from_smem(float (&acc)[128], int slot) const {
    const uint32_t rope = kv_slot(slot) + kRopePiece * kPieceBytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < (ablated(kNoValueMma) ? 0 : kPageSize / 16); ++kk)
      Mma::m64n256k16_kmn(acc, make_smem_desc(rope + kk * 32, 16, 1024), value_desc(slot, kk));
    wgmma_commit();
  }

  // The same with P from registers: p[4 kk .. 4 kk + 3] is the A fragment of k-step kk.
  __device__ void pv_from_registers(float (&acc)[128], const uint32_t (&p)[16], int slot) const {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < (ablated(kNoValueMma) ? 0 : kPageSize / 16); ++kk) {
      const uint32_t a[4] = {p[4 * kk], p[4 * kk + 1], p[4 * kk + 2], p[4 * kk + 3]};
      Mma::m64n256k16_rmn(acc, a, value_desc(slot, kk));
    }
    wgmma_commit();
  }

  // The exponent reference for a running max: a row with nothing visible yet keeps max -inf, and
  // subtracting 0 keeps its exponentials at 0.
  __device__ static float reference(float row_max) { return row_max == -CUDART_INF_F ? 0.f : row_max; }

  // ------------------------------------------------------------------------------------------
  // Seesaw schedule: a request's pages in pairs (e, o). Warpgroup 0 scores page e from buffer 0,
  // warpgroup 1 page o from buffer 1, each over all 576 columns, and each keeps O for its half of
  // the value columns. With the running max m, m_e = max(m, row max of S_e) and
  // m_o = max(m_e, row max of S_o):
  //   WG0: S_e = Q.K_e^T; P_e = exp2(S_e - m_e) -> registers and buffer 0's rotary piece, m_e ->
  //        shared memory; signal "first". O *= exp2(m - m_e), O += P_e.V_e (P from registers);
  //        release its buffer-0 pieces. Wait "second"; O *= exp2(m_e - m_o), O += P_o.V_o (P from
  //        shared memory); release its buffer-1 pieces.
  //   WG1: S_o = Q.K_o^T. Wait "first"; O *= exp2(m - m_e); issue O += P_e.V_e and, while it
  //        runs, P_o = exp2(S_o - m_o) -> registers and buffer 1's rotary piece, m_o -> shared
  //        memory; signal "second"; release its buffer-0 pieces. O *= exp2(m_e - m_o),
  //        O += P_o.V_o; release its buffer-1 pieces.
  // One warpgroup's softmax thus runs while the other issues tensor work, and WG1's Q.K^T runs
  // under WG0's softmax. Both apply the same scale factors (from the same maxima in shared
  // memory), so their halves of O and their row sums (each of its own pages' P) share the
  // reference. A pair without its second page skips everything of o.
  // ------------------------------------------------------------------------------------------
  static constexpr int kFirstPageBarrier = 2;   // WG0 -> WG1: m_e, the P_e tile
  static constexpr int kSecondPageBarrier = 3;  // WG1 -> WG0: m_o, the P_o tile
  static constexpr int kWarpgroupBarrier = 4;   // + w: the 128 threads of math warpgroup w

  // S[64 x 64] = Q . K^T over all 576 columns of the page in buffer W, in the order the producer
  // loads its pieces, waiting on each piece's "full" mbarrier before its first k-step.
  template <int W>
  __device__ void page_scores(float (&s)[32], uint32_t parity) const {
    const uint32_t kv = kv_slot(W);
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kKStepsQK; ++t) {
      const int piece = piece_at(W, t / 4);
      if (t % 4 == 0) mbarrier_wait(full_bar(W, piece), parity);
      const uint32_t col_bytes = uint32_t(piece * kPieceBytes + (t % 4) * 32);
      if constexpr (!ablated(kNoScoreMma))
        Mma::m64n64k16_kk(s, make_smem_desc(q_smem_ + col_bytes, 16, 1024), make_smem_desc(kv + col_bytes, 16, 1024));
    }
    wgmma_commit();
    wgmma_wait<0>();
  }

  // Masks the scores of the page in buffer W and scales them into base 2; new_max = max(floor,
  // row max), published in row_max_[W][row]; P = exp2(S - new_max) to p (the A fragments of
  // P.V: p[2 j + h] holds keys 8 j + 2 (lane % 4) + {0, 1} of row h) and to the P tile in the
  // buffer's rotary piece (64 x 64, K-major, 128B swizzle; only this warpgroup's Q.K^T read that
  // piece); the row sums of P to tile_sum.
  template <int W>
  __device__ void page_probabilities(float (&s)[32], int page, const int (&key_limit)[2], const float (&floor)[2],
                                     float (&new_max)[2], uint32_t (&p)[16], float (&tile_sum)[2]) const {
    const int key0 = page * kPageSize + 2 * (lane_ % 4);
    float tile_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int j = 0; j < kPageSize / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e / 2;
        // A select, never a multiply: the scores of unused cache slots may be NaN.
        const float v = key0 + 8 * j + (e & 1) < key_limit[h] ? s[4 * j + e] * score_scale_log2_ : -CUDART_INF_F;
        s[4 * j + e] = v;
        tile_max[h] = fmaxf(tile_max[h], v);
      }
    }
    float ref[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      new_max[h] = fmaxf(floor[h], tile_max[h]);
      // Predicated, not branched: WG1 runs this under an outstanding wgmma.
      asm volatile(
          "{\n"
          ".reg .pred p;\n"
          "setp.eq.u32 p, %2, 0;\n"
          "@p st.shared.f32 [%0], %1;\n"
          "}\n" ::"r"(smem_u32(row_max_ + W * kBlockM + row_of(h))),
          "f"(new_max[h]), "r"(lane_ % 4)
          : "memory");
      ref[h] = reference(new_max[h]);
      tile_sum[h] = 0.f;
    }
    const uint32_t rope = kv_slot(W) + kRopePiece * kPieceBytes;
#pragma unroll
    for (int j = 0; j < kPageSize / 8; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float p0 = probability(s[4 * j + 2 * h] - ref[h]);
        const float p1 = probability(s[4 * j + 2 * h + 1] - ref[h]);
        tile_sum[h] += p0 + p1;
        p[2 * j + h] = MmaTraits<Element>::pack(p0, p1);
        const int row = row_of(h);
        const uint32_t addr = rope + row * 128 + ((j ^ (row % 8)) * 16) + (lane_ % 4) * 4;
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(p[2 * j + h]) : "memory");
      }
    }
  }

  // Whether page `page` holds the sequence end, i.e. rows past it that may hold NaN.
  __device__ static bool is_tail(int page, int seqlen) { return page * kPageSize + kPageSize > seqlen; }

  // The tail page's rows past the sequence end, zeroed by the warpgroup that scored it (its
  // Q.K^T waited on every piece, `own_tail`), before the signal that lets the other warpgroup read
  // them and before its own P.V. In a pair holding the tail, the other warpgroup passes its own
  // barrier here too: both warpgroups then wait at equally many barriers in every pair, which
  // compute-sanitizer's racecheck needs to see the 256-thread barriers order the two (it flagged
  // write_result's row-sum exchange otherwise; docs/sm90-kernel-log.md, 2026-12-07).
  template <int W>
  __device__ void zero_rows_past_end(int page, int seqlen, bool own_tail, bool pair_has_tail) const {
    if (!pair_has_tail) return;
    if (own_tail) {
      zero_value_rows<128>(kv_slot(W), seqlen - page * kPageSize, tid_ % 128);
      fence_proxy_async_smem();
    }
    named_barrier_sync(kWarpgroupBarrier + W, 128);  // this warpgroup's own P.V reads them next
  }

  // Moves the running max to new_max: O and the row sum scaled by exp2(old - new).
  __device__ static void move_max(float (&acc)[128], float (&row_max)[2], float (&row_sum)[2],
                                  const float (&new_max)[2]) {
    float scale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      scale[h] = exp2f(row_max[h] - reference(new_max[h]));
      row_sum[h] *= scale[h];
      row_max[h] = new_max[h];
    }
    rescale(acc, scale);
  }

  // Pages `page` and, if has_second, page + 1 of the request; parity of each buffer's phase from
  // loads[], which counts the pages consumed from it. Returns whether this warpgroup's page's
  // block id lies in the cache.
  __device__ bool attend_pair(int page, bool has_second, int (&loads)[kStages], int seqlen,
                              const int (&key_limit)[2], float (&acc)[128], float (&row_max)[2],
                              float (&row_sum)[2]) {
    const uint32_t parity_first = uint32_t(loads[0] & 1), parity_second = uint32_t(loads[1] & 1);
    ++loads[0];
    loads[1] += has_second;
    float s[32];
    uint32_t p[16];
    float new_max[2], tile_sum[2];
    bool in_cache = true;
    const bool first_is_tail = is_tail(page, seqlen), second_is_tail = has_second && is_tail(page + 1, seqlen);
    if (wg_ == 0) {
#pragma unroll
      for (int i = 0; i < 32; ++i) s[i] = 0.f;
      fence_operands(s);
      page_scores<0>(s, parity_first);
      fence_operands(s);
      in_cache = bad_block_[0] == 0;  // rewritten only after this warpgroup releases buffer 0
      page_probabilities<0>(s, page, key_limit, row_max, new_max, p, tile_sum);
      zero_rows_past_end<0>(page, seqlen, first_is_tail, first_is_tail || second_is_tail);
      fence_proxy_async_smem();  // the P tile is read by WG1's wgmma
      named_barrier_arrive(kFirstPageBarrier, kMathThreads);
      move_max(acc, row_max, row_sum, new_max);
#pragma unroll
      for (int h = 0; h < 2; ++h) row_sum[h] += tile_sum[h];
      fence_operands(acc);
      pv_from_registers(acc, p, 0);
      wgmma_wait<0>();
      fence_operands(acc);
      mbarrier_arrive(empty_bar(0, 0));
      if (has_second) {
        named_barrier_sync(kSecondPageBarrier, kMathThreads);
#pragma unroll
        for (int h = 0; h < 2; ++h) new_max[h] = row_max_[kBlockM + row_of(h)];
        move_max(acc, row_max, row_sum, new_max);
        // The value pieces of buffer 1 that WG1's Q.K^T waited on (their phase cannot move on
        // before this warpgroup releases them, so the waits return at once).
#pragma unroll 1
        for (int piece = 0; piece < kPiecesV / 2; ++piece) mbarrier_wait(full_bar(1, piece), parity_second);
        fence_operands(acc);
        pv_from_smem(acc, 1);
        wgmma_wait<0>();
        fence_operands(acc);
        mbarrier_arrive(empty_bar(1, 0));
      } else {
        // A pair without its second page passes barrier 3 too, for racecheck's count (above).
        named_barrier_sync(kSecondPageBarrier, kMathThreads);
      }
    } else {
      // No branch may lie between a wgmma and its wait (ptxas would serialize every wgmma of the
      // kernel), hence two paths.
      if (has_second) {
#pragma unroll
        for (int i = 0; i < 32; ++i) s[i] = 0.f;
        fence_operands(s);
        page_scores<1>(s, parity_second);
        fence_operands(s);
        in_cache = bad_block_[1] == 0;
      }
      zero_rows_past_end<1>(page + 1, seqlen, second_is_tail, first_is_tail || second_is_tail);
      named_barrier_sync(kFirstPageBarrier, kMathThreads);
      float first_max[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) first_max[h] = row_max_[row_of(h)];
      move_max(acc, row_max, row_sum, first_max);
#pragma unroll 1
      for (int piece = kPiecesV / 2; piece < kPiecesV; ++piece) mbarrier_wait(full_bar(0, piece), parity_first);
      fence_operands(acc);
      if (has_second) {
        pv_from_smem(acc, 0);  // runs while P_o is computed
        page_probabilities<1>(s, page + 1, key_limit, row_max, new_max, p, tile_sum);
        fence_proxy_async_smem();  // the P tile is read by WG0's wgmma
        named_barrier_arrive(kSecondPageBarrier, kMathThreads);
        wgmma_wait<0>();
        fence_operands(acc);
        mbarrier_arrive(empty_bar(0, 1));
        move_max(acc, row_max, row_sum, new_max);
#pragma unroll
        for (int h = 0; h < 2; ++h) row_sum[h] += tile_sum[h];
        fence_operands(acc);
        pv_from_registers(acc, p, 1);
        wgmma_wait<0>();
        fence_operands(acc);
        mbarrier_arrive(empty_bar(1, 1));
      } else {
        named_barrier_arrive(kSecondPageBarrier, kMathThreads);
        pv_from_smem(acc, 0);
        wgmma_wait<0>();
        fence_operands(acc);
        mbarrier_arrive(empty_bar(0, 1));
      }
    }
    return in_cache;
  }

  __device__ void write_result(int req, bool valid, const float (&acc)[128], const float (&row_max)[2],
                               float (&row_sum)[2]) {
    // Row sums: over the 4 lanes of a row, then over the two warpgroups (same order in both).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
      if (lane_ % 4 == 0) row_sum_[wg_ * kBlockM + row_of(h)] = row_sum[h];
    }
    // Seesaw: each warpgroup checked the block ids of its own pages.
    if (tid_ % 128 == 0) valid_[wg_] = valid;
    named_barrier_sync(kMathBarrier, kMathThreads);
    float total[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) total[h] = row_sum_[row_of(h)] + row_sum_[kBlockM + row_of(h)];
    valid = valid_[0] != 0 && valid_[1] != 0;
    named_barrier_sync(kMathBarrier, kMathThreads);  // row_sum_ and valid_ may be rewritten by the next request

    const bool final_output = p_.num_splits[req + 1] - p_.num_splits[req] == 1;
    const int split = req == part_.begin_req ? part_.first_split : p_.num_splits[req];
    const int first_col = wg_ * kValueColsPerWarpgroup + 2 * (lane_ % 4);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int q_row = m_block_ * kBlockM + row_of(h);
      if (q_row >= p_.rows_per_kv_head) continue;
      const RowOutput<Element> row(p_, req, kv_head_, q_row, split, final_output, valid, row_max[h], total[h]);
      row.template store_pairs<kValueColsPerWarpgroup / 8>(
          first_col, [&](int j) { return make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]); });
      if (wg_ == 0 && lane_ % 4 == 0) row.store_lse();
    }
  }

  const DecodeParams& p_;
  const CUtensorMap* const kv_map_;
  const bool kv_tokens_inner_;  // the map's dimension 1 is the token (else the kv head)
  const uint32_t q_smem_, kv_smem_, x_smem_, full_bar_, raw_full_bar_, empty_bar_, part_check_bar_;
  volatile uint32_t* const part_matches_;
  volatile uint32_t* const bad_block_;
  volatile uint32_t* const valid_;
  float* const row_max_;
  float* const row_sum_;
  const int m_block_, kv_head_, tid_, warp_, lane_, wg_;
  const float score_scale_log2_;  // softmax scale in base 2, times the FP8 dequantisation scales
  SchedulerPart part_;
  int last_token_;
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename Element, Schedule kSchedule, bool kFp8Q, bool kFp8Cache>
__global__ void __launch_bounds__(kThreads, 1)
    decode_kernel(const __grid_constant__ DecodeParams params, const __grid_constant__ CUtensorMap kv_map,
                  bool kv_tokens_inner) {
#if defined(__CUDA_ARCH__)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) char smem[];
  // Align the base to 1024 bytes in the shared window (the launch reserves the slack).
  const uint32_t raw = smem_u32(smem);
  const uint32_t base = (raw + Smem::kAlign - 1) & ~uint32_t(Smem::kAlign - 1);
  DecodeCta<Element, kSchedule, kFp8Q, kFp8Cache>(params, &kv_map, kv_tokens_inner, base, smem + (base - raw)).run();
#else
  __trap();  // only sm_90a machine code is meant to run; the launcher refuses other GPUs
#endif
#endif
}

}  // namespace sm90

namespace {

template <typename Element, sm90::Schedule kSchedule, bool kFp8Q = false, bool kFp8Cache = false>
void launch(const DecodeParams& params, cudaStream_t stream) {
  sm90::check_device();
  const sm90::KvTensorMap kv_map = sm90::make_kv_tensor_map<Element, kFp8Cache>(params);
  auto* kernel = sm90::decode_kernel<Element, kSchedule, kFp8Q, kFp8Cache>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, sm90::Smem::kBytes);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: the sm90 decode kernel needs ") +
                             std::to_string(sm90::Smem::kBytes) + " bytes of shared memory: " + cudaGetErrorString(err));
  const int num_m_blocks = (params.rows_per_kv_head + sm90::kBlockM - 1) / sm90::kBlockM;
  dim3 grid(num_m_blocks, params.h_kv, params.num_sm_parts);
  kernel<<<grid, sm90::kThreads, sm90::Smem::kBytes, stream>>>(params, kv_map.map, kv_map.tokens_inner);
}

const DecodeKernel kKernels[] = {
    {"sm90",
     sm90::kBlockM,
     sm90::Smem::kBytes,
     9,
     0,
     /*arch_specific=*/true,
     {&launch<__nv_bfloat16, sm90::Schedule::kLockstep>, &launch<__half, sm90::Schedule::kLockstep>,
      &launch<__nv_bfloat16, sm90::Schedule::kLockstep, false, true>,
      &launch<__half, sm90::Schedule::kLockstep, false, true>,
      &launch<__nv_bfloat16, sm90::Schedule::kLockstep, true, true>}},
    // Chosen only by name (FLASH_MLA_BACKEND_KERNEL) until racecheck is clean on it.
    {"sm90_seesaw", sm90::kBlockM, sm90::Smem::kBytes, 9, 0, /*arch_specific=*/true,
     {&launch<__nv_bfloat16, sm90::Schedule::kSeesaw>, &launch<__half, sm90::Schedule::kSeesaw>}},
    {nullptr, 0, 0, 0, 0, false, {}},
};

}  // namespace

const DecodeKernel* sm90_decode_kernels() { return kKernels; }

}  // namespace flash_mla_backend
