"""Loads the compiled extension and registers the fake (meta) implementations of its ops.

The extension is optional at import time so that the package (and the host-engine plugins'
registration code) can be imported on machines where it was not built; the first call that
needs a kernel then raises `ExtensionNotBuiltError` with the reason.
"""

import glob
import os

import torch

SKIP_BUILD_ENV = "FLASH_MLA_BACKEND_SKIP_CUDA_BUILD"

try:
    from flash_mla_backend import _C  # noqa: F401  (registers torch.ops.flash_mla_backend.*)

    _load_error = None
except ImportError as exc:  # not built, or built for another torch
    _load_error = exc


class ExtensionNotBuiltError(RuntimeError):
    pass


def extension_available() -> bool:
    return _load_error is None


def load_problem() -> str:
    """Why the extension did not load and the command that fixes it ("" when it loaded)."""
    return "" if _load_error is None else explain_load_error(_load_error, os.path.dirname(os.path.abspath(__file__)))


def explain_load_error(error: Exception, package_dir: str) -> str:
    checkout = os.path.dirname(package_dir)
    built_here = glob.glob(os.path.join(package_dir, "_C*.so"))
    message = str(error)
    if not built_here and os.path.isfile(os.path.join(checkout, "setup.py")):
        return (f"Python imported flash_mla_backend from the source checkout {checkout}, which holds no built "
                f"kernels (it comes first on sys.path when you run from there, hiding an installed copy). "
                f"Build in place, in that checkout: pip install --no-build-isolation -e . (or run from another "
                f"directory)")
    if not built_here:
        return (f"this installation has no compiled kernels (installed with {SKIP_BUILD_ENV}=1, or the build "
                f"failed). Reinstall with the CUDA toolkit available (CUDA_HOME or nvcc on the PATH) and "
                f"{SKIP_BUILD_ENV} unset: pip install --no-build-isolation --force-reinstall <the package source>")
    if "undefined symbol" in message:
        return (f"the kernels were built against another torch than the {torch.__version__} that runs, whose "
                f"binary interface differs ({message}). Rebuild against this torch: "
                f"pip install --no-build-isolation --force-reinstall <the package source>")
    return f"importing {built_here[0]} failed: {message}"


def ops():
    """The `torch.ops.flash_mla_backend` namespace; raises if the extension did not load."""
    if _load_error is not None:
        raise ExtensionNotBuiltError(f"flash_mla_backend's CUDA extension is not available: {load_problem()}")
    return torch.ops.flash_mla_backend


def _register_fakes() -> None:
    # The ops write into caller-provided tensors and return nothing, so their fake
    # implementations have nothing to compute: they only let torch.compile trace through.
    for name in ("get_mla_metadata", "mla_decode"):
        torch.library.register_fake(f"flash_mla_backend::{name}")(lambda *args, **kwargs: None)


if _load_error is None:
    _register_fakes()
