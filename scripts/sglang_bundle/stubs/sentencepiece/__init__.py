"""Import stub for `sentencepiece`, used only where the GPU host has none.

SGLang's InternVL model config (sglang.srt.configs.internvl, imported by sglang.srt.configs)
imports it at module level; tokenizers are not part of the attention path, and the compiled wheel
would only add size. Calling anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "sentencepiece")
