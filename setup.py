"""Builds flash_mla_backend._C, the CUDA kernels, with torch.utils.cpp_extension.

FLASH_MLA_BACKEND_SKIP_CUDA_BUILD=1 installs the Python package alone (no nvcc needed); the
kernels then raise a clear error at first use.
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup

SKIP_ENV = "FLASH_MLA_BACKEND_SKIP_CUDA_BUILD"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_env_module():
    # The package's own reader of boolean variables, loaded by path: the package itself imports torch.
    spec = importlib.util.spec_from_file_location("_flash_mla_env", os.path.join(ROOT, "flash_mla_backend", "_env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


env_flag = _load_env_module().env_flag


def _cutlass_include():
    # CuTe/CUTLASS headers come from the pinned nvidia-cutlass wheel (a build requirement).
    # Located without importing it: the package's own imports need numpy, scipy and more.
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None:
        sys.exit("flash-mla-backend: the build needs nvidia-cutlass (pip install nvidia-cutlass==4.2.0.0)")
    return os.path.join(spec.submodule_search_locations[0], "source", "include")


def _extension():
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    if CUDA_HOME is None:
        sys.exit(f"flash-mla-backend: nvcc was not found; set CUDA_HOME, or set {SKIP_ENV}=1 to install without kernels")
    sources = sorted(
        os.path.relpath(p, ROOT)
        for pattern in ("csrc/**/*.cpp", "csrc/**/*.cu")
        for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    )
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(CUDA_HOME, "include", "cccl"), _cutlass_include()]
    nvcc_flags = [
        "-O3",
        "--use_fast_math",
        "--expt-relaxed-constexpr",
        # The portable kernels as sm_80 code (also run by sm_86/sm_89) and PTX for newer GPUs;
        # the Hopper kernels as sm_90a code.
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_80,code=compute_80",
        "-gencode=arch=compute_90a,code=sm_90a",
    ]
    if env_flag("FLASH_MLA_BACKEND_PTXAS_VERBOSE"):
        nvcc_flags.append("-Xptxas=-v")
    ext = CUDAExtension(
        name="flash_mla_backend._C",
        sources=sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": ["-O3"], "nvcc": nvcc_flags},
    )
    return [ext], {"build_ext": BuildExtension}


if env_flag(SKIP_ENV):
    print(f"flash-mla-backend: {SKIP_ENV}=1, building without the CUDA kernels; they will raise at first use")
    ext_modules, cmdclass = [], {}
else:
    ext_modules, cmdclass = _extension()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
