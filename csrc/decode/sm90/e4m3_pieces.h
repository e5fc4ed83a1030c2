// How the Hopper decode kernels turn a 64 x 64 piece of an FP8 (e4m3) page into the 16-bit piece
// their wgmmas read: TMA loads the piece raw (4 KB, token r at r * 64, no swizzle) and 128
// threads convert it, exactly (common/fp8_e4m3.h), into the 128B-swizzled layout TMA gives a
// 16-bit cache. Thread t takes the raw 16-byte chunks t and t + 128 (token chunk / 4, columns
// 16 (chunk % 4)..), so that the reads and the writes are free of bank conflicts.
//
// Only compiled for sm_90a, like ptx_sm90.cuh.
#pragma once

#include <cstdint>

#include "common/fp8_e4m3.h"
#include "decode/sm90/kv_pieces.h"
#include "decode/sm90/ptx_sm90.cuh"

namespace flash_mla_backend {
namespace sm90 {

constexpr int kRawPieceBytes = kPageSize * kPieceCols;  // 4 KB
constexpr int kConvertThreads = 128;                    // a warpgroup converts a piece

// Sixteen e4m3 values as sixteen Element values: two 16-byte chunks, at `first` and `second`.
template <typename Element>
__device__ __forceinline__ void convert_and_store_e4m3x16(const uint32_t (&raw)[4], uint32_t first, uint32_t second) {
  uint32_t out[8];
  convert_e4m3x16<Element>(raw, out);
  st_shared_v4(first, reinterpret_cast<const uint32_t(&)[4]>(out[0]));
  st_shared_v4(second, reinterpret_cast<const uint32_t(&)[4]>(out[4]));
}

// Thread `thread` (of kConvertThreads)'s two raw chunks of the piece at `raw_piece`.
__device__ __forceinline__ void load_raw_chunks(uint32_t raw_piece, int thread, uint32_t (&raw)[2][4]) {
  const uint32_t first = raw_piece + uint32_t(thread * 16);
#pragma unroll
  for (int c = 0; c < 2; ++c) ld_shared_v4(first + uint32_t(c * kConvertThreads * 16), raw[c]);
}

// Those chunks converted into their places in the 16-bit piece at `piece`.
template <typename Element>
__device__ __forceinline__ void store_converted_chunks(const uint32_t (&raw)[2][4], uint32_t piece, int thread) {
#pragma unroll
  for (int c = 0; c < 2; ++c) {
    const int chunk = thread + kConvertThreads * c, row = chunk / 4;
    convert_and_store_e4m3x16<Element>(raw[c], piece + swizzled(row, 2 * (chunk % 4)),
                                       piece + swizzled(row, 2 * (chunk % 4) + 1));
  }
}

}  // namespace sm90
}  // namespace flash_mla_backend
