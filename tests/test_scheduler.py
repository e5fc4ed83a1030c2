"""The split-KV schedule: invariants of the reference scheduler (CPU) and the GPU kernel's
agreement with it (GPU)."""

import math

import pytest
import torch

import flash_mla_backend as fmb
from flash_mla_backend import reference

PAGE = reference.PAGE_SIZE


def pieces_from_metadata(metadata, num_splits, seqlens):
    """(request, page_begin, page_end, split_row) for every piece of work the parts hold."""
    pieces = []
    pages = [math.ceil(max(n, 0) / PAGE) for n in seqlens]
    for begin_req, end_req, begin_page, end_page, first_split, *_ in metadata.tolist():
        for req in range(begin_req, end_req + 1):
            lo = begin_page if req == begin_req else 0
            hi = end_page if req == end_req else pages[req]
            split = first_split if req == begin_req else num_splits[req]
            pieces.append((req, lo, hi, split))
    return pieces


def check_schedule(metadata, num_splits, seqlens, num_parts):
    seqlens = seqlens.tolist()
    num_splits = num_splits.tolist()
    assert metadata.shape == (num_parts, 8) and metadata.dtype == torch.int32
    assert len(num_splits) == len(seqlens) + 1 and num_splits[0] == 0
    pieces = pieces_from_metadata(metadata, num_splits, seqlens)
    for req, n in enumerate(seqlens):
        mine = sorted(p for p in pieces if p[0] == req)
        assert len(mine) == num_splits[req + 1] - num_splits[req] >= 1
        # The pieces tile [0, pages) in order, with consecutive split rows, each non-empty if split.
        assert mine[0][1] == 0 and mine[-1][2] == math.ceil(n / PAGE)
        for a, b in zip(mine, mine[1:]):
            assert a[2] == b[1] and a[1] < a[2]
        assert [p[3] for p in mine] == list(range(num_splits[req], num_splits[req + 1]))
    # The partial rows of split requests (accum_row in csrc/common/decode_params.h) are distinct
    # and fit the decode workspace, which holds 2 * num_parts of them (none for one part).
    rows = [2 * (num_splits[req] + s - req) + (s > 0)
            for req in range(len(seqlens)) if num_splits[req + 1] - num_splits[req] > 1
            for s in range(num_splits[req + 1] - num_splits[req])]
    assert len(set(rows)) == len(rows)
    assert all(0 <= r < (2 * num_parts if num_parts > 1 else 0) for r in rows), "partials must fit the workspace"
    for row in metadata.tolist():
        assert row[5] == reference.length_fingerprint(seqlens, row[0], row[1]) and row[6:] == [0, 0]


@pytest.mark.parametrize("num_parts", [1, 2, 7, 66, 132, 264])
@pytest.mark.parametrize("batch", [1, 3, 64, 600])
def test_reference_schedule_covers_every_page_once(batch, num_parts, case_seed):
    g = torch.Generator().manual_seed(case_seed)
    seqlens = torch.randint(0, 9000, (batch,), generator=g, dtype=torch.int32)
    seqlens[torch.randint(0, batch, (max(batch // 4, 1),), generator=g)] = 0
    metadata, num_splits = reference.mla_metadata(seqlens, num_parts)
    check_schedule(metadata, num_splits, seqlens, num_parts)


def test_length_fingerprint_sees_every_change_of_a_parts_lengths(case_seed):
    g = torch.Generator().manual_seed(case_seed)
    seqlens = torch.randint(0, 5000, (40,), generator=g, dtype=torch.int32).tolist()
    base = reference.length_fingerprint(seqlens, 3, 30)
    for req in range(3, 31):
        for delta in (1, -1, 64, 1 << 20):
            changed = list(seqlens)
            changed[req] += delta
            assert reference.length_fingerprint(changed, 3, 30) != base
    # The same lengths moved between requests.
    seqlens[5], seqlens[9] = 100, 200
    swapped = list(seqlens)
    swapped[5], swapped[9] = 200, 100
    assert reference.length_fingerprint(swapped, 3, 30) != reference.length_fingerprint(seqlens, 3, 30)
    assert reference.length_fingerprint(seqlens, 0, -1) == 0  # a part with no work


def test_schedule_balances_long_requests():
    seqlens = torch.full((1,), 131072, dtype=torch.int32)
    metadata, num_splits = reference.mla_metadata(seqlens, 132)
    pages = (metadata[:, 3] - metadata[:, 2])[metadata[:, 1] >= metadata[:, 0]]
    cap = math.ceil((131072 // PAGE + reference.FIXED_REQUEST_COST) / 132)
    # The first part also carries the request's fixed cost; no part gets more than cap pages.
    assert pages.max() == cap and pages[0] == cap - reference.FIXED_REQUEST_COST
    assert num_splits[-1] == len(pages) == math.ceil((131072 // PAGE + reference.FIXED_REQUEST_COST) / cap)


def test_get_mla_metadata_on_cpu_uses_reference():
    seqlens = torch.tensor([5, 0, 4000], dtype=torch.int32)
    md, splits = fmb.get_mla_metadata(seqlens, 16, 1)
    want_md, want_splits = reference.mla_metadata(seqlens, md.shape[0])
    assert torch.equal(md, want_md) and torch.equal(splits, want_splits)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_get_mla_metadata_writes_into_given_buffers(device):
    # On the CPU the reference scheduler fills them; on the GPU the scheduler kernel does.
    seqlens = torch.tensor([300, 0, 77], dtype=torch.int32, device=device)
    md, splits = fmb.get_mla_metadata(seqlens, 128, 1)
    buffers = (torch.full_like(md, -7), torch.full_like(splits, -7))
    result = fmb.get_mla_metadata(seqlens, 128, 1, out=buffers)
    assert result[0] is buffers[0] and result[1] is buffers[1]
    assert torch.equal(buffers[0], md) and torch.equal(buffers[1], splits)
    with pytest.raises(ValueError, match=r"out\[0\] \(tile_scheduler_metadata\) must have shape"):
        fmb.get_mla_metadata(seqlens, 128, 1, out=(torch.zeros(1, 8, dtype=torch.int32, device=device), buffers[1]))
    with pytest.raises(ValueError, match=r"out\[1\] \(num_splits\) must have shape \(4,\)"):
        fmb.get_mla_metadata(seqlens, 128, 1, out=(buffers[0], torch.empty(9, dtype=torch.int32, device=device)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cache_seqlens=torch.zeros(3, dtype=torch.int64)), "cache_seqlens must have dtype torch.int32"),
        (dict(cache_seqlens=torch.zeros(3, 1, dtype=torch.int32)), "cache_seqlens must have 1 dimensions"),
        (dict(cache_seqlens=torch.zeros(0, dtype=torch.int32)), "at least one request"),
        (dict(num_q_tokens_per_head_k=0), "num_q_tokens_per_head_k must be a positive int"),
        (dict(num_heads_k=2, num_heads_q=3), "num_heads_q must be a positive multiple of num_heads_k=2"),
        (dict(topk=2048), "topk: sparse attention is not supported"),
    ],
)
def test_get_mla_metadata_rejects_bad_arguments(kwargs, message):
    args = dict(cache_seqlens=torch.ones(3, dtype=torch.int32), num_q_tokens_per_head_k=16, num_heads_k=1)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=message):
        fmb.get_mla_metadata(**args)


@pytest.mark.gpu
@pytest.mark.parametrize("rows, num_heads_k", [(1, 1), (16, 1), (128, 1), (64, 2), (256, 1)])
@pytest.mark.parametrize("batch", [1, 5, 128, 1500])
def test_gpu_scheduler_matches_reference(batch, rows, num_heads_k, case_seed):
    g = torch.Generator().manual_seed(case_seed)
    seqlens = torch.randint(0, 20000, (batch,), generator=g, dtype=torch.int32)
    seqlens[torch.randint(0, batch, (max(batch // 4, 1),), generator=g)] = 0
    md, splits = fmb.get_mla_metadata(seqlens.cuda(), rows, num_heads_k)
    want_md, want_splits = reference.mla_metadata(seqlens, md.shape[0])
    assert torch.equal(md.cpu(), want_md) and torch.equal(splits.cpu(), want_splits)
    check_schedule(md.cpu(), splits.cpu(), seqlens, md.shape[0])
