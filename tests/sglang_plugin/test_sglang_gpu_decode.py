"""GPU: the subclass's decode and target-verify, eager and CUDA-graph, against our reference.

Runs on SGLang's own MLA KV pool (one [slots, 1, 576] tensor per layer) with the block table
that SGLang's Triton kernel builds from `req_to_token`; the model runner comes from SGLang's
test kit. Every pool slot that no request uses, the tails of last pages included, holds NaN.
Needs a CUDA GPU, SGLang and the compiled extension (flash_mla_backend._C); skipped otherwise.
Fresh random data each run, seeded per case by tests/conftest.py (FLASH_MLA_TEST_SEED replays).
"""

import math
from types import SimpleNamespace

import pytest
import torch

# A submodule, not "sglang": without SGLang installed, this test directory itself would import
# as a namespace package of that name.
pytest.importorskip("sglang.srt.plugins", reason="SGLang is not installed (scripts/test_sglang.sh makes its venv)")

from flash_mla_backend import flash_mla_with_kvcache, reference  # noqa: E402

pytestmark = pytest.mark.gpu  # tests/conftest.py skips these without a GPU or the compiled extension

NUM_HEADS = 16  # DeepSeek-V3's 128 heads at tensor parallelism 8
PAGE_SIZE = reference.PAGE_SIZE
HEAD_DIM = reference.HEAD_DIM_QK
KV_LORA_RANK = reference.HEAD_DIM_V
MAX_CONTEXT_LEN = 1024
SCALE = HEAD_DIM ** -0.5
MAX_RELATIVE_ERROR = 1e-2  # bf16 output
MAX_LSE_ERROR = 1e-3


@pytest.fixture(scope="module")
def sglang_api():
    """SGLang's classes, imported after its own plugin loading installed our backend."""
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.mem_cache.layout.paged_view import paged_view
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode
    from sglang.test.kits.attention_unittest.attention_methods.mla_attention import (
        MLAAttentionCase,
        MockMLAModelRunner,
        TinyMLAModelConfig,
    )

    from flash_mla_backend.sglang_plugin.backend import FlashMLABackendOnOurKernels

    return SimpleNamespace(
        ATTENTION_BACKENDS=ATTENTION_BACKENDS,
        RadixAttention=RadixAttention,
        paged_view=paged_view,
        ForwardBatch=ForwardBatch,
        ForwardMode=ForwardMode,
        MLAAttentionCase=MLAAttentionCase,
        MockMLAModelRunner=MockMLAModelRunner,
        TinyMLAModelConfig=TinyMLAModelConfig,
        FlashMLABackendOnOurKernels=FlashMLABackendOnOurKernels,
    )


def _build(sglang_api, mode, cache_lens, query_len, seed, fp8_cache=False):
    """A backend built by SGLang's factory, a filled pool and a batch whose requests have `cache_lens`
    (with fp8_cache, an e4m3 pool and the layer's k_scale, as SGLang's --kv-cache-dtype fp8_e4m3)."""
    torch.manual_seed(seed)
    batch_size = len(cache_lens)
    prefix_lens = tuple(n - query_len for n in cache_lens)
    case = sglang_api.MLAAttentionCase(
        name=mode.name.lower(),
        backend="flashmla",
        forward_mode=mode,
        num_heads=NUM_HEADS,
        page_size=PAGE_SIZE,
        prefix_lens=prefix_lens,
        # The kit sets speculative_num_draft_tokens from these for a target-verify case.
        extend_lens=() if mode.is_decode() else (query_len,) * batch_size,
    )
    runner = sglang_api.MockMLAModelRunner(
        case=case,
        model_config=sglang_api.TinyMLAModelConfig(
            num_heads=NUM_HEADS,
            kv_lora_rank=KV_LORA_RANK,
            qk_rope_head_dim=HEAD_DIM - KV_LORA_RANK,
            hidden_size=64,
            context_len=MAX_CONTEXT_LEN,
        ),
        dtype=torch.bfloat16,
        device="cuda",
        max_context_len=MAX_CONTEXT_LEN,
        kv_lora_rank=KV_LORA_RANK,
        qk_rope_head_dim=HEAD_DIM - KV_LORA_RANK,
        fp8_kv_cache=fp8_cache,
    )
    backend = sglang_api.ATTENTION_BACKENDS["flashmla"](runner)
    assert type(backend) is sglang_api.FlashMLABackendOnOurKernels

    kv_slots = runner.token_to_kv_pool.get_key_buffer(0)  # [slots, 1, 576]
    if fp8_cache:
        kv_slots.view(torch.uint8).fill_(0x7F)  # e4m3's NaN
    else:
        kv_slots.fill_(math.nan)
    k_scale = 0.02  # values of magnitude ~4 / 0.02 = 200 fit e4m3's range (448)
    # Whole pages per request, scattered over the pool; page 0 is SGLang's padding page.
    pages_needed = [math.ceil(n / PAGE_SIZE) for n in cache_lens]
    free_pages = (torch.randperm(kv_slots.shape[0] // PAGE_SIZE - 1) + 1).tolist()
    block_table = torch.zeros(batch_size, max(pages_needed), dtype=torch.int32)
    for i, (length, num_pages) in enumerate(zip(cache_lens, pages_needed)):
        pages = torch.tensor([free_pages.pop() for _ in range(num_pages)])
        block_table[i, :num_pages] = pages
        positions = torch.arange(length)
        slots = (pages[positions // PAGE_SIZE] * PAGE_SIZE + positions % PAGE_SIZE).cuda()
        runner.req_to_token_pool.req_to_token[i, :length] = slots.to(runner.req_to_token_pool.req_to_token.dtype)
        values = torch.randn(length, 1, HEAD_DIM, device="cuda")
        kv_slots[slots] = (values / k_scale).to(kv_slots.dtype) if fp8_cache else values.to(kv_slots.dtype)

    layer = sglang_api.RadixAttention(
        num_heads=NUM_HEADS,
        head_dim=HEAD_DIM,
        scaling=SCALE,
        num_kv_heads=1,
        layer_id=0,
        v_head_dim=KV_LORA_RANK,
    )
    if fp8_cache:
        layer.k_scale = torch.tensor(k_scale, dtype=torch.float32, device="cuda")
    q = torch.randn(batch_size * query_len, NUM_HEADS * HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    return SimpleNamespace(
        runner=runner,
        backend=backend,
        layer=layer,
        q=q,
        kv_pages=sglang_api.paged_view(kv_slots, PAGE_SIZE),
        block_table=block_table.cuda(),
        cache_lens=torch.tensor(cache_lens, dtype=torch.int32, device="cuda"),
        query_len=query_len,
    )


def _batch(sglang_api, setup, mode, seq_lens):
    """A ForwardBatch as SGLang's scheduler hands it to the backend (seq_lens as SGLang counts them)."""
    batch_size = len(seq_lens)
    num_tokens = batch_size * setup.query_len
    batch = sglang_api.ForwardBatch(
        forward_mode=mode,
        batch_size=batch_size,
        input_ids=torch.zeros(num_tokens, dtype=torch.int64, device="cuda"),
        req_pool_indices=torch.arange(batch_size, dtype=torch.int32, device="cuda"),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        seq_lens_cpu=torch.tensor(seq_lens, dtype=torch.int32),
        out_cache_loc=torch.zeros(num_tokens, dtype=torch.int64, device="cuda"),
        seq_lens_sum=sum(seq_lens),
        positions=torch.zeros(num_tokens, dtype=torch.int64, device="cuda"),
    )
    setup.runner.kv_index_translator.bind_own_plan(batch)
    return batch


def _forward(setup, batch, q):
    forward = setup.backend.forward_decode if batch.forward_mode.is_decode() else setup.backend.forward_extend
    return forward(q, None, None, setup.layer, batch, save_kv_cache=False)


def _descale_k(setup):
    return setup.layer.k_scale.reshape(1) if setup.kv_pages.dtype == torch.float8_e4m3fn else None


def _expected(setup):
    q = setup.q.view(len(setup.cache_lens), setup.query_len, NUM_HEADS, HEAD_DIM)
    return reference.mla_decode(
        q, setup.kv_pages, setup.block_table, setup.cache_lens, softmax_scale=SCALE, causal=True,
        descale_k=_descale_k(setup),
    )


def _check_output(out, expected_out):
    out = out.view(expected_out.shape).float()
    assert torch.isfinite(out).all()
    relative_error = ((out - expected_out).norm() / expected_out.norm()).item()
    assert relative_error < MAX_RELATIVE_ERROR


# (mode, cache lengths, query tokens per request): page edges, several pages, a one-token cache.
CASES = {
    "decode": ("DECODE", (1, 63, 64, 65, 300, 1000), 1),
    "target_verify": ("TARGET_VERIFY", (2, 64, 130, 700), 2),
}


@pytest.mark.parametrize("cache", ["bf16", "fp8"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_eager_step_matches_reference(sglang_api, case, cache, case_seed):
    mode_name, cache_lens, query_len = CASES[case]
    mode = getattr(sglang_api.ForwardMode, mode_name)
    setup = _build(sglang_api, mode, cache_lens, query_len, case_seed, fp8_cache=cache == "fp8")
    # SGLang's seq_lens include a decode step's new token but not the drafts under verification.
    batch = _batch(sglang_api, setup, mode, [n - (query_len if mode.is_target_verify() else 0) for n in cache_lens])

    with torch.no_grad():
        setup.backend.init_forward_metadata(batch)
        out = _forward(setup, batch, setup.q)
        metadata = setup.backend.forward_metadata
        # The LSE through our API on the backend's own metadata: forward_decode returns it only under DCP.
        _, lse = flash_mla_with_kvcache(
            setup.q.view(len(cache_lens), query_len, NUM_HEADS, HEAD_DIM),
            setup.kv_pages,
            metadata.block_kv_indices,
            metadata.seq_lens_k,
            KV_LORA_RANK,
            metadata.flashmla_metadata,
            metadata.num_splits,
            softmax_scale=SCALE,
            causal=True,
            descale_k=_descale_k(setup),
        )
    expected_out, expected_lse = _expected(setup)
    _check_output(out, expected_out)
    assert (lse - expected_lse).abs().max().item() < MAX_LSE_ERROR


GRAPH_CASES = {  # (mode, cache lengths, query tokens per request)
    "decode": ("DECODE", (1, 65, 500, 1000), 1),
    "target_verify": ("TARGET_VERIFY", (2, 66, 500, 1000), 2),
}


@pytest.mark.parametrize("cache", ["bf16", "fp8"])
@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_cuda_graph_replay_matches_reference(sglang_api, case, cache, case_seed):
    """Captured with SGLang's placeholder lengths, replayed with real ones, as SGLang's graph runner does;
    with an e4m3 pool, replayed again after the layer's k_scale changed in place (the graph reads it)."""
    mode_name, cache_lens, query_len = GRAPH_CASES[case]
    mode = getattr(sglang_api.ForwardMode, mode_name)
    setup = _build(sglang_api, mode, cache_lens, query_len, case_seed, fp8_cache=cache == "fp8")
    backend = setup.backend
    backend.init_cuda_graph_state(max_bs=len(cache_lens), max_num_tokens=len(cache_lens) * query_len)
    placeholder = backend.get_cuda_graph_seq_len_fill_value()
    capture_batch = _batch(sglang_api, setup, mode, [placeholder] * len(cache_lens))
    static_q = torch.zeros_like(setup.q)
    # SGLang's seq_lens include a decode step's new token but not the drafts under verification.
    seq_lens = [n - (query_len if mode.is_target_verify() else 0) for n in cache_lens]

    with torch.no_grad():
        backend.init_forward_metadata_out_graph(capture_batch, in_capture=True)
        _forward(setup, capture_batch, static_q)  # loads the kernels before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            graph_out = _forward(setup, capture_batch, static_q)

        backend.init_forward_metadata_out_graph(_batch(sglang_api, setup, mode, seq_lens))
        static_q.copy_(setup.q)
        scale_changes = (1.0, 1.5) if cache == "fp8" else (1.0,)
        for factor in scale_changes:
            if factor != 1.0:
                setup.layer.k_scale.mul_(factor)
            graph.replay()
            torch.cuda.synchronize()
            _check_output(graph_out, _expected(setup)[0])
