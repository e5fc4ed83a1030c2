"""vLLM's own backend selection (`get_attn_backend`, the CUDA platform's priority lists and
checks, with the device capability patched) for a DeepSeek MLA layer.

Do no harm: when vLLM chooses by itself, the choice with the plugin registered is exactly the
one without it; when the user names FLASHMLA, it is our backend; vLLM refuses the combinations
our kernels do not cover with its normal error. vLLM's own FlashMLA kernel library does not load
without a GPU, so its availability check is patched to pass, as on a Hopper server: the Hopper
rows then exercise the case that matters (vLLM's FLASHMLA valid in the automatic choice).
"""

import pytest

pytest.importorskip("vllm.plugins", reason="vLLM is not installed")

import torch  # noqa: E402
import vllm.platforms  # noqa: E402
from vllm.config import AttentionConfig, DeviceConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.platforms.interface import DeviceCapability  # noqa: E402
from vllm.v1.attention import selector  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

from flash_mla_backend import _ops, vllm_plugin  # noqa: E402
from flash_mla_backend.vllm_plugin import BACKEND_CLASS_PATH, compat, selection  # noqa: E402
from flash_mla_backend.vllm_plugin.backend import FlashMLAPluginBackend  # noqa: E402

VLLM_FLASHMLA_PATH = AttentionBackendEnum.FLASHMLA.value  # vLLM's own class
CAPABILITIES = [(8, 0), (8, 6), (8, 9), (9, 0)]
# (model dtype, --kv-cache-dtype)
CACHES = {"bf16": (torch.bfloat16, "auto"), "fp16": (torch.float16, "float16"), "fp8": (torch.bfloat16, "fp8")}
HEADS_PER_GPU = {"TP1": 128, "TP2": 64, "TP4": 32, "TP8": 16}


def _class_path(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture
def select(cuda_platform_class, restore_flashmla_registration, monkeypatch):
    """select(capability, cache="bf16", *, plugin=True, backend=None, per_kind=None, num_heads=128,
    **layer) -> the class path vLLM's get_attn_backend picks for a DeepSeek MLA layer, raising
    vLLM's ValueError where it refuses. backend / per_kind: what the user passed as
    --attention-backend / attention_config.backend_per_kind (None: vLLM chooses)."""
    import vllm.v1.attention.ops.flashmla as vllm_flashmla_ops

    monkeypatch.setattr(vllm.platforms, "_current_platform", cuda_platform_class())
    monkeypatch.setattr(vllm_flashmla_ops, "is_flashmla_dense_supported", lambda: (True, None))
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)

    def run(capability, cache="bf16", *, plugin=True, backend=None, per_kind=None, num_heads=128, **layer):
        patched = classmethod(lambda cls, device_id=0: DeviceCapability(*capability))
        monkeypatch.setattr(cuda_platform_class, "get_device_capability", patched)
        restore_flashmla_registration.clear_override()
        if plugin:
            vllm_plugin.register()
        selector._cached_get_attn_backend.cache_clear()
        attention = AttentionConfig(backend=backend, backend_per_kind=per_kind or {})
        config = VllmConfig(device_config=DeviceConfig(device="cpu"), attention_config=attention)
        config.cache_config.block_size = 64
        dtype, kv_cache_dtype = CACHES[cache]
        arguments = dict(head_size=576, dtype=dtype, kv_cache_dtype=kv_cache_dtype, use_mla=True, num_heads=num_heads)
        with set_current_vllm_config(config):
            return _class_path(selector.get_attn_backend(**{**arguments, **layer}))

    yield run
    selector._cached_get_attn_backend.cache_clear()


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_automatic_choice_is_vllms_own(select, capability, cache):
    without_plugin = select(capability, cache, plugin=False)
    assert select(capability, cache) == without_plugin
    assert without_plugin != BACKEND_CLASS_PATH
    if capability == (9, 0) and cache == "fp8":
        # vLLM's own dense FP8 FlashMLA, the kernel the issue saw replaced.
        assert without_plugin == VLLM_FLASHMLA_PATH


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("capability", CAPABILITIES, ids=lambda c: f"sm{c[0]}{c[1]}")
def test_explicit_flashmla_is_ours(select, needs_extension, capability, cache):
    assert select(capability, cache, backend=AttentionBackendEnum.FLASHMLA) == BACKEND_CLASS_PATH


def test_explicit_flashmla_per_kind_is_ours(select, needs_extension):
    per_kind = {"mla_attention": AttentionBackendEnum.FLASHMLA}
    assert select((9, 0), "fp8", per_kind=per_kind) == BACKEND_CLASS_PATH
    # A per-kind choice of another backend wins over a global FLASHMLA, as in vLLM.
    other = {"mla_attention": AttentionBackendEnum.TRITON_MLA}
    assert select((9, 0), backend=AttentionBackendEnum.FLASHMLA, per_kind=other) != BACKEND_CLASS_PATH


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9)], ids=lambda c: f"sm{c[0]}{c[1]}")
def test_opt_in_variable_lets_the_automatic_choice_take_ours(select, needs_extension, monkeypatch, capability):
    # On Ampere/Ada FLASHMLA comes before TRITON_MLA in vLLM's list and vLLM's own cannot run there.
    monkeypatch.setenv(vllm_plugin.AUTOMATIC_ENV, "1")
    assert select(capability) == BACKEND_CLASS_PATH
    monkeypatch.setenv(vllm_plugin.AUTOMATIC_ENV, "0")
    assert select(capability) == select(capability, plugin=False)


def test_each_outcome_is_logged_once_with_its_reason(select, needs_extension, monkeypatch):
    lines = []
    monkeypatch.setattr(compat, "log_line", lambda logger, level, message: lines.append(message))
    monkeypatch.setattr(selection, "_logged_reasons", set())
    select((9, 0))
    select((9, 0), "fp8")
    select((9, 0), backend=AttentionBackendEnum.FLASHMLA)
    selection_lines = [line for line in lines if "registered with vLLM" not in line]
    assert len(selection_lines) == 2
    assert "vLLM chooses the attention backend itself, so FLASHMLA stays vLLM's own" in selection_lines[0]
    assert "FLASHMLA was chosen (--attention-backend flashmla): it runs our kernels" in selection_lines[1]


@pytest.mark.parametrize("num_heads", HEADS_PER_GPU.values(), ids=HEADS_PER_GPU.keys())
def test_hopper_selects_our_backend_for_every_tp_head_count(select, needs_extension, num_heads):
    assert select((9, 0), backend=AttentionBackendEnum.FLASHMLA, num_heads=num_heads) == BACKEND_CLASS_PATH


@pytest.mark.parametrize(
    "capability, cache, layer, reason",
    [
        ((9, 0), "bf16", dict(kv_cache_dtype="fp8_e5m2"), "kv_cache_dtype not supported"),
        ((9, 0), "bf16", dict(head_size=512), "head_size not supported"),
        ((9, 0), "bf16", dict(dtype=torch.float32), "dtype not supported"),
        ((9, 0), "bf16", dict(use_sparse=True), "sparse not supported"),
        ((7, 5), "bf16", {}, "compute capability not supported"),
        ((10, 0), "bf16", {}, "compute capability not supported"),
    ],
    ids=["fp8-e5m2-cache", "head512", "fp32", "sparse", "sm75", "sm100"],
)
def test_unsupported_combinations_get_vllms_error(select, capability, cache, layer, reason):
    with pytest.raises(ValueError, match="FLASHMLA is not valid for this configuration") as error:
        select(capability, cache, backend=AttentionBackendEnum.FLASHMLA, **layer)
    assert reason in str(error.value)


def test_block_size_16_is_refused(cuda_platform_class, our_flashmla_registration, monkeypatch):
    # get_attn_backend asks for the user's --block-size; the selector config carries it.
    from vllm.v1.attention.selector import AttentionSelectorConfig

    monkeypatch.setattr(cuda_platform_class, "get_device_capability",
                        classmethod(lambda cls, device_id=0: DeviceCapability(9, 0)))
    config = AttentionSelectorConfig(head_size=576, dtype=torch.bfloat16, kv_cache_dtype="auto", block_size=16,
                                     use_mla=True)
    attention = VllmConfig(device_config=DeviceConfig(device="cpu"),
                           attention_config=AttentionConfig(backend=AttentionBackendEnum.FLASHMLA))
    with set_current_vllm_config(attention), pytest.raises(ValueError, match="block_size not supported"):
        cuda_platform_class.get_attn_backend_cls(AttentionBackendEnum.FLASHMLA, config, num_heads=128)


def test_missing_extension_vetoes_the_backend_with_the_reason(select, monkeypatch):
    monkeypatch.setattr(_ops, "_load_error", ImportError("simulated: _C was not built"))
    with pytest.raises(ValueError, match="FLASHMLA is not valid for this configuration") as error:
        select((9, 0), backend=AttentionBackendEnum.FLASHMLA)
    assert "flash_mla_backend's CUDA extension is not available" in str(error.value)


def test_kernel_block_size_sets_vllms_block_size():
    # vLLM picks the cache block size from the kernels' list: its default 16 becomes 64.
    assert FlashMLAPluginBackend.get_preferred_block_size(16) == 64
    assert FlashMLAPluginBackend.supports_block_size(128)  # a multiple of 64 splits into kernel blocks
