// The torch ops of namespace flash_mla_backend. The Python layer (flash_mla_backend/interface.py)
// validates arguments with messages for users; the checks here only keep direct callers of the
// ops from launching a kernel on memory it would misread.
#include <Python.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <vector>

#include "api/build_info.h"
#include "combine/combine.h"
#include "decode/decode_kernels.h"
#include "scheduler/mla_metadata.h"

namespace flash_mla_backend {
namespace {

constexpr int kMaxGridDimYZ = 65535;

std::vector<const DecodeKernel*> all_decode_kernels() {
  std::vector<const DecodeKernel*> kernels;
  for (const DecodeKernel* family : {sm90_decode_kernels(), sm90_narrow_decode_kernels(), sm80_decode_kernels()})
    for (const DecodeKernel* k = family; k->name != nullptr; ++k) kernels.push_back(k);
  return kernels;
}

const DecodeKernel& find_decode_kernel(c10::string_view name) {
  for (const DecodeKernel* k : all_decode_kernels())
    if (name == k->name) return *k;
  TORCH_CHECK(false, "flash_mla_backend: unknown decode kernel '", std::string(name), "'");
}

std::vector<std::string> decode_kernels() {
  std::vector<std::string> names;
  for (const DecodeKernel* k : all_decode_kernels()) names.emplace_back(k->name);
  return names;
}

// (block_m, shared-memory bytes, minimum compute capability major, minor, arch-specific 0/1,
// takes FP8 caches 0/1)
std::vector<int64_t> decode_kernel_info(c10::string_view name) {
  const DecodeKernel& k = find_decode_kernel(name);
  return {k.block_m, k.smem_bytes, k.min_cc_major, k.min_cc_minor, k.arch_specific, k.takes_fp8_cache()};
}

// What setup.py recorded at build time: torch version, torch's CUDA version, CUDA_HOME, and the
// code held ("sm_80 sm_90a compute_80": machine code, PTX).
std::vector<std::string> build_info() {
  return {FLASH_MLA_BACKEND_BUILT_WITH_TORCH, FLASH_MLA_BACKEND_BUILT_WITH_CUDA, FLASH_MLA_BACKEND_BUILT_WITH_CUDA_HOME,
          FLASH_MLA_BACKEND_BUILT_CODE};
}

DecodeInputs decode_inputs(at::ScalarType q, at::ScalarType k_cache) {
  constexpr at::ScalarType kFp8 = at::kFloat8_e4m3fn;
  if (q == at::kBFloat16 && k_cache == at::kBFloat16) return DecodeInputs::kBf16;
  if (q == at::kHalf && k_cache == at::kHalf) return DecodeInputs::kFp16;
  if (q == at::kBFloat16 && k_cache == kFp8) return DecodeInputs::kBf16QFp8Cache;
  if (q == at::kHalf && k_cache == kFp8) return DecodeInputs::kFp16QFp8Cache;
  if (q == kFp8 && k_cache == kFp8) return DecodeInputs::kFp8QFp8Cache;
  TORCH_CHECK(false, "q and k_cache must both be bfloat16 or both float16, or k_cache float8_e4m3fn with q "
              "bfloat16, float16 or float8_e4m3fn; got q ", q, " and k_cache ", k_cache);
}

// An FP8 input's scale: nullptr for a 16-bit one, which must come without.
const float* descale_pointer(const c10::optional<at::Tensor>& descale, bool fp8, const at::Tensor& q,
                             const char* name) {
  if (!fp8) {
    TORCH_CHECK(!descale.has_value(), name, " applies to an FP8 input only");
    return nullptr;
  }
  TORCH_CHECK(descale.has_value() && descale->scalar_type() == at::kFloat && descale->numel() == 1 &&
                  descale->device() == q.device(),
              name, " must be a float32 tensor of one element on q's device for an FP8 input");
  return descale->data_ptr<float>();
}

void check_int32_cuda(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == at::kInt && t.dim() == dims, name, " must be a CUDA int32 tensor of ",
              dims, " dimensions");
}

void get_mla_metadata(const at::Tensor& cache_seqlens, const at::Tensor& tile_scheduler_metadata,
                      const at::Tensor& num_splits) {
  check_int32_cuda(cache_seqlens, "cache_seqlens", 1);
  check_int32_cuda(tile_scheduler_metadata, "tile_scheduler_metadata", 2);
  check_int32_cuda(num_splits, "num_splits", 1);
  const int64_t batch = cache_seqlens.size(0);
  TORCH_CHECK(cache_seqlens.is_contiguous() && tile_scheduler_metadata.is_contiguous() && num_splits.is_contiguous(),
              "get_mla_metadata: all tensors must be contiguous");
  TORCH_CHECK(tile_scheduler_metadata.size(1) == kTileSchedulerMetadataSize && tile_scheduler_metadata.size(0) >= 1,
              "tile_scheduler_metadata must be [num_sm_parts, ", kTileSchedulerMetadataSize, "]");
  TORCH_CHECK(num_splits.size(0) == batch + 1, "num_splits must have batch + 1 elements");
  c10::cuda::CUDAGuard guard(cache_seqlens.device());
  launch_mla_metadata(cache_seqlens.data_ptr<int>(), int(batch), int(tile_scheduler_metadata.size(0)),
                      tile_scheduler_metadata.data_ptr<int>(), num_splits.data_ptr<int>(),
                      c10::cuda::getCurrentCUDAStream().stream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs a kernel launch; the launchers' errors (std::runtime_error) and launch failures become
// torch errors.
template <typename Launch>
void launch_checked(Launch&& launch) {
  try {
    launch();
  } catch (const std::exception& e) {
    TORCH_CHECK(false, e.what());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void mla_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table,
                const at::Tensor& cache_seqlens, const at::Tensor& tile_scheduler_metadata,
                const at::Tensor& num_splits, double softmax_scale, bool causal, c10::string_view kernel_name,
                const at::Tensor& out, const at::Tensor& softmax_lse, const at::Tensor& workspace,
                const c10::optional<at::Tensor>& descale_q, const c10::optional<at::Tensor>& descale_k) {
  const DecodeKernel& kernel = find_decode_kernel(kernel_name);
  TORCH_CHECK(q.is_cuda() && q.dim() == 4 && q.size(3) == kHeadDimQK, "q must be a CUDA tensor [b, s_q, h_q, 576]");
  const DecodeInputs inputs = decode_inputs(q.scalar_type(), k_cache.scalar_type());
  const DecodeLauncher launch = kernel.launcher(inputs);
  TORCH_CHECK(launch != nullptr, "decode kernel '", kernel.name, "' does not take q ", q.scalar_type(),
              " with k_cache ", k_cache.scalar_type());
  const bool fp8_q = inputs == DecodeInputs::kFp8QFp8Cache;
  const bool fp8_cache = k_cache.scalar_type() == at::kFloat8_e4m3fn;
  const at::ScalarType out_dtype = fp8_q ? at::kBFloat16 : q.scalar_type();
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.size(1) == kPageSize && k_cache.size(3) == kHeadDimQK,
              "k_cache must be [num_blocks, 64, h_kv, 576]");
  const int64_t batch = q.size(0), s_q = q.size(1), h_q = q.size(2), h_kv = k_cache.size(2);
  TORCH_CHECK(h_kv >= 1 && h_q % h_kv == 0, "h_q must be a multiple of h_kv");
  check_int32_cuda(block_table, "block_table", 2);
  check_int32_cuda(cache_seqlens, "cache_seqlens", 1);
  check_int32_cuda(tile_scheduler_metadata, "tile_scheduler_metadata", 2);
  check_int32_cuda(num_splits, "num_splits", 1);
  TORCH_CHECK(block_table.size(0) == batch && cache_seqlens.size(0) == batch && num_splits.size(0) == batch + 1,
              "block_table, cache_seqlens and num_splits must match q's batch size");
  TORCH_CHECK(cache_seqlens.is_contiguous() && tile_scheduler_metadata.is_contiguous() && num_splits.is_contiguous() &&
                  block_table.stride(1) == 1 && tile_scheduler_metadata.size(1) == kTileSchedulerMetadataSize,
              "scheduler inputs must be contiguous");
  TORCH_CHECK(q.stride(3) == 1 && k_cache.stride(3) == 1 && out.stride(3) == 1,
              "q, k_cache and out must be contiguous in the head dimension");
  TORCH_CHECK(out.scalar_type() == out_dtype && out.dim() == 4 && out.size(0) == batch && out.size(1) == s_q &&
                  out.size(2) == h_q && out.size(3) == kHeadDimV,
              "out must be [b, s_q, h_q, 512] in q's dtype (bfloat16 for an FP8 q)");
  TORCH_CHECK(softmax_lse.scalar_type() == at::kFloat && softmax_lse.is_contiguous() && softmax_lse.dim() == 3 &&
                  softmax_lse.size(0) == batch && softmax_lse.size(1) == h_q && softmax_lse.size(2) == s_q,
              "softmax_lse must be a contiguous float32 [b, h_q, s_q]");
  const int64_t num_sm_parts = tile_scheduler_metadata.size(0);
  TORCH_CHECK(batch <= kMaxGridDimYZ && h_kv <= kMaxGridDimYZ && num_sm_parts <= kMaxGridDimYZ,
              "batch, h_kv and num_sm_parts must each be at most ", kMaxGridDimYZ);

  const int64_t rows_per_kv_head = s_q * (h_q / h_kv);
  // The split partials: out_accum [rows, h_kv, rows_per_kv_head, 512], then lse_accum [rows, h_kv,
  // rows_per_kv_head], rows = num_accum_rows(num_sm_parts) (the Python layer sizes it).
  const int64_t partial_rows = num_accum_rows(int(num_sm_parts)) * h_kv * rows_per_kv_head;
  TORCH_CHECK(workspace.is_cuda() && workspace.scalar_type() == at::kFloat && workspace.is_contiguous() &&
                  workspace.numel() >= partial_rows * (kHeadDimV + 1) &&
                  reinterpret_cast<uintptr_t>(workspace.data_ptr()) % 16 == 0,
              "workspace must be a contiguous, 16-byte aligned CUDA float32 tensor of at least ",
              partial_rows * (kHeadDimV + 1), " elements");
  c10::cuda::CUDAGuard guard(q.device());

  DecodeParams p{};
  p.q = q.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.block_table = block_table.data_ptr<int>();
  p.cache_seqlens = cache_seqlens.data_ptr<int>();
  p.tile_scheduler_metadata = tile_scheduler_metadata.data_ptr<int>();
  p.num_splits = num_splits.data_ptr<int>();
  p.out = out.data_ptr();
  p.lse = softmax_lse.data_ptr<float>();
  p.out_accum = workspace.data_ptr<float>();
  p.lse_accum = p.out_accum + partial_rows * kHeadDimV;
  p.descale_q = descale_pointer(descale_q, fp8_q, q, "descale_q");
  p.descale_k = descale_pointer(descale_k, fp8_cache, q, "descale_k");
  p.q_batch_stride = q.stride(0);
  p.q_seq_stride = q.stride(1);
  p.q_head_stride = q.stride(2);
  p.k_block_stride = k_cache.stride(0);
  p.k_token_stride = k_cache.stride(1);
  p.k_head_stride = k_cache.stride(2);
  p.block_table_batch_stride = block_table.stride(0);
  p.o_batch_stride = out.stride(0);
  p.o_seq_stride = out.stride(1);
  p.o_head_stride = out.stride(2);
  p.batch = int(batch);
  p.s_q = int(s_q);
  p.h_q = int(h_q);
  p.h_kv = int(h_kv);
  p.heads_per_kv = int(h_q / h_kv);
  p.rows_per_kv_head = int(rows_per_kv_head);
  p.max_pages = int(block_table.size(1));
  p.num_blocks = int(k_cache.size(0));
  p.num_sm_parts = int(num_sm_parts);
  p.scale_log2 = float(softmax_scale * 1.4426950408889634);
  p.causal = causal && s_q > 1;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  launch_checked([&] { launch(p, stream); });
  launch_checked([&] {
    if (out_dtype == at::kBFloat16)
      launch_combine<__nv_bfloat16>(p, stream);
    else
      launch_combine<__half>(p, stream);
  });
}

}  // namespace

TORCH_LIBRARY(flash_mla_backend, m) {
  m.def("decode_kernels() -> str[]", &decode_kernels);
  m.def("decode_kernel_info(str kernel) -> int[]", &decode_kernel_info);
  m.def("build_info() -> str[]", &build_info);
  m.def("get_mla_metadata(Tensor cache_seqlens, Tensor(a!) tile_scheduler_metadata, Tensor(b!) num_splits) -> ()");
  m.def(
      "mla_decode(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, Tensor tile_scheduler_metadata, "
      "Tensor num_splits, float softmax_scale, bool causal, str kernel, Tensor(a!) out, Tensor(b!) softmax_lse, "
      "Tensor(c!) workspace, Tensor? descale_q=None, Tensor? descale_k=None) -> ()");
}

TORCH_LIBRARY_IMPL(flash_mla_backend, CUDA, m) {
  m.impl("get_mla_metadata", &get_mla_metadata);
  m.impl("mla_decode", &mla_decode);
}

}  // namespace flash_mla_backend

// `import flash_mla_backend._C` loads this library, which registers the ops above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "flash_mla_backend CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}
