"""vLLM's own CUDA platform choosing the attention backend for a DeepSeek MLA layer, with the
device capability patched: FLASHMLA resolves to our backend, and vLLM refuses the combinations our
kernels do not cover with its normal error."""

import pytest

pytest.importorskip("vllm.plugins", reason="vLLM is not installed")

import torch  # noqa: E402
from vllm.platforms.interface import DeviceCapability  # noqa: E402
from vllm.v1.attention.selector import AttentionSelectorConfig  # noqa: E402

from flash_mla_backend import _ops  # noqa: E402
from flash_mla_backend.vllm_plugin import BACKEND_CLASS_PATH  # noqa: E402
from flash_mla_backend.vllm_plugin.backend import FlashMLAPluginBackend  # noqa: E402

# A DeepSeek-V2/V3 attention layer as vLLM's selector describes it (bf16 model, 64-token blocks).
DEEPSEEK_LAYER = dict(head_size=576, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=64, use_mla=True)
HEADS_PER_GPU = {"TP1": 128, "TP2": 64, "TP4": 32, "TP8": 16}


@pytest.fixture
def select_flashmla(cuda_platform_class, our_flashmla_registration, monkeypatch):
    """select_flashmla(capability, num_heads=128, **layer) -> the class path vLLM's CudaPlatform
    picks for --attention-backend flashmla, or its ValueError."""

    def select(capability, num_heads=128, **layer_overrides):
        patched = classmethod(lambda cls, device_id=0: DeviceCapability(*capability))
        monkeypatch.setattr(cuda_platform_class, "get_device_capability", patched)
        config = AttentionSelectorConfig(**{**DEEPSEEK_LAYER, **layer_overrides})
        return cuda_platform_class.get_attn_backend_cls(our_flashmla_registration, config, num_heads=num_heads)

    return select


@pytest.mark.parametrize("num_heads", HEADS_PER_GPU.values(), ids=HEADS_PER_GPU.keys())
def test_hopper_selects_our_backend_for_every_tp_head_count(select_flashmla, needs_extension, num_heads):
    assert select_flashmla((9, 0), num_heads=num_heads) == BACKEND_CLASS_PATH


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9)])
def test_ampere_and_ada_select_our_portable_kernel(select_flashmla, needs_extension, capability):
    assert select_flashmla(capability) == BACKEND_CLASS_PATH


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_both_half_precision_model_dtypes_are_accepted(select_flashmla, needs_extension, dtype):
    assert select_flashmla((9, 0), dtype=dtype, kv_cache_dtype=str(dtype).removeprefix("torch.")) == BACKEND_CLASS_PATH


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e4m3"])
@pytest.mark.parametrize("capability", [(9, 0), (8, 9)])
def test_fp8_e4m3_caches_select_our_backend(select_flashmla, needs_extension, capability, kv_cache_dtype):
    assert select_flashmla(capability, kv_cache_dtype=kv_cache_dtype) == BACKEND_CLASS_PATH


@pytest.mark.parametrize(
    "capability, layer_overrides, reason",
    [
        ((9, 0), dict(kv_cache_dtype="fp8_e5m2"), "kv_cache_dtype not supported"),
        ((9, 0), dict(block_size=16), "block_size not supported"),
        ((9, 0), dict(head_size=512), "head_size not supported"),
        ((9, 0), dict(dtype=torch.float32), "dtype not supported"),
        ((9, 0), dict(use_sparse=True), "sparse not supported"),
        ((9, 0), dict(use_mla=False, head_size=128), "non-MLA not supported"),
        ((7, 5), {}, "compute capability not supported"),
        ((10, 0), {}, "compute capability not supported"),
    ],
    ids=["fp8-e5m2-cache", "block16", "head512", "fp32", "sparse", "non-mla", "sm75", "sm100"],
)
def test_unsupported_combinations_get_vllms_error(select_flashmla, capability, layer_overrides, reason):
    with pytest.raises(ValueError, match="FLASHMLA is not valid for this configuration") as error:
        select_flashmla(capability, **layer_overrides)
    assert reason in str(error.value)


def test_missing_extension_vetoes_the_backend_with_the_reason(select_flashmla, monkeypatch):
    monkeypatch.setattr(_ops, "_load_error", ImportError("simulated: _C was not built"))
    with pytest.raises(ValueError, match="FLASHMLA is not valid for this configuration") as error:
        select_flashmla((9, 0))
    assert "flash_mla_backend's CUDA extension is not available" in str(error.value)


def test_kernel_block_size_sets_vllms_block_size():
    # vLLM picks the cache block size from the kernels' list: its default 16 becomes 64.
    assert FlashMLAPluginBackend.get_preferred_block_size(16) == 64
    assert FlashMLAPluginBackend.supports_block_size(128)  # a multiple of 64 splits into kernel blocks
