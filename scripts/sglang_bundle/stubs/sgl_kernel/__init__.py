"""Import stub for `sgl_kernel` (sglang-kernel 0.4.10, SGLang's CUDA kernels for torch 2.14.1).

SGLang imports it at module level on CUDA machines in many places; none of the calls of our
decode path (decode, target-verify; the block table is built by SGLang's Triton kernel) reach it.
Calling anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "sglang-kernel 0.4.10 (sgl_kernel)")
