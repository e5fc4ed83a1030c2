"""Bad input to flash_mla_with_kvcache raises a clear exception naming the argument (CPU: the
checks run before any kernel)."""

import pytest
import torch

import flash_mla_backend as fmb
from mla_inputs import FP8


def valid_args(batch=2, s_q=1, h_q=16, h_kv=1, device="cpu", dtype=torch.bfloat16):
    seqlens = torch.tensor([70, 5][:batch], dtype=torch.int32, device=device)
    md, splits = fmb.get_mla_metadata(seqlens.cpu(), s_q * h_q // h_kv, h_kv)
    return dict(
        q=torch.randn(batch, s_q, h_q, 576, dtype=dtype, device=device),
        k_cache=torch.randn(4, 64, h_kv, 576, dtype=dtype, device=device),
        block_table=torch.tensor([[0, 1], [2, 3]][:batch], dtype=torch.int32, device=device),
        cache_seqlens=seqlens,
        head_dim_v=512,
        tile_scheduler_metadata=md.to(device),
        num_splits=splits.to(device),
    )


CASES = [
    ("q", lambda a: a["q"].float(), TypeError, r"q must have dtype torch.bfloat16 or torch.float16"),
    ("q", lambda a: a["q"][0], ValueError, r"q must have 4 dimensions; got shape \(1, 16, 576\)"),
    ("q", lambda a: a["q"][..., :512], ValueError, r"q's last dimension must be 576"),
    ("q", lambda a: a["q"].transpose(2, 3).contiguous().transpose(2, 3), ValueError,
     "q must be contiguous in its last dimension"),
    ("q", lambda a: torch.empty(2, 1, 16, 580, dtype=torch.bfloat16)[..., 1:577], ValueError,
     "q must be 16-byte aligned"),
    ("k_cache", lambda a: torch.randn(4, 64, 3, 576, dtype=torch.bfloat16), ValueError,
     r"q's head count \(16\) must be a multiple of k_cache's \(3\)"),
    ("k_cache", lambda a: a["k_cache"].half(), TypeError, "k_cache must have dtype torch.bfloat16"),
    ("k_cache", lambda a: torch.randn(8, 32, 1, 576, dtype=torch.bfloat16), ValueError, "k_cache must have page size 64"),
    ("k_cache", lambda a: a["k_cache"][0], ValueError, "k_cache must have 4 dimensions"),
    ("k_cache", lambda a: torch.randn(4, 64, 1, 512, dtype=torch.bfloat16), ValueError,
     "k_cache's last dimension must be 576"),
    ("head_dim_v", lambda a: 576, ValueError, "head_dim_v must be 512; got 576"),
    ("block_table", lambda a: a["block_table"].long(), TypeError, "block_table must have dtype torch.int32"),
    ("block_table", lambda a: a["block_table"][:1], ValueError, r"block_table must be \[2, max_pages\]"),
    ("block_table", lambda a: a["block_table"].t().contiguous().t(), ValueError, "contiguous last dimension"),
    ("cache_seqlens", lambda a: a["cache_seqlens"][:1], ValueError, r"cache_seqlens must have shape \(2,\)"),
    ("cache_seqlens", lambda a: a["cache_seqlens"].float(), TypeError, "cache_seqlens must have dtype torch.int32"),
    ("tile_scheduler_metadata", lambda a: a["tile_scheduler_metadata"][:, :4], ValueError,
     r"tile_scheduler_metadata must have shape \(\d+, 8\)"),
    ("num_splits", lambda a: a["num_splits"][:2], ValueError, r"num_splits must have shape \(3,\)"),
    ("out", lambda a: torch.empty(2, 1, 16, 512, dtype=torch.float16), TypeError, "out must have dtype torch.bfloat16"),
    ("out", lambda a: torch.empty(2, 1, 8, 512, dtype=torch.bfloat16), ValueError,
     r"out must have shape \(2, 1, 16, 512\)"),
    ("q", lambda a: a["q"], ValueError, "must be CUDA tensors"),  # everything else is valid
]


@pytest.mark.parametrize("name, make_bad, error, message", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_argument_is_named(name, make_bad, error, message):
    args = valid_args()
    args[name] = make_bad(args)
    with pytest.raises(error, match=message):
        fmb.flash_mla_with_kvcache(**args)


def valid_fp8_args(fp8_q):
    """An FP8 cache (and q) with their scales, and the schedule made for an FP8 cache."""
    args = valid_args()
    seqlens = args["cache_seqlens"]
    args["tile_scheduler_metadata"], args["num_splits"] = fmb.get_mla_metadata(seqlens, 16, 1, is_fp8_kvcache=True)
    args["k_cache"] = args["k_cache"].to(FP8)
    args["descale_k"] = torch.tensor([0.5])
    if fp8_q:
        args["q"] = args["q"].to(FP8)
        args["descale_q"] = torch.tensor([0.25])
    return args


FP8_CASES = [
    (False, "descale_k", lambda a: None, ValueError, "descale_k is required with a float8_e4m3fn k_cache"),
    (False, "descale_k", lambda a: torch.tensor([0.5], dtype=torch.float64), ValueError,
     "descale_k must be a float32 tensor of one element"),
    (False, "descale_k", lambda a: torch.tensor([0.5, 0.5]), ValueError, "descale_k must be a float32 tensor of one"),
    (False, "descale_k", lambda a: 0.5, ValueError, "descale_k must be a float32 tensor of one element.*got float"),
    (False, "descale_q", lambda a: torch.tensor([0.5]), ValueError,
     "descale_q applies to a float8_e4m3fn q only; q is not FP8"),
    (False, "k_cache", lambda a: a["k_cache"].view(torch.uint8), TypeError,
     r"k_cache: pass an FP8 cache stored as bytes as k_cache.view\(torch.float8_e4m3fn\)"),
    (False, "is_fp8_kvcache", lambda a: False, ValueError, "is_fp8_kvcache=False disagrees with k_cache's dtype"),
    (True, "descale_q", lambda a: None, ValueError, "descale_q is required with a float8_e4m3fn q"),
    (True, "k_cache", lambda a: a["k_cache"].float().bfloat16(), TypeError,
     "k_cache must have dtype torch.float8_e4m3fn"),
    (True, "out", lambda a: torch.empty(2, 1, 16, 512, dtype=torch.float16), TypeError,
     "out must have dtype torch.bfloat16"),  # an FP8 q gives bf16
    (False, "q", lambda a: a["q"], ValueError, "must be CUDA tensors"),  # everything else is valid
    (True, "q", lambda a: a["q"], ValueError, "must be CUDA tensors"),
]


@pytest.mark.parametrize("fp8_q, name, make_bad, error, message", FP8_CASES,
                         ids=[f"{'fp8q' if c[0] else 'bf16q'}-{c[1]}-{i}" for i, c in enumerate(FP8_CASES)])
def test_bad_fp8_argument_is_named(fp8_q, name, make_bad, error, message):
    args = valid_fp8_args(fp8_q)
    args[name] = make_bad(args)
    with pytest.raises(error, match=message):
        fmb.flash_mla_with_kvcache(**args)


def test_bf16_cache_refuses_is_fp8_kvcache():
    with pytest.raises(ValueError, match="is_fp8_kvcache=True disagrees with k_cache's dtype torch.bfloat16"):
        fmb.flash_mla_with_kvcache(**valid_args(), is_fp8_kvcache=True)


def test_non_tensor_argument():
    args = valid_args()
    args["block_table"] = [[0, 1], [2, 3]]
    with pytest.raises(TypeError, match="block_table must be a torch.Tensor, got list"):
        fmb.flash_mla_with_kvcache(**args)


def test_inputs_on_different_devices_name_both_devices():
    args = valid_args()
    args["k_cache"] = args["k_cache"].to("meta")
    with pytest.raises(ValueError, match="k_cache is on meta but q is on cpu: all inputs must be on one device"):
        fmb.flash_mla_with_kvcache(**args)


def test_flashmlas_positional_order():
    # FlashMLA: (q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
    # num_splits, softmax_scale, causal, is_fp8_kvcache, indices).
    args = valid_args()
    positional = [args[k] for k in ("q", "k_cache", "block_table", "cache_seqlens", "head_dim_v",
                                    "tile_scheduler_metadata", "num_splits")]
    with pytest.raises(ValueError, match="is_fp8_kvcache=True disagrees with k_cache's dtype"):
        fmb.flash_mla_with_kvcache(*positional, 0.1, True, True)
    with pytest.raises(ValueError, match="indices: sparse attention is not supported"):
        fmb.flash_mla_with_kvcache(*positional, 0.1, True, False, torch.zeros(2, 1, 64, dtype=torch.int32))
    with pytest.raises(TypeError, match="positional argument"):  # ours beyond FlashMLA's are keyword-only
        fmb.flash_mla_with_kvcache(*positional, 0.1, True, False, None, True)


@pytest.mark.parametrize(
    "make_workspace, message",
    [
        (lambda n: torch.empty(n, dtype=torch.float16), "workspace must be a contiguous, 16-byte aligned float32"),
        (lambda n: torch.empty(n - 1), rf"of at least \d+ elements \(mla_decode_workspace_numel\)"),
        (lambda n: torch.empty(2 * n)[::2], "workspace must be a contiguous"),
        (lambda n: torch.empty(n + 1)[1:], "16-byte aligned"),
        (lambda n: torch.empty(n, device="meta"), "float32 tensor on cpu"),
    ],
    ids=["fp16", "too-small", "strided", "misaligned", "other-device"],
)
def test_bad_workspace_is_named(make_workspace, message):
    args = valid_args(batch=2, h_q=16)
    numel = fmb.mla_decode_workspace_numel(16, 1, "cpu")
    assert numel > 0  # 16 query rows: the nominal H200 plan splits, so partials need room
    with pytest.raises(ValueError, match=message):
        fmb.flash_mla_with_kvcache(**args, workspace=make_workspace(numel))


def test_workspace_size_depends_on_the_plan_not_the_batch():
    # 2 rows per scheduler part (num_sm_parts - 1 boundaries), each [h_kv, rows, 512 + 1] floats.
    parts = fmb.mla_metadata_num_parts(128, 1, "cpu")
    assert fmb.mla_decode_workspace_numel(128, 1, "cpu") == 2 * parts * 128 * 513
    assert fmb.mla_decode_workspace_numel(64, 2, "cpu") == 2 * fmb.mla_metadata_num_parts(64, 2, "cpu") * 2 * 64 * 513


@pytest.mark.gpu
def test_gpu_rejects_cpu_block_table():
    args = valid_args(device="cuda")
    args["block_table"] = args["block_table"].cpu()
    with pytest.raises(ValueError, match="block_table is on cpu but q is on cuda:0"):
        fmb.flash_mla_with_kvcache(**args)
