"""The SGLang plugin against the installed SGLang: discovery, class replacement, disabling, failures.

SGLang itself is never mocked. Constructing a real FlashMLA backend needs CUDA (SGLang's parent
class builds FlashInfer wrappers), so on a CPU machine the checks that SGLang's factories build
our class swap our subclass's own `__init__` for a recorder; test_sglang_gpu_decode.py builds it for real.
"""

from importlib import metadata
import textwrap

import pytest

# A submodule, not "sglang": without SGLang installed, this test directory itself would import
# as a namespace package of that name.
pytest.importorskip("sglang.srt.plugins", reason="SGLang is not installed (scripts/test_sglang.sh makes its venv)")

from flash_mla_backend import __version__  # noqa: E402
from flash_mla_backend.sglang_plugin import DISABLE_ENV, register  # noqa: E402

OUR_CLASS = "flash_mla_backend.sglang_plugin.backend.FlashMLABackendOnOurKernels"
SGLANG_CLASS = "sglang.srt.layers.attention.flashmla_backend.FlashMLABackend"
INSTALLED_LOG = f"flash-mla-backend {__version__}: SGLang's flashmla attention backend now runs"
FAILURE_LOG = f"flash-mla-backend {__version__} could not install its SGLang attention backend"


def test_entry_point_is_declared():
    (entry_point,) = [ep for ep in metadata.entry_points(group="sglang.srt.plugins") if ep.name == "flash_mla_backend"]
    assert entry_point.value == "flash_mla_backend.sglang_plugin:register"
    assert entry_point.load() is register


@pytest.fixture(scope="module")
def installed(run_child):
    """What a process sees after SGLang's own load_plugins(), run twice, plus a direct register()."""
    return run_child(
        """
        import json, logging
        from types import SimpleNamespace
        from unittest import mock

        import torch

        logging.basicConfig(level=logging.INFO)
        from sglang.srt.plugins import load_plugins

        load_plugins()
        load_plugins()
        from flash_mla_backend.sglang_plugin import register

        register()

        from sglang.srt.layers.attention import flashmla_backend
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
        from sglang.srt.runtime_context import get_context
        from sglang.srt.server_args import prepare_server_args
        from sglang.srt.speculative.draft_utils import DraftBackendFactory
        from flash_mla_backend.sglang_plugin.backend import FlashMLABackendOnOurKernels

        def qualified(cls):
            return f"{cls.__module__}.{cls.__qualname__}"

        builtin = FlashMLABackendOnOurKernels.__base__
        args = prepare_server_args(
            ["--model-path", "unused", "--attention-backend", "flashmla", "--decode-attention-backend", "flashmla"]
        )
        # The draft factory reads the configured backends from SGLang's published config.
        get_context().override_server_args(attention_backend="flashmla").install()
        # What the factories and FlashMLAMultiStepDraftBackend read before building backends.
        runner = SimpleNamespace(
            device="cpu",
            draft_attention_backend=None,
            kv_index_translator=None,
            req_to_token_pool=SimpleNamespace(size=2),
            model_config=SimpleNamespace(hf_config=SimpleNamespace(), hf_text_config=SimpleNamespace()),
        )
        built = []
        with mock.patch.object(FlashMLABackendOnOurKernels, "__init__", lambda self, *a, **k: built.append(self)):
            target = ATTENTION_BACKENDS["flashmla"](runner)
            drafts = DraftBackendFactory(runner, topk=1, speculative_num_steps=3)
            multi_step_draft = drafts.create_decode_backend()
            draft_extend = drafts.create_draft_extend_backend()
        print(json.dumps({
            "module_class": qualified(flashmla_backend.FlashMLABackend),
            "base_class": qualified(builtin),
            "target": qualified(type(target)),
            "draft_extend": qualified(type(draft_extend)),
            "multi_step_draft_steps": [qualified(type(b)) for b in multi_step_draft.attn_backends],
            "constructed": len(built),
            "instances_pass_sglang_isinstance": all(isinstance(b, builtin) for b in built),
            "parsed_backends": [args.attention_backend, args.decode_attention_backend],
            "cuda_initialized": torch.cuda.is_initialized(),
        }))
        """
    )


def test_load_plugins_replaces_sglang_class(installed):
    result, _ = installed
    assert result["module_class"] == OUR_CLASS
    assert result["base_class"] == SGLANG_CLASS


def test_target_and_draft_backends_are_our_class(installed):
    result, _ = installed
    assert result["target"] == OUR_CLASS
    assert result["draft_extend"] == OUR_CLASS
    # SGLang's multi-step draft backend keeps its own class and builds one FlashMLA backend per
    # draft step but the last.
    assert result["multi_step_draft_steps"] == [OUR_CLASS, OUR_CLASS]
    assert result["constructed"] == 4
    assert result["instances_pass_sglang_isinstance"]


def test_attention_backend_flag_is_accepted(installed):
    result, _ = installed
    assert result["parsed_backends"] == ["flashmla", "flashmla"]


def test_install_is_idempotent_logged_once_and_leaves_cuda_alone(installed):
    result, stderr = installed
    assert stderr.count(INSTALLED_LOG) == 1
    assert not result["cuda_initialized"]


def test_disable_variable_keeps_sglang_class(run_child):
    result, stderr = run_child(
        """
        import json, logging, sys
        logging.basicConfig(level=logging.INFO)
        from sglang.srt.plugins import load_plugins

        load_plugins()
        from sglang.srt.layers.attention import flashmla_backend

        cls = flashmla_backend.FlashMLABackend
        print(json.dumps({
            "module_class": f"{cls.__module__}.{cls.__qualname__}",
            "backend_module_imported": "flash_mla_backend.sglang_plugin.backend" in sys.modules,
        }))
        """,
        env={DISABLE_ENV: "1"},
    )
    assert result == {"module_class": SGLANG_CLASS, "backend_module_imported": False}
    assert f"{DISABLE_ENV}=1, SGLang's own FlashMLA kernels stay in use" in stderr
    assert INSTALLED_LOG not in stderr


# Each breaks the installation the way it can break in the field, before SGLang loads plugins.
HOOK_FAILURES = {
    # sgl-flash-mla cannot load (no driver, wrong torch): SGLang's FlashMLA module does not import.
    "flashmla_module_unimportable": """
        import sys
        sys.modules["sglang.srt.layers.attention.flashmla_backend"] = None
    """,
    # Another plugin has already put its own subclass in place.
    "class_already_replaced": """
        from sglang.srt.layers.attention import flashmla_backend

        class OtherPluginsBackend(flashmla_backend.FlashMLABackend):
            pass

        flashmla_backend.FlashMLABackend = OtherPluginsBackend
    """,
}


@pytest.mark.parametrize("breakage", sorted(HOOK_FAILURES))
def test_hook_failure_is_loud(run_child, breakage):
    result, stderr = run_child(
        HOOK_FAILURES[breakage]
        + """
        import json
        from sglang.srt.plugins import load_plugins

        load_plugins()  # SGLang logs the plugin's exception and carries on
        from flash_mla_backend.sglang_plugin import PluginInstallError, register

        try:
            register()
            raised = None
        except PluginInstallError as exc:
            raised = str(exc)
        print(json.dumps({"raised": raised}))
        """
    )
    # No logging configured, as in SGLang's launcher when it loads plugins: an error still shows.
    assert FAILURE_LOG in stderr
    assert result["raised"] is not None and result["raised"].startswith(FAILURE_LOG)
    assert DISABLE_ENV in result["raised"]


FP8_RUNNER = textwrap.dedent("""
    import json
    import torch
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.test.kits.attention_unittest.attention_methods.mla_attention import (
        MLAAttentionCase,
        MockMLAModelRunner,
        TinyMLAModelConfig,
    )

    case = MLAAttentionCase(
        name="fp8", backend="flashmla", forward_mode=ForwardMode.DECODE, num_heads=16, page_size=64,
        prefix_lens=(3,),
    )
    config = TinyMLAModelConfig(
        num_heads=16, kv_lora_rank=512, qk_rope_head_dim=64, hidden_size=64, context_len=128
    )
    runner = MockMLAModelRunner(
        case=case, model_config=config, dtype=torch.bfloat16, device="cpu", max_context_len=128,
        kv_lora_rank=512, qk_rope_head_dim=64, fp8_kv_cache=True,
    )
""")


def test_fp8_e4m3_cache_is_accepted(run_child):
    """SGLang's FP8 KV cache (float8_e4m3fn) passes our model check (building the backend itself
    needs CUDA: test_sglang_gpu_decode.py decodes over an FP8 pool)."""
    result, _ = run_child(
        FP8_RUNNER
        + textwrap.dedent("""
        from flash_mla_backend.sglang_plugin.backend import _check_model_is_supported

        _check_model_is_supported(runner)
        print(json.dumps({"kv_cache_dtype": str(runner.kv_cache_dtype)}))
        """)
    )
    assert result["kv_cache_dtype"] == "torch.float8_e4m3fn"


def construction_error(run_child, setup):
    """The NotImplementedError's message when SGLang's factory builds the backend for FP8_RUNNER's
    runner after `setup` (code run first in the child), or None when it builds."""
    result, _ = run_child(
        FP8_RUNNER
        + textwrap.dedent(setup)
        + textwrap.dedent("""
        try:
            ATTENTION_BACKENDS["flashmla"](runner)
            error = None
        except NotImplementedError as exc:
            error = str(exc)
        print(json.dumps({"error": error}))
        """)
    )
    return result["error"]


def test_unsupported_kv_cache_is_refused_at_construction(run_child):
    """An e5m2 cache (SGLang's fp8_e5m2) must not reach our kernels, which read e4m3."""
    error = construction_error(run_child, "runner.kv_cache_dtype = torch.float8_e5m2")
    assert error is not None
    assert "float8_e5m2" in error and DISABLE_ENV in error


def test_version_check_names_supported_version(monkeypatch):
    from flash_mla_backend.sglang_plugin import compat

    monkeypatch.setattr(compat.metadata, "version", lambda name: "0.5.24")
    with pytest.raises(compat.IncompatibleSGLangError, match="supports SGLang 0.5.23 only"):
        compat.check_sglang_version()


def test_override_check_names_methods_sglang_lacks():
    from flash_mla_backend.sglang_plugin import compat

    class SGLangBackend:
        def forward_decode(self):
            pass

    class OurBackend(SGLangBackend):
        def forward_decode(self):
            pass

        def init_forward_metadata_out_graph(self):
            pass

        def _helper(self):
            pass

    with pytest.raises(compat.IncompatibleSGLangError, match=r"no longer has init_forward_metadata_out_graph,"):
        compat.check_overrides(OurBackend)


def test_fp8_cache_with_decode_context_parallelism_is_refused(run_child):
    """SGLang's own FlashMLA refuses an FP8 cache under DCP (at its first decode); ours at
    construction, before SGLang allocates anything, saying what to change."""
    error = construction_error(run_child, """
        from types import SimpleNamespace
        from flash_mla_backend.sglang_plugin import backend

        backend.get_parallel = lambda: SimpleNamespace(attn_dcp_size=2, dcp_enabled=True)
    """)
    assert error is not None
    assert "does not support decode context parallelism (--dcp-size 2) with an FP8 KV cache" in error


STAY_OUT_CHILD = """
    import json, logging
    logging.basicConfig(level=logging.INFO)
    from flash_mla_backend.sglang_plugin import compat
    {patch}
    from flash_mla_backend.sglang_plugin import register

    register()
    from sglang.srt.layers.attention import flashmla_backend

    cls = flashmla_backend.FlashMLABackend
    print(json.dumps({{"module_class": f"{{cls.__module__}}.{{cls.__qualname__}}"}}))
"""


@pytest.mark.parametrize(
    "patch, reason",
    [
        ("compat.gpu_capabilities = lambda: [(9, 0), (10, 0)]",
         "GPUs of compute capability 10.0, where our kernels do not run"),
        ("real = compat.metadata.version; "
         "compat.metadata.version = lambda name: '0.5.24' if name == 'sglang' else real(name)",
         "SGLang 0.5.24 is installed, but this flash-mla-backend"),
    ],
    ids=["blackwell-gpu", "other-sglang-release"],
)
def test_plugin_stays_out_where_sglangs_own_kernels_serve(run_child, patch, reason):
    result, stderr = run_child(STAY_OUT_CHILD.format(patch=patch))
    assert result["module_class"] == SGLANG_CLASS
    assert "leaves SGLang's own FlashMLA backend in place" in stderr and reason in stderr
    assert INSTALLED_LOG not in stderr


@pytest.mark.parametrize(
    "capabilities, stays_out",
    [(None, False), ([], False), ([(8, 0), (8, 6), (8, 9), (9, 0)], False), ([(7, 5)], True), ([(12, 0)], True)],
)
def test_gpu_capabilities_that_keep_sglangs_class(monkeypatch, capabilities, stays_out):
    from flash_mla_backend.sglang_plugin import compat

    monkeypatch.setattr(compat, "check_sglang_version", lambda: None)
    monkeypatch.setattr(compat, "gpu_capabilities", lambda: capabilities)
    assert (compat.reason_to_stay_out() is not None) is stays_out
