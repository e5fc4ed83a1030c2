"""flash_mla_backend's kernels as a vLLM MLA attention backend (decode only).

vLLM's MLA layer splits each batch into decode requests (at the front) and prefill requests. The
decodes come here: `forward_mqa` gets the absorbed queries (512 latent + 64 rotary values per
head) and the paged latent cache, and returns the 512-wide latent output that vLLM projects back.
Prefill, the cache writes and the projections stay vLLM's own.

The registry loads this module only when the FLASHMLA backend is looked up, so importing vLLM's
MLA machinery here costs nothing at plugin registration.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm.model_executor.layers.attention.mla_attention import (
    MLACommonBackend,
    MLACommonDecodeMetadata,
    MLACommonImpl,
    MLACommonMetadata,
    MLACommonMetadataBuilder,
    QueryLenSupport,
)
from vllm.config import get_current_vllm_config
from vllm.v1.attention.backend import AttentionCGSupport, AttentionType
from vllm.v1.worker.workspace import current_workspace_manager, is_workspace_manager_initialized

from flash_mla_backend.interface import (
    FP8_DTYPE,
    HEAD_DIM_QK,
    HEAD_DIM_V,
    PAGE_SIZE,
    SUPPORTED_DTYPES,
    TILE_SCHEDULER_METADATA_SIZE,
    ExtensionNotBuiltError,
    check_extension,
    flash_mla_with_kvcache,
    get_mla_metadata,
    mla_decode_workspace_numel,
    mla_metadata_num_parts,
)

# MLA decoding is multi-query attention over one shared latent "KV head".
MLA_NUM_KV_HEADS = 1
# vLLM's names for an e4m3 cache with a per-tensor scale (layer._k_scale).
FP8_KV_CACHE_DTYPES = ("fp8", "fp8_e4m3")
# Requests with up to this many query tokens take the decode path (the builder's threshold).
MAX_DECODE_QUERY_LEN = 128


class FlashMLAPluginBackend(MLACommonBackend):
    supported_dtypes: ClassVar[list[torch.dtype]] = list(SUPPORTED_DTYPES)
    # "auto" is the model dtype.
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", "float16", "bfloat16", *FP8_KV_CACHE_DTYPES]

    @staticmethod
    def get_name() -> str:
        return "FLASHMLA"  # the registry member this backend overrides

    @staticmethod
    def get_builder_cls() -> type["FlashMLAPluginMetadataBuilder"]:
        return FlashMLAPluginMetadataBuilder

    @staticmethod
    def get_impl_cls() -> type["FlashMLAPluginImpl"]:
        return FlashMLAPluginImpl

    @staticmethod
    def get_supported_kernel_block_sizes(kv_cache_spec=None) -> list[int]:
        # The kernels read 64-token pages whatever the layer's spec; vLLM sizes its blocks to match.
        return [PAGE_SIZE]

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return [HEAD_DIM_QK]

    @classmethod
    def supports_compute_capability(cls, capability) -> bool:
        # What setup.py compiles: sm_80 code, which every 8.x GPU runs (8.0, 8.6, 8.9), and the
        # Hopper kernels as sm_90a. Newer GPUs would only get the portable kernel's PTX, untested.
        return capability.major == 8 or (capability.major, capability.minor) == (9, 0)

    @classmethod
    def supports_combination(
        cls,
        head_size,
        dtype,
        kv_cache_dtype,
        block_size,
        use_mla,
        has_sink,
        use_sparse,
        use_mm_prefix,
        device_capability,
    ) -> str | None:
        # Veto the backend, with the reason, where the kernels were not built or do not load.
        try:
            check_extension()
        except ExtensionNotBuiltError as error:
            return str(error)
        return None


@dataclass
class FlashMLAPluginDecodeMetadata(MLACommonDecodeMetadata):
    # The split-KV schedule from get_mla_metadata for this batch's seq_lens.
    tile_scheduler_metadata: torch.Tensor  # int32 [num_sm_parts, 8]
    num_splits: torch.Tensor  # int32 [num_decodes + 1]
    # Query tokens of every decode request: 1, or 1 + the speculative (MTP) tokens.
    query_len: int


@dataclass
class FlashMLAPluginMetadata(MLACommonMetadata[FlashMLAPluginDecodeMetadata]):
    pass


class PersistentSchedule:
    """Schedule tensors at fixed addresses, for full CUDA graphs.

    vLLM builds the metadata eagerly before every step and replays the captured attention call,
    which reads the schedule from the addresses it saw at capture time. So every build writes into
    these buffers: the metadata buffer is sized for the largest number of scheduler parts any decode
    query length up to `max_query_len` can need, and handed out as a prefix view, like num_splits.
    """

    def __init__(self, num_decode_heads: int, max_query_len: int, max_num_reqs: int, device: torch.device,
                 is_fp8_kvcache: bool):
        max_parts = max(
            mla_metadata_num_parts(query_len * num_decode_heads, MLA_NUM_KV_HEADS, device, is_fp8_kvcache)
            for query_len in range(1, max_query_len + 1)
        )
        self.tile_scheduler_metadata = torch.zeros(
            max_parts, TILE_SCHEDULER_METADATA_SIZE, dtype=torch.int32, device=device
        )
        self.num_splits = torch.zeros(max_num_reqs + 1, dtype=torch.int32, device=device)

    def views(self, num_sm_parts: int, num_reqs: int) -> tuple[torch.Tensor, torch.Tensor]:
        if num_reqs + 1 > self.num_splits.numel():
            raise ValueError(
                f"num_reqs: a CUDA-graph batch of {num_reqs} decode requests exceeds the "
                f"{self.num_splits.numel() - 1} (max_num_seqs) the persistent schedule was sized for"
            )
        return self.tile_scheduler_metadata[:num_sm_parts], self.num_splits[: num_reqs + 1]


class FlashMLAPluginMetadataBuilder(MLACommonMetadataBuilder[FlashMLAPluginMetadata]):
    # Full CUDA graphs for batches whose requests all have the same query length, which covers
    # plain decoding and speculative (MTP) decoding; mixed batches run piecewise.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH
    # Decode requests may carry several query tokens, all the same number (causal within them).
    query_len_support: ClassVar[QueryLenSupport] = QueryLenSupport.UNIFORM
    # Requests with up to this many new tokens take the decode kernel when they are uniform, as in
    # vLLM's own FlashMLA backend: a short extend is cheaper there than in a separate prefill pass.
    reorder_batch_threshold: int = MAX_DECODE_QUERY_LEN

    def __init__(self, kv_cache_spec, layer_names, vllm_config, device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device, FlashMLAPluginMetadata)
        # With decode context parallelism vLLM gathers the queries of all DCP ranks along the head
        # dimension before forward_mqa, so the kernel sees that many heads.
        self.num_decode_heads = self.num_heads * self.dcp_world_size
        # The kernel, and so the schedule, depends on whether the cache is FP8.
        self.is_fp8_kvcache = vllm_config.cache_config.cache_dtype in FP8_KV_CACHE_DTYPES
        self.persistent_schedule = None
        if self.compilation_config.cudagraph_mode.has_full_cudagraphs():
            self.persistent_schedule = PersistentSchedule(
                self.num_decode_heads,
                self.reorder_batch_threshold,
                vllm_config.scheduler_config.max_num_seqs,
                self.device,
                self.is_fp8_kvcache,
            )

    def _build_decode(
        self,
        *,
        block_table_tensor: torch.Tensor,
        seq_lens_device: torch.Tensor,
        query_start_loc_cpu: torch.Tensor,
        num_decode_tokens: int,
        dcp_tot_seq_lens_device: torch.Tensor | None,
        **unused_build_arguments,  # the others vLLM passes; which ones depends on the release (compat)
    ) -> FlashMLAPluginDecodeMetadata:
        query_lens = query_start_loc_cpu[1:] - query_start_loc_cpu[:-1]
        num_decodes = query_lens.numel()
        # CUDA-graph padding appends requests with no query tokens and seq_len 0 (they get output 0).
        query_len = int(query_lens.max())
        if num_decode_tokens != num_decodes * query_len:
            raise ValueError(
                f"num_decode_tokens: the kernel needs every decode request to have the same number of "
                f"query tokens; got {num_decode_tokens} tokens for {num_decodes} requests, query "
                f"lengths {query_lens.tolist()}"
            )
        rows_per_kv_head = query_len * self.num_decode_heads
        out = None
        if self.persistent_schedule is not None:
            num_sm_parts = mla_metadata_num_parts(
                rows_per_kv_head, MLA_NUM_KV_HEADS, self.device, self.is_fp8_kvcache
            )
            out = self.persistent_schedule.views(num_sm_parts, num_decodes)
        tile_scheduler_metadata, num_splits = get_mla_metadata(
            seq_lens_device, rows_per_kv_head, MLA_NUM_KV_HEADS, is_fp8_kvcache=self.is_fp8_kvcache, out=out
        )
        return FlashMLAPluginDecodeMetadata(
            block_table=block_table_tensor,
            seq_lens=seq_lens_device,
            dcp_tot_seq_lens=dcp_tot_seq_lens_device,
            tile_scheduler_metadata=tile_scheduler_metadata,
            num_splits=num_splits,
            query_len=query_len,
        )


class FlashMLAPluginImpl(MLACommonImpl[FlashMLAPluginMetadata]):
    # The kernels return the softmax LSE (natural log), which decode context parallelism merges.
    can_return_lse_for_decode: bool = True
    supports_dcp: bool = True

    def __init__(
        self,
        num_heads,
        head_size,
        scale,
        num_kv_heads,
        alibi_slopes,
        sliding_window,
        kv_cache_dtype,
        logits_soft_cap,
        attn_type,
        kv_sharing_target_layer_name,
        **mla_args,
    ) -> None:
        unsupported = [
            name
            for name, value in (
                ("alibi_slopes", alibi_slopes),
                ("sliding_window", sliding_window),
                ("logits_soft_cap", logits_soft_cap),
            )
            if value
        ]
        if unsupported:
            raise NotImplementedError(f"FlashMLAPluginImpl does not support {', '.join(unsupported)}")
        if attn_type != AttentionType.DECODER:
            raise NotImplementedError(f"attn_type: FlashMLAPluginImpl runs decoder attention only; got {attn_type!r}")
        super().__init__(
            num_heads,
            head_size,
            scale,
            num_kv_heads,
            alibi_slopes,
            sliding_window,
            kv_cache_dtype,
            logits_soft_cap,
            attn_type,
            kv_sharing_target_layer_name,
            **mla_args,
        )
        # With an FP8 cache, take the decode queries in the model dtype rather than quantised to
        # e4m3: the kernels read q once per request, so this costs no speed, and it spares the
        # queries' rounding (relative output error on random data: ~4% with the cache in e4m3,
        # ~6% with q too; docs/fp8.md).
        self.supports_quant_query_input = False
        # The split partials' workspace for the widest decode step, whatever the batch (about
        # 35 MB at most). Claimed from vLLM's workspace now, while the model is built, so that
        # vLLM's memory profile counts it before sizing the KV cache and no step allocates it.
        # (The decode sees the heads of all DCP ranks; the configured DCP size is read, as the
        # process group may not exist yet.)
        vllm_config = get_current_vllm_config()
        num_decode_heads = num_heads * vllm_config.parallel_config.decode_context_parallel_size
        is_fp8_kvcache = kv_cache_dtype in FP8_KV_CACHE_DTYPES
        self.workspace_numel = max(
            mla_decode_workspace_numel(query_len * num_decode_heads, MLA_NUM_KV_HEADS,
                                       vllm_config.device_config.device, is_fp8_kvcache)
            for query_len in range(1, MAX_DECODE_QUERY_LEN + 1)
        )
        self.reserve_workspace()

    def reserve_workspace(self) -> None:
        """Also vLLM 0.33's hook, called in the memory-profiling run (see compat)."""
        self._decode_workspace()

    def _decode_workspace(self) -> torch.Tensor | None:
        """The workspace, from vLLM's manager (per micro-batch, fixed once vLLM locks it after
        warm-up, so CUDA graphs replay with its address); None where vLLM set up no manager
        (then each call allocates its own)."""
        if not is_workspace_manager_initialized():
            return None
        (workspace,) = current_workspace_manager().get_simultaneous(((self.workspace_numel,), torch.float32))
        return workspace

    def forward_mqa(self, q, kv_c_and_k_pe_cache, attn_metadata, layer):
        """q: (ql_nope [tokens, heads, 512], q_pe [tokens, heads, 64]) or one [tokens, heads, 576]
        tensor (e4m3, scaled by layer._q_scale, if vLLM quantised it); kv_c_and_k_pe_cache:
        [num_blocks, 64, 576], e4m3 scaled by layer._k_scale for an FP8 cache. The decode requests'
        tokens come first and consecutively. Returns (out [tokens, heads, 512], lse [tokens, heads]
        float32 natural log when vLLM asks for it, else None)."""
        decode = attn_metadata.decode
        if decode is None:
            raise ValueError("attn_metadata: forward_mqa needs decode metadata; the batch has no decode requests")
        if isinstance(q, tuple):
            q = torch.cat(q, dim=-1)
        num_tokens, num_heads, _ = q.shape
        num_decodes = attn_metadata.num_decodes
        out, lse = flash_mla_with_kvcache(
            q.reshape(num_decodes, decode.query_len, num_heads, HEAD_DIM_QK),
            kv_c_and_k_pe_cache.unsqueeze(2),  # [num_blocks, 64, 1 KV head, 576]
            decode.block_table,
            decode.seq_lens,
            HEAD_DIM_V,
            decode.tile_scheduler_metadata,
            decode.num_splits,
            softmax_scale=self.scale,
            # Query token i of a request sees the cache up to its own position; no-op for 1 token.
            causal=True,
            return_softmax_lse=self.need_to_return_lse_for_decode,
            # Views of the layer's scale tensors, so CUDA graphs read their current values.
            descale_q=layer._q_scale.reshape(1) if q.dtype == FP8_DTYPE else None,
            descale_k=layer._k_scale.reshape(1) if kv_c_and_k_pe_cache.dtype == FP8_DTYPE else None,
            workspace=self._decode_workspace(),
        )
        out = out.view(num_tokens, num_heads, HEAD_DIM_V)
        if lse is not None:
            lse = lse.transpose(1, 2).reshape(num_tokens, num_heads)  # [b, h, s_q] -> token-major
        return out, lse
