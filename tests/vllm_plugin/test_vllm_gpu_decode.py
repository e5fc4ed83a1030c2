"""On a CUDA GPU: our builder and forward_mqa on real vLLM metadata objects, against
flash_mla_backend.reference.mla_decode, including a CUDA-graph capture and replay.

Written for the GPU host, whose vLLM is the Python-only 0.26.0 bundle (vLLM's compiled kernels
are absent there), so the test writes the paged KV cache itself by plain indexing, the way
vLLM's concat_and_cache_mla lays it out: [num_blocks, 64, 576], latent then rotary values.
Pages and slots that no request may read hold NaN.

Tolerances (bf16 inputs, float32 reference on the same inputs): output relative error
||out - ref|| / ||ref|| < 1e-2, LSE absolute error < 1e-3.
"""

import pytest

pytest.importorskip("vllm.plugins", reason="vLLM is not installed")

import dataclasses  # noqa: E402

import torch  # noqa: E402

from flash_mla_backend.interface import HEAD_DIM_QK, HEAD_DIM_V, PAGE_SIZE  # noqa: E402
from flash_mla_backend.reference import mla_decode  # noqa: E402
from mla_inputs import FP8, quantize_fp8  # noqa: E402

OUT_RELATIVE_TOLERANCE = 1e-2
LSE_ABSOLUTE_TOLERANCE = 1e-3
ROPE_DIM = HEAD_DIM_QK - HEAD_DIM_V
QK_NOPE_DIM = 128  # DeepSeek's; vLLM slices q_pe out of the [tokens, heads, 128 + 64] query

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("needs_extension")]


def write_kv_cache(kv_cache, batch, num_real_reqs, generator):
    """Fills every cached token of the real requests with fresh random values, all else NaN."""
    kv_cache.fill_(float("nan"))
    seq_lens = batch.seq_lens_cpu_upper_bound[:num_real_reqs].tolist()
    block_table = batch.block_table_tensor.cpu()
    for i, seq_len in enumerate(seq_lens):
        positions = torch.arange(seq_len)
        blocks = block_table[i, positions // PAGE_SIZE].long()
        values = torch.randn(seq_len, HEAD_DIM_QK, generator=generator).to(kv_cache.dtype)
        kv_cache[blocks.to(kv_cache.device), (positions % PAGE_SIZE).to(kv_cache.device)] = values.to(kv_cache.device)


def random_queries(num_tokens, num_heads, generator, device):
    """(ql_nope, q_pe) as vLLM's MLA layer hands them over: ql_nope contiguous [tokens, heads, 512],
    q_pe a strided slice of the [tokens, heads, 192] projected query."""
    ql_nope = torch.randn(num_tokens, num_heads, HEAD_DIM_V, generator=generator)
    projected = torch.randn(num_tokens, num_heads, QK_NOPE_DIM + ROPE_DIM, generator=generator)
    ql_nope = ql_nope.to(device=device, dtype=torch.bfloat16)
    return ql_nope, projected.to(device=device, dtype=torch.bfloat16)[..., QK_NOPE_DIM:]


def assert_matches_reference(out, lse, q, kv_cache, batch, num_real_reqs, query_len, scale, descale_q=None,
                             descale_k=None):
    """Compares the real requests' rows of forward_mqa's output with the float32 reference (FP8
    inputs dequantised with their scales)."""
    num_heads = q.shape[1]
    num_tokens = num_real_reqs * query_len
    ref_out, ref_lse = mla_decode(
        q[:num_tokens].reshape(num_real_reqs, query_len, num_heads, HEAD_DIM_QK),
        kv_cache.unsqueeze(2),
        batch.block_table_tensor[:num_real_reqs],
        batch.seq_lens[:num_real_reqs],
        HEAD_DIM_V,
        scale,
        causal=True,
        descale_q=descale_q,
        descale_k=descale_k,
    )
    ref_out = ref_out.reshape(num_tokens, num_heads, HEAD_DIM_V)
    assert out.dtype == torch.bfloat16 and out.shape[1:] == (num_heads, HEAD_DIM_V)
    relative_error = (out[:num_tokens].float() - ref_out).norm() / ref_out.norm()
    assert relative_error < OUT_RELATIVE_TOLERANCE, f"output relative error {relative_error:.2e}"
    ref_lse = ref_lse.transpose(1, 2).reshape(num_tokens, num_heads)  # vLLM wants [tokens, heads]
    assert lse.dtype == torch.float32 and lse.shape[1:] == (num_heads,)
    lse_error = (lse[:num_tokens] - ref_lse).abs().max()
    assert lse_error < LSE_ABSOLUTE_TOLERANCE, f"LSE absolute error {lse_error:.2e}"


@pytest.mark.parametrize("q_form", ["tuple", "concatenated"])
@pytest.mark.parametrize("query_len", [1, 4], ids=["decode", "mtp3"])
@pytest.mark.parametrize("num_heads", [128, 16], ids=["TP1", "TP8"])
def test_forward_mqa_matches_reference(make_mla_setup, make_batch, vllm_workspace, case_seed, num_heads, query_len,
                                      q_form):
    generator = torch.Generator().manual_seed(case_seed)
    vllm_workspace("cuda")  # as in vLLM's worker: the split partials go to its workspace
    setup = make_mla_setup(num_heads=num_heads, device="cuda")
    impl = setup.make_impl()
    impl.need_to_return_lse_for_decode = True  # what decode context parallelism sets
    seq_lens = [query_len, 63, 64, 65, 1000] + torch.randint(query_len, 4000, (3,), generator=generator).tolist()
    batch, num_blocks = make_batch(seq_lens, [query_len] * len(seq_lens), "cuda", generator)
    kv_cache = torch.empty(num_blocks, PAGE_SIZE, HEAD_DIM_QK, dtype=torch.bfloat16, device="cuda")
    write_kv_cache(kv_cache, batch, len(seq_lens), generator)
    ql_nope, q_pe = random_queries(batch.num_actual_tokens, num_heads, generator, "cuda")
    q = (ql_nope, q_pe) if q_form == "tuple" else torch.cat((ql_nope, q_pe), dim=-1)

    metadata = setup.builder.build(0, batch)
    out, lse = impl.forward_mqa(q, kv_cache, metadata, setup.layer)

    assert out.shape == (batch.num_actual_tokens, num_heads, HEAD_DIM_V)
    full_q = torch.cat((ql_nope, q_pe), dim=-1)
    assert_matches_reference(out, lse, full_q, kv_cache, batch, len(seq_lens), query_len, setup.layer.scale)


@pytest.mark.parametrize("query_form", ["bf16-tuple", "fp8-concatenated"])
def test_forward_mqa_with_fp8_cache(make_mla_setup, make_batch, case_seed, query_form):
    """--kv-cache-dtype fp8: the cache is e4m3 scaled by layer._k_scale; our impl asks vLLM for
    model-dtype queries, and also takes e4m3 ones scaled by layer._q_scale. The kernels convert
    e4m3 exactly, so the bf16 tolerances above hold against the dequantising reference."""
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=16, device="cuda", cache_dtype="fp8")
    impl = setup.make_impl()
    assert impl.supports_quant_query_input is False
    impl.need_to_return_lse_for_decode = True
    seq_lens = [1, 63, 64, 65, 1000, 3000]
    batch, num_blocks = make_batch(seq_lens, [1] * len(seq_lens), "cuda", generator)
    bf16_cache = torch.empty(num_blocks, PAGE_SIZE, HEAD_DIM_QK, dtype=torch.bfloat16, device="cuda")
    write_kv_cache(bf16_cache, batch, len(seq_lens), generator)
    layer = setup.layer
    kv_cache, k_scale = quantize_fp8(bf16_cache)  # NaN stays NaN
    layer._k_scale.copy_(k_scale.reshape(()))
    q = torch.cat(random_queries(len(seq_lens), 16, generator, "cuda"), dim=-1)
    if query_form == "fp8-concatenated":
        q, q_scale = quantize_fp8(q)
        layer._q_scale.copy_(q_scale.reshape(()))

    metadata = setup.builder.build(0, batch)
    out, lse = impl.forward_mqa(q if q.dtype == FP8 else (q[..., :HEAD_DIM_V], q[..., HEAD_DIM_V:]), kv_cache,
                                metadata, layer)

    assert_matches_reference(out, lse, q, kv_cache, batch, len(seq_lens), 1, layer.scale,
                             descale_q=layer._q_scale.reshape(1) if q.dtype == FP8 else None,
                             descale_k=layer._k_scale.reshape(1))


def test_forward_mqa_returns_no_lse_unless_asked(make_mla_setup, make_batch, case_seed):
    generator = torch.Generator().manual_seed(case_seed)
    setup = make_mla_setup(num_heads=16, device="cuda")
    impl = setup.make_impl()
    batch, num_blocks = make_batch([300, 5], [1, 1], "cuda", generator)
    kv_cache = torch.empty(num_blocks, PAGE_SIZE, HEAD_DIM_QK, dtype=torch.bfloat16, device="cuda")
    write_kv_cache(kv_cache, batch, 2, generator)

    out, lse = impl.forward_mqa(random_queries(2, 16, generator, "cuda"), kv_cache, setup.builder.build(0, batch), None)

    assert lse is None and out.shape == (2, 16, HEAD_DIM_V) and out.isfinite().all()


class PersistentBatchInputs:
    """The model runner's fixed-address inputs: each step's seq_lens and block table are copied
    into the same buffers, and the metadata views them, as vLLM does for CUDA-graph replay."""

    def __init__(self, max_reqs, block_table_width):
        self.seq_lens = torch.zeros(max_reqs, dtype=torch.int32, device="cuda")
        self.block_table = torch.zeros(max_reqs, block_table_width, dtype=torch.int32, device="cuda")

    def stage(self, batch):
        num_reqs = batch.num_reqs
        self.seq_lens[:num_reqs].copy_(batch.seq_lens)
        self.block_table[:num_reqs].copy_(batch.block_table_tensor)
        return dataclasses.replace(
            batch, seq_lens=self.seq_lens[:num_reqs], block_table_tensor=self.block_table[:num_reqs]
        )


def test_cuda_graph_capture_and_replay_of_forward_mqa(make_mla_setup, make_batch, case_seed):
    generator = torch.Generator().manual_seed(case_seed)
    num_heads, query_len, num_reqs, num_blocks, width = 32, 2, 4, 256, 48
    setup = make_mla_setup(num_heads=num_heads, device="cuda", full_cudagraphs=True, max_num_seqs=8)
    impl = setup.make_impl()
    impl.need_to_return_lse_for_decode = True
    inputs = PersistentBatchInputs(max_reqs=8, block_table_width=width)
    kv_cache = torch.empty(num_blocks, PAGE_SIZE, HEAD_DIM_QK, dtype=torch.bfloat16, device="cuda")
    ql_nope, q_pe = random_queries(num_reqs * query_len, num_heads, generator, "cuda")

    def step(seq_lens):
        """Stages a batch of len(seq_lens) real requests padded to num_reqs, with fresh data."""
        batch, _ = make_batch(
            seq_lens,
            [query_len] * len(seq_lens),
            "cuda",
            generator,
            num_padding_reqs=num_reqs - len(seq_lens),
            num_blocks=num_blocks,
            block_table_width=width,
        )
        batch = inputs.stage(batch)
        write_kv_cache(kv_cache, batch, len(seq_lens), generator)
        new_ql_nope, new_q_pe = random_queries(num_reqs * query_len, num_heads, generator, "cuda")
        ql_nope.copy_(new_ql_nope)
        q_pe.copy_(new_q_pe)
        return batch

    captured_batch = step([64, 1500, 200, 2])
    captured_metadata = setup.builder.build_for_cudagraph_capture(captured_batch)
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):  # warm-up outside the graph, as torch recommends
        impl.forward_mqa((ql_nope, q_pe), kv_cache, captured_metadata, setup.layer)
    torch.cuda.current_stream().wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_lse = impl.forward_mqa((ql_nope, q_pe), kv_cache, captured_metadata, setup.layer)

    for seq_lens in ([3000, 7, 129], [2, 2, 2, 2], [2900, 64, 65, 1]):
        seq_lens = [max(n, query_len) for n in seq_lens]
        batch = step(seq_lens)
        metadata = setup.builder.build(0, batch)  # eager, before the replay, as vLLM does
        for name in ("tile_scheduler_metadata", "num_splits", "seq_lens", "block_table"):
            assert getattr(metadata.decode, name).data_ptr() == getattr(captured_metadata.decode, name).data_ptr()
        graph.replay()
        torch.cuda.synchronize()
        q = torch.cat((ql_nope, q_pe), dim=-1)
        assert_matches_reference(graph_out, graph_lse, q, kv_cache, batch, len(seq_lens), query_len, setup.layer.scale)


def test_decode_steps_allocate_only_their_outputs(make_mla_setup, make_batch, vllm_workspace, case_seed):
    """With vLLM's workspace manager (set up before the model, locked after warm-up), a decode step
    allocates its output and LSE and nothing else: the split partials live in the workspace the
    impl claimed at build time, at a fixed address."""
    generator = torch.Generator().manual_seed(case_seed)
    workspace = vllm_workspace("cuda")
    setup = make_mla_setup(num_heads=128, device="cuda")
    impl = setup.make_impl()
    seq_lens = torch.randint(1, 5000, (64,), generator=generator).tolist()  # long enough to split
    batch, num_blocks = make_batch(seq_lens, [1] * len(seq_lens), "cuda", generator)
    kv_cache = torch.empty(num_blocks, PAGE_SIZE, HEAD_DIM_QK, dtype=torch.bfloat16, device="cuda")
    write_kv_cache(kv_cache, batch, len(seq_lens), generator)
    ql_nope, q_pe = random_queries(batch.num_actual_tokens, 128, generator, "cuda")
    q = torch.cat((ql_nope, q_pe), dim=-1)
    metadata = setup.builder.build(0, batch)
    assert int(metadata.decode.num_splits[-1]) > len(seq_lens), "the batch must split for the test to mean anything"
    impl.forward_mqa(q, kv_cache, metadata, setup.layer)  # warm-up
    workspace.lock_workspace()
    claimed = impl._decode_workspace().data_ptr()

    torch.cuda.synchronize()
    before = torch.cuda.memory_stats()
    out, lse = impl.forward_mqa(q, kv_cache, metadata, setup.layer)
    torch.cuda.synchronize()
    after = torch.cuda.memory_stats()

    assert lse is None  # vLLM did not ask for it (no decode context parallelism)
    allocations = after["allocation.all.allocated"] - before["allocation.all.allocated"]
    allocated = after["allocated_bytes.all.allocated"] - before["allocated_bytes.all.allocated"]
    outputs = [out.numel() * out.element_size(), len(seq_lens) * 128 * 4]  # out and the kernel's LSE
    assert allocations == len(outputs)
    assert allocated == sum(-(-n // 512) * 512 for n in outputs)  # the caching allocator's 512-byte rounding
    assert impl._decode_workspace().data_ptr() == claimed
