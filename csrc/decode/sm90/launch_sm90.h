// What the Hopper decode kernels' launchers share: the device check and the KV cache's tensor map
// (host code).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/decode_params.h"
#include "decode/sm90/kv_pieces.h"

namespace flash_mla_backend {
namespace sm90 {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
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

inline void check_device() {
  int device = 0, major = 0, minor = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: cannot query the device for the sm90 decode kernel: ") +
                             cudaGetErrorString(err));
  if (major != 9 || minor != 0)
    throw std::runtime_error("flash_mla_backend: the sm90 decode kernels are sm_90a code and need a GPU of compute "
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
// the smaller, so that strides grow outwards); boxes of 64 columns x 64 tokens x 1 head x 1 block:
// one 64 x 64 piece of a page, 128B-swizzled rows of 128 bytes for a 16-bit cache, unswizzled rows
// of 64 bytes for an e4m3 one (the kernel converts and swizzles them). TMA needs 16-byte aligned
// strides (the Python layer checks that).
template <typename Element, bool kFp8Cache>
KvTensorMap make_kv_tensor_map(const DecodeParams& p) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr)
    throw std::runtime_error(
        "flash_mla_backend: the CUDA driver does not provide cuTensorMapEncodeTiled, needed by the sm90 decode "
        "kernel");
  constexpr int64_t kElem = kFp8Cache ? 1 : 2;
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
  const cuuint32_t box[4] = {cuuint32_t(kPieceCols), result.tokens_inner ? cuuint32_t(kPageSize) : 1u,
                             result.tokens_inner ? 1u : cuuint32_t(kPageSize), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = kFp8Cache                                    ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                   : std::is_same<Element, __nv_bfloat16>::value ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                                                 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult res = encode(&result.map, type, 4, const_cast<void*>(p.k_cache), dims, strides, box,
                              element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                              kFp8Cache ? CU_TENSOR_MAP_SWIZZLE_NONE : CU_TENSOR_MAP_SWIZZLE_128B,
                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (res != CUDA_SUCCESS)
    throw std::runtime_error("flash_mla_backend: cuTensorMapEncodeTiled failed (CUresult " + std::to_string(int(res)) +
                             ") for k_cache with strides (block " + std::to_string(p.k_block_stride) + ", token " +
                             std::to_string(p.k_token_stride) + ", head " + std::to_string(p.k_head_stride) +
                             ") elements");
  return result;
}

}  // namespace sm90
}  // namespace flash_mla_backend
