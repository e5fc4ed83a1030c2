"""Checks that the SGLang modules our plugin and tests/sglang_plugin use import from the bundle.

Run with the bundle's site folder on PYTHONPATH (install.sh does). Imports only; creates no CUDA
context. `-v` prints tracebacks. Exit status 1 if any import or attribute is missing.

On a machine without a GPU SGLang skips its CUDA-only imports (sgl_kernel, flashinfer, ...), which
the GPU host does run; `--pretend-cuda` makes torch report one H200 so that those imports run too
(for checking a bundle on a CPU machine; nothing may then touch CUDA, and nothing here does).
"""

import importlib
import sys
import traceback


def pretend_cuda():
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    torch.cuda.get_device_name = lambda device=None: "NVIDIA H200"
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    if torch.version.cuda is None:
        torch.version.cuda = "13.0"


if "--pretend-cuda" in sys.argv:
    pretend_cuda()

CHECKS = [
    ("sglang.srt.plugins", ["load_plugins"]),
    ("sglang.srt.runtime_context", ["get_parallel", "get_context"]),
    ("sglang.srt.model_executor.forward_batch_info", ["ForwardBatch", "ForwardMode"]),
    ("sglang.srt.mem_cache.layout.paged_view", ["paged_view"]),
    ("sglang.srt.mem_cache.memory_pool", ["KVWriteLoc"]),
    ("sglang.kernels.ops.attention.kv_indices",
     ["create_flashmla_kv_indices_triton", "get_num_kv_index_blocks_flashmla"]),
    ("sglang.srt.layers.attention.flashinfer_mla_backend", ["FlashInferMLAAttnBackend"]),
    ("sglang.srt.layers.attention.flashmla_backend", ["FlashMLABackend", "FlashMLADecodeMetadata", "PAGE_SIZE"]),
    ("sglang.srt.layers.attention.attention_registry", ["ATTENTION_BACKENDS"]),
    ("sglang.srt.layers.radix_attention", ["RadixAttention"]),
    ("sglang.test.kits.attention_unittest.attention_methods.mla_attention",
     ["MLAAttentionCase", "MockMLAModelRunner", "TinyMLAModelConfig"]),
    # The kit's runner modes that tests/sglang_plugin/test_sglang_gpu_kit.py drives (they import
    # SGLang's speculative workers, and through them its scheduler).
    ("sglang.test.kits.attention_unittest.runner_modes.cuda_graph_decode_runner", ["run_mla_cuda_graph_decode_case"]),
    ("sglang.test.kits.attention_unittest.runner_modes.speculative_target_verify_runner",
     ["run_mla_eagle_verify_case", "run_mla_eagle_verify_cuda_graph_case"]),
    ("sglang.test.kits.attention_unittest.runner_modes.speculative_draft_extend_runner",
     ["run_mla_draft_extend_v2_cuda_graph_case", "run_mla_eagle_draft_extend_v2_cuda_graph_runner_case"]),
    ("sglang.test.kits.attention_unittest.runner_modes.speculative_draft_runner",
     ["run_mla_eagle_draft_cuda_graph_runner_case"]),
    # Imported inside the EAGLE draft runner cases when they configure their draft runner.
    ("sglang.test.test_utils", ["server_args_variant"]),
    # What tests/sglang_plugin/test_plugin.py uses besides.
    ("sglang.srt.server_args", ["prepare_server_args"]),
    ("sglang.srt.speculative.draft_utils", ["DraftBackendFactory"]),
]

failures = 0
for module_name, names in CHECKS:
    try:
        module = importlib.import_module(module_name)
    except BaseException as error:  # noqa: BLE001 - report every failure, SystemExit included
        failures += 1
        print(f"FAIL {module_name}: {type(error).__name__}: {error}")
        if "-v" in sys.argv:
            traceback.print_exc()
        continue
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        failures += 1
        print(f"FAIL {module_name}: missing {missing}")
    else:
        print(f"OK   {module_name}")
sys.exit(1 if failures else 0)
