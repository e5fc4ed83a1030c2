"""SGLang's FlashMLA attention backend with its decode-shaped steps on our kernels.

Decode (including the multi-step draft backends' steps), target-verify and draft-extend, eager
and in CUDA graphs, go to `get_mla_metadata` / `flash_mla_with_kvcache`. Everything else
(prefill) goes to the FlashInfer MLA backend, as in SGLang's own class, so this subclass never
calls SGLang's FlashMLA kernels. Kept from SGLang: page size 64, the block table built from
`req_to_token` by SGLang's Triton kernel (or copied from its KV index translator), its CUDA-graph
buffers and its metadata container.

Importing this module imports SGLang's FlashMLA backend module (see the plugin's `register()`).
"""

import logging

import torch
import triton
from sglang.kernels.ops.attention.kv_indices import (
    create_flashmla_kv_indices_triton,
    get_num_kv_index_blocks_flashmla,
)
from sglang.srt.layers.attention import flashmla_backend as sglang_flashmla
from sglang.srt.layers.attention.flashinfer_mla_backend import FlashInferMLAAttnBackend
from sglang.srt.mem_cache.layout.paged_view import paged_view
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from sglang.srt.runtime_context import get_parallel

from flash_mla_backend import __version__, flash_mla_with_kvcache, get_mla_metadata
from flash_mla_backend.interface import (
    FP8_DTYPE,
    HEAD_DIM_QK,
    HEAD_DIM_V,
    KV_CACHE_DTYPES,
    PAGE_SIZE,
    TILE_SCHEDULER_METADATA_SIZE,
    mla_metadata_num_parts,
)
from flash_mla_backend.sglang_plugin import DISABLE_ENV

logger = logging.getLogger(__name__)

if sglang_flashmla.PAGE_SIZE != PAGE_SIZE:
    raise ImportError(f"SGLang's FlashMLA page size is {sglang_flashmla.PAGE_SIZE}; our kernels need {PAGE_SIZE}")


def _check_model_is_supported(model_runner) -> None:
    """Raises before SGLang allocates anything if our kernels cannot serve this model's cache."""
    if model_runner.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise NotImplementedError(
            f"flash-mla-backend {__version__} supports KV caches of "
            f"{' or '.join(map(str, KV_CACHE_DTYPES))}, but SGLang is configured with {model_runner.kv_cache_dtype}. "
            f"Use --kv-cache-dtype auto or fp8_e4m3, or set {DISABLE_ENV}=1 to run SGLang's own FlashMLA kernels."
        )
    if model_runner.kv_cache_dtype == FP8_DTYPE and get_parallel().attn_dcp_size > 1:
        # SGLang's own FlashMLA backend refuses this too (at its first decode).
        raise NotImplementedError(
            f"flash-mla-backend {__version__}, like SGLang's FlashMLA, does not support decode context "
            f"parallelism (--dcp-size {get_parallel().attn_dcp_size}) with an FP8 KV cache. Use --kv-cache-dtype "
            f"auto, or a DCP size of 1."
        )
    config = model_runner.model_config
    if (config.kv_lora_rank, config.qk_rope_head_dim) != (HEAD_DIM_V, HEAD_DIM_QK - HEAD_DIM_V):
        raise ValueError(
            f"flash-mla-backend needs MLA with kv_lora_rank {HEAD_DIM_V} and qk_rope_head_dim "
            f"{HEAD_DIM_QK - HEAD_DIM_V} (the DeepSeek-V2/V3 layout); this model has {config.kv_lora_rank} and "
            f"{config.qk_rope_head_dim}"
        )


def _runs_on_our_kernels(forward_mode) -> bool:
    """The steps SGLang's FlashMLA backend serves with its decode kernel; prefill is not one."""
    return forward_mode.is_decode_or_idle() or forward_mode.is_target_verify() or forward_mode.is_draft_extend_v2()


class FlashMLABackendOnOurKernels(sglang_flashmla.FlashMLABackend):
    _announced = False  # the "in use" log line is written once per process

    def __init__(self, model_runner, *args, **kwargs):
        """Takes SGLang's FlashMLABackend arguments; refuses models and caches our kernels lack."""
        _check_model_is_supported(model_runner)
        super().__init__(model_runner, *args, **kwargs)
        # The kernel, and so the schedule, depends on whether the cache is FP8 (e4m3, checked above).
        self.fp8_cache = model_runner.kv_cache_dtype == FP8_DTYPE
        # The cache scale for layers without one, at a fixed address for CUDA graphs.
        self.unit_scale = torch.ones(1, dtype=torch.float32, device=self.device) if self.fp8_cache else None
        # The cache lengths that CUDA graphs read; made by init_cuda_graph_state.
        self.cuda_graph_cache_seqlens = None
        if not FlashMLABackendOnOurKernels._announced:
            FlashMLABackendOnOurKernels._announced = True
            logger.info(
                "flash-mla-backend %s kernels run this FlashMLA attention backend's decode, target-verify and "
                "draft-extend steps (prefill: FlashInfer MLA)",
                __version__,
            )

    # ---- metadata ----

    def init_forward_metadata(self, forward_batch):
        """Eager steps."""
        mode = forward_batch.forward_mode
        if not _runs_on_our_kernels(mode):
            return FlashInferMLAAttnBackend.init_forward_metadata(self, forward_batch)
        bs = forward_batch.batch_size
        if bs == 0:  # an idle data-parallel rank runs no attention
            self.forward_metadata = None
            return
        # The block table's width comes from a host-side bound, so no device sync is needed:
        # the CPU copy of seq_lens when the scheduler sent one, else the context limit.
        seq_lens_cpu = forward_batch.seq_lens_cpu
        longest = seq_lens_cpu.max().item() if seq_lens_cpu is not None else self.max_context_len
        if not mode.is_decode_or_idle():
            longest += self.num_draft_tokens
        self._build_metadata(
            forward_batch,
            cache_seqlens=self._cache_seqlens(forward_batch, in_cuda_graph=False),
            block_table=self._eager_block_kv_indices(bs, triton.cdiv(longest, PAGE_SIZE)),
        )

    def init_forward_metadata_out_graph(self, forward_batch, in_capture=False):
        """CUDA-graph steps: fills the graph's persistent buffers before capture and before each replay."""
        mode = forward_batch.forward_mode
        if not _runs_on_our_kernels(mode):
            return FlashInferMLAAttnBackend.init_forward_metadata_out_graph(self, forward_batch, in_capture=in_capture)
        bs = forward_batch.batch_size
        cache_seqlens = self.cuda_graph_cache_seqlens[:bs]
        cache_seqlens.copy_(self._cache_seqlens(forward_batch, in_cuda_graph=True))
        num_sm_parts = self._num_sm_parts(self._query_len(mode))
        self._build_metadata(
            forward_batch,
            cache_seqlens=cache_seqlens,
            # All columns, unlike SGLang's eager path: our kernel checks each request's length
            # against the table's width, and a captured graph keeps the width seen at capture.
            block_table=self.cuda_graph_kv_indices[:bs],
            metadata_out=(self.cuda_graph_mla_metadata[:num_sm_parts], self.cuda_graph_num_splits[: bs + 1]),
        )

    def init_cuda_graph_state(self, max_bs, max_num_tokens, block_kv_indices=None):
        super().init_cuda_graph_state(max_bs, max_num_tokens, block_kv_indices=block_kv_indices)
        # SGLang sizes the scheduler metadata for its kernels, one part per SM; our schedule
        # may use more parts (several CTAs per SM), so the buffer is sized from our plan.
        query_lens = {1, self.num_draft_tokens} if self.num_draft_tokens else {1}
        self.cuda_graph_mla_metadata = torch.empty(
            (max(map(self._num_sm_parts, query_lens)), TILE_SCHEDULER_METADATA_SIZE),
            dtype=torch.int32,
            device=self.device,
        )
        self.cuda_graph_cache_seqlens = torch.full(
            (max_bs,), self.get_cuda_graph_seq_len_fill_value(), dtype=torch.int32, device=self.device
        )

    def _query_len(self, forward_mode) -> int:
        """Query tokens per request in a step that runs on our kernels."""
        return 1 if forward_mode.is_decode_or_idle() else self.num_draft_tokens

    def _num_sm_parts(self, query_len: int) -> int:
        return mla_metadata_num_parts(query_len * self.num_q_heads, 1, self.req_to_token.device, self.fp8_cache)

    def _cache_seqlens(self, forward_batch, *, in_cuda_graph: bool) -> torch.Tensor:
        """int32 [bs]: the cached tokens each request's queries attend to, this step's included."""
        bs = forward_batch.batch_size
        seq_lens = forward_batch.seq_lens[:bs]
        mode = forward_batch.forward_mode
        if mode.is_target_verify():
            # seq_lens stops before the draft tokens being verified, which are already cached.
            seq_lens = seq_lens + self.num_draft_tokens
        elif mode.is_draft_extend_v2() and not in_cuda_graph:
            # An eager draft-extend batch counts each request's real extend length, but its
            # queries come padded to a window of num_draft_tokens, and the keys span that window.
            # (SGLang's draft-extend CUDA-graph runner puts the window in seq_lens already.)
            seq_lens = seq_lens - forward_batch.extend_seq_lens[:bs] + self.num_draft_tokens
        return seq_lens.to(torch.int32)

    def _build_metadata(self, forward_batch, *, cache_seqlens, block_table, metadata_out=None):
        self._fill_block_table(forward_batch, cache_seqlens, block_table)
        rows_per_kv_head = self._query_len(forward_batch.forward_mode) * self.num_q_heads
        tile_scheduler_metadata, num_splits = get_mla_metadata(
            cache_seqlens, rows_per_kv_head, 1, is_fp8_kvcache=self.fp8_cache, out=metadata_out
        )
        self.forward_metadata = sglang_flashmla.FlashMLADecodeMetadata(
            tile_scheduler_metadata, num_splits, block_table, seq_lens_k=cache_seqlens
        )

    def _fill_block_table(self, forward_batch, cache_seqlens, block_table):
        """Entry [i, j]: the cache page holding request i's tokens [64 j, 64 j + 64), as SGLang builds it."""
        if self.kv_index_translator.reads_are_translated:
            self.kv_index_translator.copy_page_table(forward_batch.kv_loc_plan, out=block_table)
            return
        bs, max_pages = block_table.shape
        create_flashmla_kv_indices_triton[(bs, get_num_kv_index_blocks_flashmla(max_pages, PAGE_SIZE))](
            self.req_to_token,
            forward_batch.req_pool_indices[:bs],
            cache_seqlens,
            None,
            block_table,
            self.req_to_token.stride(0),
            block_table.stride(0),
        )

    # ---- attention ----

    def _cache_scale(self, layer) -> torch.Tensor:
        """float32 [1]: the layer's FP8 cache scale (a view, so CUDA graphs read its current value), or 1."""
        return layer.k_scale.reshape(1).float() if layer.k_scale is not None else self.unit_scale

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        out, lse = self._attend(q, k, v, layer, forward_batch, save_kv_cache)
        # With decode context parallelism SGLang merges the ranks' partial outputs by their LSE.
        return (out, lse) if get_parallel().dcp_enabled else out

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):
        if not _runs_on_our_kernels(forward_batch.forward_mode):
            return FlashInferMLAAttnBackend.forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache)
        out, _ = self._attend(q, k, v, layer, forward_batch, save_kv_cache)
        return out

    def _attend(self, q, k, v, layer, forward_batch, save_kv_cache):
        if k is not None and save_kv_cache:
            self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc.for_batch(forward_batch), k, v)
        metadata = self.forward_metadata
        bs = forward_batch.batch_size
        query_len = self._query_len(forward_batch.forward_mode)
        out, lse = flash_mla_with_kvcache(
            q.view(bs, query_len, layer.tp_q_head_num, layer.head_dim),
            # SGLang's MLA pool: [slots, 1, 576] per layer, paged into [pages, 64, 1, 576].
            paged_view(self.token_to_kv_pool.get_key_buffer(layer.layer_id), PAGE_SIZE),
            metadata.block_kv_indices,
            metadata.seq_lens_k,
            self.kv_lora_rank,
            metadata.flashmla_metadata,
            metadata.num_splits,
            softmax_scale=layer.scaling,
            causal=True,
            # An FP8 cache's scale; q stays in the model dtype (SGLang's own kernels quantise it,
            # which costs accuracy and, in ours, no speed).
            descale_k=self._cache_scale(layer) if self.fp8_cache else None,
        )
        return out.view(-1, layer.tp_q_head_num * layer.v_head_dim), lse
