"""Import stub for `torchvision`, used only where the GPU host has no torchvision working with its torch.

SGLang's model configs import torchvision.transforms at module level (sglang.srt.configs, via
sglang.srt.multimodal.internvl_utils) for image preprocessing, which the attention path never
runs; a real wheel is compiled against one torch release (0.26.0 for torch 2.11) and is 7.5 MB.
Calling anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "torchvision")
