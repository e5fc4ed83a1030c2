// How the Hopper decode kernels hold a page of the KV cache: nine 64 x 64 pieces, each loaded by
// one TMA box into a 128B-swizzled 8 KB slot; which pages of a request a CTA reads; and the
// zeroing of a tail page's rows past the sequence end.
#pragma once

#include "common/decode_params.h"

namespace flash_mla_backend {
namespace sm90 {

constexpr int kPieceCols = 64;                           // columns per piece: 64 x 2 bytes = one 128B row
constexpr int kPieceBytes = kPageSize * kPieceCols * 2;  // 8 KB
constexpr int kPiecesQK = kHeadDimQK / kPieceCols;       // 9
constexpr int kPiecesV = kHeadDimV / kPieceCols;         // 8: the value columns
constexpr int kTileBytes = kPiecesQK * kPieceBytes;      // 72 KB: one page of K
static_assert(kHeadDimQK % kPieceCols == 0 && kHeadDimV % kPieceCols == 0, "head dims in 64-column pieces");

#ifdef __CUDACC__
// Byte offset of 16-byte chunk `chunk` of row `row` in a tile of 128-byte rows with 128B swizzle
// (the layout TMA produces for a 16-bit piece).
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return uint32_t(row * 128 + ((chunk ^ (row % 8)) << 4));
}

struct PageRange {
  int begin, end;  // pages [begin, end) of the request that the CTA attends to
};

// The part's pages of request `req` that hold keys visible to some row of a tile whose last query
// token is last_token. The producer and the math threads call it with the same arguments, so they
// agree on every page.
__device__ __forceinline__ PageRange visible_pages(const DecodeParams& p, const SchedulerPart& part, int req,
                                                  int last_token) {
  const int seqlen = p.cache_seqlens[req];
  if (seqlen < 0 || seqlen > p.max_pages * kPageSize) return {0, 0};  // invalid length: NaN, no loads
  const int begin = req == part.begin_req ? part.begin_page : 0;
  int key_end = seqlen;
  if (req == part.end_req) key_end = min(key_end, part.end_page * kPageSize);
  // The tile's last query token sees the most keys.
  if (p.causal) key_end = min(key_end, seqlen - p.s_q + last_token + 1);
  const int end = key_end > begin * kPageSize ? (key_end + kPageSize - 1) / kPageSize : begin;
  return {begin, end};
}

// Rows first_row..63 (first_row in [1, 63]) of the page in `kv` are at or past the sequence end
// and may hold NaN: zero their value columns, since P.V would turn 0 * NaN into NaN (their scores
// are masked by a select). Thread `thread` of kThreads takes every kThreads-th chunk. A fixed trip
// count with predicated stores, so that no thread-dependent branch lies between wgmmas.
template <int kThreads>
__device__ __forceinline__ void zero_value_rows(uint32_t kv, int first_row, int thread) {
  const int chunks = (kPageSize - first_row) * kPiecesV * 8;
  constexpr int kMaxChunks = (kPageSize - 1) * kPiecesV * 8;
#pragma unroll 4
  for (int i = 0; i < (kMaxChunks + kThreads - 1) / kThreads; ++i) {
    const int idx = i * kThreads + thread;
    const int piece = idx % kPiecesV, chunk = (idx / kPiecesV) % 8, row = first_row + idx / (kPiecesV * 8);
    const uint32_t addr = kv + piece * kPieceBytes + row * 128 + chunk * 16;
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.lt.s32 p, %1, %2;\n"
        "@p st.shared.v4.u32 [%0], {%3, %3, %3, %3};\n"
        "}\n" ::"r"(addr),
        "r"(idx), "r"(chunks), "r"(0)
        : "memory");
  }
}
#endif

}  // namespace sm90
}  // namespace flash_mla_backend
