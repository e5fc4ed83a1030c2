// Programmatic dependent launch between a decode kernel and the combine kernel that reads its
// partial results (sm_90 and later; compiled out of older machine code, where the combine is
// launched without the attribute and so runs after the decode as usual).
#pragma once

namespace flash_mla_backend {

// Called by each decode CTA once it runs: when all have, the combine grid may be scheduled onto
// SMs as they free up, instead of after the whole decode grid has finished.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Called by the combine kernel before it reads anything the decode wrote: returns once the
// decode grid has completed and its writes are visible.
__device__ __forceinline__ void wait_for_decode() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

}  // namespace flash_mla_backend
