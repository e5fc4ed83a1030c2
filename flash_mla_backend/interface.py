"""The public API: FlashMLA's explicit-metadata interface over our torch ops.

Every argument is validated here, before any kernel runs, so that bad input raises a Python
exception naming the argument instead of crashing the process or returning a wrong answer.
"""

from typing import Optional, Tuple

import torch

from flash_mla_backend import reference
from flash_mla_backend._ops import ExtensionNotBuiltError, ops
from flash_mla_backend._plan import UnsupportedDeviceError, plan_decode  # noqa: F401  (re-exported)

PAGE_SIZE = reference.PAGE_SIZE
HEAD_DIM_QK = reference.HEAD_DIM_QK
HEAD_DIM_V = reference.HEAD_DIM_V
TILE_SCHEDULER_METADATA_SIZE = reference.TILE_SCHEDULER_METADATA_SIZE
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16)
# An FP8 KV cache (vLLM's "fp8"/"fp8_e4m3", SGLang's float8_e4m3fn): one byte per value and one
# per-tensor float32 scale; q may then be 16-bit, or FP8 with a scale of its own.
FP8_DTYPE = torch.float8_e4m3fn
KV_CACHE_DTYPES = SUPPORTED_DTYPES + (FP8_DTYPE,)


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def _check_tensor(name, t, *, dtypes, ndim, device=None, device_of="q"):
    """device: where `device_of` (the argument named so) is, and so where `name` must be too."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}; got {_describe(t)}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got {_describe(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but {device_of} is on {device}: all inputs must be on one device; "
                         f"got {name} with {_describe(t)}")


def _check_shape(name, t, expected):
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}; got {_describe(t)}")


def _check_vector_loads(name, t):
    # The kernels load and store 16-byte vectors along the head dimension.
    elems = 16 // t.element_size()
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension; got strides {t.stride()}")
    if any(s % elems for s in t.stride()[:-1]) or t.data_ptr() % 16:
        raise ValueError(
            f"{name} must be 16-byte aligned with strides that are multiples of {elems} elements; "
            f"got strides {t.stride()}"
        )


def _check_descale(name, descale, needed, input_name, device):
    if not needed:
        if descale is not None:
            raise ValueError(f"{name} applies to a float8_e4m3fn {input_name} only; {input_name} is not FP8")
        return
    expected = "a float32 tensor of one element (the per-tensor dequantisation scale)"
    if descale is None:
        raise ValueError(f"{name} is required with a float8_e4m3fn {input_name}: {expected}")
    if not isinstance(descale, torch.Tensor) or descale.dtype != torch.float32 or descale.numel() != 1:
        got = _describe(descale) if isinstance(descale, torch.Tensor) else type(descale).__name__
        raise ValueError(f"{name} must be {expected}; got {got}")
    if descale.device != device:
        raise ValueError(f"{name} is on {descale.device} but q is on {device}: all inputs must be on one device")


def check_extension() -> None:
    """Raises ExtensionNotBuiltError, with the reason, when the compiled kernels cannot be used."""
    ops()


def mla_metadata_num_parts(num_q_tokens_per_head_k: int, num_heads_k: int, device,
                           is_fp8_kvcache: bool = False) -> int:
    """Rows of the tile_scheduler_metadata that `get_mla_metadata` returns for these arguments
    (sizes persistent CUDA-graph buffers)."""
    plan = plan_decode(num_q_tokens_per_head_k, num_heads_k, torch.device(device), bool(is_fp8_kvcache))
    return plan.num_sm_parts


def mla_decode_workspace_numel(num_q_tokens_per_head_k: int, num_heads_k: int, device,
                               is_fp8_kvcache: bool = False) -> int:
    """float32 elements of the `workspace` that `flash_mla_with_kvcache` needs for these
    arguments: the split partial outputs and LSEs (fixed by the device and the shape, whatever
    the batch: at most ~35 MB per CTA an SM holds)."""
    plan = plan_decode(num_q_tokens_per_head_k, num_heads_k, torch.device(device), bool(is_fp8_kvcache))
    return _workspace_numel(plan, num_heads_k, num_q_tokens_per_head_k)


def _workspace_numel(plan, num_heads_k, rows_per_kv_head):
    # Split partial rows (csrc/common/decode_params.h, num_accum_rows): every split beyond a
    # request's first starts at one of the num_sm_parts - 1 part boundaries, so at most
    # 2 (num_sm_parts - 1) pieces belong to split requests, whatever the batch.
    accum_rows = 2 * plan.num_sm_parts if plan.num_sm_parts > 1 else 0
    return accum_rows * num_heads_k * rows_per_kv_head * (HEAD_DIM_V + 1)


def get_mla_metadata(
    cache_seqlens: torch.Tensor,
    num_q_tokens_per_head_k: int,
    num_heads_k: int,
    num_heads_q: Optional[int] = None,
    is_fp8_kvcache: bool = False,
    topk: Optional[int] = None,
    *,
    out: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Computes the split-KV schedule for `flash_mla_with_kvcache`.

    cache_seqlens: int32 [batch]. num_q_tokens_per_head_k: s_q * h_q // h_kv. is_fp8_kvcache:
    whether the decode will read a float8_e4m3fn cache (its kernel, and so its schedule, can differ).
    Returns (tile_scheduler_metadata int32 [num_sm_parts, 8], num_splits int32 [batch + 1]).
    On a CUDA tensor this is one kernel on the current stream, with no host synchronisation,
    so it can be captured in a CUDA graph; `out` supplies persistent output buffers.
    """
    _check_tensor("cache_seqlens", cache_seqlens, dtypes=(torch.int32,), ndim=1)
    if cache_seqlens.numel() == 0:
        raise ValueError("cache_seqlens must hold at least one request; got an empty tensor")
    for name, value in (("num_q_tokens_per_head_k", num_q_tokens_per_head_k), ("num_heads_k", num_heads_k)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if num_heads_q is not None and (num_heads_q % num_heads_k or num_heads_q < 1):
        raise ValueError(f"num_heads_q must be a positive multiple of num_heads_k={num_heads_k}; got {num_heads_q}")
    if topk is not None:
        raise ValueError(f"topk: sparse attention is not supported; pass topk=None (got {topk})")
    plan = plan_decode(num_q_tokens_per_head_k, num_heads_k, cache_seqlens.device, bool(is_fp8_kvcache))
    batch = cache_seqlens.shape[0]
    if out is None:
        tile_scheduler_metadata = torch.empty(
            plan.num_sm_parts, TILE_SCHEDULER_METADATA_SIZE, dtype=torch.int32, device=cache_seqlens.device
        )
        num_splits = torch.empty(batch + 1, dtype=torch.int32, device=cache_seqlens.device)
    else:
        tile_scheduler_metadata, num_splits = out
        _check_tensor("out[0] (tile_scheduler_metadata)", tile_scheduler_metadata, dtypes=(torch.int32,), ndim=2,
                      device=cache_seqlens.device, device_of="cache_seqlens")
        _check_shape("out[0] (tile_scheduler_metadata)", tile_scheduler_metadata,
                     (plan.num_sm_parts, TILE_SCHEDULER_METADATA_SIZE))
        _check_tensor("out[1] (num_splits)", num_splits, dtypes=(torch.int32,), ndim=1, device=cache_seqlens.device,
                      device_of="cache_seqlens")
        _check_shape("out[1] (num_splits)", num_splits, (batch + 1,))
        for name, t in (("out[0]", tile_scheduler_metadata), ("out[1]", num_splits)):
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous; got strides {t.stride()}")
    if cache_seqlens.device.type != "cuda":
        for buffer, value in zip((tile_scheduler_metadata, num_splits),
                                 reference.mla_metadata(cache_seqlens, plan.num_sm_parts)):
            buffer.copy_(value)
        return tile_scheduler_metadata, num_splits
    ops().get_mla_metadata(cache_seqlens.contiguous(), tile_scheduler_metadata, num_splits)
    return tile_scheduler_metadata, num_splits


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int,
    tile_scheduler_metadata: torch.Tensor,
    num_splits: torch.Tensor,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: Optional[bool] = None,
    indices: Optional[torch.Tensor] = None,
    *,
    return_softmax_lse: bool = True,
    out: Optional[torch.Tensor] = None,
    descale_q: Optional[torch.Tensor] = None,
    descale_k: Optional[torch.Tensor] = None,
    workspace: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """MLA decode attention over a paged KV cache; FlashMLA's explicit-metadata signature
    (positionally up to `indices`; everything after it is keyword-only).

    q: [b, s_q, h_q, 576] bf16/fp16. k_cache: [num_blocks, 64, h_kv, 576], same dtype; V is its
    first `head_dim_v` (= 512) columns. block_table: int32 [b, max_pages]. cache_seqlens: int32 [b].
    tile_scheduler_metadata, num_splits: from `get_mla_metadata` for the same cache_seqlens (with
    is_fp8_kvcache=True for an FP8 cache). indices: sparse attention, not supported (None).
    FP8 cache: k_cache float8_e4m3fn with descale_k, a float32 tensor of one element (the real
    values are k_cache * descale_k; a tensor, so that a CUDA graph replays with its current value);
    q then is bf16/fp16, or float8_e4m3fn with descale_q likewise. is_fp8_kvcache, when given,
    must agree with k_cache's dtype.
    workspace: float32, at least `mla_decode_workspace_numel(s_q * h_q // h_kv, h_kv, device,
    is_fp8_kvcache)` elements, for the split partials; allocated per call when None. Pass a
    persistent one to keep the allocation out of the step (a server sizes it before its KV cache);
    calls that may run at the same time (other streams) need workspaces of their own.
    Returns (out [b, s_q, h_q, 512] in q's dtype (bf16 for an FP8 q), softmax_lse float32
    [b, h_q, s_q] in natural log, or None when return_softmax_lse is False). Causal with s_q > 1:
    query row i of request b sees cache positions 0 .. cache_seqlens[b] - s_q + i. A query row that
    sees nothing gets 0 and +inf.

    Misuse that cannot be checked without a host synchronisation gives NaN (output and LSE) to
    the requests it touches, never a plausible wrong answer nor a read outside the inputs, and
    the other requests stay exact:
    - cache_seqlens[i] beyond block_table's capacity, or negative: request i;
    - a block id outside [0, num_blocks) among the pages request i reads (its first
      ceil(cache_seqlens[i] / 64) entries): request i;
    - a schedule made from other cache_seqlens: each metadata row carries a fingerprint of the
      lengths of the requests it covers, checked on the device; every request held by a row whose
      lengths changed gets NaN (the changed requests and the neighbours that share a row with
      them). Detected rather than made harmless: recomputing the schedule in every decode would
      add a kernel launch per layer, and a schedule reused across lengths is a caller bug.
    """
    _check_tensor("q", q, dtypes=KV_CACHE_DTYPES, ndim=4)
    device = q.device
    if indices is not None:
        raise ValueError("indices: sparse attention is not supported; pass indices=None")
    batch, s_q, h_q, head_dim = q.shape
    if head_dim != HEAD_DIM_QK:
        raise ValueError(f"q's last dimension must be {HEAD_DIM_QK} (512 latent + 64 rotary); got {_describe(q)}")
    if isinstance(k_cache, torch.Tensor) and k_cache.dtype == torch.uint8:
        raise TypeError(f"k_cache: pass an FP8 cache stored as bytes as k_cache.view(torch.float8_e4m3fn); got "
                        f"{_describe(k_cache)}")
    _check_tensor("k_cache", k_cache, dtypes=(FP8_DTYPE,) if q.dtype == FP8_DTYPE else (q.dtype, FP8_DTYPE), ndim=4,
                  device=device)
    fp8_cache = k_cache.dtype == FP8_DTYPE
    if is_fp8_kvcache is not None and bool(is_fp8_kvcache) != fp8_cache:
        raise ValueError(f"is_fp8_kvcache={is_fp8_kvcache} disagrees with k_cache's dtype {k_cache.dtype}")
    _check_descale("descale_q", descale_q, q.dtype == FP8_DTYPE, "q", device)
    _check_descale("descale_k", descale_k, fp8_cache, "k_cache", device)
    out_dtype = torch.bfloat16 if q.dtype == FP8_DTYPE else q.dtype
    _, page_size, h_kv, k_head_dim = k_cache.shape
    if page_size != PAGE_SIZE:
        raise ValueError(f"k_cache must have page size {PAGE_SIZE} (dimension 1); got {_describe(k_cache)}")
    if k_head_dim != HEAD_DIM_QK:
        raise ValueError(f"k_cache's last dimension must be {HEAD_DIM_QK}; got {_describe(k_cache)}")
    if h_kv < 1 or h_q % h_kv:
        raise ValueError(f"q's head count ({h_q}) must be a multiple of k_cache's ({h_kv})")
    if head_dim_v != HEAD_DIM_V:
        raise ValueError(f"head_dim_v must be {HEAD_DIM_V}; got {head_dim_v!r}")
    _check_tensor("block_table", block_table, dtypes=(torch.int32,), ndim=2, device=device)
    if block_table.shape[0] != batch or block_table.stride(-1) != 1:
        raise ValueError(f"block_table must be [{batch}, max_pages] with a contiguous last dimension; got "
                         f"{_describe(block_table)}, strides {block_table.stride()}")
    _check_tensor("cache_seqlens", cache_seqlens, dtypes=(torch.int32,), ndim=1, device=device)
    _check_shape("cache_seqlens", cache_seqlens, (batch,))
    _check_tensor("tile_scheduler_metadata", tile_scheduler_metadata, dtypes=(torch.int32,), ndim=2, device=device)
    rows_per_kv_head = s_q * h_q // h_kv
    plan = plan_decode(rows_per_kv_head, h_kv, device, fp8_cache)
    _check_shape("tile_scheduler_metadata", tile_scheduler_metadata, (plan.num_sm_parts, TILE_SCHEDULER_METADATA_SIZE))
    _check_tensor("num_splits", num_splits, dtypes=(torch.int32,), ndim=1, device=device)
    _check_shape("num_splits", num_splits, (batch + 1,))
    for name, t in (("q", q), ("k_cache", k_cache)):
        _check_vector_loads(name, t)
    if softmax_scale is None:
        softmax_scale = head_dim ** -0.5
    if out is not None:
        _check_tensor("out", out, dtypes=(out_dtype,), ndim=4, device=device)
        _check_shape("out", out, (batch, s_q, h_q, HEAD_DIM_V))
        _check_vector_loads("out", out)
    workspace_numel = _workspace_numel(plan, h_kv, rows_per_kv_head)
    if workspace is not None:
        _check_workspace(workspace, workspace_numel, device)
    if device.type != "cuda":
        raise ValueError(f"q and the other inputs must be CUDA tensors; got {_describe(q)}")
    if workspace is None:
        workspace = torch.empty(workspace_numel, dtype=torch.float32, device=device)
    if out is None:
        out = torch.empty(batch, s_q, h_q, HEAD_DIM_V, dtype=out_dtype, device=device)
    lse = torch.empty(batch, h_q, s_q, dtype=torch.float32, device=device)
    ops().mla_decode(
        q, k_cache, block_table, cache_seqlens.contiguous(), tile_scheduler_metadata.contiguous(),
        num_splits.contiguous(), float(softmax_scale), bool(causal), plan.kernel, out, lse, workspace, descale_q,
        descale_k,
    )
    return out, (lse if return_softmax_lse else None)


def _check_workspace(workspace, numel, device):
    if not isinstance(workspace, torch.Tensor):
        raise TypeError(f"workspace must be a torch.Tensor, got {type(workspace).__name__}")
    if (workspace.dtype != torch.float32 or workspace.device != device or not workspace.is_contiguous()
            or workspace.numel() < numel or workspace.data_ptr() % 16):
        raise ValueError(f"workspace must be a contiguous, 16-byte aligned float32 tensor on {device} of at least "
                         f"{numel} elements (mla_decode_workspace_numel); got {_describe(workspace)}")
