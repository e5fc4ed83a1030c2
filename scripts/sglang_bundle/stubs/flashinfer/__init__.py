"""Import stub for `flashinfer` (flashinfer-python 0.7.2, a 65 MB JIT package with a compiled stack).

SGLang's FlashMLA backend derives from its FlashInfer MLA backend, whose constructor builds
FlashInfer wrapper objects (used only for prefill, which our subclass leaves to FlashInfer).
Those classes construct inertly here; planning or running one, or calling any function, raises.
"""

from _sglang_bundle_stub import make_stub_package

make_stub_package(__name__, "flashinfer-python 0.7.2", version="0.7.2")
