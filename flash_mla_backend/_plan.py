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


def _fits(kernel: str, dev: dict, fp8_cache: bool = False) -> bool:
    info = kernel_info(kernel)
    runs = dev["capability"] == info.min_capability if info.arch_specific else dev["capability"] >= info.min_capability
    return runs and info.smem_bytes <= dev["smem_per_block"] and (info.takes_fp8_cache or not fp8_cache)


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
    # The Hopper kernel takes 16-bit caches; FP8 caches go to the portable kernels for now.
    if _fits("sm90", dev, fp8_cache):
        return "sm90"
    # One 64-row tile when there are enough query rows to fill it, else 16-row tiles, which
    # also fit GPUs with ~100 KB of shared memory per block (sm_86/sm_89).
    if rows_per_kv_head > 16 and _fits("sm80_m64", dev, fp8_cache):
        return "sm80_m64"
    return "sm80_m16"


def plan_decode(rows_per_kv_head: int, num_heads_k: int, device: torch.device, fp8_cache: bool = False) -> DecodePlan:
    dev = _device_properties(device)
    kernel = _choose_kernel(rows_per_kv_head, dev, fp8_cache)
    info = kernel_info(kernel)
    ctas_per_sm = max(dev["smem_per_sm"] // (info.smem_bytes + 1024), 1)
    num_m_blocks = math.ceil(rows_per_kv_head / info.block_m)
    num_sm_parts = max(dev["num_sms"] * ctas_per_sm // (num_heads_k * num_m_blocks), 1)
    return DecodePlan(kernel, info.block_m, num_m_blocks, num_sm_parts)
