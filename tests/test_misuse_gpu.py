"""Misuse the host cannot check without a synchronisation, on every kernel, with a 16-bit and an
FP8 cache: the broken request gets NaN (output and LSE), the others stay exact, and nothing
reads outside the inputs. Each case runs in a process of its own (tests/misuse_case.py), so an
illegal memory access fails that case rather than ending the test run."""

import os
import subprocess
import sys

import pytest
import torch

from flash_mla_backend import _plan
from flash_mla_backend._ops import extension_available
from misuse_case import MISUSES

pytestmark = pytest.mark.gpu

CASE_SCRIPT = os.path.join(os.path.dirname(__file__), "misuse_case.py")


def kernel_cases():
    """(kernel, cache) pairs the kernel takes and this GPU runs; without a GPU, all that the
    extension has (the gpu marker then skips them, saying why)."""
    if not extension_available():
        yield pytest.param(None, None, marks=pytest.mark.skip(reason="flash_mla_backend._C is not built"))
        return
    dev = _plan._device_properties(torch.device("cuda")) if torch.cuda.is_available() else None
    for kernel in torch.ops.flash_mla_backend.decode_kernels():
        for cache in ("bf16", "fp8"):
            fp8 = cache == "fp8"
            runs = _plan._fits(kernel, dev, fp8) if dev else not fp8 or _plan.kernel_info(kernel).takes_fp8_cache
            if runs:
                yield pytest.param(kernel, cache, id=f"{kernel}-{cache}")


@pytest.mark.parametrize("misuse", MISUSES)
@pytest.mark.parametrize("kernel, cache", list(kernel_cases()))
def test_misuse_gives_nan_to_the_broken_request_only(kernel, cache, misuse, case_seed):
    done = subprocess.run([sys.executable, CASE_SCRIPT, kernel, cache, misuse, str(case_seed)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
