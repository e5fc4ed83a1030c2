import os
import random
import zlib

import pytest
import torch


def _gpu_skip_reason():
    from flash_mla_backend._ops import extension_available

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if torch.cuda.get_device_capability() < (8, 0):
        return "the GPU is older than compute capability 8.0"
    if not extension_available():
        return "flash_mla_backend._C is not built"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Fresh random data on every run, reproducible per case: each case seeds from this base seed
# (printed in the header; set FLASH_MLA_TEST_SEED to replay a run) plus its own parameters.
BASE_SEED = int(os.environ.get("FLASH_MLA_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"flash_mla_backend test seed: FLASH_MLA_TEST_SEED={BASE_SEED}"


@pytest.fixture
def case_seed(request):
    return (BASE_SEED + zlib.crc32(request.node.name.encode())) % 2**31
