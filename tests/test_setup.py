"""setup.py's build choices (CPU): the toolkit it finds, the code TORCH_CUDA_ARCH_LIST asks for, and the
sm90 ablation bits of benchmark variants."""

import os
import shutil

import pytest
import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup_module(monkeypatch):
    """setup.py's functions, its module code run without building anything."""
    monkeypatch.setenv("FLASH_MLA_BACKEND_SKIP_CUDA_BUILD", "1")
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    namespace = {"__file__": os.path.join(ROOT, "setup.py"), "__name__": "setup_under_test"}
    with open(os.path.join(ROOT, "setup.py")) as f:
        exec(compile(f.read(), "setup.py", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(
    "arch_list, code",
    [
        (None, [("sm", "80"), ("sm", "90a"), ("compute", "80")]),
        ("9.0", [("sm", "90a")]),
        ("9.0a", [("sm", "90a")]),
        ("8.0;8.6 8.9", [("sm", "80")]),
        ("8.9+PTX", [("sm", "80"), ("compute", "80")]),
        ("7.0 7.5 8.0 8.9 9.0 10.0 12.0+PTX", [("sm", "80"), ("sm", "90a"), ("compute", "80")]),
    ],
)
def test_arch_list_gives_the_code_asked_for(setup_module, monkeypatch, arch_list, code):
    if arch_list is None:
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
    flags, built = setup_module["_gencode_flags"]()
    assert built == code and len(flags) == len(code)


def test_arch_list_with_nothing_buildable_is_an_error(setup_module, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.5;10.0")
    with pytest.raises(SystemExit, match="names no architecture the kernels build for"):
        setup_module["_gencode_flags"]()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on the PATH")
def test_toolkit_is_found_from_the_nvcc_on_the_path(setup_module, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    root = setup_module["_toolkit_root"]()
    assert os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def test_no_toolkit_is_a_clear_error(setup_module, monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="no nvcc on the PATH; set CUDA_HOME"):
        setup_module["_toolkit_root"]()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match="holds no CUDA toolkit"):
        setup_module["_toolkit_root"]()


def test_ablation_bits_become_one_define(setup_module, monkeypatch):
    monkeypatch.delenv("FLASH_MLA_BACKEND_SM90_ABLATE", raising=False)
    assert setup_module["_ablation_flags"]() == []
    monkeypatch.setenv("FLASH_MLA_BACKEND_SM90_ABLATE", "0")
    assert setup_module["_ablation_flags"]() == []
    monkeypatch.setenv("FLASH_MLA_BACKEND_SM90_ABLATE", "6")
    assert setup_module["_ablation_flags"]() == ["-DFLASH_MLA_BACKEND_SM90_ABLATE=6"]


def test_ablation_bits_that_are_no_number_are_an_error(setup_module, monkeypatch):
    monkeypatch.setenv("FLASH_MLA_BACKEND_SM90_ABLATE", "no-qk")
    with pytest.raises(SystemExit, match="FLASH_MLA_BACKEND_SM90_ABLATE='no-qk' must be a number"):
        setup_module["_ablation_flags"]()
