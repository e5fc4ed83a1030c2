"""Our metadata builder, driven by vLLM's MLA base class from a real CommonAttentionMetadata, on
the CPU: decode/prefill split, the schedule for each decode query length and per-GPU head count,
and the persistent schedule buffers of full CUDA graphs."""

import pytest

pytest.importorskip("vllm.plugins", reason="vLLM is not installed")

import torch  # noqa: E402

from flash_mla_backend import get_mla_metadata  # noqa: E402
from flash_mla_backend._plan import plan_decode  # noqa: E402

HEADS_PER_GPU = {"TP1": 128, "TP2": 64, "TP4": 32, "TP8": 16}
pytestmark = pytest.mark.usefixtures("needs_extension")


def expected_schedule(seq_lens, query_len, num_heads):
    return get_mla_metadata(seq_lens.cpu(), query_len * num_heads, 1)


def assert_decode_metadata(metadata, batch, num_decodes, query_len, num_heads):
    decode = metadata.decode
    assert metadata.num_decodes == num_decodes
    assert metadata.num_decode_tokens == num_decodes * query_len
    assert decode.query_len == query_len
    assert torch.equal(decode.block_table, batch.block_table_tensor[:num_decodes])
    assert torch.equal(decode.seq_lens, batch.seq_lens[:num_decodes])
    tile_scheduler_metadata, num_splits = expected_schedule(batch.seq_lens[:num_decodes], query_len, num_heads)
    assert torch.equal(decode.tile_scheduler_metadata, tile_scheduler_metadata)
    assert torch.equal(decode.num_splits, num_splits)


@pytest.mark.parametrize("decode_query_len", [1, 2], ids=["decode", "mtp-decode"])
def test_mixed_batch_splits_decodes_from_prefills(make_mla_setup, make_batch, case_seed, decode_query_len):
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=16, device="cpu")
    # Decodes first (vLLM reorders the batch so), then new prompts longer than the reorder
    # threshold. (Prefills with cached context would make vLLM pin host memory: CUDA only.)
    batch, _ = make_batch(
        seq_lens=[700, 65, 130, 200, 300],
        query_lens=[decode_query_len] * 3 + [200, 300],
        device="cpu",
        generator=generator,
    )

    metadata = setup.builder.build(0, batch)

    assert_decode_metadata(metadata, batch, num_decodes=3, query_len=decode_query_len, num_heads=16)
    assert metadata.num_prefills == 2
    assert metadata.prefill is not None  # vLLM's own prefill path takes those


@pytest.mark.parametrize("query_len", [1, 2, 4], ids=["decode", "mtp1", "mtp3"])
@pytest.mark.parametrize("num_heads", HEADS_PER_GPU.values(), ids=HEADS_PER_GPU.keys())
def test_uniform_decode_batch_for_each_tp_head_count(make_mla_setup, make_batch, case_seed, num_heads, query_len):
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=num_heads, device="cpu")
    seq_lens = torch.randint(query_len, 5000, (9,), generator=generator).tolist()
    batch, _ = make_batch(seq_lens, [query_len] * len(seq_lens), device="cpu", generator=generator)

    metadata = setup.builder.build(0, batch)

    assert metadata.num_prefills == 0 and metadata.prefill is None
    assert_decode_metadata(metadata, batch, num_decodes=len(seq_lens), query_len=query_len, num_heads=num_heads)
    num_sm_parts = plan_decode(query_len * num_heads, 1, torch.device("cpu")).num_sm_parts
    assert metadata.decode.tile_scheduler_metadata.shape == (num_sm_parts, 8)


def test_short_uniform_extends_take_the_decode_kernel(make_mla_setup, make_batch, case_seed):
    # Up to the reorder threshold (128 new tokens), uniform requests are decodes (causal).
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=16, device="cpu")
    assert setup.builder.reorder_batch_threshold == 128
    batch, _ = make_batch([400, 1000], [100, 100], device="cpu", generator=generator)

    metadata = setup.builder.build(0, batch)

    assert_decode_metadata(metadata, batch, num_decodes=2, query_len=100, num_heads=16)


@pytest.mark.parametrize("query_len", [1, 2], ids=["decode", "mtp1"])
def test_cuda_graph_padded_batches_reuse_the_persistent_schedule(make_mla_setup, make_batch, case_seed, query_len):
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=32, device="cpu", full_cudagraphs=True, max_num_seqs=16)
    builder = setup.builder
    assert builder.persistent_schedule is not None

    # Capture-time build for a graph of 8 requests, then steps replayed on it (5 real requests
    # padded to 8, then 8 real ones), and a step on a smaller graph (3 real requests padded to 4).
    captured = builder.build_for_cudagraph_capture(
        make_batch([query_len] * 8, [query_len] * 8, device="cpu", generator=generator)[0]
    )
    for seq_lens, num_padding_reqs in [([70, 3000, 64, 129, 2], 3), ([5000] * 8, 0), ([10, 20, 4000], 1)]:
        batch, _ = make_batch(
            seq_lens, [query_len] * len(seq_lens), "cpu", generator, num_padding_reqs=num_padding_reqs
        )
        metadata = builder.build(0, batch)
        decode = metadata.decode
        # The replayed kernel reads the schedule where the capture saw it.
        assert decode.tile_scheduler_metadata.data_ptr() == captured.decode.tile_scheduler_metadata.data_ptr()
        assert decode.num_splits.data_ptr() == captured.decode.num_splits.data_ptr()
        # Padding requests are decodes with seq_len 0 and the null block.
        assert_decode_metadata(metadata, batch, num_decodes=batch.num_reqs, query_len=query_len, num_heads=32)


def test_persistent_schedule_refuses_more_requests_than_max_num_seqs(make_mla_setup, make_batch, case_seed):
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=16, device="cpu", full_cudagraphs=True, max_num_seqs=4)
    batch, _ = make_batch([100] * 5, [1] * 5, device="cpu", generator=generator)
    with pytest.raises(ValueError, match="max_num_seqs"):
        setup.builder.build(0, batch)


@pytest.mark.parametrize("full_cudagraphs", [False, True], ids=["eager", "cudagraph"])
def test_fp8_cache_gets_the_fp8_schedule(make_mla_setup, make_batch, case_seed, full_cudagraphs):
    # The builder plans for the kernel that reads an FP8 cache (on the nominal Hopper device the sm90
    # kernel, whose schedule is the bf16 one since it takes FP8 caches; elsewhere a portable kernel's).
    num_heads = 16
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=num_heads, device="cpu", cache_dtype="fp8", full_cudagraphs=full_cudagraphs)
    assert setup.builder.is_fp8_kvcache
    batch, _ = make_batch([100, 4000, 70], [1, 1, 1], device="cpu", generator=generator)

    metadata = setup.builder.build(0, batch)

    fp8_plan = plan_decode(num_heads, 1, torch.device("cpu"), fp8_cache=True)
    assert metadata.decode.tile_scheduler_metadata.shape == (fp8_plan.num_sm_parts, 8)
