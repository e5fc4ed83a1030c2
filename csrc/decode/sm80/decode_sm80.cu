// Instantiates the portable decode kernel for each tile shape and element type.
#include "decode/decode_kernels.h"
#include "decode/sm80/decode_sm80.cuh"

#include <stdexcept>
#include <string>

namespace flash_mla_backend {
namespace {

template <typename Cfg>
void launch(const DecodeParams& params, cudaStream_t stream) {
  auto* kernel = sm80::decode_kernel<Cfg>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("flash_mla_backend: the decode kernel needs ") +
                             std::to_string(Cfg::kSmemBytes) + " bytes of shared memory: " + cudaGetErrorString(err));
  const int num_m_blocks = (params.rows_per_kv_head + Cfg::kBlockM - 1) / Cfg::kBlockM;
  dim3 grid(num_m_blocks, params.h_kv, params.num_sm_parts);
  kernel<<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(params);
}

// 64 query rows by 2 column halves (8 warps), and 16 rows by 4 column quarters (4 warps), whose
// ~92 KB of shared memory also fits sm_86/sm_89.
template <typename Element, bool kFp8Q, bool kFp8Cache>
using Rows64 = sm80::DecodeConfig<Element, 4, 2, kFp8Q, kFp8Cache>;
template <typename Element, bool kFp8Q, bool kFp8Cache>
using Rows16 = sm80::DecodeConfig<Element, 1, 4, kFp8Q, kFp8Cache>;

template <template <typename, bool, bool> class Cfg>
constexpr DecodeKernel make_kernel(const char* name) {
  using Bf16 = Cfg<__nv_bfloat16, false, false>;
  DecodeKernel kernel{name, Bf16::kBlockM, Bf16::kSmemBytes, 8, 0, /*arch_specific=*/false, {}};
  kernel.launchers[int(DecodeInputs::kBf16)] = &launch<Bf16>;
  kernel.launchers[int(DecodeInputs::kFp16)] = &launch<Cfg<__half, false, false>>;
  kernel.launchers[int(DecodeInputs::kBf16QFp8Cache)] = &launch<Cfg<__nv_bfloat16, false, true>>;
  kernel.launchers[int(DecodeInputs::kFp16QFp8Cache)] = &launch<Cfg<__half, false, true>>;
  kernel.launchers[int(DecodeInputs::kFp8QFp8Cache)] = &launch<Cfg<__nv_bfloat16, true, true>>;
  return kernel;
}

const DecodeKernel kKernels[] = {
    make_kernel<Rows64>("sm80_m64"),
    make_kernel<Rows16>("sm80_m16"),
    {nullptr, 0, 0, 0, 0, false, {}},
};

}  // namespace

const DecodeKernel* sm80_decode_kernels() { return kKernels; }

}  // namespace flash_mla_backend
