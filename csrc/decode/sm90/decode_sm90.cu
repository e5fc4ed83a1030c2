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
#include "decode/decode_kernels.h"

#include <cuda.h>
#include <cudaTypedefs.h>
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
#include "decode/sm90/ptx_sm90.cuh"

namespace flash_mla_backend {
namespace sm90 {

constexpr int kBlockM = 64;                        // query rows per CTA
constexpr int kMathThreads = 256;                  // two math warpgroups
constexpr int kThreads = kMathThreads + 128;       // + the producer warpgroup
constexpr int kPieceCols = 64;                     // columns per TMA piece: 64 x 2 bytes = one 128B row
constexpr int kPieceBytes = kPageSize * kPieceCols * 2;  // 8 KB
constexpr int kPiecesQK = kHeadDimQK / kPieceCols;       // 9
constexpr int kTileBytes = kPiecesQK * kPieceBytes;      // 72 KB: Q tile or one page of K
constexpr int kStages = 2;                               // page buffers
constexpr int kQChunksPerRow = kHeadDimQK / 8;           // 16-byte chunks per Q row

static_assert(kBlockM == 64 && kPageSize == 64, "the kernel is written for 64-row tiles and 64-token pages");
static_assert(kHeadDimQK % kPieceCols == 0 && kHeadDimV % kPieceCols == 0, "head dims in 64-column pieces");
static_assert((kBlockM * kQChunksPerRow) % kMathThreads == 0, "Q chunks split evenly over the math threads");

// Shared memory, in bytes from a 1024-byte aligned base (128B-swizzle atoms need that alignment).
struct Smem {
  static constexpr int kQ = 0;                                     // Q tile, 9 pieces
  static constexpr int kKV = kQ + kTileBytes;                      // kStages pages, 9 pieces each
  // X: WG0's partial scores for keys 32-63 (fp32 [4][128 threads][4]), read by WG1. (WG1's
  // partial for keys 0-31 and the P tile live in piece 8 of the current page buffer.)
  static constexpr int kX = kKV + kStages * kTileBytes;
  static constexpr int kRowMax = kX + kPieceBytes;                 // float [2 warpgroups][64 rows]
  static constexpr int kRowSum = kRowMax + 2 * kBlockM * 4;        // float [2][64]
  static constexpr int kFullBar = kRowSum + 2 * kBlockM * 4;       // uint64 [kStages][9]
  static constexpr int kEmptyBar = kFullBar + kStages * kPiecesQK * 8;  // uint64 [kStages]
  static constexpr int kPartCheckBar = kEmptyBar + kStages * 8;        // uint64: the part check is done
  static constexpr int kPartMatches = kPartCheckBar + 8;               // uint32: its answer (0 / 1)
  static constexpr int kBadBlock = kPartMatches + 4;  // uint32 [kStages]: the buffer's block id is outside the cache
  static constexpr int kEnd = kBadBlock + kStages * 4;
  static constexpr int kAlign = 1024;
  static constexpr int kBytes = kEnd + kAlign;  // the slack lets the kernel align the base itself
};
static_assert(Smem::kBytes <= 227 * 1024, "must fit the 227 KB a block can opt into on sm_90");

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Registers per thread after setmaxnreg: 2 x 128 x 232 + 128 x 40 = 64512 of the SM's 65536.
constexpr int kMathRegisters = 232;
constexpr int kProducerRegisters = 40;
constexpr int kMathBarrier = 1;                          // named barrier of the 256 math threads
constexpr int kPartCheckWarp = kMathThreads / 32 + 1;    // the producer warpgroup's second warp
constexpr int kPiecesV = kHeadDimV / kPieceCols;         // 8: the value columns
constexpr int kValueColsPerWarpgroup = kHeadDimV / 2;    // 256
constexpr int kKeysPerWarpgroup = kPageSize / 2;         // 32
constexpr int kKStepsQK = kHeadDimQK / 16;               // 36 wgmma k-steps over the 576 columns
constexpr int kKStepsPerWarpgroup = kKStepsQK / 2;       // 18: each warpgroup reduces half of them
constexpr int kRopePiece = kPiecesQK - 1;                // 8: read by WG1's Q.K^T only, then free
static_assert(kKStepsQK % 2 == 0, "the Q.K^T k-steps split evenly between the two math warpgroups");

template <typename Element>
class DecodeCta {
  using Mma = Wgmma<Element>;

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
        empty_bar_(base + Smem::kEmptyBar),
        part_check_bar_(base + Smem::kPartCheckBar),
        part_matches_(reinterpret_cast<volatile uint32_t*>(base_ptr + Smem::kPartMatches)),
        bad_block_(reinterpret_cast<volatile uint32_t*>(base_ptr + Smem::kBadBlock)),
        row_max_(reinterpret_cast<float*>(base_ptr + Smem::kRowMax)),
        row_sum_(reinterpret_cast<float*>(base_ptr + Smem::kRowSum)),
        m_block_(blockIdx.x),
        kv_head_(blockIdx.y),
        tid_(threadIdx.x),
        warp_(threadIdx.x / 32),
        lane_(threadIdx.x % 32),
        wg_(threadIdx.x / 128) {
    part_ = load_scheduler_part(p, blockIdx.z);
    const int last_row = min((m_block_ + 1) * kBlockM, p.rows_per_kv_head) - 1;
    last_token_ = last_row / p.heads_per_kv;
  }

  __device__ void run() {
    if (tid_ == 0) {
      for (int i = 0; i < kStages * kPiecesQK; ++i) mbarrier_init(full_bar_ + 8 * i, 1);
      for (int i = 0; i < kStages; ++i) mbarrier_init(empty_bar_ + 8 * i, kMathThreads);
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
      if (tid_ == kMathThreads) produce();
      if (warp_ == kPartCheckWarp) check_part();
    } else {
      setmaxnreg_inc<kMathRegisters>();
      consume();
    }
  }

 private:
  struct PageRange {
    int begin, end;  // pages [begin, end) of the request that this CTA attends to
  };

  // The part's pages of request `req` that hold keys visible to some row of this tile. The
  // producer and the math threads call it with the same arguments, so they agree on every page.
  __device__ PageRange page_range(int req) const {
    const int seqlen = p_.cache_seqlens[req];
    if (seqlen < 0 || seqlen > p_.max_pages * kPageSize) return {0, 0};  // invalid length: NaN, no loads
    const int begin = req == part_.begin_req ? part_.begin_page : 0;
    int key_end = seqlen;
    if (req == part_.end_req) key_end = min(key_end, part_.end_page * kPageSize);
    // The tile's last query token sees the most keys.
    if (p_.causal) key_end = min(key_end, seqlen - p_.s_q + last_token_ + 1);
    const int end = key_end > begin * kPageSize ? (key_end + kPageSize - 1) / kPageSize : begin;
    return {begin, end};
  }

  __device__ uint32_t full_bar(int slot, int piece) const { return full_bar_ + 8 * (slot * kPiecesQK + piece); }
  __device__ uint32_t empty_bar(int slot) const { return empty_bar_ + 8 * slot; }
  __device__ uint32_t kv_slot(int slot) const { return kv_smem_ + slot * kTileBytes; }

  // ------------------------------------------------------------------------------------------
  // Producer: one thread. Page g of the part goes to buffer g % 2; before reusing a buffer it
  // waits until all 256 math threads have released the page that was there (g - 2).
  // ------------------------------------------------------------------------------------------
  // A block id outside the cache is still loaded (TMA fills coordinates outside the tensor with
  // zeros), so the math threads walk the same pages as ever; the buffer's flag, written before
  // the pieces' barriers are armed (their arrival releases it), makes the request NaN.
  __device__ void produce() {
    prefetch_tensormap(kv_map_);
    int g = 0;
    for (int req = part_.begin_req; req <= part_.end_req; ++req) {
      const PageRange range = page_range(req);
      const int* block_table = p_.block_table + int64_t(req) * p_.block_table_batch_stride;
      for (int page = range.begin; page < range.end; ++page, ++g) {
        const int block = block_table[ablated(kL2OnlyLoads) ? range.begin : page];
        const int slot = g % kStages;
        if (g >= kStages) mbarrier_wait(empty_bar(slot), uint32_t((g / kStages - 1) & 1));
        bad_block_[slot] = uint32_t(block) >= uint32_t(p_.num_blocks);
        const uint32_t dst = kv_slot(slot);
#pragma unroll 1
        for (int piece = 0; piece < kPiecesQK; ++piece) {
          const uint32_t bar = full_bar(slot, piece);
          mbarrier_arrive_expect_tx(bar, kPieceBytes);
          // Coordinates (innermost first): column, then kv head and token in page in the map's
          // order, then block.
          tma_load_4d(dst + piece * kPieceBytes, kv_map_, bar, piece * kPieceCols, kv_tokens_inner_ ? 0 : kv_head_,
                      kv_tokens_inner_ ? kv_head_ : 0, block);
        }
      }
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
    int g = 0;  // pages consumed so far, as counted by the producer
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
        for (int page = range.begin; page < range.end; ++page, ++g)
          valid &= attend_page(page, g, seqlen, key_limit, acc, row_max, row_sum);
      }
      mbarrier_wait(part_check_bar_, 0);  // returns at once after the first request
      write_result(req, *part_matches_ != 0 && valid, acc, row_max, row_sum);
    }
  }

  // Q rows of this tile -> shared memory, as nine 64 x 64 pieces in the 128B-swizzle layout that
  // TMA produces for K (16-byte chunk c of row r at r * 128 + ((c ^ (r % 8)) * 16)). Rows past
  // rows_per_kv_head are zero and never written out.
  __device__ void load_q(int req) {
    const Element* q = static_cast<const Element*>(p_.q) + int64_t(req) * p_.q_batch_stride;
#pragma unroll 6
    for (int i = 0; i < kBlockM * kQChunksPerRow / kMathThreads; ++i) {
      const int idx = i * kMathThreads + tid_;
      const int row = idx / kQChunksPerRow, chunk = idx % kQChunksPerRow;
      const int q_row = m_block_ * kBlockM + row;
      const bool valid = q_row < p_.rows_per_kv_head;
      const Element* src = q;
      if (valid) {
        const QueryRow qr(p_, kv_head_, q_row);
        src += qr.token * p_.q_seq_stride + qr.head * p_.q_head_stride + chunk * 8;
      }
      const uint32_t dst = q_smem_ + (chunk / 8) * kPieceBytes + row * 128 + (((chunk % 8) ^ (row % 8)) << 4);
      cp_async_16_zfill(dst, src, valid);
    }
    cp_async_wait_all();
    fence_proxy_async_smem();  // the generic-proxy writes above are read by wgmma next
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
        asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(send + v * 128 * 16), "f"(x[0]), "f"(x[1]),
                     "f"(x[2]), "f"(x[3])
                     : "memory");
      }
    }
    named_barrier_sync(kMathBarrier, kMathThreads);  // both partials are in shared memory
    float s[16];
    {
      const uint32_t recv = (wg_ == 0 ? rope : x_smem_) + wg_tid * 16;
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        float x[4];
        asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                     : "=f"(x[0]), "=f"(x[1]), "=f"(x[2]), "=f"(x[3])
                     : "r"(recv + v * 128 * 16)
                     : "memory");
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
        const float v = key < key_limit[h] ? s[4 * j + e] * p_.scale_log2 : -CUDART_INF_F;
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

    float scale[2], reference[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // The same expression in both warpgroups, so both hold bit-identical maxima.
      const float new_max = fmaxf(row_max[h], fmaxf(row_max_[row_of(h)], row_max_[kBlockM + row_of(h)]));
      // A row with nothing visible yet keeps max -inf; subtracting 0 keeps its exponentials at 0.
      reference[h] = new_max == -CUDART_INF_F ? 0.f : new_max;
      scale[h] = exp2f(row_max[h] - reference[h]);
      row_max[h] = new_max;
    }

    // P -> the rotary piece of this page (64 x 64, K-major, 128B swizzle), this warpgroup's 32
    // columns.
    float tile_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float p0 = probability(s[4 * j + 2 * h] - reference[h]);
        const float p1 = probability(s[4 * j + 2 * h + 1] - reference[h]);
        tile_sum[h] += p0 + p1;
        const int row = row_of(h);
        const int chunk = (wg_ * (kKeysPerWarpgroup / 8) + j) ^ (row % 8);
        const uint32_t addr = rope + row * 128 + chunk * 16 + (lane_ % 4) * 4;
        asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(MmaTraits<Element>::pack(p0, p1)) : "memory");
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) row_sum[h] = row_sum[h] * scale[h] + tile_sum[h];

    // Rows of the page at or past the sequence end may hold NaN: zero their value columns, since
    // P.V would turn 0 * NaN into NaN. (Their scores were masked by the select above.)
    if (page * kPageSize + kPageSize > seqlen) {
      // Each warpgroup's Q.K^T waited on only half of the pieces (WG0 0-4, WG1 4-8): observe the
      // arrival of every value piece before overwriting rows of it (the phase cannot move on
      // before this thread arrives on "empty", so the waits return at once).
#pragma unroll 1
      for (int piece = 0; piece < kPiecesV; ++piece) mbarrier_wait(full_bar(slot, piece), parity);
      const int first_row = seqlen - page * kPageSize;  // in [1, 63]
      const int chunks = (kPageSize - first_row) * kPiecesV * 8;
      for (int idx = tid_; idx < chunks; idx += kMathThreads) {
        const int piece = idx % kPiecesV, chunk = (idx / kPiecesV) % 8, row = first_row + idx / (kPiecesV * 8);
        const uint32_t addr = kv + piece * kPieceBytes + row * 128 + chunk * 16;
        asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0) : "memory");
      }
    }

    // Rescale O only in warps where some row's maximum moved.
    if (__any_sync(0xffffffffu, scale[0] != 1.f || scale[1] != 1.f)) {
#pragma unroll
      for (int j = 0; j < kValueColsPerWarpgroup / 8; ++j) {
        acc[4 * j + 0] *= scale[0];
        acc[4 * j + 1] *= scale[0];
        acc[4 * j + 2] *= scale[1];
        acc[4 * j + 3] *= scale[1];
      }
    }
    fence_proxy_async_smem();  // P and the zeroed rows are read by wgmma next
    named_barrier_sync(kMathBarrier, kMathThreads);

    // 3. O[:, this warpgroup's 256 columns] += P . V.
    fence_operands(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < (ablated(kNoValueMma) ? 0 : kPageSize / 16); ++kk) {
      const uint64_t desc_p = make_smem_desc(rope + kk * 32, 16, 1024);
      // V rows kk*16.., columns from piece 4 * wg_: 64-column chunks one piece apart (LBO),
      // 8-row groups 1024 bytes apart (SBO).
      const uint64_t desc_v = make_smem_desc(kv + wg_ * 4 * kPieceBytes + kk * 16 * 128, kPieceBytes, 1024);
      Mma::m64n256k16_kmn(acc, desc_p, desc_v);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_operands(acc);
    mbarrier_arrive(empty_bar(slot));  // this thread is done with the page buffer
    return block_in_cache;
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
    named_barrier_sync(kMathBarrier, kMathThreads);
    float total[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) total[h] = row_sum_[row_of(h)] + row_sum_[kBlockM + row_of(h)];
    named_barrier_sync(kMathBarrier, kMathThreads);  // row_sum_ may be rewritten by the next request

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
  const uint32_t q_smem_, kv_smem_, x_smem_, full_bar_, empty_bar_, part_check_bar_;
  volatile uint32_t* const part_matches_;
  volatile uint32_t* const bad_block_;
  float* const row_max_;
  float* const row_sum_;
  const int m_block_, kv_head_, tid_, warp_, lane_, wg_;
  SchedulerPart part_;
  int last_token_;
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <typename Element>
__global__ void __launch_bounds__(kThreads, 1)
    decode_kernel(const __grid_constant__ DecodeParams params, const __grid_constant__ CUtensorMap kv_map,
                  bool kv_tokens_inner) {
#if defined(__CUDA_ARCH__)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(1024) char smem[];
  // Align the base to 1024 bytes in the shared window (the launch reserves the slack).
  const uint32_t raw = smem_u32(smem);
  const uint32_t base = (raw + Smem::kAlign - 1) & ~uint32_t(Smem::kAlign - 1);
  DecodeCta<Element>(params, &kv_map, kv_tokens_inner, base, smem + (base - raw)).run();
#else
  __trap();  // only sm_90a machine code is meant to run; the launcher refuses other GPUs
#endif
#endif
}

}  // namespace sm90

namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status) !=
            cudaSuccess ||
        status != cudaDriverEntryPointSuccess)
      fn = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

void check_device() {
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: cannot query the device for the sm90 decode kernel: ") +
                             cudaGetErrorString(err));
  if (major != 9 || minor != 0)
    throw std::runtime_error("flash_mla_backend: the sm90 decode kernel is sm_90a code and needs a GPU of compute "
                             "capability 9.0 (H100/H200); this GPU is " +
                             std::to_string(major) + "." + std::to_string(minor) +
                             ". Use an sm80 kernel (FLASH_MLA_BACKEND_KERNEL=sm80_m64 or sm80_m16).");
}

struct KvTensorMap {
  CUtensorMap map;
  bool tokens_inner;  // dimension 1 is the token in page, dimension 2 the kv head
};

// KV cache [num_blocks, 64, h_kv, 576] as a 4-d tensor (innermost first): column, kv head, token,
// block, with the cache's real strides (kv head and token swap places when the token stride is
// the smaller, so that strides grow outwards); boxes of 64 columns x 64 tokens x 1 head x 1 block,
// 128B swizzle: one 64 x 64 piece of a page, rows of 128 bytes. TMA needs 16-byte aligned strides
// (the Python layer checks that).
template <typename Element>
KvTensorMap make_kv_tensor_map(const DecodeParams& p) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr)
    throw std::runtime_error(
        "flash_mla_backend: the CUDA driver does not provide cuTensorMapEncodeTiled, needed by the sm90 decode "
        "kernel");
  constexpr int64_t kElem = 2;
  const int64_t token_stride = p.k_token_stride * kElem;
  const int64_t block_stride = p.k_block_stride * kElem;
  // A single kv head's stride is never used; give it the dense value.
  const int64_t head_stride = p.h_kv == 1 ? int64_t(kHeadDimQK) * kElem : p.k_head_stride * kElem;
  for (int64_t s : {head_stride, token_stride, block_stride})
    if (s <= 0 || s % 16 != 0 || s >= (int64_t(1) << 40))
      throw std::runtime_error("flash_mla_backend: the sm90 decode kernel needs k_cache strides that are positive "
                               "multiples of 16 bytes; got a stride of " +
                               std::to_string(s) + " bytes");
  KvTensorMap result;
  result.tokens_inner = p.h_kv > 1 && token_stride < head_stride;
  const cuuint64_t head_dim = cuuint64_t(p.h_kv), token_dim = cuuint64_t(kPageSize);
  const cuuint64_t dims[4] = {cuuint64_t(kHeadDimQK), result.tokens_inner ? token_dim : head_dim,
                              result.tokens_inner ? head_dim : token_dim, cuuint64_t(p.num_blocks)};
  const cuuint64_t strides[3] = {cuuint64_t(result.tokens_inner ? token_stride : head_stride),
                                 cuuint64_t(result.tokens_inner ? head_stride : token_stride),
                                 cuuint64_t(block_stride)};
  const cuuint32_t box[4] = {cuuint32_t(sm90::kPieceCols), result.tokens_inner ? cuuint32_t(kPageSize) : 1u,
                             result.tokens_inner ? 1u : cuuint32_t(kPageSize), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type =
      std::is_same<Element, __nv_bfloat16>::value ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult res =
      encode(&result.map, type, 4, const_cast<void*>(p.k_cache), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS)
    throw std::runtime_error("flash_mla_backend: cuTensorMapEncodeTiled failed (CUresult " + std::to_string(int(res)) +
                             ") for k_cache with strides (block " + std::to_string(p.k_block_stride) + ", token " +
                             std::to_string(p.k_token_stride) + ", head " + std::to_string(p.k_head_stride) +
                             ") elements");
  return result;
}

template <typename Element>
void launch(const DecodeParams& params, cudaStream_t stream) {
  check_device();
  const KvTensorMap kv_map = make_kv_tensor_map<Element>(params);
  auto* kernel = sm90::decode_kernel<Element>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, sm90::Smem::kBytes);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: the sm90 decode kernel needs ") +
                             std::to_string(sm90::Smem::kBytes) + " bytes of shared memory: " + cudaGetErrorString(err));
  const int num_m_blocks = (params.rows_per_kv_head + sm90::kBlockM - 1) / sm90::kBlockM;
  dim3 grid(num_m_blocks, params.h_kv, params.num_sm_parts);
  kernel<<<grid, sm90::kThreads, sm90::Smem::kBytes, stream>>>(params, kv_map.map, kv_map.tokens_inner);
}

const DecodeKernel kKernels[] = {
    // 16-bit inputs only: the planner sends FP8 caches to the portable kernels.
    {"sm90", sm90::kBlockM, sm90::Smem::kBytes, 9, 0, /*arch_specific=*/true,
     {&launch<__nv_bfloat16>, &launch<__half>}},
    {nullptr, 0, 0, 0, 0, false, {}},
};

}  // namespace

const DecodeKernel* sm90_decode_kernels() { return kKernels; }

}  // namespace flash_mla_backend
