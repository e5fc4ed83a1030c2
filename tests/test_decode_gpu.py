"""Decode kernels against the float32 reference on the GPU.

Tolerances: bf16 and fp16 inputs are exact in float32, so the scores and LSE differ from the
reference only by float32 accumulation order and the fast exp2/log2 (~1e-6 relative): LSE is held
to 1e-3 absolute. The output is rounded once to the input dtype (2^-9 relative for bf16) and the
probabilities are rounded to it before P.V, so the relative norm error of the output is held to
1e-2, a few times the bf16 unit roundoff (2^-8).

FP8 inputs: the kernels convert e4m3 to bf16/fp16 exactly (tests/test_fp8_conversion.py) and fold
the scales into the score scale and the output, so against the FP8-aware reference the same
tolerances hold. Against the bf16 problem the FP8 data was quantised from, the error is e4m3's
(3 mantissa bits: 2^-4 per value), held to 2^-3 like the reference's own (test_reference.py).
"""

import itertools

import pytest
import torch

import flash_mla_backend as fmb
from flash_mla_backend import _plan, reference
from flash_mla_backend._ops import extension_available
from mla_inputs import FP8, MlaProblem, make_fp8_problem, make_problem, random_seqlens

OUT_RTOL = 1e-2
LSE_ATOL = 1e-3

pytestmark = pytest.mark.gpu


def kernels_for_this_device():
    if not extension_available():
        return []
    names = list(torch.ops.flash_mla_backend.decode_kernels())
    if torch.cuda.is_available():
        dev = _plan._device_properties(torch.device("cuda"))
        names = [n for n in names if _plan._fits(n, dev)]
    return names


KERNELS = kernels_for_this_device()
# Without the extension there are no kernel names: one placeholder that skips, saying why.
NO_EXTENSION = [pytest.param(None, marks=pytest.mark.skip(reason="flash_mla_backend._C is not built"))]


@pytest.fixture(params=KERNELS or NO_EXTENSION)
def kernel(request, monkeypatch):
    monkeypatch.setenv(_plan.KERNEL_ENV, request.param)
    return request.param


def run_decode(p, out=None, softmax_scale=None):
    s_q, h_q, h_kv = p.q.shape[1], p.q.shape[2], p.k_cache.shape[2]
    md, splits = fmb.get_mla_metadata(p.cache_seqlens, s_q * h_q // h_kv, h_kv,
                                      is_fp8_kvcache=p.k_cache.dtype == FP8)
    if out is None:
        # Poisoned, so that an element the kernels never write shows up as NaN.
        out_dtype = torch.bfloat16 if p.q.dtype == FP8 else p.q.dtype
        out = torch.full((p.q.shape[0], s_q, h_q, 512), float("nan"), dtype=out_dtype, device=p.q.device)
    return fmb.flash_mla_with_kvcache(
        p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, md, splits, softmax_scale, p.causal, out=out,
        descale_q=p.descale_q, descale_k=p.descale_k,
    )


def assert_matches_reference(p, out, lse, softmax_scale=None):
    want_out, want_lse = reference.mla_decode(p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, softmax_scale,
                                              p.causal, descale_q=p.descale_q, descale_k=p.descale_k)
    assert not out.isnan().any() and not lse.isnan().any(), "an output element was not written"
    err = ((out.float() - want_out).norm() / want_out.norm().clamp_min(1e-12)).item()
    assert err < OUT_RTOL, f"relative output error {err:.2e}"
    unseen = torch.isinf(want_lse)
    assert torch.equal(torch.isposinf(lse), unseen), "rows that see no key must have lse +inf"
    assert (out.transpose(1, 2)[unseen] == 0).all(), "rows that see no key must be 0"
    if (~unseen).any():
        lse_err = (lse[~unseen] - want_lse[~unseen]).abs().max().item()
        assert lse_err < LSE_ATOL, f"lse error {lse_err:.2e}"


def sweep_cases():
    for idx, (b, s_q, s_k, h_q, causal) in enumerate(
        itertools.product([1, 2, 6, 64], [1, 2, 4], [20, 140, 4096], [1, 16, 64, 128], [False, True])
    ):
        h_kv = 2 if h_q % 2 == 0 and idx % 3 == 0 else 1
        varlen = idx % 2 == 0
        dtype = torch.bfloat16 if idx % 4 < 2 else torch.float16
        yield pytest.param(b, s_q, s_k, h_q, h_kv, varlen, causal, dtype,
                           id=f"b{b}-sq{s_q}-sk{s_k}-hq{h_q}-hkv{h_kv}-{'var' if varlen else 'fix'}-"
                              f"{'causal' if causal else 'full'}-{str(dtype)[6:]}")


@pytest.mark.parametrize("b, s_q, s_k, h_q, h_kv, varlen, causal, dtype", list(sweep_cases()))
def test_decode_sweep(kernel, b, s_q, s_k, h_q, h_kv, varlen, causal, dtype, case_seed):
    g = torch.Generator().manual_seed(case_seed)
    seqlens = random_seqlens(b, s_k, varlen, g)
    if b >= 6:
        seqlens[1] = 0  # an empty request among the others
    p = make_problem(seqlens, s_q, h_q, h_kv, dtype, "cuda", case_seed, causal=causal)
    out, lse = run_decode(p)
    assert_matches_reference(p, out, lse)


def test_long_single_request_is_split_and_combined(kernel, case_seed):
    p = make_problem(torch.tensor([50000], dtype=torch.int32), 2, 16, 1, torch.bfloat16, "cuda", case_seed, causal=True)
    md, splits = fmb.get_mla_metadata(p.cache_seqlens, 32, 1)
    assert splits[-1].item() > 1, "the test must exercise the combine kernel"
    out, lse = run_decode(p)
    assert_matches_reference(p, out, lse)


def test_custom_scale_strided_q_and_out(kernel, case_seed):
    seqlens = torch.tensor([300, 65, 1], dtype=torch.int32)
    p = make_problem(seqlens, 2, 32, 1, torch.bfloat16, "cuda", case_seed)
    # q as a slice of a wider buffer (as engines pass it) and out as a view with padding.
    wide = torch.randn(3, 2, 40, 576, dtype=torch.bfloat16, device="cuda")
    wide[:, :, 4:36] = p.q
    p.q = wide[:, :, 4:36]
    out_buffer = torch.full((3, 2, 32, 520), float("nan"), dtype=torch.bfloat16, device="cuda")
    out, lse = run_decode(p, out=out_buffer[..., :512], softmax_scale=0.05)
    assert out.data_ptr() == out_buffer.data_ptr()
    assert_matches_reference(p, out, lse, softmax_scale=0.05)
    assert out_buffer[..., 512:].isnan().all(), "nothing written past the output's columns"


def test_length_past_block_table_gives_nan(kernel, case_seed):
    p = make_problem(torch.tensor([100, 100], dtype=torch.int32), 1, 16, 1, torch.bfloat16, "cuda", case_seed,
                     extra_pages=0)
    p.cache_seqlens[1] = 10_000  # block_table has 2 pages per request
    out, lse = run_decode(p)
    assert out[1].isnan().all() and lse[1].isnan().all()
    assert not out[0].isnan().any() and not lse[0].isnan().any()


def test_return_softmax_lse_false(kernel, case_seed):
    p = make_problem(torch.tensor([10], dtype=torch.int32), 1, 16, 1, torch.bfloat16, "cuda", case_seed)
    md, splits = fmb.get_mla_metadata(p.cache_seqlens, 16, 1)
    out, lse = fmb.flash_mla_with_kvcache(p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, md, splits,
                                          return_softmax_lse=False)
    assert lse is None and out.shape == (1, 1, 16, 512)


def test_cuda_graph_replay_with_new_lengths(kernel, case_seed):
    batch, s_q, h_q = 8, 2, 64
    g = torch.Generator().manual_seed(case_seed)
    capacity = torch.full((batch,), 3000, dtype=torch.int32)
    p = make_problem(capacity, s_q, h_q, 1, torch.bfloat16, "cuda", case_seed, causal=True)
    seqlens = p.cache_seqlens.clone()
    md_buf, splits_buf = fmb.get_mla_metadata(seqlens, s_q * h_q, 1)
    out = torch.empty(batch, s_q, h_q, 512, dtype=torch.bfloat16, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as engines do
        fmb.get_mla_metadata(seqlens, s_q * h_q, 1, out=(md_buf, splits_buf))
        fmb.flash_mla_with_kvcache(p.q, p.k_cache, p.block_table, seqlens, 512, md_buf, splits_buf, causal=True, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fmb.get_mla_metadata(seqlens, s_q * h_q, 1, out=(md_buf, splits_buf))
        _, lse = fmb.flash_mla_with_kvcache(p.q, p.k_cache, p.block_table, seqlens, 512, md_buf, splits_buf,
                                            causal=True, out=out)
    for _ in range(3):
        new_lengths = torch.randint(0, 3001, (batch,), generator=g, dtype=torch.int32)
        seqlens.copy_(new_lengths)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        now = MlaProblem(p.q, p.k_cache, p.block_table, new_lengths.cuda(), causal=True)
        assert_matches_reference(now, out, lse)


# ---- FP8 caches ----

FP8_KERNELS = [k for k in KERNELS if _plan.kernel_info(k).takes_fp8_cache]


@pytest.fixture(params=FP8_KERNELS or NO_EXTENSION)
def fp8_kernel(request, monkeypatch):
    monkeypatch.setenv(_plan.KERNEL_ENV, request.param)
    return request.param


def fp8_sweep_cases():
    for idx, (b, s_q, s_k, h_q, q_dtype) in enumerate(
        itertools.product([1, 6, 64], [1, 4], [20, 140, 4096], [16, 128], ["fp8", "bf16", "fp16"])
    ):
        causal = idx % 2 == 1
        yield pytest.param(b, s_q, s_k, h_q, causal, q_dtype,
                           id=f"b{b}-sq{s_q}-sk{s_k}-hq{h_q}-{'causal' if causal else 'full'}-q{q_dtype}")


def fp8_problem(seqlens, s_q, h_q, q_dtype, seed, causal=False):
    p, bf16 = make_fp8_problem(seqlens, s_q, h_q, 1, "cuda", seed, fp8_q=q_dtype == "fp8", causal=causal)
    if q_dtype == "fp16":
        p.q = p.q.half()
    return p, bf16


@pytest.mark.parametrize("b, s_q, s_k, h_q, causal, q_dtype", list(fp8_sweep_cases()))
def test_fp8_decode_sweep(fp8_kernel, b, s_q, s_k, h_q, causal, q_dtype, case_seed):
    g = torch.Generator().manual_seed(case_seed)
    seqlens = random_seqlens(b, s_k, varlen=b > 1, generator=g)
    if b >= 6:
        seqlens[1] = 0  # an empty request among the others
    p, _ = fp8_problem(seqlens, s_q, h_q, q_dtype, case_seed, causal)
    out, lse = run_decode(p)
    assert out.dtype == (torch.float16 if q_dtype == "fp16" else torch.bfloat16)
    assert_matches_reference(p, out, lse)


def test_fp8_accuracy_cost_against_bf16(fp8_kernel, case_seed):
    """What an FP8 cache costs in accuracy, against the bf16 data it was quantised from (printed)."""
    seqlens = torch.tensor([3000, 700, 64], dtype=torch.int32)
    for q_dtype in ("bf16", "fp8"):
        p, bf16 = fp8_problem(seqlens, 1, 128, q_dtype, case_seed)
        out, lse = run_decode(p)
        want_out, want_lse = reference.mla_decode(bf16.q, bf16.k_cache, bf16.block_table, bf16.cache_seqlens)
        err = ((out.float() - want_out).norm() / want_out.norm()).item()
        print(f"{fp8_kernel} fp8 cache, q {q_dtype}: relative output error vs bf16 {err:.3e}, "
              f"max lse error {(lse - want_lse).abs().max().item():.3e}")
        assert err < 2**-3


def test_fp8_cuda_graph_replay_with_changed_scale(fp8_kernel, case_seed):
    batch, s_q, h_q = 4, 2, 32
    p, _ = fp8_problem(torch.full((batch,), 1500, dtype=torch.int32), s_q, h_q, "bf16", case_seed, causal=True)
    descale_k = p.descale_k.clone()
    md_buf, splits_buf = fmb.get_mla_metadata(p.cache_seqlens, s_q * h_q, 1, is_fp8_kvcache=True)
    out = torch.empty(batch, s_q, h_q, 512, dtype=torch.bfloat16, device="cuda")

    def step():
        fmb.get_mla_metadata(p.cache_seqlens, s_q * h_q, 1, is_fp8_kvcache=True, out=(md_buf, splits_buf))
        return fmb.flash_mla_with_kvcache(p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, md_buf, splits_buf,
                                          causal=True, out=out, descale_k=descale_k)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the graph, as engines do
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _, lse = step()
    for factor in (1.0, 0.5, 3.0):
        descale_k.copy_(p.descale_k * factor)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        now = MlaProblem(p.q, p.k_cache, p.block_table, p.cache_seqlens, causal=True, descale_k=descale_k.clone())
        assert_matches_reference(now, out, lse)
