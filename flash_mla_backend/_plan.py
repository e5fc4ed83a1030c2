"""Chooses the decode kernel and the number of scheduler parts for a device.

`get_mla_metadata` and `flash_mla_with_kvcache` both call `plan_decode` with the same
arguments, so the schedule always matches the kernel that consumes it.
"""

import functools
import math
import os
from dataclasses import dataclass

import torch

from flash_mla_backend._ops import ops

KERNEL_ENV = "FLASH_MLA_BACKEND_KERNEL"

# A CPU tensor has no device to plan for; its schedule is made for an H100/H200-class GPU
# (tests and dry runs use it; no kernel runs on the CPU).
_NOMINAL_DEVICE = dict(capability=(9, 0), num_sms=132, smem_per_block=232448, smem_per_sm=233472)


class UnsupportedDeviceError(RuntimeError):
    pass


@dataclass(frozen=True)
class DecodePlan:
    kernel: str
    block_m: int
    num_m_blocks: int
    num_sm_parts: int


@dataclass(frozen=True)
class KernelInfo:
    block_m: int
    smem_bytes: int
    min_capability: tuple
    arch_specific: bool  # machine code for exactly min_capability (sm_90a), which newer GPUs cannot run
    takes_fp8_cache: bool


@functools.lru_cache(maxsize=None)
def kernel_info(kernel: str) -> KernelInfo:
    block_m, smem_bytes, cc_major, cc_minor, arch_specific, takes_fp8_cache = ops().decode_kernel_info(kernel)
    return KernelInfo(block_m, smem_bytes, (cc_major, cc_minor), bool(arch_specific), bool(takes_fp8_cache))


@functools.lru_cache(maxsize=None)
def _device_properties(device: torch.device) -> dict:
    if device.type != "cuda":
        return _NOMINAL_DEVICE
    props = torch.cuda.get_device_properties(device)
    return dict(
        capability=(props.major, props.minor),
        num_sms=props.multi_processor_count,
        smem_per_block=props.shared_memory_per_block_optin,
        smem_per_sm=props.shared_memory_per_multiprocessor,
        name=props.name,
    )


@dataclass(frozen=True)
class BuildInfo:
    torch_version: str
    cuda_version: str
    cuda_home: str
    code: tuple  # (kind, arch): "sm" machine code, "compute" PTX, e.g. ("sm", "90a")


@functools.lru_cache(maxsize=None)
def build_info() -> BuildInfo:
    """What setup.py recorded when it built the extension."""
    torch_version, cuda_version, cuda_home, code = ops().build_info()
    return BuildInfo(torch_version, cuda_version, cuda_home, tuple(tuple(c.split("_")) for c in code.split()))


def built_code() -> tuple:
    return build_info().code


def _build_runs(info: KernelInfo, capability: tuple) -> bool:
    """Whether the extension holds code for `capability` that runs this kernel: the Hopper
    kernel only as sm_90a code on 9.0; the portable ones as sm_80 code on 8.x, sm_90a code on 9.0,
    or compute_80 PTX (compiled by the driver) on anything from 8.0."""
    code = built_code()
    if info.arch_specific:
        return ("sm", "90a") in code and capability == (9, 0)
    return ((capability[0] == 8 and ("sm", "80") in code) or (capability == (9, 0) and ("sm", "90a") in code)
            or ("compute", "80") in code)


def _fits(kernel: str, dev: dict, fp8_cache: bool = False) -> bool:
    info = kernel_info(kernel)
    runs = dev["capability"] == info.min_capability if info.arch_specific else dev["capability"] >= info.min_capability
    return (runs and _build_runs(info, dev["capability"]) and info.smem_bytes <= dev["smem_per_block"]
            and (info.takes_fp8_cache or not fp8_cache))


def _choose_kernel(rows_per_kv_head: int, dev: dict, fp8_cache: bool = False) -> str:
    forced = os.environ.get(KERNEL_ENV, "").strip()
    if forced:
        kernels = ops().decode_kernels()
        if forced not in kernels:
            raise ValueError(f"{KERNEL_ENV}={forced!r} names no decode kernel; valid names: {', '.join(kernels)}")
        if not _fits(forced, dev, fp8_cache):
            raise UnsupportedDeviceError(
                f"{KERNEL_ENV}={forced!r} cannot run on this device "
                f"(compute capability {dev['capability']}, {dev['smem_per_block']} bytes of shared memory per block)"
                + (" with an FP8 cache" if fp8_cache else "")
            )
        return forced
    if dev["capability"] < (8, 0):
        raise UnsupportedDeviceError(
            f"flash_mla_backend needs a GPU of compute capability 8.0 or newer; "
            f"{dev.get('name', 'this GPU')} has {dev['capability'][0]}.{dev['capability'][1]}"
        )
    # The Hopper kernel takes 16-bit and FP8 caches. Its seesaw schedule (16-bit caches only)
    # measured faster where the query rows fill a 64-row tile (docs/sm90-kernel-log.md).
    if rows_per_kv_head >= 64 and _fits("sm90_seesaw", dev, fp8_cache):
        return "sm90_seesaw"
    if _fits("sm90", dev, fp8_cache):
        return "sm90"
    # One 64-row tile when there are enough query rows to fill it, else 16-row tiles, which
    # also fit GPUs with ~100 KB of shared memory per block (sm_86/sm_89).
    if rows_per_kv_head > 16 and _fits("sm80_m64", dev, fp8_cache):
        return "sm80_m64"
    if not _build_runs(kernel_info("sm80_m16"), dev["capability"]):
        major, minor = dev["capability"]
        code = ", ".join(f"{kind}_{arch}" for kind, arch in built_code())
        raise UnsupportedDeviceError(
            f"this build of flash_mla_backend holds {code} code, none of which runs on compute capability "
            f"{major}.{minor}; reinstall with TORCH_CUDA_ARCH_LIST naming {major}.{minor} (or unset)"
        )
    return "sm80_m16"


def plan_decode(rows_per_kv_head: int, num_heads_k: int, device: torch.device, fp8_cache: bool = False) -> DecodePlan:
    dev = _device_properties(device)
    kernel = _choose_kernel(rows_per_kv_head, dev, fp8_cache)
    info = kernel_info(kernel)
    ctas_per_sm = max(dev["smem_per_sm"] // (info.smem_bytes + 1024), 1)
    num_m_blocks = math.ceil(rows_per_kv_head / info.block_m)
    num_sm_parts = max(dev["num_sms"] * ctas_per_sm // (num_heads_k * num_m_blocks), 1)
    return DecodePlan(kernel, info.block_m, num_m_blocks, num_sm_parts)
