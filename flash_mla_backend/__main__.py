"""`python -m flash_mla_backend`: what is installed, what it was built for, what runs here.

Prints the versions (package, torch, CUDA runtime, driver), what the extension was built against
next to what runs (a mismatch is named), the code it holds, the GPU and the kernel the planner
picks for common DeepSeek shapes, the package's environment variables that are set, and the state
of the vLLM and SGLang plugins; on a GPU, a small decode checked against the reference and timed.
Exits 1 when the extension cannot run here, 0 otherwise.
"""

import ctypes
import os
import sys
from importlib import metadata

import torch

import flash_mla_backend as fmb
from flash_mla_backend import _ops, _plan, reference

# (label, h_q per GPU, s_q): DeepSeek-V3's 128 heads under TP 1/2/4/8, plain and MTP decode.
COMMON_SHAPES = [("TP1", 128, 1), ("TP1 MTP", 128, 2), ("TP2", 64, 1), ("TP4", 32, 1), ("TP8", 16, 1),
                 ("TP8 MTP", 16, 2)]
ENV_VARIABLES = ["FLASH_MLA_BACKEND_KERNEL", "FLASH_MLA_BACKEND_VLLM_AUTOMATIC", "FLASH_MLA_BACKEND_DISABLE_VLLM",
                 "FLASH_MLA_BACKEND_DISABLE_SGLANG", "FLASH_MLA_BACKEND_SKIP_CUDA_BUILD", "TORCH_CUDA_ARCH_LIST"]
# The small decode's relative error bound: bf16 output rounding (see tests/test_decode_gpu.py).
CHECK_RTOL = 1e-2


def driver_version() -> str:
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "none (no libcuda.so.1)"
    version = ctypes.c_int()
    if driver.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return "unknown"
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def distribution_version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report_build(lines) -> bool:
    """The extension's build next to what runs; False when it cannot run."""
    problem = _ops.load_problem()
    if problem:
        lines.append(f"extension: NOT LOADED: {problem}")
        return False
    info = _plan.build_info()
    lines.append(f"extension: built against torch {info.torch_version} (CUDA {info.cuda_version}) from "
                 f"{info.cuda_home}; holds {' '.join(f'{kind}_{arch}' for kind, arch in info.code)}")
    if info.torch_version != torch.__version__:
        lines.append(f"  MISMATCH: torch {torch.__version__} runs; rebuild against it "
                     f"(pip install --no-build-isolation --force-reinstall <the package source>)")
        return False
    return True


def report_plans(lines, device) -> bool:
    """The GPU and the planner's kernel per common shape; False when no kernel runs here."""
    dev = _plan._device_properties(device)
    major, minor = dev["capability"]
    lines.append(f"device: {dev.get('name', 'none: plans are for the nominal H100/H200 a CPU tensor gets')} "
                 f"(compute capability {major}.{minor}, {dev['num_sms']} SMs)")
    try:
        for cache, fp8 in (("bf16", False), ("fp8", True)):
            picks = [f"{label} {_plan.plan_decode(h_q * s_q, 1, device, fp8).kernel}"
                     for label, h_q, s_q in COMMON_SHAPES]
            lines.append(f"  kernel for a {cache} cache: " + ", ".join(picks))
    except fmb.UnsupportedDeviceError as error:
        lines.append(f"  NO KERNEL: {error}")
        return False
    return True


def report_plugins(lines):
    from flash_mla_backend import sglang_plugin, vllm_plugin
    from flash_mla_backend._env import env_flag
    from flash_mla_backend.sglang_plugin import compat as sglang_compat
    from flash_mla_backend.vllm_plugin import compat as vllm_compat

    vllm_version = distribution_version("vllm")
    if vllm_version is None:
        lines.append("vLLM plugin: vLLM not installed")
    elif not vllm_compat.is_supported_vllm_version(vllm_version):
        lines.append(f"vLLM plugin: vLLM {vllm_version} is outside {vllm_compat.SUPPORTED_VLLM_VERSIONS}: "
                     f"the plugin leaves vLLM alone")
    elif env_flag(vllm_plugin.DISABLE_ENV):
        lines.append(f"vLLM plugin: off ({vllm_plugin.DISABLE_ENV})")
    else:
        automatic = ("also vLLM's automatic choice" if env_flag(vllm_plugin.AUTOMATIC_ENV)
                     else f"only when chosen; vLLM's automatic choice is its own ({vllm_plugin.AUTOMATIC_ENV}=1 "
                          f"changes that)")
        lines.append(f"vLLM plugin: vLLM {vllm_version}; --attention-backend flashmla runs our kernels, {automatic}")
    if distribution_version("sglang") is None:
        lines.append("SGLang plugin: SGLang not installed")
    elif env_flag(sglang_plugin.DISABLE_ENV):
        lines.append(f"SGLang plugin: off ({sglang_plugin.DISABLE_ENV})")
    else:
        reason = sglang_compat.reason_to_stay_out()
        lines.append(f"SGLang plugin: {'stays out: ' + reason if reason else '--attention-backend flashmla runs our kernels'}")


def check_decode(lines) -> bool:
    """A small decode (two requests, one long enough to split) against the reference, timed."""
    g = torch.Generator(device="cuda").manual_seed(0)
    seqlens = torch.tensor([1000, 70], dtype=torch.int32, device="cuda")
    q = torch.randn(2, 1, 16, 576, generator=g, device="cuda", dtype=torch.bfloat16)
    k_cache = torch.randn(20, 64, 1, 576, generator=g, device="cuda", dtype=torch.bfloat16)
    # 16 and 2 pages, in shuffled blocks
    block_table = torch.randperm(20, generator=g, device="cuda")[:32].to(torch.int32)[:18]
    block_table = torch.stack([block_table[:16], torch.cat([block_table[16:], block_table[:14]])])
    md, splits = fmb.get_mla_metadata(seqlens, 16, 1)
    out, lse = fmb.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, md, splits)
    want, _ = reference.mla_decode(q, k_cache, block_table, seqlens, 512)
    error = ((out.float() - want).norm() / want.norm()).item()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        fmb.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, md, splits)
    end.record()
    end.synchronize()
    ok = error < CHECK_RTOL
    lines.append(f"decode check: relative error {error:.1e} against the reference ({'ok' if ok else 'WRONG'}, "
                 f"bound {CHECK_RTOL:g}); {start.elapsed_time(end) * 1e3 / 20:.1f} µs per call (eager, 2 requests)")
    return ok


def main() -> int:
    lines = [f"flash-mla-backend {fmb.__version__} ({os.path.dirname(fmb.__file__)})",
             f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, driver {driver_version()}, "
             f"Python {sys.version.split()[0]}"]
    ok = report_build(lines)
    if ok:
        gpu = torch.cuda.is_available()
        ok = report_plans(lines, torch.device("cuda" if gpu else "cpu"))
        if ok and gpu:
            ok = check_decode(lines)
        elif not gpu:
            lines.append("no CUDA GPU visible: the kernels cannot run here (the planner's view above is for an H200)")
    overrides = [f"{name}={os.environ[name]}" for name in ENV_VARIABLES if name in os.environ]
    lines.append(f"environment: {', '.join(overrides) or 'no overrides'}")
    report_plugins(lines)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
