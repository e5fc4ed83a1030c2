"""What differs between the vLLM releases the plugin supports, kept in this one module.

Supported: vLLM 0.26.0 (the newest release on torch 2.11, the GPU host's torch) to 0.33.0. The
differences that touch the plugin, read from both releases' source:

- `MLACommonMetadataBuilder.build` calls `_build_decode` with keyword arguments only, and the set
  grew: 0.33 passes `max_query_len` as well. Our builder names the arguments it uses and accepts
  (and ignores) any others; it derives the decode query length from `query_start_loc_cpu`.
- `AttentionBackend.get_supported_kernel_block_sizes`: 0.33 passes the layer's KV-cache spec,
  0.26 calls it without arguments. Ours takes an optional argument, valid for both.
- The KV-cache layout: 0.26 asks the backend for `get_kv_cache_shape` and
  `get_kv_cache_stride_order` (vLLM's `MLACommonBackend` answers for us: one tensor
  [num_blocks, block_size, 576] per layer, blocks outermost); 0.33 removed both and negotiates the
  layout through `supported_kv_cache_layouts` (ours: no preference). Either way `forward_mqa`
  gets [num_blocks, block_size, 576]; with cross-layer layouts the block stride exceeds one block,
  which `flash_mla_with_kvcache` reads through the tensor's strides.
- The builder's head count and MLA dimensions: 0.33 reads them from the attention layers in the
  static forward context (falling back to the model config for the head count), 0.26 from the
  model config. The base class does this; it matters only to tests that stand in for a model.
- `CommonAttentionMetadata`: both have `seq_lens_cpu_upper_bound`; 0.26 also has the deprecated
  `seq_lens_cpu`, removed in 0.33. Our builder uses the device `seq_lens` only (no host sync).
- `AttentionBackend.validate_configuration`: 0.33 adds the `use_adaptive_verification`,
  `use_dcp` (checked against the impl's `supports_dcp`) and `use_rswa` arguments. We override only
  the `supports_*` hooks, whose signatures are the same in both.
- `register_backend`: 0.33 also accepts a new backend name as a string; overriding an existing
  member, which is what the plugin does, works alike in both.
- Backend selection (`vllm.v1.attention.selector.get_attn_backend`): both read the user's
  choice from the current config's `attention_config.backend`, overridden per KV-cache kind by
  `attention_config.backend_per_kind` (keys "mla_attention", "sliding_window_mla" for MLA), and
  report the selected class under its own module path. `user_chose_flashmla` reads the same.
- Workspace: both have `vllm.v1.worker.workspace` (set up by the GPU worker before the model is
  built, locked after warm-up); 0.33 also calls an impl's `reserve_workspace()` in its memory-
  profiling run. Our impl claims its share in `__init__` (both releases) and in that hook.
- Logging: 0.26 sets up its "vllm" log handler when vllm.logger is imported, before any plugin
  runs; 0.33 sets it up explicitly, and in the API-server process and the `LLM()` process only
  after loading the plugins. `log_line` covers both.
"""

import logging
import os
import re
import sys
import time
from importlib import metadata

SUPPORTED_VLLM_VERSIONS = "0.26.0 to 0.33.0"
_OLDEST_SUPPORTED = (0, 26, 0)
_NEWEST_SUPPORTED = (0, 33, 0)


def installed_vllm_version() -> str:
    return metadata.version("vllm")


def is_supported_vllm_version(version: str) -> bool:
    """True for releases in the supported range, local builds included ("0.33.0+cu130")."""
    release = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    return release is not None and _OLDEST_SUPPORTED <= tuple(map(int, release.groups())) <= _NEWEST_SUPPORTED


# The KV-cache kinds of MLA layers, keys of attention_config.backend_per_kind.
_MLA_KV_CACHE_KINDS = ("mla_attention", "sliding_window_mla")


def user_chose_flashmla() -> bool:
    """Whether the config vLLM is selecting backends for names FLASHMLA for MLA layers."""
    from vllm.config import get_current_vllm_config_or_none
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    config = get_current_vllm_config_or_none()
    if config is None:
        return False
    attention = config.attention_config
    per_kind = attention.backend_per_kind or {}
    return AttentionBackendEnum.FLASHMLA in {per_kind.get(kind, attention.backend) for kind in _MLA_KV_CACHE_KINDS}


def log_line(logger: logging.Logger, level: int, message: str) -> None:
    """Logs through `logger` where logging is set up in this process; where it is not yet (0.33's
    API-server and LLM() process at plugin time), writes the line the way vLLM's default setup
    would: to stdout, if VLLM_LOGGING_LEVEL lets it through."""
    if logger.hasHandlers():
        logger.log(level, message, stacklevel=2)  # attributed to the caller, not to this helper
        return
    threshold = logging.getLevelName(os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper())
    if level >= (threshold if isinstance(threshold, int) else logging.INFO):
        sys.stdout.write(f"{logging.getLevelName(level)} {time.strftime('%m-%d %H:%M:%S')} [{logger.name}] {message}\n")
        sys.stdout.flush()
