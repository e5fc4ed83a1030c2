// Thin wrappers over the sm_90a instructions of the Hopper decode kernel: wgmma with shared-memory
// descriptors, mbarriers, the bulk tensor copy (TMA) and the proxy fences between them.
//
// Only compiled for sm_90a: every function here is used from code under
// `#if defined(__CUDA_ARCH_FEAT_SM90_ALL)`.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace flash_mla_backend {
namespace sm90 {

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// ---------------------------------------------------------------------------------------------
// Shared-memory matrix descriptors (PTX ISA, "Matrix Descriptor Format" of wgmma): start address,
// leading and stride byte offsets, all in 16-byte units, and the swizzle mode in bits 62-63
// (1 = 128-byte swizzle). Every tile here is made of 1024-byte aligned 128B-swizzle atoms (8 rows
// of 128 bytes), so the base-offset field stays 0.
//
// K-major operand (the reduction dimension contiguous; Q, K, P): rows of 64 elements = 128 bytes,
// 8-row groups 1024 bytes apart (SBO); LBO is unused with swizzling and set to 1 (16 bytes).
// MN-major operand (V read as the B operand of P.V, N contiguous): 64-element chunks of N are
// LBO bytes apart, 8-row groups of K are SBO = 1024 bytes apart.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ uint64_t make_smem_desc(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  uint64_t desc = 0;
  desc |= uint64_t((smem_addr >> 4) & 0x3FFFu);
  desc |= uint64_t((lbo_bytes >> 4) & 0x3FFFu) << 16;
  desc |= uint64_t((sbo_bytes >> 4) & 0x3FFFu) << 32;
  desc |= uint64_t(1) << 62;  // 128-byte swizzle
  return desc;
}

// The 8 / 16 accumulator operands of a wgmma with 8 / 16 fp32 results per thread (m64n16, m64n32).
#define FMB90_D8_REGS "{%0, %1, %2, %3, %4, %5, %6, %7}"
#define FMB90_D8_OPS(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
#define FMB90_D16_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}"
#define FMB90_D16_OPS(d) FMB90_D8_OPS(d), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
// The 32 accumulator operands %0..%31 of a wgmma with 32 fp32 results per thread.
#define FMB90_D32_REGS "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define FMB90_D32_OPS(d) "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
// The 128 accumulator operands %0..%127 of a wgmma with 128 fp32 results per thread.
#define FMB90_D128_REGS \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127" \
  "}"
#define FMB90_D128_OPS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
  "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
  "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
  "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
  "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
  "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
  "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
  "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
  "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Keeps the compiler from moving accesses of accumulator registers across wgmma fences and waits.
template <int N>
__device__ __forceinline__ void fence_operands(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// One wgmma with both operands in shared memory; scale-d = 1 (accumulate), no negation. TYPES is
// "bf16.bf16" or "f16.f16"; TRANS_A / TRANS_B "1" read A / B MN-major; the accumulator operands
// come last.
#define FMB90_WGMMA_SS(SHAPE, TYPES, REGS, DESC_A_OP, DESC_B_OP, SCALE_D_OP, TRANS_A, TRANS_B, ...) \
  asm volatile("{\n"                                                                  \
               ".reg .pred p;\n"                                                      \
               "setp.ne.b32 p, %" SCALE_D_OP ", 0;\n"                                  \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPES " " REGS ", %" DESC_A_OP \
               ", %" DESC_B_OP ", p, 1, 1, " TRANS_A ", " TRANS_B ";\n"                \
               "}\n"                                                                  \
               : __VA_ARGS__                                                          \
               : "l"(desc_a), "l"(desc_b), "r"(1))

// m64n256k16 with A from four registers and B MN-major in shared memory (scale-d 1).
#define FMB90_WGMMA_RS(TYPES, d, a, desc_b)                                                         \
  asm volatile("{\n"                                                                                 \
               ".reg .pred p;\n"                                                                     \
               "setp.ne.b32 p, %133, 0;\n"                                                           \
               "wgmma.mma_async.sync.aligned.m64n256k16.f32." TYPES " " FMB90_D128_REGS              \
               ", {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n"                                     \
               "}\n"                                                                                 \
               : FMB90_D128_OPS(d)                                                                   \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1))

template <typename Element>
struct Wgmma {
  static_assert(std::is_same<Element, __nv_bfloat16>::value || std::is_same<Element, __half>::value,
                "wgmma here takes bf16 or fp16 operands");
  static constexpr bool kBf16 = std::is_same<Element, __nv_bfloat16>::value;

  // D[64 x 64] += A[64 x 16] . B[64 x 16]^T, A and B K-major in shared memory.
  static __device__ __forceinline__ void m64n64k16_kk(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
    if constexpr (kBf16)
      FMB90_WGMMA_SS("m64n64k16", "bf16.bf16", FMB90_D32_REGS, "32", "33", "34", "0", "0", FMB90_D32_OPS(d));
    else
      FMB90_WGMMA_SS("m64n64k16", "f16.f16", FMB90_D32_REGS, "32", "33", "34", "0", "0", FMB90_D32_OPS(d));
  }

  // D[64 x N] += A[64 x 16] . B[N x 16]^T (N = 16 or 32), both in shared memory, B K-major, A
  // K-major or (kMnMajorA) MN-major.
  template <int N, bool kMnMajorA>
  static __device__ __forceinline__ void m64nNk16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b) {
    static_assert(N == 16 || N == 32, "m64n16 or m64n32");
    constexpr bool kN16 = N == 16;
#define FMB90_WGMMA_M64NK16(TYPES, TRANS_A)                                                                   \
  if constexpr (kN16)                                                                                         \
    FMB90_WGMMA_SS("m64n16k16", TYPES, FMB90_D8_REGS, "8", "9", "10", TRANS_A, "0", FMB90_D8_OPS(d));         \
  else                                                                                                        \
    FMB90_WGMMA_SS("m64n32k16", TYPES, FMB90_D16_REGS, "16", "17", "18", TRANS_A, "0", FMB90_D16_OPS(d))
    if constexpr (kBf16 && kMnMajorA) {
      FMB90_WGMMA_M64NK16("bf16.bf16", "1");
    } else if constexpr (kBf16) {
      FMB90_WGMMA_M64NK16("bf16.bf16", "0");
    } else if constexpr (kMnMajorA) {
      FMB90_WGMMA_M64NK16("f16.f16", "1");
    } else {
      FMB90_WGMMA_M64NK16("f16.f16", "0");
    }
#undef FMB90_WGMMA_M64NK16
  }

  // D[64 x 256] += A[64 x 16] . B[16 x 256], A from registers (a: the m64k16 fragment, whose
  // layout is that of a m64n16 accumulator packed in pairs), B MN-major in shared memory.
  static __device__ __forceinline__ void m64n256k16_rmn(float (&d)[128], const uint32_t (&a)[4], uint64_t desc_b) {
    if constexpr (kBf16)
      FMB90_WGMMA_RS("bf16.bf16", d, a, desc_b);
    else
      FMB90_WGMMA_RS("f16.f16", d, a, desc_b);
  }

  // D[64 x 256] += A[64 x 16] . B[16 x 256], A K-major, B MN-major (transposed) in shared memory.
  static __device__ __forceinline__ void m64n256k16_kmn(float (&d)[128], uint64_t desc_a, uint64_t desc_b) {
    if constexpr (kBf16)
      FMB90_WGMMA_SS("m64n256k16", "bf16.bf16", FMB90_D128_REGS, "128", "129", "130", "0", "1", FMB90_D128_OPS(d));
    else
      FMB90_WGMMA_SS("m64n256k16", "f16.f16", FMB90_D128_REGS, "128", "129", "130", "0", "1", FMB90_D128_OPS(d));
  }
};

// ---------------------------------------------------------------------------------------------
// mbarriers (shared::cta) and the bulk tensor copy.
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Blocks until the phase of parity `parity` of the barrier has completed.
__device__ __forceinline__ void mbarrier_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// 4-d tiled bulk tensor copy global -> shared, completing `bytes` of transaction on `bar`.
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2,
                                            int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, %6}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Orders this thread's generic-proxy shared-memory accesses before later async-proxy accesses
// (wgmma operand reads, TMA writes) that a barrier orders after it.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Register reallocation between warpgroups (every warp of a warpgroup executes the same one).
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// Named barrier over `count` threads (the two math warpgroups; the producer warp never joins).
__device__ __forceinline__ void named_barrier_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// Arrives on a named barrier without waiting: the signalling side of a barrier whose other
// threads wait with named_barrier_sync (count: arriving + waiting threads).
__device__ __forceinline__ void named_barrier_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// 16-byte shared-memory accesses at a 32-bit shared address (what the swizzle arithmetic yields).
__device__ __forceinline__ void st_shared_v4(uint32_t addr, const uint32_t (&v)[4]) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
}
__device__ __forceinline__ void st_shared_v4(uint32_t addr, const float (&v)[4]) {
  asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3])
               : "memory");
}
__device__ __forceinline__ void ld_shared_v4(uint32_t addr, uint32_t (&v)[4]) {
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3]) : "r"(addr)
               : "memory");
}
__device__ __forceinline__ void ld_shared_v4(uint32_t addr, float (&v)[4]) {
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "r"(addr)
               : "memory");
}

// Four 8 x 8 tiles of 16-bit values, transposed on the way: r[k] holds this thread's pair of
// tile k in the mma fragment layout (row lane / 4, columns 2 (lane % 4) + {0, 1}); lane i gives
// the address of row i % 8 of stored tile i / 8, i.e. of column i % 8 of the fragment.
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// 16-byte cp.async with zero fill: writes zeros and reads nothing when `valid` is false.
__device__ __forceinline__ void cp_async_16_zfill(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

}  // namespace sm90
}  // namespace flash_mla_backend
