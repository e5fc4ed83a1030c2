"""Import stub for Hugging Face `datasets`, used only where the GPU host has none.

SGLang's test utilities (sglang.test.test_utils, which the attention test kit's EAGLE draft
runners import when they configure a draft runner) import its benchmark datasets, and one of those
imports `datasets.load_dataset` at module level; the attention path loads no dataset. Calling
anything raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "datasets")
