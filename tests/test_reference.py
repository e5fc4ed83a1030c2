"""The reference against a naive per-row loop in float64 (CPU)."""

import math

import pytest
import torch

from flash_mla_backend import reference
from mla_inputs import make_problem


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
