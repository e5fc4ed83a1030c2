// The Q tile of the Hopper decode kernels: a tile's query rows in shared memory as nine
// kRows x 64 pieces (kRows * 128 bytes each) in the 128B-swizzle layout that TMA gives a 16-bit
// K piece, loaded by the 256 math threads at the start of each request.
//
// Only compiled for sm_90a, like ptx_sm90.cuh.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/decode_params.h"
#include "decode/sm90/e4m3_pieces.h"
#include "decode/sm90/kv_pieces.h"
#include "decode/sm90/ptx_sm90.cuh"

namespace flash_mla_backend {
namespace sm90 {

// Shared address of 16-byte chunk `chunk` (of 72) of row `row` of a kRows-row Q tile.
template <int kRows>
__device__ __forceinline__ uint32_t q_chunk_addr(uint32_t q_smem, int row, int chunk) {
  return q_smem + uint32_t((chunk / 8) * kRows * 128) + swizzled(row, chunk % 8);
}

// Rows m_block * kRows.. of request `req` for kv head `kv_head`; rows past rows_per_kv_head are
// zero and never written out. An e4m3 q is converted on the way (16 bytes read, two chunks
// written). Thread `thread` of the 256 takes every 256th chunk; kUnroll trades registers for
// loads in flight. Ends with the proxy fence; the caller's barrier then publishes the tile.
template <typename Element, bool kFp8Q, int kRows, int kUnroll>
__device__ __forceinline__ void load_q_tile(const DecodeParams& p, uint32_t q_smem, int m_block, int kv_head, int req,
                                            int thread) {
  constexpr int kThreads = 256;
  using Stored = std::conditional_t<kFp8Q, uint8_t, Element>;
  constexpr int kStoredChunksPerRow = kHeadDimQK * int(sizeof(Stored)) / 16;
  constexpr int kChunks = kRows * kStoredChunksPerRow;
  const Stored* q = static_cast<const Stored*>(p.q) + int64_t(req) * p.q_batch_stride;
#pragma unroll kUnroll
  for (int i = 0; i < (kChunks + kThreads - 1) / kThreads; ++i) {
    const int idx = i * kThreads + thread;
    if (kChunks % kThreads != 0 && idx >= kChunks) break;
    const int row = idx / kStoredChunksPerRow, chunk = idx % kStoredChunksPerRow;
    const int q_row = m_block * kRows + row;
    const bool valid = q_row < p.rows_per_kv_head;
    const Stored* src = q;
    if (valid) {
      const QueryRow qr(p, kv_head, q_row);
      src += qr.token * p.q_seq_stride + qr.head * p.q_head_stride + chunk * (16 / int(sizeof(Stored)));
    }
    if constexpr (kFp8Q) {
      uint32_t raw[4] = {0u, 0u, 0u, 0u};
      if (valid) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(src));
        raw[0] = v.x, raw[1] = v.y, raw[2] = v.z, raw[3] = v.w;
      }
      convert_and_store_e4m3x16<Element>(raw, q_chunk_addr<kRows>(q_smem, row, 2 * chunk),
                                         q_chunk_addr<kRows>(q_smem, row, 2 * chunk + 1));
    } else {
      cp_async_16_zfill(q_chunk_addr<kRows>(q_smem, row, chunk), src, valid);
    }
  }
  if constexpr (!kFp8Q) cp_async_wait_all();
  fence_proxy_async_smem();  // the generic-proxy writes above are read by wgmma next
}

}  // namespace sm90
}  // namespace flash_mla_backend
