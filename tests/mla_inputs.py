"""Random MLA decode problems for the tests: paged caches with shuffled pages and NaN in every
slot that no request may read; FP8 versions of them quantised as vLLM does (per-tensor scale)."""

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch

PAGE = 64
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448


@dataclass
class MlaProblem:
    q: torch.Tensor
    k_cache: torch.Tensor
    block_table: torch.Tensor
    cache_seqlens: torch.Tensor
    causal: bool
    descale_q: Optional[torch.Tensor] = None  # set where q is FP8
    descale_k: Optional[torch.Tensor] = None  # set where k_cache is FP8


def random_seqlens(batch, mean_len, varlen, generator, min_len=0):
    if not varlen:
        return torch.full((batch,), mean_len, dtype=torch.int32)
    lens = torch.normal(float(mean_len), mean_len / 2, (batch,), generator=generator)
    return lens.round().clamp(min=min_len, max=2 * mean_len).to(torch.int32)


def make_problem(seqlens, s_q, h_q, h_kv, dtype, device, seed, causal=False, extra_pages=1):
    """Pages of all requests are drawn in random order from a pool larger than needed; slots past
    each request's length, unused pages and block-table entries past the end hold garbage."""
    g = torch.Generator().manual_seed(seed)
    batch = len(seqlens)
    pages_per_req = [math.ceil(int(n) / PAGE) for n in seqlens]
    max_pages = max(pages_per_req + [1]) + extra_pages
    num_blocks = sum(pages_per_req) + 3
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    # Block-table entries past a request's pages point anywhere, including out of range.
    block_table = torch.randint(-(2**30), 2**30, (batch, max_pages), generator=g, dtype=torch.int32)
    g_dev = torch.Generator(device=device).manual_seed(seed)
    k_cache = torch.randn(num_blocks, PAGE, h_kv, 576, generator=g_dev, device=device, dtype=dtype)
    used = 0
    for i, n in enumerate(seqlens.tolist()):
        pages = pages_per_req[i]
        block_table[i, :pages] = perm[used:used + pages]
        if n % PAGE:
            k_cache[int(perm[used + pages - 1]), n % PAGE:] = float("nan")
        used += pages
    k_cache[perm[used:].long().to(device)] = float("nan")  # pages no request owns
    q = torch.randn(batch, s_q, h_q, 576, generator=g_dev, device=device, dtype=dtype)
    return MlaProblem(
        q=q,
        k_cache=k_cache,
        block_table=block_table.to(device),
        cache_seqlens=seqlens.to(device),
        causal=causal,
    )


def quantize_fp8(t):
    """(t / scale as e4m3, scale as a float32 [1] tensor), scale = amax / 448 over the finite
    values, as vLLM's per-tensor FP8 quantisation; NaN stays NaN."""
    amax = t.float().nan_to_num(0.0, 0.0, 0.0).abs().max().clamp_min(1e-12)
    scale = (amax / FP8_MAX).reshape(1)
    return (t.float() / scale).to(FP8), scale


def make_fp8_problem(seqlens, s_q, h_q, h_kv, device, seed, *, fp8_q, causal=False):
    """(the problem with an FP8 cache, and q FP8 too if fp8_q; the bf16 problem it was quantised
    from). The cache has realistic spread: each of the 576 channels is scaled by a random factor
    in [0.25, 4], as the latent and rotary parts of a real cache differ by channel."""
    p = make_problem(seqlens, s_q, h_q, h_kv, torch.bfloat16, device, seed, causal=causal)
    g = torch.Generator(device=device).manual_seed(seed + 1)
    channel_scale = torch.exp2(torch.rand(576, generator=g, device=device) * 4 - 2)
    p.k_cache = (p.k_cache.float() * channel_scale).to(torch.bfloat16)
    k_cache, descale_k = quantize_fp8(p.k_cache)
    quantized = replace(p, k_cache=k_cache, descale_k=descale_k)
    if fp8_q:
        quantized.q, quantized.descale_q = quantize_fp8(p.q)
    return quantized, p
