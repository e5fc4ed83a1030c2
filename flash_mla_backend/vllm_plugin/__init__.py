"""vLLM general plugin: vLLM's FLASHMLA attention backend runs flash_mla_backend's kernels.

Installing flash-mla-backend next to vLLM registers `register` under vLLM's
`vllm.general_plugins` entry-point group. vLLM calls it once in every process it starts (API
server, engine core, each worker, forked or spawned), so it is idempotent, cheap, touches only
vLLM's attention-backend registry and never initialises CUDA. After it ran,
`--attention-backend flashmla` (and FLASHMLA's slot in vLLM's automatic choice) resolves to
`flash_mla_backend.vllm_plugin.backend.FlashMLAPluginBackend`.

Set FLASH_MLA_BACKEND_DISABLE_VLLM=1 to keep vLLM's built-in FLASHMLA backend.

This module imports vLLM only inside `register`, so `flash_mla_backend` works without vLLM.
"""

import logging
import os

DISABLE_ENV = "FLASH_MLA_BACKEND_DISABLE_VLLM"
BACKEND_CLASS_PATH = "flash_mla_backend.vllm_plugin.backend.FlashMLAPluginBackend"

# A child of vLLM's "vllm" logger, so the line goes through vLLM's handler, format and level once
# vLLM has set up logging in the process (compat.log_line covers the time before).
logger = logging.getLogger("vllm.plugins.flash_mla_backend")


def override_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def register() -> None:
    """Points vLLM's FLASHMLA attention backend at our backend class (entry point of the plugin)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from flash_mla_backend import __version__
    from flash_mla_backend.vllm_plugin import compat

    if override_disabled():
        message = f"flash-mla-backend {__version__}: {DISABLE_ENV} is set; vLLM's own FLASHMLA backend stays in use"
        compat.log_line(logger, logging.INFO, message)
        return
    if AttentionBackendEnum.FLASHMLA.get_path() == BACKEND_CLASS_PATH:
        return  # this process already registered us
    register_backend(AttentionBackendEnum.FLASHMLA, BACKEND_CLASS_PATH)

    vllm_version = compat.installed_vllm_version()
    message = (
        f"flash-mla-backend {__version__} registered with vLLM {vllm_version}: attention backend FLASHMLA -> "
        f"{BACKEND_CLASS_PATH} ({DISABLE_ENV}=1 turns this off)"
    )
    if compat.is_supported_vllm_version(vllm_version):
        compat.log_line(logger, logging.INFO, message)
    else:
        untested = f"; this vLLM version is untested, supported: {compat.SUPPORTED_VLLM_VERSIONS}"
        compat.log_line(logger, logging.WARNING, message + untested)
