"""The decode's split-partials workspace under vLLM (CPU): our impl claims the widest decode
step's workspace from vLLM's workspace manager when vLLM builds the model (before the memory
profile sizes the KV cache), and every step gets that same buffer, also once vLLM has locked the
manager against growth. (The GPU test that no step allocates it: test_vllm_gpu_decode.py.)"""

import pytest

pytest.importorskip("vllm.plugins", reason="vLLM is not installed")

import torch  # noqa: E402

from flash_mla_backend import mla_decode_workspace_numel  # noqa: E402
from flash_mla_backend.vllm_plugin.backend import MAX_DECODE_QUERY_LEN  # noqa: E402

pytestmark = pytest.mark.usefixtures("needs_extension")


@pytest.mark.parametrize("cache_dtype", ["auto", "fp8"])
@pytest.mark.parametrize("num_heads", [128, 16], ids=["TP1", "TP8"])
def test_impl_reserves_the_widest_decode_step(make_mla_setup, vllm_workspace, num_heads, cache_dtype):
    workspace = vllm_workspace("cpu")
    setup = make_mla_setup(num_heads=num_heads, device="cpu", cache_dtype=cache_dtype)
    impl = setup.make_impl()

    fp8 = cache_dtype == "fp8"
    needs = [mla_decode_workspace_numel(q * num_heads, 1, "cpu", fp8) for q in range(1, MAX_DECODE_QUERY_LEN + 1)]
    assert impl.workspace_numel == max(needs) > 0
    claimed = workspace.current_workspace_manager()._current_workspaces[0]
    assert claimed is not None and claimed.numel() >= 4 * impl.workspace_numel  # bytes

    workspace.lock_workspace()  # what vLLM does after warm-up: no growth from here on
    first, second = impl._decode_workspace(), impl._decode_workspace()
    assert first.dtype == torch.float32 and first.numel() == impl.workspace_numel
    assert first.data_ptr() == second.data_ptr() == claimed.data_ptr()


def test_impl_without_vllms_manager_leaves_allocation_to_each_call(make_mla_setup):
    impl = make_mla_setup(num_heads=16, device="cpu").make_impl()
    assert impl._decode_workspace() is None
