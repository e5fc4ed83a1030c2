// Hopper (sm_90a) MLA decode kernel for few query rows per kv head (16 or 32 per tile: DeepSeek's
// 16 heads per GPU at tensor parallelism 8 with s_q 1-2, or 32 heads at s_q 1), with the wgmma
// operands swapped so that a page's 64 keys are the M dimension and the tile's query rows the N:
//   S^T[64 keys, kRows] = K . Q^T      (wgmma m64nNk16: K and Q K-major in shared memory)
//   O^T[512, kRows] += V^T . P^T       (eight m64nNk16 per 16 keys: V^T MN-major, P^T K-major)
// The tensor work per page is then that of kRows query rows, where a 64-row tile pads 16 rows to
// 64 (4x the work) and the Hopper kernel's per-page chain, not the loads, bounds it.
//
// One CTA per (kRows-row query tile, kv head, scheduler part), as every decode kernel (see
// decode/decode_kernels.h). 384 threads:
//   - math warpgroups 0 and 1: page g of the part goes to buffer g % 2 and is attended to by
//     warpgroup g % 2 alone, which keeps its own online-softmax state (maxima, row sums, all 512
//     value columns of O^T); nothing couples the two per page, so one's softmax runs under the
//     other's tensor work. At the end of a request the two states merge through shared memory and
//     each warpgroup writes half of the value columns.
//   - warpgroup 2, the producer: its first thread loads each page as nine 64 x 64 TMA pieces
//     (128B-swizzled, one mbarrier each), flagging block ids outside the cache; its second warp
//     checks the part's length fingerprint.
// Per page, warpgroup w: S^T over the 576 columns (waiting on each piece); mask; column maxima
// over the 64 keys (lanes, then the four warps through shared memory); P^T = exp2(S^T - max) into
// a 128B-swizzled tile by stmatrix.trans; the tail page's rows past the sequence end zeroed; O^T
// rescaled and += V^T . P^T; the buffer released to the producer.
//
// FP8 (e4m3) caches: a ring of raw 4 KB pieces fills the shared memory the 16-bit kernel leaves
// free (14 pieces at 16 rows, 8 at 32). The producer's first thread loads the part's pieces into
// it in order, each as soon as its ring slot has been read, so the loads run ahead of the math
// by up to a page and a half; the whole producer warpgroup converts the pieces, two per step,
// into the page's 16-bit buffer (e4m3_pieces.h) once the buffer's warpgroup has released it.
// The math is the 16-bit kernel's; the dequantisation scales are folded into the score scale and
// the output; an e4m3 q is converted on its way into shared memory.
#include "decode/decode_kernels.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dependent_launch.cuh"
#include "common/input_checks.cuh"
#include "common/row_output.cuh"
#include "decode/sm90/e4m3_pieces.h"
#include "decode/sm90/kv_pieces.h"
#include "decode/sm90/launch_sm90.h"
#include "decode/sm90/ptx_sm90.cuh"
#include "decode/sm90/q_tile.h"

namespace flash_mla_backend {
namespace sm90_narrow {

using sm90::kPieceBytes;
using sm90::kPiecesQK;
using sm90::kPiecesV;
using sm90::kRawPieceBytes;
using sm90::kTileBytes;

constexpr int kMathThreads = 256;             // two math warpgroups
constexpr int kThreads = kMathThreads + 128;  // + the producer warpgroup
constexpr int kStages = 2;                    // page buffers, one per math warpgroup
constexpr int kWarpsPerGroup = 4;

// Shared memory, in bytes from a 1024-byte aligned base, for tiles of kRows query rows and a ring
// of kRawSlots raw FP8 pieces.
template <int kRows, int kRawSlots>
struct SmemLayout {
  static constexpr int kQPieceBytes = kRows * 128;  // 64 columns of Q, 128B-swizzled rows
  // Q tile, nine pieces; at a request's end, after both warpgroups' last Q.K^T, the exchange of
  // half of O^T (256 x kRows fp32) for the merge.
  static constexpr int kQ = 0;
  static constexpr int kKV = kQ + kPiecesQK * kQPieceBytes;  // kStages pages
  static constexpr int kPT = kKV + kStages * kTileBytes;      // P^T [kRows x 64] per warpgroup
  static constexpr int kRaw = kPT + 2 * kQPieceBytes;         // FP8 caches: the ring of raw pieces
  // float [2 warpgroups][4 warps][kRows]: each warp's column maxima of a page
  static constexpr int kColMax = kRaw + kRawSlots * kRawPieceBytes;
  // float [2 warpgroups][4 warps][kRows]: the row sums at a request's end
  static constexpr int kRowSum = kColMax + 2 * kWarpsPerGroup * kRows * 4;
  static constexpr int kRowMax = kRowSum + 2 * kWarpsPerGroup * kRows * 4;  // float [2][kRows]
  static constexpr int kFullBar = kRowMax + 2 * kRows * 4;                   // uint64 [kStages][9]
  static constexpr int kEmptyBar = kFullBar + kStages * kPiecesQK * 8;       // uint64 [kStages]
  static constexpr int kRawFullBar = kEmptyBar + kStages * 8;                // uint64 [kRawSlots]
  static constexpr int kPartCheckBar = kRawFullBar + kRawSlots * 8;          // uint64
  static constexpr int kPartMatches = kPartCheckBar + 8;                     // uint32: the part check's answer
  static constexpr int kBadBlock = kPartMatches + 4;  // uint32 [kStages]: the buffer's block id is outside the cache
  static constexpr int kValid = kBadBlock + kStages * 4;  // uint32 [2]: each warpgroup's view of the request
  static constexpr int kEnd = kValid + 2 * 4;
  static constexpr int kAlign = 1024;
  static constexpr int kBytes = kEnd + kAlign;  // the slack lets the kernel align the base itself
  static_assert(kQPieceBytes % 1024 == 0 && kKV % 1024 == 0 && kPT % 1024 == 0, "128B-swizzle atoms are 1 KB");
  static_assert(kHeadDimV / 2 * kRows * 4 <= kPiecesQK * kQPieceBytes, "half of O^T fits the Q tile");
  static_assert(kBytes <= 227 * 1024, "must fit the 227 KB a block can opt into on sm_90");
};

// FP8 caches: as many raw pieces as the 227 KB a block can opt into leave room for.
constexpr int raw_slots(int rows, bool fp8_cache) {
  return fp8_cache ? (227 * 1024 - (rows == 16 ? SmemLayout<16, 0>::kBytes : SmemLayout<32, 0>::kBytes)) /
                         (kRawPieceBytes + 8)
                   : 0;
}
template <int kRows, bool kFp8Cache>
using Smem = SmemLayout<kRows, raw_slots(kRows, kFp8Cache)>;
static_assert(raw_slots(32, true) >= 2, "a conversion step reads two ring slots");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace sm90;

constexpr int kMathBarrier = 1;       // named barrier of the 256 math threads
constexpr int kWarpgroupBarrier = 2;  // + w: the 128 threads of math warpgroup w
constexpr int kConvertBarrier = 4;    // FP8 caches: the 128 producer threads
constexpr int kPartCheckWarp = kMathThreads / 32 + 1;  // the producer warpgroup's second warp
constexpr int kKStepsQK = kHeadDimQK / 16;             // 36 wgmma k-steps over the 576 columns
constexpr int kMBlocksV = kHeadDimV / 64;              // 8 m64 blocks of value columns
constexpr int kMBlocksPerGroup = kMBlocksV / 2;        // the value columns each warpgroup writes

// Element: the 16-bit type the math runs in (bf16 for an e4m3 q); kFp8Q, kFp8Cache: q, the cache
// are e4m3.
template <typename Element, int kRows, bool kFp8Q, bool kFp8Cache>
class NarrowDecodeCta {
  using Mma = Wgmma<Element>;
  using Layout = Smem<kRows, kFp8Cache>;
  static_assert(kRows == 16 || kRows == 32, "tiles of 16 or 32 query rows");
  static_assert(kFp8Cache || !kFp8Q, "an FP8 q comes with an FP8 cache");
  static constexpr int kAcc = kRows / 2;   // accumulator values per thread of one m64 x kRows tile
  static constexpr int kCols = kRows / 4;  // query rows (accumulator columns) per thread
  static constexpr int kRawSlots = raw_slots(kRows, kFp8Cache);
  // 2 x 128 x 232 + 128 x 40 (FP8 caches: 216 + 72, for the conversion and the ring's walk) =
  // 64512, the 384 x 168 registers the CTA starts with
  static constexpr int kMathRegisters = kFp8Cache ? 216 : 232;
  static constexpr int kProducerRegisters = kFp8Cache ? 72 : 40;

 public:
  __device__ NarrowDecodeCta(const DecodeParams& p, const CUtensorMap* kv_map, bool kv_tokens_inner, uint32_t base,
                             char* base_ptr)
      : p_(p),
        kv_map_(kv_map),
        kv_tokens_inner_(kv_tokens_inner),
        q_smem_(base + Layout::kQ),
        kv_smem_(base + Layout::kKV),
        pt_smem_(base + Layout::kPT),
        raw_smem_(base + Layout::kRaw),
        full_bar_(base + Layout::kFullBar),
        empty_bar_(base + Layout::kEmptyBar),
        raw_full_bar_(base + Layout::kRawFullBar),
        part_check_bar_(base + Layout::kPartCheckBar),
        part_matches_(reinterpret_cast<volatile uint32_t*>(base_ptr + Layout::kPartMatches)),
        bad_block_(reinterpret_cast<volatile uint32_t*>(base_ptr + Layout::kBadBlock)),
        valid_(reinterpret_cast<volatile uint32_t*>(base_ptr + Layout::kValid)),
        col_max_(reinterpret_cast<float*>(base_ptr + Layout::kColMax)),
        row_sum_(reinterpret_cast<float*>(base_ptr + Layout::kRowSum)),
        row_max_(reinterpret_cast<float*>(base_ptr + Layout::kRowMax)),
        m_block_(blockIdx.x),
        kv_head_(blockIdx.y),
        tid_(threadIdx.x),
        warp_(threadIdx.x / 32 % kWarpsPerGroup),
        lane_(threadIdx.x % 32),
        // Broadcast from lane 0, so that ptxas knows the warpgroup index is uniform in a warp.
        wg_(__shfl_sync(0xffffffffu, int(threadIdx.x / 128), 0)),
        score_scale_log2_(score_scale_log2(p)) {
    part_ = load_scheduler_part(p, blockIdx.z);
    const int last_row = min((m_block_ + 1) * kRows, p.rows_per_kv_head) - 1;
    last_token_ = last_row / p.heads_per_kv;
  }

  __device__ void run() {
    if (tid_ == 0) {
      // FP8 caches: a piece is full once the 128 converting threads have arrived.
      for (int i = 0; i < kStages * kPiecesQK; ++i) mbarrier_init(full_bar_ + 8 * i, kFp8Cache ? kConvertThreads : 1);
      for (int i = 0; i < kStages; ++i) mbarrier_init(empty_bar_ + 8 * i, 128);  // the buffer's warpgroup
      for (int i = 0; i < kRawSlots; ++i) mbarrier_init(raw_full_bar_ + 8 * i, 1);
      mbarrier_init(part_check_bar_, 1);
      mbarrier_init_fence();
    }
    fence_proxy_async_smem();
    allow_dependent_launch();  // the combine kernel waits for this grid's completion itself
    __syncthreads();           // the last barrier of all 384 threads
    if (wg_ == 2) {
      setmaxnreg_dec<kProducerRegisters>();
      if (threadIdx.x / 32 == kPartCheckWarp) check_part();
      if constexpr (kFp8Cache)
        convert_pages();  // the whole warpgroup
      else if (tid_ == kMathThreads)
        produce();
    } else {
      setmaxnreg_inc<kMathRegisters>();
      consume();
    }
  }

 private:
  __device__ PageRange page_range(int req) const { return visible_pages(p_, part_, req, last_token_); }
  __device__ uint32_t full_bar(int slot, int piece) const { return full_bar_ + 8 * (slot * kPiecesQK + piece); }
  __device__ uint32_t empty_bar(int slot) const { return empty_bar_ + 8 * slot; }
  __device__ uint32_t kv_slot(int slot) const { return kv_smem_ + slot * kTileBytes; }
  // FP8 caches: ring slot, its barrier and its phase parity of the part's n-th piece.
  __device__ uint32_t raw_slot(int n) const { return raw_smem_ + (n % kRawSlots) * kRawPieceBytes; }
  __device__ uint32_t raw_full_bar(int n) const { return raw_full_bar_ + 8 * (n % kRawSlots); }
  __device__ static uint32_t raw_parity(int n) { return uint32_t((n / kRawSlots) & 1); }

  // Piece `piece` of cache block `block` (this CTA's kv head) to `dst`, completing `bytes` on
  // `bar`. Coordinates (innermost first): column, then kv head and token in page in the map's
  // order, then block.
  __device__ void load_piece(uint32_t dst, uint32_t bar, uint32_t bytes, int piece, int block) const {
    mbarrier_arrive_expect_tx(bar, bytes);
    tma_load_4d(dst, kv_map_, bar, piece * kPieceCols, kv_tokens_inner_ ? 0 : kv_head_, kv_tokens_inner_ ? kv_head_ : 0,
                block);
  }

  // ------------------------------------------------------------------------------------------
  // Producer: one thread; page g of the part goes to buffer g % 2 once the warpgroup that read
  // the buffer's previous page has released it. A block id outside the cache is still loaded
  // (TMA fills coordinates outside the tensor with zeros); the buffer's flag, written before the
  // pieces' barriers are armed, makes the request NaN.
  // ------------------------------------------------------------------------------------------
  // Calls visit(slot, loads, block) for each page g of the part in order: its buffer g % 2, the
  // number of pages that buffer held before, and the page's block id.
  template <typename Visit>
  __device__ void walk_pages(Visit&& visit) const {
    int g = 0;
    for (int req = part_.begin_req; req <= part_.end_req; ++req) {
      const PageRange range = page_range(req);
      const int* block_table = p_.block_table + int64_t(req) * p_.block_table_batch_stride;
      for (int page = range.begin; page < range.end; ++page, ++g) visit(g % kStages, g / kStages, block_table[page]);
    }
  }

  __device__ void produce() {
    prefetch_tensormap(kv_map_);
    walk_pages([&](int slot, int loads, int block) {
      if (loads > 0) mbarrier_wait(empty_bar(slot), uint32_t((loads - 1) & 1));
      bad_block_[slot] = uint32_t(block) >= uint32_t(p_.num_blocks);
#pragma unroll 1
      for (int piece = 0; piece < kPiecesQK; ++piece)
        load_piece(kv_slot(slot) + piece * kPieceBytes, full_bar(slot, piece), kPieceBytes, piece, block);
    });
  }

  // FP8 caches: the producer warpgroup. Its first thread loads the part's pieces in order
  // (ring slot n % kRawSlots holds the n-th), each once the slot's previous piece has been read;
  // all 128 threads convert the pieces, two per step, into page g's buffer g % 2 once the
  // warpgroup that read the buffer's previous page has released it. The flag of a block id
  // outside the cache is written then too, before the page's pieces are marked full.
  static constexpr int kConversionSteps = (kPiecesQK + 1) / 2;  // pieces (0, 1), (2, 3), .., (8)
  __device__ void convert_pages() {
    const int thread = tid_ - kMathThreads;
    const bool issuer = thread == 0;
    PieceCursor next{};  // the issuer's: the next piece to load
    if (issuer) {
      prefetch_tensormap(kv_map_);
      next = first_piece();
#pragma unroll 1
      for (int n = 0; n < kRawSlots && !done(next); ++n) load_raw_piece(next, n);
    }
    int n = 0;  // pieces of the part converted so far
    walk_pages([&](int slot, int loads, int block) {
#pragma unroll 1
      for (int step = 0; step < kConversionSteps; ++step) {
        const int first = 2 * step, pieces = min(2, kPiecesQK - first);
        uint32_t raw[2][2][4];
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          if (k == pieces) break;
          mbarrier_wait(raw_full_bar(n + k), raw_parity(n + k));
          load_raw_chunks(raw_slot(n + k), thread, raw[k]);
        }
        named_barrier_sync(kConvertBarrier, kConvertThreads);  // the step's ring slots are read
        if (issuer)
          for (int k = 0; k < pieces && !done(next); ++k) load_raw_piece(next, n + k + kRawSlots);
        if (step == 0) {
          if (loads > 0) mbarrier_wait(empty_bar(slot), uint32_t((loads - 1) & 1));
          if (issuer) bad_block_[slot] = uint32_t(block) >= uint32_t(p_.num_blocks);
        }
#pragma unroll
        for (int k = 0; k < 2; ++k)
          if (k < pieces) store_converted_chunks<Element>(raw[k], kv_slot(slot) + (first + k) * kPieceBytes, thread);
        fence_proxy_async_smem();  // read by wgmma next
#pragma unroll
        for (int k = 0; k < 2; ++k)
          if (k < pieces) mbarrier_arrive(full_bar(slot, first + k));
        n += pieces;
      }
    });
  }

  // The issuer's walk over the part's pieces: piece `piece` of page `page` of request `req`
  // (pages up to `end`); past the part once req > part_.end_req.
  struct PieceCursor {
    int req, page, end, piece;
  };
  __device__ bool done(const PieceCursor& c) const { return c.req > part_.end_req; }
  // From request c.req + 1 on, to the first request with pages to attend to.
  __device__ void to_next_request(PieceCursor& c) const {
    c.piece = 0;
    while (++c.req <= part_.end_req) {
      const PageRange range = page_range(c.req);
      c.page = range.begin, c.end = range.end;
      if (range.end > range.begin) return;
    }
  }
  __device__ PieceCursor first_piece() const {
    PieceCursor c{part_.begin_req - 1, 0, 0, 0};
    to_next_request(c);
    return c;
  }
  // Loads the cursor's piece as the part's n-th into the ring and moves the cursor on.
  __device__ void load_raw_piece(PieceCursor& c, int n) const {
    const int block = p_.block_table[int64_t(c.req) * p_.block_table_batch_stride + c.page];
    load_piece(raw_slot(n), raw_full_bar(n), kRawPieceBytes, c.piece, block);
    if (++c.piece < kPiecesQK) return;
    c.piece = 0;
    if (++c.page < c.end) return;
    to_next_request(c);
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
  // Math warpgroups. A thread's accumulator value 4 j + 2 h + e of an m64 x kRows tile is at M
  // row 16 warp + lane / 4 + 8 h and query row (column) 8 j + 2 (lane % 4) + e; its kCols query
  // rows are indexed c = 2 j + e.
  // ------------------------------------------------------------------------------------------
  __device__ int col_of(int c) const { return 8 * (c / 2) + 2 * (lane_ % 4) + c % 2; }
  __device__ static constexpr int acc_index(int c, int h) { return 4 * (c / 2) + 2 * h + c % 2; }
  __device__ int m_row_of(int h) const { return 16 * warp_ + lane_ / 4 + 8 * h; }

  // O^T of one request: all 512 value columns (m64 block mb: columns 64 mb..) x the tile's rows.
  struct State {
    float acc[kMBlocksV][kAcc];
    float row_max[kCols];  // base-2 scaled scores
    float row_sum[kCols];  // this thread's partial sums (its keys)
  };

  __device__ void consume() {
    int g = 0;  // pages of the part so far, as counted by the producer
    for (int req = part_.begin_req; req <= part_.end_req; ++req) {
      const int seqlen = p_.cache_seqlens[req];
      bool valid = seqlen >= 0 && seqlen <= p_.max_pages * kPageSize;
      const PageRange range = page_range(req);
      State st;
#pragma unroll
      for (int mb = 0; mb < kMBlocksV; ++mb)
#pragma unroll
        for (int i = 0; i < kAcc; ++i) st.acc[mb][i] = 0.f;
#pragma unroll
      for (int c = 0; c < kCols; ++c) st.row_max[c] = -CUDART_INF_F, st.row_sum[c] = 0.f;

      if (range.end > range.begin) {
        load_q(req);
        // Keys visible to each of this thread's query rows: [0, key_limit).
        int key_limit[kCols];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int token = (m_block_ * kRows + col_of(c)) / p_.heads_per_kv;
          key_limit[c] = p_.causal ? min(seqlen, seqlen - p_.s_q + token + 1) : seqlen;
        }
        // Compile-time warpgroup indices keep the barrier addresses and descriptors in uniform
        // registers, so that ptxas keeps the wgmma chains pipelined.
        int attended = 0;
        for (int page = range.begin; page < range.end; ++page, ++g) {
          if (g % kStages != wg_) continue;
          if (wg_ == 0)
            valid &= attend_page<0>(page, g, seqlen, key_limit, st);
          else
            valid &= attend_page<1>(page, g, seqlen, key_limit, st);
          ++attended;
        }
        // racecheck orders shared-memory accesses by how many barriers each thread has waited at
        // (docs/sm90-kernel-log.md, 2026-12-07): a warpgroup that attended one page fewer of the
        // request waits at its own barrier as often as that page would have made it, so that both
        // reach the merge's barriers at the same count. The hardware's ordering needs none of it.
        for (int i = 2 * attended; i < (range.end - range.begin + 1) / 2 * 2; ++i) {
          if (wg_ == 0)
            named_barrier_sync(kWarpgroupBarrier, 128);
          else
            named_barrier_sync(kWarpgroupBarrier + 1, 128);
        }
      }
      mbarrier_wait(part_check_bar_, 0);  // returns at once after the first request
      merge_and_write(req, *part_matches_ != 0 && valid, st);
    }
  }

  // Q rows of this tile -> shared memory (q_tile.h; the loop not unrolled: unrolled, it spilt at
  // 32 rows), published to both math warpgroups.
  __device__ void load_q(int req) {
    load_q_tile<Element, kFp8Q, kRows, 1>(p_, q_smem_, m_block_, kv_head_, req, tid_);
    named_barrier_sync(kMathBarrier, kMathThreads);
  }

  // Returns whether the page's block id lies in the cache (the producer's flag).
  template <int W>
  __device__ __forceinline__ bool attend_page(int page, int g, int seqlen, const int (&key_limit)[kCols], State& st) const {
    const uint32_t parity = uint32_t((g / kStages) & 1);
    const uint32_t kv = kv_slot(W);
    const uint32_t pt = pt_smem_ + W * Layout::kQPieceBytes;

    // 1. S^T[64 keys, kRows] = K . Q^T over the 576 columns, waiting on each piece.
    float s[kAcc];
#pragma unroll
    for (int i = 0; i < kAcc; ++i) s[i] = 0.f;
    fence_operands(s);
    wgmma_fence();
#pragma unroll
    for (int t = 0; t < kKStepsQK; ++t) {
      const int piece = t / 4;
      if (t % 4 == 0) mbarrier_wait(full_bar(W, piece), parity);
      const uint32_t col_bytes = uint32_t((t % 4) * 32);
      Mma::template m64nNk16<kRows, false>(s, make_smem_desc(kv + piece * kPieceBytes + col_bytes, 16, 1024),
                                       make_smem_desc(q_smem_ + piece * Layout::kQPieceBytes + col_bytes, 16, 1024));
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(s);
    // Written before the pieces waited on above were armed; rewritten only after this warpgroup
    // releases the buffer.
    const bool block_in_cache = bad_block_[W] == 0;

    // 2. Mask (a select, never a multiply: unused cache slots may hold NaN), scale into base 2,
    //    column maxima over the page's 64 keys: this thread's two keys, the 8 lanes that share
    //    its columns, then the 4 warps through shared memory (rewritten on the next page only
    //    after the barrier below, which every thread passes after its reads).
    float tile_max[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      tile_max[c] = -CUDART_INF_F;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int key = page * kPageSize + m_row_of(h);
        const float v = key < key_limit[c] ? s[acc_index(c, h)] * score_scale_log2_ : -CUDART_INF_F;
        s[acc_index(c, h)] = v;
        tile_max[c] = fmaxf(tile_max[c], v);
      }
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2)
        tile_max[c] = fmaxf(tile_max[c], __shfl_xor_sync(0xffffffffu, tile_max[c], offset));
    }
    float* const col_max = col_max_ + W * kWarpsPerGroup * kRows;
    if (lane_ < 4) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) col_max[warp_ * kRows + col_of(c)] = tile_max[c];
    }
    named_barrier_sync(kWarpgroupBarrier + W, 128);

    // 3. New maxima (the same expression in every thread of the warpgroup), P^T -> shared memory
    //    as 8 x 8 tiles transposed by stmatrix: keys 16 warp + 8 h.. of query rows 8 j.. go to
    //    rows 8 j.. of the [kRows x 64] K-major tile, 16-byte chunk 2 warp + h.
    float scale[kCols], tile_sum[kCols];
    uint32_t packed[kRows / 4];  // 8 x 8 tile 2 j + h
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      float new_max = st.row_max[c];
#pragma unroll
      for (int w = 0; w < kWarpsPerGroup; ++w) new_max = fmaxf(new_max, col_max[w * kRows + col_of(c)]);
      const float ref = reference(new_max);
      scale[c] = exp2f(st.row_max[c] - ref);
      st.row_max[c] = new_max;
      tile_sum[c] = 0.f;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        s[acc_index(c, h)] = exp2f(s[acc_index(c, h)] - ref);
        tile_sum[c] += s[acc_index(c, h)];
      }
    }
#pragma unroll
    for (int j = 0; j < kRows / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) packed[2 * j + h] = MmaTraits<Element>::pack(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
#pragma unroll
    for (int x = 0; x < kRows / 16; ++x) {
      const int tile = 4 * x + lane_ / 8;  // the 8 x 8 tile whose row this lane addresses
      const int row = 8 * (tile / 2) + lane_ % 8;
      const int chunk = 2 * warp_ + tile % 2;
      const uint32_t r[4] = {packed[4 * x], packed[4 * x + 1], packed[4 * x + 2], packed[4 * x + 3]};
      stmatrix_x4_trans(pt + swizzled(row, chunk), r);
    }
#pragma unroll
    for (int c = 0; c < kCols; ++c) st.row_sum[c] = st.row_sum[c] * scale[c] + tile_sum[c];

    if (page * kPageSize + kPageSize > seqlen) {
      // Rows past the sequence end may hold NaN: zero their value columns, since P.V would turn
      // 0 * NaN into NaN. This warpgroup's Q.K^T waited on every piece of the buffer.
      zero_value_rows<128>(kv, seqlen - page * kPageSize, tid_ % 128);
    }
    rescale(st, scale);
    fence_proxy_async_smem();  // P^T and the zeroed rows are read by wgmma next
    named_barrier_sync(kWarpgroupBarrier + W, 128);

    // 4. O^T += V^T . P^T: value columns 64 mb.. of the page are piece mb, read MN-major (M = 64
    //    is one 128B-swizzle atom wide, so the descriptor's LBO is never used).
    fence_state(st);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kPageSize / 16; ++kk)
#pragma unroll
      for (int mb = 0; mb < kMBlocksV; ++mb)
        Mma::template m64nNk16<kRows, true>(st.acc[mb],
                                         make_smem_desc(kv + mb * kPieceBytes + kk * 16 * 128, kPieceBytes, 1024),
                                         make_smem_desc(pt + kk * 32, 16, 1024));
    wgmma_commit();
    wgmma_wait<0>();
    fence_state(st);
    mbarrier_arrive(empty_bar(W));  // this thread is done with the page buffer
    return block_in_cache;
  }

  __device__ static __forceinline__ void fence_state(State& st) {
#pragma unroll
    for (int mb = 0; mb < kMBlocksV; ++mb) fence_operands(st.acc[mb]);
  }

  // O^T *= scale per query row, skipped in warps where no row's maximum moved.
  __device__ static __forceinline__ void rescale(State& st, const float (&scale)[kCols]) {
    bool moved = false;
#pragma unroll
    for (int c = 0; c < kCols; ++c) moved |= scale[c] != 1.f;
    if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
      for (int mb = 0; mb < kMBlocksV; ++mb)
#pragma unroll
        for (int c = 0; c < kCols; ++c)
#pragma unroll
          for (int h = 0; h < 2; ++h) st.acc[mb][acc_index(c, h)] *= scale[c];
    }
  }

  // The exponent reference for a running max: a row with nothing visible yet keeps max -inf, and
  // subtracting 0 keeps its exponentials at 0.
  __device__ static float reference(float row_max) { return row_max == -CUDART_INF_F ? 0.f : row_max; }

  // 16-byte slot `i` of this thread's share of the O^T exchange in the Q tile: thread-major, so
  // that every thread reads back exactly what the thread of the same index in the other
  // warpgroup wrote, without bank conflicts.
  __device__ uint32_t exchange_slot(int i) const { return q_smem_ + uint32_t((i * 128 + tid_ % 128) * 16); }

  // m64 blocks kFirst..kFirst + 3 of this thread's O^T to / from the exchange; from: acc = acc *
  // own + exchanged * other, per query row.
  template <int kFirst>
  __device__ __forceinline__ void send_half(const State& st) const {
#pragma unroll
    for (int mb = 0; mb < kMBlocksPerGroup; ++mb)
#pragma unroll
      for (int i = 0; i < kAcc / 4; ++i) {
        const float v[4] = {st.acc[kFirst + mb][4 * i], st.acc[kFirst + mb][4 * i + 1], st.acc[kFirst + mb][4 * i + 2],
                            st.acc[kFirst + mb][4 * i + 3]};
        st_shared_v4(exchange_slot(mb * (kAcc / 4) + i), v);
      }
  }
  template <int kFirst>
  __device__ __forceinline__ void merge_half(State& st, const float (&own)[kCols], const float (&other)[kCols]) const {
#pragma unroll
    for (int mb = 0; mb < kMBlocksPerGroup; ++mb)
#pragma unroll
      for (int i = 0; i < kAcc / 4; ++i) {
        float v[4];
        ld_shared_v4(exchange_slot(mb * (kAcc / 4) + i), v);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          // accumulator index 4 i + e holds query row c = 2 i + e % 2
          const int c = 2 * i + e % 2;
          float& a = st.acc[kFirst + mb][4 * i + e];
          a = a * own[c] + v[e] * other[c];
        }
      }
  }

  // The two warpgroups' states merged (O^T scaled to the larger maximum), then warpgroup w writes
  // value columns 256 w.. of every row. Warpgroup 1 sends its columns 0-255 and warpgroup 0 merges
  // them; warpgroup 0 sends its columns 256-511 and warpgroup 1 merges them.
  __device__ __forceinline__ void merge_and_write(int req, bool valid, State& st) {
    // Row sums over the 8 lanes of a query row, then per warp to shared memory.
#pragma unroll
    for (int c = 0; c < kCols; ++c)
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2)
        st.row_sum[c] += __shfl_xor_sync(0xffffffffu, st.row_sum[c], offset);
    if (lane_ < 4) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        row_sum_[(wg_ * kWarpsPerGroup + warp_) * kRows + col_of(c)] = st.row_sum[c];
        if (warp_ == 0) row_max_[wg_ * kRows + col_of(c)] = st.row_max[c];
      }
    }
    if (tid_ % 128 == 0) valid_[wg_] = valid;
    named_barrier_sync(kMathBarrier, kMathThreads);  // both warpgroups' last Q.K^T has read the Q tile
    if (wg_ == 1) send_half<0>(st);
    named_barrier_sync(kMathBarrier, kMathThreads);

    float own[kCols], other[kCols], max[kCols], total[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int col = col_of(c);
      const float max0 = row_max_[col], max1 = row_max_[kRows + col];
      max[c] = fmaxf(max0, max1);
      const float ref = reference(max[c]);
      // A side that saw nothing has max -inf and a zero O^T and sum: factor 0.
      const float f0 = exp2f(max0 - ref), f1 = exp2f(max1 - ref);
      float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
      for (int w = 0; w < kWarpsPerGroup; ++w) {
        sum0 += row_sum_[w * kRows + col];
        sum1 += row_sum_[(kWarpsPerGroup + w) * kRows + col];
      }
      total[c] = sum0 * f0 + sum1 * f1;
      own[c] = wg_ == 0 ? f0 : f1;
      other[c] = wg_ == 0 ? f1 : f0;
    }
    valid = valid_[0] != 0 && valid_[1] != 0;
    // Each thread reads back only its own slots before rewriting them, so warpgroup 0 needs no
    // barrier between its merge and its send.
    if (wg_ == 0) {
      merge_half<0>(st, own, other);
      send_half<kMBlocksPerGroup>(st);
    }
    named_barrier_sync(kMathBarrier, kMathThreads);
    if (wg_ == 1) merge_half<kMBlocksPerGroup>(st, own, other);
    // The exchange (the next request's Q), row_sum_, row_max_ and valid_ may be rewritten next.
    named_barrier_sync(kMathBarrier, kMathThreads);

    if (wg_ == 0)
      write_half<0>(req, valid, st, max, total);
    else
      write_half<kMBlocksPerGroup>(req, valid, st, max, total);
  }

  // Value columns 64 kFirst.. (m64 blocks kFirst..kFirst + 3; compile-time indices keep O^T in
  // registers) of every row of the tile, normalised.
  template <int kFirst>
  __device__ __forceinline__ void write_half(int req, bool valid, const State& st, const float (&max)[kCols],
                                             const float (&total)[kCols]) const {
    const bool final_output = p_.num_splits[req + 1] - p_.num_splits[req] == 1;
    const int split = req == part_.begin_req ? part_.first_split : p_.num_splits[req];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int q_row = m_block_ * kRows + col_of(c);
      if (q_row >= p_.rows_per_kv_head) continue;
      const RowOutput<Element> row(p_, req, kv_head_, q_row, split, final_output, valid, max[c], total[c]);
#pragma unroll
      for (int mb = kFirst; mb < kFirst + kMBlocksPerGroup; ++mb)
#pragma unroll
        for (int h = 0; h < 2; ++h) row.store(64 * mb + m_row_of(h), st.acc[mb][acc_index(c, h)]);
      if (kFirst == 0 && warp_ == 0 && lane_ < 4) row.store_lse();
    }
  }

  const DecodeParams& p_;
  const CUtensorMap* const kv_map_;
  const bool kv_tokens_inner_;  // the map's dimension 1 is the token (else the kv head)
  const uint32_t q_smem_, kv_smem_, pt_smem_, raw_smem_, full_bar_, empty_bar_, raw_full_bar_, part_check_bar_;
  volatile uint32_t* const part_matches_;
  volatile uint32_t* const bad_block_;
  volatile uint32_t* const valid_;
  float* const col_max_;
  float* const row_sum_;
  float* const row_max_;
  const int m_block_, kv_head_, tid_, warp_, lane_, wg_;
  const float score_scale_log2_;  // softmax scale in base 2, times the FP8 dequantisation scales
  SchedulerPart part_;
  int last_token_;
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename Element, int kRows, bool kFp8Q, bool kFp8Cache>
__global__ void __launch_bounds__(kThreads, 1)
    decode_kernel(const __grid_constant__ DecodeParams params, const __grid_constant__ CUtensorMap kv_map,
                  bool kv_tokens_inner) {
#if defined(__CUDA_ARCH__)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) char smem[];
  // Align the base to 1024 bytes in the shared window (the launch reserves the slack).
  const uint32_t raw = sm90::smem_u32(smem);
  constexpr uint32_t kAlign = Smem<kRows, kFp8Cache>::kAlign;
  const uint32_t base = (raw + kAlign - 1) & ~(kAlign - 1);
  NarrowDecodeCta<Element, kRows, kFp8Q, kFp8Cache>(params, &kv_map, kv_tokens_inner, base, smem + (base - raw)).run();
#else
  __trap();  // only sm_90a machine code is meant to run; the launcher refuses other GPUs
#endif
#endif
}

}  // namespace sm90_narrow

namespace {

template <typename Element, int kRows, bool kFp8Q = false, bool kFp8Cache = false>
void launch(const DecodeParams& params, cudaStream_t stream) {
  sm90::check_device();
  const sm90::KvTensorMap kv_map = sm90::make_kv_tensor_map<Element, kFp8Cache>(params);
  auto* kernel = sm90_narrow::decode_kernel<Element, kRows, kFp8Q, kFp8Cache>;
  constexpr int kSmemBytes = sm90_narrow::Smem<kRows, kFp8Cache>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: the sm90 narrow decode kernel needs ") +
                             std::to_string(kSmemBytes) + " bytes of shared memory: " + cudaGetErrorString(err));
  const int num_m_blocks = (params.rows_per_kv_head + kRows - 1) / kRows;
  dim3 grid(num_m_blocks, params.h_kv, params.num_sm_parts);
  kernel<<<grid, sm90_narrow::kThreads, kSmemBytes, stream>>>(params, kv_map.map, kv_map.tokens_inner);
}

// Chosen only by name (FLASH_MLA_BACKEND_KERNEL) until measured against sm90 on the GPU.
// smem_bytes: the larger of the 16-bit and the FP8 kernels' (the FP8 ring fills the rest).
const DecodeKernel kKernels[] = {
    {"sm90_narrow16", 16, sm90_narrow::Smem<16, true>::kBytes, 9, 0, /*arch_specific=*/true,
     {&launch<__nv_bfloat16, 16>, &launch<__half, 16>, &launch<__nv_bfloat16, 16, false, true>,
      &launch<__half, 16, false, true>, &launch<__nv_bfloat16, 16, true, true>}},
    {"sm90_narrow32", 32, sm90_narrow::Smem<32, true>::kBytes, 9, 0, /*arch_specific=*/true,
     {&launch<__nv_bfloat16, 32>, &launch<__half, 32>, &launch<__nv_bfloat16, 32, false, true>,
      &launch<__half, 32, false, true>, &launch<__nv_bfloat16, 32, true, true>}},
    {nullptr, 0, 0, 0, 0, false, {}},
};

}  // namespace

const DecodeKernel* sm90_narrow_decode_kernels() { return kKernels; }

}  // namespace flash_mla_backend
