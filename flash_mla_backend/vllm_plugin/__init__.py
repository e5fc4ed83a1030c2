"""vLLM general plugin: `--attention-backend flashmla` runs flash_mla_backend's kernels.

Installing flash-mla-backend next to vLLM registers `register` under vLLM's
`vllm.general_plugins` entry-point group. vLLM calls it once in every process it starts (API
server, engine core, each worker, forked or spawned), so it is idempotent, cheap, touches only
vLLM's attention-backend registry and never initialises CUDA. It points vLLM's FLASHMLA member at
`selection.FlashMLABackend`, which resolves, each time vLLM looks it up, to our backend
(`backend.FlashMLAPluginBackend`) when the user chose FLASHMLA, and to vLLM's own FlashMLA
backend when vLLM chooses by itself: installing the package never changes a choice the user did
not make (see `selection`).

FLASH_MLA_BACKEND_VLLM_AUTOMATIC=1 lets vLLM's automatic choice take our kernels in FLASHMLA's
place too; FLASH_MLA_BACKEND_DISABLE_VLLM=1 leaves vLLM's registry alone. A vLLM outside the
supported range is left alone as well, with a warning.

This module imports vLLM only inside `register`, so `flash_mla_backend` works without vLLM.
"""

import logging

from flash_mla_backend._env import env_flag

DISABLE_ENV = "FLASH_MLA_BACKEND_DISABLE_VLLM"
AUTOMATIC_ENV = "FLASH_MLA_BACKEND_VLLM_AUTOMATIC"
BACKEND_CLASS_PATH = "flash_mla_backend.vllm_plugin.backend.FlashMLAPluginBackend"
# What FLASHMLA points at while the plugin is registered (a name this module's selection resolves).
SELECTION_PATH = "flash_mla_backend.vllm_plugin.selection.FlashMLABackend"

# A child of vLLM's "vllm" logger, so the line goes through vLLM's handler, format and level once
# vLLM has set up logging in the process (compat.log_line covers the time before).
logger = logging.getLogger("vllm.plugins.flash_mla_backend")


def register() -> None:
    """Points vLLM's FLASHMLA attention backend at our selection (entry point of the plugin)."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from flash_mla_backend import __version__
    from flash_mla_backend.vllm_plugin import compat

    if env_flag(DISABLE_ENV):
        message = f"flash-mla-backend {__version__}: {DISABLE_ENV} is set; vLLM's own FLASHMLA backend stays in use"
        compat.log_line(logger, logging.INFO, message)
        return
    vllm_version = compat.installed_vllm_version()
    if not compat.is_supported_vllm_version(vllm_version):
        message = (
            f"flash-mla-backend {__version__} supports vLLM {compat.SUPPORTED_VLLM_VERSIONS}, not the installed "
            f"{vllm_version}: it leaves vLLM's attention backends as they are (FLASHMLA is vLLM's own)"
            f"; the package's [vllm] extra names the supported range"
        )
        compat.log_line(logger, logging.WARNING, message)
        return
    if AttentionBackendEnum.FLASHMLA.get_path() == SELECTION_PATH:
        return  # this process already registered us
    register_backend(AttentionBackendEnum.FLASHMLA, SELECTION_PATH)
    message = (
        f"flash-mla-backend {__version__} registered with vLLM {vllm_version}: --attention-backend flashmla runs "
        f"its kernels ({BACKEND_CLASS_PATH}); vLLM's automatic choice is unchanged ({AUTOMATIC_ENV}=1 lets it pick "
        f"them, {DISABLE_ENV}=1 turns the plugin off)"
    )
    compat.log_line(logger, logging.INFO, message)
