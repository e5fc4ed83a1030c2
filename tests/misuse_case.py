"""One misuse case of tests/test_misuse_gpu.py, run in a process of its own so that an illegal
memory access fails that case instead of ending the test run:

    python tests/misuse_case.py KERNEL CACHE MISUSE SEED

Builds a batch of requests long enough to split, breaks one request (VICTIM) in the way MISUSE
names, decodes into a NaN-poisoned output and checks that exactly the requests the misuse
touches are NaN (output and LSE) while every other request matches the reference. Exits 0 when
the case holds; prints what differs otherwise.
"""

import os
import sys

import torch

import flash_mla_backend as fmb
from flash_mla_backend import _plan, reference
from mla_inputs import FP8, make_fp8_problem, make_problem

# Tolerances of tests/test_decode_gpu.py (bf16 inputs and exact e4m3 conversion).
OUT_RTOL = 1e-2
LSE_ATOL = 1e-3
VICTIM = 3
S_Q, H_Q = 2, 32  # 64 query rows per KV head: one 64-row tile, four 16-row tiles
MISUSES = ("block-past-end", "negative-block", "huge-block", "last-block-past-end", "stale-schedule")


def make_case(cache, seed):
    seqlens = torch.randint(700, 3000, (8,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    if cache == "fp8":
        p, _ = make_fp8_problem(seqlens, S_Q, H_Q, 1, "cuda", seed, fp8_q=False, causal=True)
    else:
        p = make_problem(seqlens, S_Q, H_Q, 1, torch.bfloat16, "cuda", seed, causal=True)
    return p


def schedule(p, seqlens):
    return fmb.get_mla_metadata(seqlens, S_Q * H_Q, 1, is_fp8_kvcache=p.k_cache.dtype == FP8)


def break_request(p, misuse):
    """Applies the misuse; returns (metadata, num_splits, the requests expected to give NaN)."""
    num_blocks = p.k_cache.shape[0]
    if misuse == "stale-schedule":
        # The schedule of the lengths before this step, the decode with the victim 200 shorter.
        md, splits = schedule(p, p.cache_seqlens)
        p.cache_seqlens[VICTIM] -= 200
        lengths = p.cache_seqlens.tolist()
        nan = set()
        for begin, end, *_, fingerprint, _, _ in md.tolist():
            if reference.length_fingerprint(lengths, begin, end) != fingerprint:
                nan.update(range(begin, end + 1))
        assert VICTIM in nan
        return md, splits, nan
    # The last case breaks the request's last page, read by the last of its splits (the others are
    # early pages of the first split).
    last_page = (int(p.cache_seqlens[VICTIM]) - 1) // 64
    page = {"block-past-end": 2, "negative-block": 1, "huge-block": 0, "last-block-past-end": last_page}[misuse]
    p.block_table[VICTIM, page] = {"block-past-end": num_blocks, "negative-block": -5, "huge-block": 2**31 - 1,
                                   "last-block-past-end": num_blocks + 7}[misuse]
    md, splits = schedule(p, p.cache_seqlens)
    return md, splits, {VICTIM}


def check_request(p, out, lse, i):
    """Request i against the reference computed on it alone."""
    one = slice(i, i + 1)
    want_out, want_lse = reference.mla_decode(p.q[one], p.k_cache, p.block_table[one], p.cache_seqlens[one], 512,
                                              None, True, descale_k=p.descale_k)
    if out[i].isnan().any() or lse[i].isnan().any():
        return f"request {i}: NaN where the output must be exact"
    err = ((out[one].float() - want_out).norm() / want_out.norm()).item()
    lse_err = (lse[one] - want_lse).abs().max().item()
    if err >= OUT_RTOL or lse_err >= LSE_ATOL:
        return f"request {i}: relative output error {err:.2e}, LSE error {lse_err:.2e}"
    return None


def main(kernel, cache, misuse, seed):
    os.environ[_plan.KERNEL_ENV] = kernel
    p = make_case(cache, seed)
    md, splits, nan_requests = break_request(p, misuse)
    assert int(splits[-1]) > len(splits) - 1, "the batch must split, so that the combine kernel takes part"
    out = torch.full((p.q.shape[0], S_Q, H_Q, 512), float("nan"), dtype=p.q.dtype, device="cuda")
    out, lse = fmb.flash_mla_with_kvcache(p.q, p.k_cache, p.block_table, p.cache_seqlens, 512, md, splits,
                                          causal=True, out=out, descale_k=p.descale_k)
    torch.cuda.synchronize()  # an illegal access surfaces here at the latest, failing the process
    problems = []
    for i in range(p.q.shape[0]):
        if i in nan_requests:
            if not (out[i].isnan().all() and lse[i].isnan().all()):
                problems.append(f"request {i}: expected NaN everywhere (output and LSE)")
        else:
            problems.append(check_request(p, out, lse, i))
    problems = [x for x in problems if x]
    print(f"{kernel} {cache} {misuse}: NaN requests {sorted(nan_requests)}; " + ("; ".join(problems) or "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    kernel_name, cache_name, misuse_name, seed_text = sys.argv[1:]
    sys.exit(main(kernel_name, cache_name, misuse_name, int(seed_text)))
