"""What the SGLang plugin assumes about SGLang, in one place.

SGLang's attention-backend internals change between releases (0.5.23, for one, replaced the
CUDA-graph capture/replay hooks with `init_forward_metadata_out_graph` / `_in_graph`). An
override written for one release can be silently bypassed by the next, leaving SGLang's own
kernels running, so the plugin installs only on the release it was written and tested for.

Besides the names below, the subclass (backend.py) relies on these SGLang 0.5.23 internals:
FlashMLABackend's attributes set in its __init__ (num_q_heads, num_draft_tokens, kv_lora_rank,
req_to_token, kv_index_translator, max_context_len, cuda_graph_kv_indices, cuda_graph_num_splits)
and its helper _eager_block_kv_indices; FlashMLADecodeMetadata; PAGE_SIZE; the Triton kernel
create_flashmla_kv_indices_triton; FlashInferMLAAttnBackend as the prefill path; the ForwardMode
predicates is_decode_or_idle / is_target_verify / is_draft_extend_v2.
"""

from importlib import metadata

SUPPORTED_SGLANG_VERSION = "0.5.23"

# Where SGLang defines its FlashMLA backend. Every place that builds or tests for one looks the
# class up in this module when it runs, not at import: the `flashmla` factory in
# attention_registry.py, the draft-extend factory in speculative/draft_utils.py,
# FlashMLAMultiStepDraftBackend (same module) and the isinstance check in
# speculative/eagle_worker_v2.py. Replacing this one module attribute therefore reaches them all.
FLASHMLA_BACKEND_MODULE = "sglang.srt.layers.attention.flashmla_backend"
FLASHMLA_BACKEND_CLASS = "FlashMLABackend"


class IncompatibleSGLangError(RuntimeError):
    pass


def check_sglang_version() -> None:
    # Reads the installed distribution's metadata only: importing sglang here would be slow.
    from packaging.version import Version

    try:
        installed = metadata.version("sglang")
    except metadata.PackageNotFoundError as exc:
        raise IncompatibleSGLangError("SGLang is not installed in this environment") from exc
    if Version(installed).base_version != SUPPORTED_SGLANG_VERSION:
        raise IncompatibleSGLangError(
            f"SGLang {installed} is installed, but this flash-mla-backend supports SGLang "
            f"{SUPPORTED_SGLANG_VERSION} only (pip install sglang=={SUPPORTED_SGLANG_VERSION})"
        )


# Compute capabilities our kernels are built and tested for: sm_80 code (8.0, 8.6, 8.9) and sm_90a.
def is_supported_capability(capability) -> bool:
    return capability[0] == 8 or tuple(capability) == (9, 0)


def gpu_capabilities():
    """The compute capabilities of the machine's GPUs, read through NVML (which creates no CUDA
    context, as a plugin must not); None where NVML cannot tell (no driver, no nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # nvidia-ml-py missing or no driver: nothing to read
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        return [tuple(pynvml.nvmlDeviceGetCudaComputeCapability(h)) for h in handles]
    finally:
        pynvml.nvmlShutdown()


def reason_to_stay_out():
    """Why the plugin must leave SGLang's own FlashMLA backend in place, or None."""
    try:
        check_sglang_version()
    except IncompatibleSGLangError as error:
        return str(error)
    unsupported = sorted({c for c in gpu_capabilities() or () if not is_supported_capability(c)})
    if unsupported:
        found = ", ".join(f"{major}.{minor}" for major, minor in unsupported)
        return (f"this machine has GPUs of compute capability {found}, where our kernels do not run "
                f"(they cover 8.x and 9.0); SGLang's FlashMLA kernels serve there")
    return None


def check_overrides(subclass: type) -> None:
    """Every method `subclass` defines must override one of SGLang's, or SGLang never calls it."""
    base = subclass.__base__
    missing = [
        name
        for name, value in vars(subclass).items()
        if callable(value) and (name == "__init__" or not name.startswith("_")) and not hasattr(base, name)
    ]
    if missing:
        raise IncompatibleSGLangError(
            f"SGLang's {base.__qualname__} no longer has {', '.join(missing)}, which "
            f"{subclass.__qualname__} overrides"
        )
