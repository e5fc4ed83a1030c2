"""The reference against a naive per-row loop in float64 (CPU), and its FP8 semantics."""

import math

import pytest
import torch

from flash_mla_backend import reference
from mla_inputs import make_fp8_problem, make_problem


def naive_decode(q, k_cache, block_table, seqlens, scale, causal):
    b, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    out = torch.zeros(b, s_q, h_q, 512, dtype=torch.float64)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64)
    for i in range(b):
        n = int(seqlens[i])
        for s in range(s_q):
            visible = n - s_q + s + 1 if causal else n
            for h in range(h_q):
                kv_head = h // (h_q // h_kv)
                scores = []
                for pos in range(max(visible, 0)):
                    row = k_cache[block_table[i, pos // 64], pos % 64, kv_head].double()
                    scores.append((q[i, s, h].double() * row).sum() * scale)
                if not scores:
                    continue
                scores = torch.stack(scores)
                m = scores.max()
                weights = torch.exp(scores - m)
                total = weights.sum()
                for pos in range(len(scores)):
                    row = k_cache[block_table[i, pos // 64], pos % 64, kv_head].double()
                    out[i, s, h] += weights[pos] / total * row[:512]
                lse[i, h, s] = m + torch.log(total)
    return out, lse


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("s_q,h_q,h_kv", [(1, 1, 1), (2, 4, 2), (3, 2, 1)])
def test_reference_matches_naive_loop(s_q, h_q, h_kv, causal, case_seed):
    seqlens = torch.tensor([0, 1, 70, 130][: 4], dtype=torch.int32)
    if causal:
        seqlens[1] = 2  # shorter than s_q = 3: its first query row sees nothing
    p = make_problem(seqlens, s_q, h_q, h_kv, torch.float32, "cpu", case_seed, causal=causal)
    scale = 0.07
    out, lse = reference.mla_decode(p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, scale, causal)
    want_out, want_lse = naive_decode(p.q, p.k_cache, p.block_table, seqlens, scale, causal)
    # float32 against float64: the 576-term dot products round at ~1e-6 relative.
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    assert torch.isinf(lse[0]).all() and (out[0] == 0).all(), "an empty request gives 0 and +inf"


def test_reference_rejects_lengths_past_block_table(case_seed):
    p = make_problem(torch.tensor([100], dtype=torch.int32), 1, 1, 1, torch.float32, "cpu", case_seed, extra_pages=0)
    with pytest.raises(ValueError, match="does not fit block_table"):
        reference.mla_decode(p.q, p.k_cache, p.block_table, torch.tensor([200], dtype=torch.int32))


@pytest.mark.parametrize("fp8_q", [False, True])
def test_fp8_inputs_are_dequantised_with_their_scales(fp8_q, case_seed):
    seqlens = torch.tensor([0, 70, 130], dtype=torch.int32)
    p, _ = make_fp8_problem(seqlens, 2, 4, 2, "cpu", case_seed, fp8_q=fp8_q, causal=True)
    out, lse = reference.mla_decode(p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, 0.05, True,
                                    descale_q=p.descale_q, descale_k=p.descale_k)
    q = p.q.double() * p.descale_q.double() if fp8_q else p.q.double()
    want_out, want_lse = naive_decode(q, p.k_cache.double() * p.descale_k.double(), p.block_table, seqlens, 0.05, True)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fp8_q", [False, True])
def test_fp8_accuracy_cost_against_the_bf16_problem(fp8_q, case_seed):
    """e4m3 keeps 3 mantissa bits: each value is off by at most 2^-4 of itself, and the output, a
    weighted mean of such values (and of probabilities from scores made of them), by about that
    relative to its norm. Held to 2^-3; measured values are printed (pytest -s)."""
    seqlens = torch.tensor([200, 1000], dtype=torch.int32)
    p, bf16 = make_fp8_problem(seqlens, 1, 8, 1, "cpu", case_seed, fp8_q=fp8_q)
    out, lse = reference.mla_decode(p.q, p.k_cache, p.block_table, p.cache_seqlens,
                                    descale_q=p.descale_q, descale_k=p.descale_k)
    want_out, want_lse = reference.mla_decode(bf16.q, bf16.k_cache, bf16.block_table, bf16.cache_seqlens)
    err = ((out - want_out).norm() / want_out.norm()).item()
    print(f"fp8 {'q and cache' if fp8_q else 'cache'}: relative output error {err:.3e}, "
          f"max lse error {(lse - want_lse).abs().max().item():.3e}")
    assert 0 < err < 2**-3


def test_reference_requires_scales_exactly_for_fp8_inputs(case_seed):
    p, bf16 = make_fp8_problem(torch.tensor([10], dtype=torch.int32), 1, 1, 1, "cpu", case_seed, fp8_q=False)
    with pytest.raises(ValueError, match="descale_k must be given exactly for a float8_e4m3fn input"):
        reference.mla_decode(p.q, p.k_cache, p.block_table, p.cache_seqlens)
    with pytest.raises(ValueError, match="descale_q must be given exactly for a float8_e4m3fn input"):
        reference.mla_decode(p.q, p.k_cache, p.block_table, p.cache_seqlens, descale_q=p.descale_k,
                             descale_k=p.descale_k)
