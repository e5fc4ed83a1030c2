"""The compiled extension as seen from Python: fake implementations for tracing, the error when
it is missing, and the planner's view of the kernels (CPU)."""

import re

import pytest
import torch

import flash_mla_backend as fmb
from flash_mla_backend import _ops, _plan
from flash_mla_backend._ops import extension_available

needs_extension = pytest.mark.skipif(not extension_available(), reason="flash_mla_backend._C is not built")


@needs_extension
def test_ops_have_fake_implementations_for_tracing():
    # Meta tensors reach only the fake implementations, as torch.compile's tracing does.
    meta = dict(device="meta")
    seqlens = torch.empty(4, dtype=torch.int32, **meta)
    md = torch.empty(8, 8, dtype=torch.int32, **meta)
    splits = torch.empty(5, dtype=torch.int32, **meta)
    assert torch.ops.flash_mla_backend.get_mla_metadata(seqlens, md, splits) is None
    q = torch.empty(4, 1, 16, 576, dtype=torch.bfloat16, **meta)
    k_cache = torch.empty(10, 64, 1, 576, dtype=torch.bfloat16, **meta)
    block_table = torch.empty(4, 3, dtype=torch.int32, **meta)
    out = torch.empty(4, 1, 16, 512, dtype=torch.bfloat16, **meta)
    lse = torch.empty(4, 16, 1, dtype=torch.float32, **meta)
    workspace = torch.empty(1024, dtype=torch.float32, **meta)
    assert torch.ops.flash_mla_backend.mla_decode(q, k_cache, block_table, seqlens, md, splits, 0.1, False, "sm80_m16",
                                                  out, lse, workspace) is None


def test_missing_extension_raises_with_the_reason(monkeypatch):
    monkeypatch.setattr(_ops, "_load_error", ImportError("libc10.so: cannot open shared object file"))
    monkeypatch.setattr(_ops, "explain_load_error", lambda error, package_dir: f"diagnosed: {error}")
    _plan.kernel_info.cache_clear()  # what earlier tests planned must not hide the missing kernels
    with pytest.raises(fmb.ExtensionNotBuiltError, match="not available: diagnosed: libc10.so"):
        fmb.get_mla_metadata(torch.ones(2, dtype=torch.int32), 16, 1)


def _package(root, *, checkout, built):
    package = root / "flash_mla_backend"
    package.mkdir(parents=True)
    if checkout:
        (root / "setup.py").write_text("")
    if built:
        (package / "_C.cpython-311-x86_64-linux-gnu.so").write_text("")
    return str(package)


@pytest.mark.parametrize(
    "checkout, built, error, expected",
    [
        (True, False, "cannot import name '_C'", r"from the source checkout .* holds no built kernels.*"
                                                  r"pip install --no-build-isolation -e \."),
        (False, False, "No module named 'flash_mla_backend._C'", "no compiled kernels \\(installed with "
                                                                  "FLASH_MLA_BACKEND_SKIP_CUDA_BUILD=1, or the build failed"),
        (False, True, "undefined symbol: _ZN3c104cuda9SetDeviceEa", "built against another torch .* binary interface"),
        (True, True, "libcudart.so.13: cannot open shared object file", "importing .*_C.* failed: libcudart"),
    ],
    ids=["checkout-shadows", "no-kernels-installed", "abi-mismatch", "other"],
)
def test_load_error_is_explained_with_its_fix(tmp_path, checkout, built, error, expected):
    explanation = _ops.explain_load_error(ImportError(error), _package(tmp_path, checkout=checkout, built=built))
    assert re.search(expected, explanation), explanation


@needs_extension
@pytest.mark.parametrize("rows, num_heads_k", [(1, 1), (16, 1), (128, 1), (64, 2)])
def test_num_parts_matches_the_schedule(rows, num_heads_k):
    md, _ = fmb.get_mla_metadata(torch.full((3,), 100, dtype=torch.int32), rows, num_heads_k)
    assert md.shape[0] == fmb.mla_metadata_num_parts(rows, num_heads_k, "cpu")


@needs_extension
def test_forced_kernel_that_cannot_run_is_refused(monkeypatch):
    monkeypatch.setenv(_plan.KERNEL_ENV, "sm90")
    sm89 = dict(capability=(8, 9), num_sms=128, smem_per_block=101376, smem_per_sm=102400)
    with pytest.raises(_plan.UnsupportedDeviceError, match="FLASH_MLA_BACKEND_KERNEL='sm90' cannot run"):
        _plan._choose_kernel(16, sm89)


@needs_extension
@pytest.mark.parametrize(
    "capability, smem_per_block, rows, kernel",
    [((9, 0), 232448, 128, "sm90_seesaw"), ((9, 0), 232448, 64, "sm90_seesaw"), ((9, 0), 232448, 48, "sm90"),
     ((9, 0), 232448, 16, "sm90"), ((8, 0), 166912, 128, "sm80_m64"),
     ((8, 0), 166912, 16, "sm80_m16"), ((8, 9), 101376, 128, "sm80_m16"), ((12, 0), 101376, 128, "sm80_m16")],
)
def test_kernel_choice_per_device(capability, smem_per_block, rows, kernel):
    # sm_90a machine code runs on compute capability 9.0 only; newer GPUs take the portable PTX.
    dev = dict(capability=capability, num_sms=100, smem_per_block=smem_per_block, smem_per_sm=smem_per_block + 1024)
    assert _plan._choose_kernel(rows, dev) == kernel


@needs_extension
def test_old_gpus_are_refused():
    dev = dict(capability=(7, 5), num_sms=40, smem_per_block=65536, smem_per_sm=65536, name="Tesla T4")
    with pytest.raises(_plan.UnsupportedDeviceError, match="compute capability 8.0 or newer; Tesla T4 has 7.5"):
        _plan._choose_kernel(16, dev)


@needs_extension
@pytest.mark.parametrize("capability, smem_per_block, rows, kernel",
                         [((9, 0), 232448, 128, "sm90"), ((9, 0), 232448, 16, "sm90"),
                          ((8, 0), 166912, 128, "sm80_m64"), ((8, 9), 101376, 128, "sm80_m16")])
def test_fp8_cache_goes_to_a_kernel_that_takes_it(capability, smem_per_block, rows, kernel):
    dev = dict(capability=capability, num_sms=100, smem_per_block=smem_per_block, smem_per_sm=smem_per_block + 1024)
    assert _plan._choose_kernel(rows, dev, fp8_cache=True) == kernel
    assert _plan.kernel_info(kernel).takes_fp8_cache


@needs_extension
def test_forced_kernel_without_fp8_is_refused_for_an_fp8_cache(monkeypatch):
    kernel = "sm90_seesaw"  # 16-bit caches only
    monkeypatch.setenv(_plan.KERNEL_ENV, kernel)
    h200 = dict(capability=(9, 0), num_sms=132, smem_per_block=232448, smem_per_sm=233472)
    assert _plan._choose_kernel(16, h200) == kernel
    with pytest.raises(_plan.UnsupportedDeviceError, match=f"'{kernel}' cannot run.*with an FP8 cache"):
        _plan._choose_kernel(16, h200, fp8_cache=True)


@needs_extension
@pytest.mark.parametrize("kernel", ["sm90_narrow16", "sm90_narrow32"])
def test_narrow_kernels_take_fp8_caches_within_a_block_of_shared_memory(monkeypatch, kernel):
    # Their FP8 ring fills the shared memory the 16-bit kernel leaves; the launch opts into it all.
    info = _plan.kernel_info(kernel)
    assert info.takes_fp8_cache and 196028 < info.smem_bytes <= 232448
    monkeypatch.setenv(_plan.KERNEL_ENV, kernel)
    h200 = dict(capability=(9, 0), num_sms=132, smem_per_block=232448, smem_per_sm=233472)
    assert _plan._choose_kernel(16, h200, fp8_cache=True) == kernel


@needs_extension
@pytest.mark.parametrize("kernel, rows, num_m_blocks",
                         [("sm90_narrow16", 16, 1), ("sm90_narrow16", 48, 3), ("sm90_narrow32", 16, 1),
                          ("sm90_narrow32", 48, 2), ("sm90", 48, 1)])
def test_schedule_counts_tiles_of_the_kernels_rows(monkeypatch, kernel, rows, num_m_blocks):
    # The swapped-operand kernels take 16 or 32 query rows per CTA; the schedule must say so.
    monkeypatch.setenv(_plan.KERNEL_ENV, kernel)
    plan = _plan.plan_decode(rows, 1, torch.device("cpu"))
    assert (plan.kernel, plan.num_m_blocks) == (kernel, num_m_blocks)
    assert plan.block_m == _plan.kernel_info(kernel).block_m


@needs_extension
@pytest.mark.parametrize("rows", [16, 128])
def test_fp8_num_parts_matches_the_fp8_schedule(rows):
    md, _ = fmb.get_mla_metadata(torch.full((3,), 100, dtype=torch.int32), rows, 1, is_fp8_kvcache=True)
    assert md.shape[0] == fmb.mla_metadata_num_parts(rows, 1, "cpu", is_fp8_kvcache=True)


DEFAULT_CODE = (("sm", "80"), ("sm", "90a"), ("compute", "80"))  # setup.py without TORCH_CUDA_ARCH_LIST


@needs_extension
def test_build_info_records_this_torch_and_the_code():
    info = _plan.build_info()
    assert info.torch_version == torch.__version__ and info.cuda_version == torch.version.cuda
    assert set(info.code) <= set(DEFAULT_CODE) and info.code


@needs_extension
@pytest.mark.parametrize(
    "code, capability, kernel",
    [
        (DEFAULT_CODE, (9, 0), "sm90"),
        (DEFAULT_CODE, (8, 9), "sm80_m16"),
        ([("sm", "80")], (9, 0), None),  # sm_80 machine code does not run on Hopper
        ([("sm", "80"), ("compute", "80")], (9, 0), "sm80_m16"),  # its PTX does, through the driver
        ([("sm", "90a")], (9, 0), "sm90"),
        ([("sm", "90a")], (8, 0), None),
    ],
)
def test_planner_uses_only_the_code_the_build_holds(monkeypatch, code, capability, kernel):
    monkeypatch.setattr(_plan, "built_code", lambda: code)
    dev = dict(_plan._NOMINAL_DEVICE, capability=capability, smem_per_block=101376)  # an sm_89-sized budget
    if kernel is None:
        with pytest.raises(fmb.UnsupportedDeviceError, match="reinstall with TORCH_CUDA_ARCH_LIST naming"):
            _plan._choose_kernel(16, dev)
    else:
        dev["smem_per_block"] = _plan._NOMINAL_DEVICE["smem_per_block"] if capability == (9, 0) else 101376
        assert _plan._choose_kernel(16, dev) == kernel
