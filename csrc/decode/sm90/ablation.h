// Stage ablations of the sm90 kernel, for placing its per-page time (docs/sm90-kernel-log.md):
// a build with FLASH_MLA_BACKEND_SM90_ABLATE=<bits> in the environment of setup.py leaves out the
// stages named by the bits and computes wrong results on purpose. It exists only as a benchmark
// variant (scripts/make_variant.sh REV NAME BITS); a normal build has no bit set.
#pragma once

#ifndef FLASH_MLA_BACKEND_SM90_ABLATE
#define FLASH_MLA_BACKEND_SM90_ABLATE 0
#endif

namespace flash_mla_backend {
namespace sm90 {

enum Ablation : unsigned {
  kL2OnlyLoads = 1,  // every page of a request is loaded from the request's first block (an L2 hit)
  kNoScoreMma = 2,   // no Q.K^T wgmma (the scores stay 0; the pieces' barriers are still waited on)
  kNoValueMma = 4,   // no P.V wgmma
  kNoExp2 = 8,       // P = s - max + 1 instead of exp2(s - max)
};

constexpr bool ablated(Ablation stage) { return (FLASH_MLA_BACKEND_SM90_ABLATE & stage) != 0; }

}  // namespace sm90
}  // namespace flash_mla_backend
