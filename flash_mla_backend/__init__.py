"""flash-mla-backend: MLA decoding over a paged KV cache, with a FlashMLA-compatible API."""

from flash_mla_backend.interface import (
    FP8_DTYPE,
    KV_CACHE_DTYPES,
    SUPPORTED_DTYPES,
    ExtensionNotBuiltError,
    UnsupportedDeviceError,
    check_extension,
    flash_mla_with_kvcache,
    get_mla_metadata,
    mla_decode_workspace_numel,
    mla_metadata_num_parts,
)

__version__ = "0.1.0"

__all__ = [
    "FP8_DTYPE",
    "KV_CACHE_DTYPES",
    "SUPPORTED_DTYPES",
    "ExtensionNotBuiltError",
    "UnsupportedDeviceError",
    "__version__",
    "check_extension",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
    "mla_decode_workspace_numel",
    "mla_metadata_num_parts",
]
