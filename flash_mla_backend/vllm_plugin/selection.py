"""What vLLM's FLASHMLA attention backend is, decided each time vLLM looks it up.

The plugin points AttentionBackendEnum.FLASHMLA at `FlashMLABackend` in this module. vLLM resolves
that name (`AttentionBackendEnum.get_class`) while it selects a layer's backend, with the engine's
config current, both for a backend the user named and for each candidate of its automatic
choice. The name resolves to our backend when the user chose FLASHMLA (`--attention-backend
flashmla`, `attention_config.backend` or `backend_per_kind`), and to vLLM's own FlashMLA backend
when vLLM chooses by itself, unless AUTOMATIC_ENV=1 opts in. vLLM then reports and builds the
class it got under that class's own name, so an automatic choice is exactly the one vLLM makes
without the package.
"""

import importlib
import logging

from flash_mla_backend._env import env_flag
from flash_mla_backend.vllm_plugin import AUTOMATIC_ENV, BACKEND_CLASS_PATH, logger

RESOLVED_NAME = "FlashMLABackend"
_logged_reasons = set()  # one line per outcome and process


def __getattr__(name: str):
    if name != RESOLVED_NAME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return resolve_flashmla_backend()


def resolve_flashmla_backend() -> type:
    """Our backend class or vLLM's own FlashMLA backend class, for the current vLLM config."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from flash_mla_backend import __version__
    from flash_mla_backend.vllm_plugin import compat

    if compat.user_chose_flashmla():
        path, reason = BACKEND_CLASS_PATH, "FLASHMLA was chosen (--attention-backend flashmla): it runs our kernels"
    elif env_flag(AUTOMATIC_ENV):
        path = BACKEND_CLASS_PATH
        reason = f"{AUTOMATIC_ENV}=1: vLLM's automatic choice may pick our kernels in FLASHMLA's place"
    else:
        path = AttentionBackendEnum.FLASHMLA.value  # vLLM's own class, as without the plugin
        reason = (
            f"vLLM chooses the attention backend itself, so FLASHMLA stays vLLM's own; --attention-backend "
            f"flashmla (or {AUTOMATIC_ENV}=1) runs our kernels"
        )
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        compat.log_line(logger, logging.INFO, f"flash-mla-backend {__version__}: {reason}")
    module_name, class_name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module_name), class_name)
