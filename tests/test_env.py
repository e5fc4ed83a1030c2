"""The package's environment variables: one set of spellings for every boolean, and a clear error
for a value it does not know."""

import pytest
import torch

import flash_mla_backend as fmb
from flash_mla_backend import _env, _ops, _plan
from flash_mla_backend import sglang_plugin, vllm_plugin

BOOLEAN_VARIABLES = [
    _ops.SKIP_BUILD_ENV,
    vllm_plugin.DISABLE_ENV,
    vllm_plugin.AUTOMATIC_ENV,
    sglang_plugin.DISABLE_ENV,
]


@pytest.mark.parametrize("name", BOOLEAN_VARIABLES)
@pytest.mark.parametrize("value, expected", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False),
])
def test_boolean_spellings(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    assert _env.env_flag(name) is expected


def test_unset_is_false(monkeypatch):
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    assert _env.env_flag(vllm_plugin.DISABLE_ENV) is False


@pytest.mark.parametrize("name", BOOLEAN_VARIABLES)
def test_unknown_boolean_value_names_the_variable(monkeypatch, name):
    monkeypatch.setenv(name, "enabled")
    with pytest.raises(ValueError, match=f"{name}='enabled' is not a boolean: use one of 1, true, yes, on or 0"):
        _env.env_flag(name)


def test_unknown_kernel_lists_the_valid_names(monkeypatch):
    if not _ops.extension_available():
        pytest.skip("flash_mla_backend._C is not built (the kernel names come from it)")
    monkeypatch.setenv(_plan.KERNEL_ENV, "sm91")
    with pytest.raises(ValueError, match=r"FLASH_MLA_BACKEND_KERNEL='sm91' names no decode kernel; valid names: "
                                         r"sm90, sm90_seesaw, sm90_narrow16, sm90_narrow32, sm80_m64, sm80_m16"):
        fmb.get_mla_metadata(torch.ones(2, dtype=torch.int32), 16, 1)


def test_unsupported_device_error_is_exported():
    assert fmb.UnsupportedDeviceError is _plan.UnsupportedDeviceError
    assert "UnsupportedDeviceError" in fmb.__all__
