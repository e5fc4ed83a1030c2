"""flash-mla-backend: MLA decoding over a paged KV cache, with a FlashMLA-compatible API."""

from flash_mla_backend.interface import (
    flash_mla_with_kvcache,
    get_mla_metadata,
)

__version__ = "0.1.0"

__all__ = ["__version__", "flash_mla_with_kvcache", "get_mla_metadata"]
