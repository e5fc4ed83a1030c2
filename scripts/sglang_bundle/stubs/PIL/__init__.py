"""Import stub for `PIL` (Pillow), used only where the GPU host has no working Pillow.

SGLang imports Pillow at module level (sglang.srt.utils.common, the multimodal model configs)
for image inputs, which the attention path never handles; the real wheel (compiled, 7 MB) would
not fit the bundle's size. Calling
anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "Pillow (PIL)")
