// Exact conversion of FP8 e4m3 (torch.float8_e4m3fn) values to the kernels' 16-bit types.
//
// Every e4m3 value is a normal bf16 and a normal fp16 (3 mantissa bits, magnitudes 2^-9 to 448),
// so the conversion loses nothing and the math after it is the 16-bit kernels' own. No step makes
// an fp32 denormal, which the kernels' --use_fast_math would flush to zero. Machine code for
// sm_89 and later converts a pair with one cvt.rn.f16x2.e4m3x2 (exact, NaN kept) and, for bf16,
// the exact fp16 -> fp32 -> bf16 steps; older machine code and the host take the arithmetic below.
// Host code includes this header too: tests/test_fp8_conversion.py checks all 256 byte values
// against torch on the host and, on a GPU, through both device paths.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#ifdef __CUDACC__
#define FMB_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FMB_HOST_DEVICE inline
#endif

namespace flash_mla_backend {

FMB_HOST_DEVICE float bits_to_float(uint32_t bits) {
  float value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// The value of one e4m3 byte (the low 8 bits of `byte`); 0x7F and 0xFF are NaN.
FMB_HOST_DEVICE float e4m3_to_float(uint32_t byte) {
  const uint32_t magnitude = byte & 0x7Fu;
  // A normal e4m3 (exponent field >= 1) moves into a float with the exponent rebased from bias 7
  // to 127; a subnormal one is its mantissa times 2^-9.
  float value = magnitude >= 8 ? bits_to_float((magnitude + (120u << 3)) << 20) : float(magnitude) * 0x1p-9f;
  if (magnitude == 0x7Fu) value = bits_to_float(0x7FC00000u);
  return (byte & 0x80u) ? -value : value;
}

// Two e4m3 bytes (low byte first) as a packed Element pair, the layout the mma fragments use.
template <typename Element>
FMB_HOST_DEVICE uint32_t convert_e4m3x2(uint32_t two_bytes) {
  uint32_t packed;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t halves;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(halves) : "h"(uint16_t(two_bytes)));
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    __half2 h;
    memcpy(&h, &halves, sizeof(h));
    const __nv_bfloat162 v = __float22bfloat162_rn(__half22float2(h));
    memcpy(&packed, &v, sizeof(packed));
  } else {
    static_assert(std::is_same_v<Element, __half>, "bf16 or fp16");
    packed = halves;
  }
  return packed;
#else
  const float lo = e4m3_to_float(two_bytes & 0xFFu), hi = e4m3_to_float(two_bytes >> 8);
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&packed, &v, sizeof(packed));
  } else {
    static_assert(std::is_same_v<Element, __half>, "bf16 or fp16");
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&packed, &v, sizeof(packed));
  }
  return packed;
#endif
}

// 16 e4m3 values (one 16-byte load) as 16 Element values (two 16-byte stores), in order.
template <typename Element>
FMB_HOST_DEVICE void convert_e4m3x16(const uint32_t (&in)[4], uint32_t (&out)[8]) {
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    out[2 * w] = convert_e4m3x2<Element>(in[w] & 0xFFFFu);
    out[2 * w + 1] = convert_e4m3x2<Element>(in[w] >> 16);
  }
}

}  // namespace flash_mla_backend
