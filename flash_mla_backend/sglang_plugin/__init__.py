"""SGLang plugin: `--attention-backend flashmla` runs on flash_mla_backend's kernels.

SGLang calls `register()` through the `sglang.srt.plugins` entry point (see pyproject.toml), in
its launcher before parsing arguments and again in every scheduler process it spawns.
`register()` replaces SGLang's `FlashMLABackend` class with our subclass
(`backend.FlashMLABackendOnOurKernels`), so target decode, target-verify, draft-extend and the
multi-step draft backends all build the subclass, and SGLang's `isinstance` checks still pass.

SGLang builds that class only for `--attention-backend flashmla` (or its decode/prefill
variants): a user's choice. The plugin still leaves SGLang's own class in place where our kernels
would not serve as well as SGLang's: on an SGLang release other than the supported one, and on
GPUs outside compute capability 8.x and 9.0 (SGLang's FlashMLA also runs on Blackwell). Set
FLASH_MLA_BACKEND_DISABLE_SGLANG=1 to keep SGLang's own FlashMLA kernels anyway.
"""

import importlib
import logging

from flash_mla_backend import __version__
from flash_mla_backend._env import env_flag

DISABLE_ENV = "FLASH_MLA_BACKEND_DISABLE_SGLANG"

logger = logging.getLogger(__name__)


class PluginInstallError(RuntimeError):
    """The plugin could not put its backend in place of SGLang's FlashMLA backend."""


def register() -> None:
    """Installs our FlashMLA backend into SGLang. Idempotent; initialises no CUDA context."""
    from flash_mla_backend.sglang_plugin import compat

    if env_flag(DISABLE_ENV):
        logger.info("flash-mla-backend %s: %s=1, SGLang's own FlashMLA kernels stay in use", __version__, DISABLE_ENV)
        return
    reason = compat.reason_to_stay_out()
    if reason:
        logger.warning("flash-mla-backend %s leaves SGLang's own FlashMLA backend in place: %s", __version__, reason)
        return
    try:
        newly_installed = _install_backend()
    except Exception as exc:
        # SGLang only logs a plugin's exception and then serves with its built-in backend, so
        # say plainly, at error level, that our kernels are not the ones running.
        message = (
            f"flash-mla-backend {__version__} could not install its SGLang attention backend, so "
            f"`--attention-backend flashmla` would run SGLang's own FlashMLA kernels: {exc}. "
            f"Set {DISABLE_ENV}=1 to choose SGLang's kernels deliberately."
        )
        logger.error(message)
        raise PluginInstallError(message) from exc
    if newly_installed:
        logger.info(
            "flash-mla-backend %s: SGLang's flashmla attention backend now runs decode, target-verify "
            "and draft-extend on flash_mla_backend kernels",
            __version__,
        )


def _install_backend() -> bool:
    """Replaces SGLang's FlashMLABackend with our subclass; False if it already was."""
    from flash_mla_backend.sglang_plugin import compat

    # Imports SGLang's FlashMLA module, which loads its CUDA libraries but creates no context.
    from flash_mla_backend.sglang_plugin.backend import FlashMLABackendOnOurKernels

    compat.check_overrides(FlashMLABackendOnOurKernels)
    module = importlib.import_module(compat.FLASHMLA_BACKEND_MODULE)
    current = getattr(module, compat.FLASHMLA_BACKEND_CLASS)
    if current is FlashMLABackendOnOurKernels:
        return False
    # Our subclass must extend SGLang's own class, the one it was written against.
    sglang_class = FlashMLABackendOnOurKernels.__base__
    if current is not sglang_class or sglang_class.__module__ != compat.FLASHMLA_BACKEND_MODULE:
        raise PluginInstallError(
            f"{compat.FLASHMLA_BACKEND_MODULE}.{compat.FLASHMLA_BACKEND_CLASS} was already replaced by "
            f"{current.__module__}.{current.__qualname__} (another plugin?)"
        )
    setattr(module, compat.FLASHMLA_BACKEND_CLASS, FlashMLABackendOnOurKernels)
    return True
