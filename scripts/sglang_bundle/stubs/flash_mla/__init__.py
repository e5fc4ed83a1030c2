"""Import stub for `flash_mla` (SGLang's sgl-flash-mla 1.0.0 wheel, compiled for torch 2.14.1).

SGLang's FlashMLA backend module imports it at the top (through
sglang.kernels.ops.attention.flash_mla_interface); only SGLang's own FlashMLA kernels call it,
and flash_mla_backend's subclass replaces every such call with ours. Calling anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "sgl-flash-mla 1.0.0 (flash_mla)")
