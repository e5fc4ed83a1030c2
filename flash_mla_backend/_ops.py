"""Loads the compiled extension and registers the fake (meta) implementations of its ops.

The extension is optional at import time so that the package (and the host-engine plugins'
registration code) can be imported on machines where it was not built; the first call that
needs a kernel then raises `ExtensionNotBuiltError` with the reason.
"""

import torch

from flash_mla_backend._env import env_flag

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


def ops():
    """The `torch.ops.flash_mla_backend` namespace; raises if the extension did not load."""
    if _load_error is not None:
        hint = (
            f"it was skipped at install time ({SKIP_BUILD_ENV}=1)"
            if env_flag(SKIP_BUILD_ENV)
            else f"import failed: {_load_error}"
        )
        raise ExtensionNotBuiltError(
            "flash_mla_backend's CUDA extension is not available: "
            f"{hint}. Reinstall with nvcc on the PATH and {SKIP_BUILD_ENV} unset: "
            "pip install --no-build-isolation flash-mla-backend"
        )
    return torch.ops.flash_mla_backend


def _register_fakes() -> None:
    # The ops write into caller-provided tensors and return nothing, so their fake
    # implementations have nothing to compute: they only let torch.compile trace through.
    for name in ("get_mla_metadata", "mla_decode"):
        torch.library.register_fake(f"flash_mla_backend::{name}")(lambda *args, **kwargs: None)


if _load_error is None:
    _register_fakes()
