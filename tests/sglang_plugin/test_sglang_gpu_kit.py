"""GPU: the subclass driven by SGLang's own attention test kit and its production CUDA-graph runners.

SGLang 0.5.23's test kit (sglang.test.kits.attention_unittest) runs an attention backend the way
SGLang's model runner does: a small DeepSeek MLA attention module (projections, RadixAttention,
output projection) writes its keys into SGLang's MLA pool through the backend, calls it, and its
output is compared with the kit's own PyTorch attention over the unquantised keys. Its CUDA-graph
modes for decode, target-verify and draft-extend v2 run the backends' graph metadata paths (state
made for the capture batch size, metadata filled at capture with placeholder lengths, refilled
for the replay batch) and then the step itself eagerly, against the kit's attention; the real
capture and replay of decode and target-verify are in test_sglang_gpu_decode.py. Two modes capture
and replay SGLang's production graph runners, compared with an eager run of the same backend:
EAGLEDraftCudaGraphRunner (multi-step draft: FlashMLAMultiStepDraftBackend builds one
FlashMLABackend per draft step after the first) and EAGLEDraftExtendCudaGraphRunner in its
draft-extend-v2 mode. SGLang 0.5.23 has no other draft-extend mode (ForwardMode lists
DRAFT_EXTEND_V2 only).

Every case uses backend "flashmla", which after load_plugins() builds our subclass, at DeepSeek's
MLA sizes (kv_lora_rank 512, rope 64, 16 heads, page 64) in bf16. A spy on the subclass's kernel
call shows that our kernels served each case. The kit draws its own seeded random weights and
hidden states (fresh per case name). Tolerance: the kit's own, atol = rtol = 3e-2 on the module
output (about 8 bf16 ulps of its O(1) values), and, where a runner compares a graph replay with an
eager run of the same backend, the same bound.
"""

import functools
import unittest

import pytest
import torch

pytest.importorskip("sglang.srt.plugins", reason="SGLang is not installed (scripts/test_sglang.sh makes its venv)")

from flash_mla_backend import reference  # noqa: E402

pytestmark = pytest.mark.gpu  # tests/conftest.py skips these without a GPU or the compiled extension

NUM_HEADS = 16  # DeepSeek-V3's 128 heads at tensor parallelism 8
MAX_CONTEXT_LEN = 512  # per request, in the kit's pool layout (a multiple of the page size)
DRAFT_TOKENS = 3  # query tokens per request in the speculative steps
# Cache lengths before the step: one token, one short of a page edge (crossed by the step), a page
# edge, several pages.
PREFIX_LENS = (1, 63, 128, 300)
MLA_SIZES = dict(
    kv_lora_rank=reference.HEAD_DIM_V,
    qk_rope_head_dim=reference.HEAD_DIM_QK - reference.HEAD_DIM_V,
    max_context_len=MAX_CONTEXT_LEN,
    dtype=torch.bfloat16,
)


class _KitTestCase(unittest.TestCase):
    """The `testcase` the kit's runners take. The kit skips a case whose backend fails to build;
    here that is a failure, since it would mean SGLang could not build our subclass."""

    __test__ = False  # a helper for the kit, not a test of its own

    def runTest(self):  # unittest needs a test method to instantiate the case
        pass

    def skipTest(self, reason):
        raise AssertionError(f"SGLang's test kit could not run the case: {reason}")


@pytest.fixture(scope="module")
def kit():
    from sglang.srt.plugins import load_plugins

    load_plugins()
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.test.kits.attention_unittest.attention_methods import mla_attention
    from sglang.test.kits.attention_unittest.runner_modes import (
        cuda_graph_decode_runner,
        speculative_draft_extend_runner,
        speculative_draft_runner,
        speculative_target_verify_runner,
    )

    return dict(
        ForwardMode=ForwardMode,
        MLAAttentionCase=mla_attention.MLAAttentionCase,
        run_mla_attention_case=mla_attention.run_mla_attention_case,
        run_mla_cuda_graph_decode_case=cuda_graph_decode_runner.run_mla_cuda_graph_decode_case,
        run_mla_eagle_verify_case=speculative_target_verify_runner.run_mla_eagle_verify_case,
        run_mla_eagle_verify_cuda_graph_case=speculative_target_verify_runner.run_mla_eagle_verify_cuda_graph_case,
        run_mla_draft_extend_v2_cuda_graph_case=speculative_draft_extend_runner.run_mla_draft_extend_v2_cuda_graph_case,
        run_mla_eagle_draft_extend_v2_cuda_graph_runner_case=(
            speculative_draft_extend_runner.run_mla_eagle_draft_extend_v2_cuda_graph_runner_case
        ),
        run_mla_eagle_draft_cuda_graph_runner_case=speculative_draft_runner.run_mla_eagle_draft_cuda_graph_runner_case,
    )


@pytest.fixture
def kernel_calls(monkeypatch):
    """The subclass instances that called our kernels (in a captured graph: once, at capture)."""
    from flash_mla_backend.sglang_plugin.backend import FlashMLABackendOnOurKernels

    calls = []
    attend = FlashMLABackendOnOurKernels._attend

    def counting_attend(self, *args, **kwargs):
        assert type(self) is FlashMLABackendOnOurKernels
        calls.append(self)
        return attend(self, *args, **kwargs)

    monkeypatch.setattr(FlashMLABackendOnOurKernels, "_attend", counting_attend)
    return calls


def _case(kit, name, mode_name, query_len, prefix_lens=PREFIX_LENS):
    mode = getattr(kit["ForwardMode"], mode_name)
    return kit["MLAAttentionCase"](
        name=name,
        backend="flashmla",
        forward_mode=mode,
        num_heads=NUM_HEADS,
        page_size=reference.PAGE_SIZE,
        prefix_lens=prefix_lens,
        extend_lens=() if mode.is_decode() else (query_len,) * len(prefix_lens),
    )


# (kit function, mode, query tokens per request, its further arguments). Draft-extend v2: every
# request extends by the full window, so the window-aligned key lengths are the batch's.
EAGER_CASES = {
    "decode": ("run_mla_attention_case", "DECODE", 1, {}),
    "target_verify": ("run_mla_eagle_verify_case", "TARGET_VERIFY", DRAFT_TOKENS, {"topk": 1}),
    "draft_extend_v2": ("run_mla_attention_case", "DRAFT_EXTEND_V2", DRAFT_TOKENS, {}),
}
# Graph metadata made at placeholder lengths for CAPTURE_BATCH_SIZE requests, refilled with real
# ones for the same number, or for one fewer with the runner's padding rows; the step against the
# kit's attention.
GRAPH_METADATA_CASES = {
    "decode": ("run_mla_cuda_graph_decode_case", "DECODE", 1, {}),
    "target_verify": ("run_mla_eagle_verify_cuda_graph_case", "TARGET_VERIFY", DRAFT_TOKENS, {"topk": 1}),
    "draft_extend_v2": ("run_mla_draft_extend_v2_cuda_graph_case", "DRAFT_EXTEND_V2", DRAFT_TOKENS, {}),
}
CAPTURE_BATCH_SIZE = len(PREFIX_LENS)
REPLAY_BATCHES = {"full": PREFIX_LENS, "padded": PREFIX_LENS[:-1]}


@pytest.mark.parametrize("step", sorted(EAGER_CASES))
def test_eager_step(kit, kernel_calls, step):
    function, mode_name, query_len, arguments = EAGER_CASES[step]
    kit[function](_KitTestCase(), _case(kit, f"fmb_{step}", mode_name, query_len), **MLA_SIZES, **arguments)
    assert kernel_calls


@pytest.fixture
def graph_fixtures_in_one_layout(monkeypatch):
    """SGLang 0.5.23's CUDA-graph runners build their fixture with each request's pages shuffled
    (the kit's default cache layout), then, before the eager step, write the prefix keys again in
    the contiguous layout while req_to_token keeps the shuffled one. A request whose shuffle moves
    its partly filled page then reads keys that are not its own, on any backend that reads the
    cache through req_to_token (here the target-verify request with prefix 300: 131 of its 768
    outputs off, as a replay of the kit's slot writes in Python predicts). Built contiguous, both
    writes agree; the eager cases keep the shuffled layout."""
    from sglang.test.kits.attention_unittest.runner_modes import (
        cuda_graph_decode_runner,
        speculative_draft_extend_runner,
        speculative_target_verify_runner,
    )

    for runner in (cuda_graph_decode_runner, speculative_draft_extend_runner, speculative_target_verify_runner):
        build = runner.build_mla_attention_fixture
        monkeypatch.setattr(runner, "build_mla_attention_fixture", functools.partial(build, loc_layout="contiguous"))


@pytest.mark.parametrize("replay", sorted(REPLAY_BATCHES))
@pytest.mark.parametrize("step", sorted(GRAPH_METADATA_CASES))
def test_cuda_graph_metadata_step(kit, kernel_calls, graph_fixtures_in_one_layout, step, replay):
    function, mode_name, query_len, arguments = GRAPH_METADATA_CASES[step]
    kit[function](
        _KitTestCase(), _case(kit, f"fmb_{step}_graph_{replay}", mode_name, query_len, REPLAY_BATCHES[replay]),
        **MLA_SIZES, **arguments, cuda_graph_capture_batch_size=CAPTURE_BATCH_SIZE,
    )
    assert kernel_calls


def test_draft_extend_v2_production_graph_runner(kit, kernel_calls):
    """SGLang's EAGLEDraftExtendCudaGraphRunner (draft-extend v2) replayed against an eager run of the same step."""
    kit["run_mla_eagle_draft_extend_v2_cuda_graph_runner_case"](
        _KitTestCase(), _case(kit, "fmb_draft_extend_runner", "DRAFT_EXTEND_V2", DRAFT_TOKENS), **MLA_SIZES,
        cuda_graph_capture_batch_size=CAPTURE_BATCH_SIZE,
    )
    assert kernel_calls


def test_multi_step_draft_production_graph_runner(kit, kernel_calls):
    """SGLang's EAGLEDraftCudaGraphRunner over FlashMLAMultiStepDraftBackend (one of our backends per
    draft step after the first), replayed against an eager run of the same draft steps."""
    steps = DRAFT_TOKENS
    kit["run_mla_eagle_draft_cuda_graph_runner_case"](
        _KitTestCase(), _case(kit, "fmb_multi_step_draft", "DECODE", 1), **MLA_SIZES,
        topk=1, speculative_num_steps=steps, speculative_num_draft_tokens=steps + 1,
        cuda_graph_capture_batch_size=CAPTURE_BATCH_SIZE,
    )
    # The eager run and the capture each went through their own backends, one per draft step but
    # the last (which attends to nothing new).
    assert len({id(backend) for backend in kernel_calls}) == 2 * (steps - 1)
