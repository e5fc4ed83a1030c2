"""Fixtures for the vLLM plugin tests: real vLLM objects (VllmConfig, MLAAttentionSpec,
CommonAttentionMetadata, the MLA base classes, the registry, the CUDA platform) around our
backend. Nothing here imports vLLM at module level, so test_without_vllm.py runs without it.

Two small stand-ins replace what a real model would bring, as vLLM's own backend tests do: the
model config (the bundled vLLM on the GPU host cannot build a DeepSeek ModelConfig) and the
attention layer the builder looks up by name (its MLA sizes and the prefill backend it clones;
prefill is vLLM's path and never runs here).
"""

import ctypes
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from flash_mla_backend.interface import HEAD_DIM_QK, PAGE_SIZE

# DeepSeek-V2/V3 attention sizes; the absorbed decode query is 512 + 64 = 576 wide per head.
DEEPSEEK_MLA_DIMS = dict(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
LAYER_NAME = "model.layers.0.self_attn.attn"
NULL_BLOCK = 0  # vLLM reserves block 0; CUDA-graph padding rows of the block table point at it

if not torch.cuda.is_available():
    # Tells vLLM 0.33 that this machine is a CPU one, so that it does not pin host memory (which
    # needs a GPU driver); vLLM 0.26 decides that from its build and ignores the variable.
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")


@pytest.fixture
def needs_extension():
    from flash_mla_backend._ops import extension_available

    if not extension_available():
        pytest.skip("flash_mla_backend._C is not built (the kernels, whose sizes the schedule plan reads)")


@pytest.fixture
def restore_flashmla_registration():
    """Lets a test change what AttentionBackendEnum.FLASHMLA points at, and undoes it afterwards."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    member = AttentionBackendEnum.FLASHMLA
    saved_path = member.get_path() if member.is_overridden() else None
    yield member
    member.clear_override()
    if saved_path is not None:
        register_backend(member, saved_path)


@pytest.fixture
def our_flashmla_registration(restore_flashmla_registration, monkeypatch):
    """FLASHMLA registered the way vLLM's plugin loader does it."""
    from flash_mla_backend import vllm_plugin

    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    restore_flashmla_registration.clear_override()
    vllm_plugin.register()
    return restore_flashmla_registration


# The CUDA driver functions that vLLM's compiled libraries (0.26 to 0.33) link against.
_DRIVER_FUNCTIONS = """cuInit cuDriverGetVersion cuGetProcAddress_v2 cuPointerGetAttribute cuTensorMapEncodeTiled
cuCtxGetCurrent cuCtxSetCurrent cuDeviceGetAttribute cuDevicePrimaryCtxRetain cuGetErrorString cuMemAddressFree
cuMemAddressReserve cuMemCreate cuMemGetAllocationGranularity cuMemMap cuMemRelease cuMemSetAccess cuMemUnmap""".split()


@pytest.fixture(scope="session")
def cuda_platform_class(tmp_path_factory):
    """vLLM's real CudaPlatform class, importable on a machine without a GPU driver.

    vllm.platforms.cuda loads vLLM's compiled ops, which need libcuda.so.1. Where the driver is
    missing, a stub library with that soname is built with the machine's C compiler and loaded
    globally first: every driver function answers CUDA_ERROR_NO_DEVICE (100), and the dynamic
    loader then resolves vLLM's dependency on libcuda.so.1 to it.
    """
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            pytest.skip("no GPU driver and no C compiler to build a libcuda.so.1 stub")
        build_dir = tmp_path_factory.mktemp("libcuda_stub")
        source = build_dir / "libcuda_stub.c"
        source.write_text("".join(f"int {name}(void) {{ return 100; }}\n" for name in _DRIVER_FUNCTIONS))
        stub = build_dir / "libcuda.so.1"
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub), str(source)], check=True
        )
        ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    from vllm.platforms.cuda import CudaPlatform

    return CudaPlatform


class DeepSeekModelConfigStandIn:
    """The parts of vLLM's ModelConfig that the MLA metadata builder reads, for one GPU's heads."""

    def __init__(self, num_heads: int, dtype: torch.dtype, max_model_len: int = 8192):
        self.num_heads = num_heads
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.use_mla = True
        self.hf_text_config = SimpleNamespace(**DEEPSEEK_MLA_DIMS)

    def get_num_attention_heads(self, parallel_config) -> int:
        return self.num_heads

    def get_head_size(self) -> int:
        return HEAD_DIM_QK


def _prefill_backend_stand_in(vllm_config, num_heads):
    from vllm.v1.attention.backends.mla.prefill.base import MLAPrefillBackend

    class PrefillNotExercised(MLAPrefillBackend):
        @staticmethod
        def get_name() -> str:
            return "NOT_EXERCISED"

        def run_prefill_new_tokens(self, *args, **kwargs):
            raise AssertionError("prefill is vLLM's own path; these tests build its metadata only")

        run_prefill_context_chunk = run_prefill_new_tokens

    return PrefillNotExercised(
        num_heads=num_heads,
        scale=1.0 / math.sqrt(DEEPSEEK_MLA_DIMS["qk_nope_head_dim"] + DEEPSEEK_MLA_DIMS["qk_rope_head_dim"]),
        vllm_config=vllm_config,
        **{k: v for k, v in DEEPSEEK_MLA_DIMS.items() if k != "q_lora_rank"},
    )


@dataclass
class MlaDecodeSetup:
    vllm_config: object
    layer: object  # what forward_mqa gets as `layer` (the FP8 scales would live there)
    builder: object

    def make_impl(self):
        from vllm.config import set_current_vllm_config

        from flash_mla_backend.vllm_plugin.backend import FlashMLAPluginBackend

        dims = DEEPSEEK_MLA_DIMS
        with set_current_vllm_config(self.vllm_config):
            return FlashMLAPluginBackend.get_impl_cls()(
                num_heads=self.layer.num_heads,
                head_size=HEAD_DIM_QK,
                scale=self.layer.scale,
                num_kv_heads=1,
                alibi_slopes=None,
                sliding_window=None,
                kv_cache_dtype=self.vllm_config.cache_config.cache_dtype,
                logits_soft_cap=None,
                attn_type="decoder",
                kv_sharing_target_layer_name=None,
                qk_head_dim=dims["qk_nope_head_dim"] + dims["qk_rope_head_dim"],
                kv_b_proj=None,  # the up-projections are vLLM's; forward_mqa never touches them
                **dims,
            )


@pytest.fixture
def make_mla_setup():
    """make_mla_setup(num_heads, device, full_cudagraphs=False, max_num_seqs=64, cache_dtype="auto")
    -> MlaDecodeSetup with our builder, built the way vLLM's GPU model runner builds it. With an
    FP8 cache_dtype the layer carries vLLM's scale buffers (_q_scale, _k_scale: 0-d float32)."""
    from vllm.config import CUDAGraphMode, DeviceConfig, VllmConfig, set_current_vllm_config
    from vllm.v1.kv_cache_interface import MLAAttentionSpec

    from flash_mla_backend.vllm_plugin.backend import FlashMLAPluginBackend

    def make(num_heads, device, *, full_cudagraphs=False, max_num_seqs=64, dtype=torch.bfloat16, cache_dtype="auto"):
        # An explicit device: vLLM cannot infer one on a machine without a GPU.
        vllm_config = VllmConfig(device_config=DeviceConfig(device=device))
        vllm_config.model_config = DeepSeekModelConfigStandIn(num_heads, dtype)
        vllm_config.cache_config.block_size = PAGE_SIZE
        vllm_config.cache_config.cache_dtype = cache_dtype
        vllm_config.scheduler_config.max_num_seqs = max_num_seqs
        compilation = vllm_config.compilation_config
        compilation.cudagraph_mode = CUDAGraphMode.FULL_DECODE_ONLY if full_cudagraphs else CUDAGraphMode.NONE
        prefill = _prefill_backend_stand_in(vllm_config, num_heads)
        layer = SimpleNamespace(num_heads=num_heads, scale=prefill.scale, prefill_backend=prefill, **DEEPSEEK_MLA_DIMS)
        if cache_dtype.startswith("fp8"):
            layer._q_scale = torch.tensor(1.0, device=device)
            layer._k_scale = torch.tensor(1.0, device=device)
        compilation.static_forward_context[LAYER_NAME] = layer
        # vLLM keeps an FP8 cache as bytes and views it as e4m3 before attention.
        cache_storage = torch.uint8 if cache_dtype.startswith("fp8") else dtype
        spec = MLAAttentionSpec(block_size=PAGE_SIZE, num_kv_heads=1, head_size=HEAD_DIM_QK, dtype=cache_storage)
        with set_current_vllm_config(vllm_config):
            builder = FlashMLAPluginBackend.get_builder_cls()(spec, [LAYER_NAME], vllm_config, torch.device(device))
        return MlaDecodeSetup(vllm_config, layer, builder)

    return make


@pytest.fixture
def vllm_workspace():
    """vllm_workspace(device): sets up vLLM's workspace manager as its GPU worker does (before the
    model is built); torn down afterwards."""
    from vllm.v1.worker import workspace

    def init(device):
        workspace.init_workspace_manager(torch.device(device))
        return workspace

    yield init
    workspace.reset_workspace_manager()


@pytest.fixture
def make_batch():
    return make_common_attn_metadata


def make_common_attn_metadata(
    seq_lens, query_lens, device, generator, *, num_padding_reqs=0, num_blocks=None, block_table_width=None
):
    """make_batch(...): vLLM's per-step batch description, as its GPU model runner fills it.

    Request i's pages are distinct random blocks >= 1; the block-table entries past them point at
    blocks no request owns (stale entries, as in vLLM; a GPU test poisons those blocks). With
    num_padding_reqs, CUDA-graph padding follows the real requests: no query tokens (but
    uniform-batch token padding of max(query_lens) each), seq_len 0, block-table rows of
    NULL_BLOCK. Returns (metadata, num_blocks).
    """
    from vllm.v1.attention.backend import CommonAttentionMetadata

    pages = [math.ceil(n / PAGE_SIZE) for n in seq_lens]
    num_blocks = num_blocks or sum(pages) + 4
    width = block_table_width or max(pages) + 2
    num_reqs = len(seq_lens) + num_padding_reqs
    blocks = (torch.randperm(num_blocks - 1, generator=generator) + 1).to(torch.int32)
    owned, spare = blocks[: sum(pages)].split(pages), blocks[sum(pages):]
    block_table = spare[torch.randint(0, spare.numel(), (num_reqs, width), generator=generator)]
    block_table[len(seq_lens):] = NULL_BLOCK
    for i, request_blocks in enumerate(owned):
        block_table[i, : request_blocks.numel()] = request_blocks

    all_query_lens = list(query_lens) + [0] * num_padding_reqs
    query_start_loc = torch.tensor([0] + all_query_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    all_seq_lens = torch.tensor(list(seq_lens) + [0] * num_padding_reqs, dtype=torch.int32)
    slots = []
    for i, (seq_len, query_len) in enumerate(zip(seq_lens, query_lens)):
        for position in range(seq_len - query_len, seq_len):
            slots.append(int(block_table[i, position // PAGE_SIZE]) * PAGE_SIZE + position % PAGE_SIZE)
    num_tokens = len(slots) + num_padding_reqs * max(query_lens)
    slot_mapping = torch.full((num_tokens,), -1, dtype=torch.int64)  # -1: vLLM's padding slot
    slot_mapping[: len(slots)] = torch.tensor(slots, dtype=torch.int64)

    metadata = CommonAttentionMetadata(
        query_start_loc=query_start_loc.to(device),
        query_start_loc_cpu=query_start_loc,
        seq_lens=all_seq_lens.to(device),
        seq_lens_cpu_upper_bound=all_seq_lens,
        num_reqs=num_reqs,
        num_actual_tokens=num_tokens,
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        block_table_tensor=block_table.to(device),
        slot_mapping=slot_mapping.to(device),
        causal=True,
    )
    return metadata, num_blocks
