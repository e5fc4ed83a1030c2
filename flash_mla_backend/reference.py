"""Pure-PyTorch MLA decode with the exact semantics of the kernels; the tests' oracle.

Runs on CPU or GPU, in float32, one request at a time. Slow by design: clarity over speed.
"""

import math

import torch

PAGE_SIZE = 64
HEAD_DIM_QK = 576
HEAD_DIM_V = 512
# Scheduler cost of a request beyond its pages: the fixed work of starting one (loading Q,
# writing the output), in units of one page of KV.
FIXED_REQUEST_COST = 5
TILE_SCHEDULER_METADATA_SIZE = 8


def mla_decode(q, k_cache, block_table, cache_seqlens, head_dim_v=HEAD_DIM_V, softmax_scale=None, causal=False,
               descale_q=None, descale_k=None):
    """Returns (out [b, s_q, h_q, head_dim_v] float32, lse [b, h_q, s_q] float32, natural log).

    A query row that sees no cache position (empty request, or causal with s_q > seqlen)
    gets output 0 and lse +inf. FP8 inputs are dequantised first: q * descale_q, k_cache *
    descale_k (float32 tensors of one element, given exactly for the FP8 inputs).
    """
    b, s_q, h_q, d = q.shape
    h_kv = k_cache.shape[2]
    if softmax_scale is None:
        softmax_scale = d ** -0.5
    q = q.float() * _scale_of(q, descale_q, "descale_q")
    k_cache_scale = _scale_of(k_cache, descale_k, "descale_k")
    out = torch.zeros(b, s_q, h_q, head_dim_v, dtype=torch.float32, device=q.device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float32, device=q.device)
    seqlens = cache_seqlens.tolist()
    for i, seqlen in enumerate(seqlens):
        num_pages = math.ceil(seqlen / PAGE_SIZE)
        if seqlen < 0 or num_pages > block_table.shape[1]:
            raise ValueError(f"cache_seqlens[{i}] = {seqlen} does not fit block_table's {block_table.shape[1]} pages")
        if seqlen == 0:
            continue
        kv = k_cache[block_table[i, :num_pages].long()].reshape(num_pages * PAGE_SIZE, h_kv, d)[:seqlen].float()
        kv = kv * k_cache_scale
        # Query heads grouped by the kv head they share: [s_q, h_kv, h_q // h_kv, d].
        q_grouped = q[i].float().reshape(s_q, h_kv, h_q // h_kv, d)
        scores = torch.einsum("sgjd,lgd->gjsl", q_grouped, kv) * softmax_scale
        if causal:
            last_visible = seqlen - s_q + torch.arange(s_q, device=q.device)  # per query row
            hidden = torch.arange(seqlen, device=q.device)[None, :] > last_visible[:, None]
            scores = scores.masked_fill(hidden, -math.inf)
        row_lse = torch.logsumexp(scores, dim=-1)  # [h_kv, h_q // h_kv, s_q]; -inf where nothing is visible
        seen = torch.isfinite(row_lse)
        probs = torch.where(seen[..., None], torch.exp(scores - row_lse[..., None]), 0.0)
        out[i] = torch.einsum("gjsl,lgd->sgjd", probs, kv[..., :head_dim_v]).reshape(s_q, h_q, head_dim_v)
        lse[i] = torch.where(seen, row_lse, math.inf).reshape(h_q, s_q)
    return out, lse


def _scale_of(t, descale, name):
    """The dequantisation factor of `t`: descale for an FP8 tensor, 1 for a 16-bit one."""
    if (t.dtype == torch.float8_e4m3fn) != (descale is not None):
        raise ValueError(f"{name} must be given exactly for a float8_e4m3fn input; the input is {t.dtype}")
    return 1.0 if descale is None else descale.float().reshape(()).item()


def mla_metadata(cache_seqlens, num_sm_parts):
    """The split-KV schedule, as the GPU scheduler computes it (see csrc/scheduler).

    Each request costs its page count plus FIXED_REQUEST_COST units; part p takes the units
    [p * cap, (p + 1) * cap) with cap = ceil(total / num_sm_parts). A part boundary that falls in a
    request's fixed cost moves to the request's start, so every split holds at least one page.

    Returns (tile_scheduler_metadata int32 [num_sm_parts, 8], num_splits int32 [b + 1]); row p is
    (begin_req, end_req inclusive, begin_page, end_page exclusive, first_split_index,
    length_fingerprint, 0, 0), and a part with no work has begin_req > end_req. The fingerprint
    (`length_fingerprint`) lets the decode kernels detect lengths other than these.
    """
    seqlens = cache_seqlens.tolist()
    batch = len(seqlens)
    pages = [math.ceil(max(s, 0) / PAGE_SIZE) for s in seqlens]
    costs = [n + FIXED_REQUEST_COST for n in pages]
    total = sum(costs)
    cap = math.ceil(total / num_sm_parts)

    # boundary p = (request, page, ordinal among the request's interior boundaries)
    boundaries = [(0, 0, 0)] + [(batch, 0, 0)] * num_sm_parts
    splits = [1] * batch
    prefix = 0
    for i, cost in enumerate(costs):
        for p in range(max(1, -(-prefix // cap)), min(num_sm_parts - 1, (prefix + cost - 1) // cap) + 1):
            offset = p * cap - prefix
            page = offset - FIXED_REQUEST_COST if offset > FIXED_REQUEST_COST else 0
            if page > 0:
                splits[i] += 1
            boundaries[p] = (i, page, splits[i] - 1 if page > 0 else 0)
        prefix += cost

    num_splits = [0]
    for n in splits:
        num_splits.append(num_splits[-1] + n)

    metadata = []
    for p in range(num_sm_parts):
        (begin_req, begin_page, ordinal), (end_pos_req, end_pos_page, _) = boundaries[p], boundaries[p + 1]
        if (begin_req, begin_page) >= (end_pos_req, end_pos_page):
            metadata.append([0, -1, 0, 0, 0, 0, 0, 0])
            continue
        if end_pos_page == 0:
            end_req, end_page = end_pos_req - 1, pages[end_pos_req - 1]
        else:
            end_req, end_page = end_pos_req, end_pos_page
        fingerprint = length_fingerprint(seqlens, begin_req, end_req)
        metadata.append([begin_req, end_req, begin_page, end_page, num_splits[begin_req] + ordinal, fingerprint, 0, 0])

    device = cache_seqlens.device
    return (
        torch.tensor(metadata, dtype=torch.int32, device=device).reshape(num_sm_parts, TILE_SCHEDULER_METADATA_SIZE),
        torch.tensor(num_splits, dtype=torch.int32, device=device),
    )


_UINT32 = 0xFFFFFFFF


def length_fingerprint(seqlens, begin_req, end_req):
    """A part's length fingerprint (csrc/common/decode_params.h): the uint32 sum, over requests
    begin_req..end_req, of murmur3's finaliser of each length mixed with its request index; as
    the int32 with those bits."""
    total = 0
    for req in range(begin_req, end_req + 1):
        h = (seqlens[req] & _UINT32) ^ ((req * 0x9E3779B9) & _UINT32)
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & _UINT32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & _UINT32
        h ^= h >> 16
        total = (total + h) & _UINT32
    return total - (1 << 32) if total >= 1 << 31 else total
