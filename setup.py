"""Builds flash_mla_backend._C, the CUDA kernels, with torch.utils.cpp_extension.

- CUDA_HOME names the toolkit; without it, the toolkit of the nvcc on the PATH (a wrapper script
  included: nvcc itself says where it lives).
- TORCH_CUDA_ARCH_LIST (e.g. "9.0", "8.0;8.9", "8.0+PTX") builds only the architectures named:
  8.x gives the portable kernels as sm_80 code (which every 8.x GPU runs), 9.0 the Hopper kernel
  (and the portable ones) as sm_90a code, +PTX adds compute_80 PTX. Default: all three.
- FLASH_MLA_BACKEND_SKIP_CUDA_BUILD=1 installs the Python package alone (no nvcc needed); the
  kernels then raise a clear error at first use.
- FLASH_MLA_BACKEND_SM90_ABLATE=<bits> (benchmark variants only, scripts/make_variant.sh) leaves
  stages out of the sm90 kernel, which then computes wrong results (csrc/decode/sm90/ablation.h).

The build writes csrc/api/build_info.h (the torch and CUDA it builds against, the code it emits),
compiled into the extension: `python -m flash_mla_backend` reports it and the planner reads it.
"""

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

SKIP_ENV = "FLASH_MLA_BACKEND_SKIP_CUDA_BUILD"
# Benchmark variants only: csrc/decode/sm90/ablation.h
ABLATE_ENV = "FLASH_MLA_BACKEND_SM90_ABLATE"
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


def _toolkit_root():
    """CUDA_HOME, else the root of the toolkit whose nvcc is on the PATH; exits with the reason."""
    advice = f"set CUDA_HOME to the CUDA toolkit's root (the folder with bin/nvcc), or {SKIP_ENV}=1 to install without kernels"
    root = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not root:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            sys.exit(f"flash-mla-backend: no nvcc on the PATH; {advice}")
        # A dry run prints nvcc's own location (TOP), also when `nvcc` is a wrapper script.
        with tempfile.TemporaryDirectory() as scratch:
            source = os.path.join(scratch, "probe.cu")
            open(source, "w").close()
            dry_run = subprocess.run([nvcc, "--dryrun", "-v", "-c", source, "-o", source + ".o"],
                                     capture_output=True, text=True)
        top = re.search(r"^#\$ TOP=(.+)$", dry_run.stderr + dry_run.stdout, re.M)
        root = os.path.realpath(top.group(1).strip()) if top else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if not os.path.isfile(os.path.join(root, "include", "cuda_runtime.h")):
        sys.exit(f"flash-mla-backend: {root} holds no CUDA toolkit (no include/cuda_runtime.h); {advice}")
    return root


# (TORCH_CUDA_ARCH_LIST entry's major version or "+PTX") -> nvcc -gencode flags.
_GENCODES = {
    "8": "-gencode=arch=compute_80,code=sm_80",
    "9": "-gencode=arch=compute_90a,code=sm_90a",
    "PTX": "-gencode=arch=compute_80,code=compute_80",
}


def _gencode_flags():
    """The -gencode flags and the code they give, as (kind, arch) pairs for _build_info."""
    requested = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(";", " ").split()
    keys, skipped = [], []
    for entry in requested or ["8.0", "9.0", "+PTX"]:
        arch, ptx = (entry[:-4], True) if entry.endswith("+PTX") else (entry, False)
        if arch:
            major, _, minor = arch.rstrip("a").partition(".")
            if major == "8" or (major, minor) == ("9", "0"):
                keys.append(major)
            else:
                skipped.append(entry)
        if ptx:
            keys.append("PTX")
    if skipped:
        print(f"flash-mla-backend: TORCH_CUDA_ARCH_LIST names {', '.join(skipped)}, which these kernels are not "
              f"built for (they build for 8.x and 9.0, and as PTX with +PTX); skipped")
    if not keys:
        sys.exit(f"flash-mla-backend: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']!r} names no "
                 f"architecture the kernels build for (8.x, 9.0, +PTX)")
    keys = sorted(set(keys), key=list(_GENCODES).index)
    code = {"8": ("sm", "80"), "9": ("sm", "90a"), "PTX": ("compute", "80")}
    return [_GENCODES[k] for k in keys], [code[k] for k in keys]


def _write_build_info(code, cuda_home):
    import json

    import torch

    def literal(text):
        return json.dumps(str(text))  # a C string literal for these plain ASCII strings

    lines = [
        "// Written by setup.py for each build (not in the source repository): what the extension was",
        "// built against and the code it holds, reported by the build_info op.",
        "#pragma once",
        f"#define FLASH_MLA_BACKEND_BUILT_WITH_TORCH {literal(torch.__version__)}",
        f"#define FLASH_MLA_BACKEND_BUILT_WITH_CUDA {literal(torch.version.cuda)}",
        f"#define FLASH_MLA_BACKEND_BUILT_WITH_CUDA_HOME {literal(cuda_home)}",
        f"// kind_arch, sm = machine code, compute = PTX",
        f"#define FLASH_MLA_BACKEND_BUILT_CODE {literal(' '.join(f'{kind}_{arch}' for kind, arch in code))}",
    ]
    path = os.path.join(ROOT, "csrc", "api", "build_info.h")
    text = "\n".join(lines) + "\n"
    if not os.path.exists(path) or open(path).read() != text:  # unchanged: no rebuild of ops.cpp
        with open(path, "w") as f:
            f.write(text)


def _ablation_flags():
    """nvcc flags for FLASH_MLA_BACKEND_SM90_ABLATE (benchmark variants only)."""
    ablations = os.environ.get(ABLATE_ENV, "0")
    if not ablations.isdigit():
        sys.exit(f"flash-mla-backend: {ABLATE_ENV}={ablations!r} must be a number (the bits of "
                 f"csrc/decode/sm90/ablation.h)")
    if int(ablations) == 0:
        return []
    print(f"flash-mla-backend: {ABLATE_ENV}={ablations}: a benchmark variant whose sm90 kernel computes wrong "
          f"results on purpose")
    return [f"-D{ABLATE_ENV}={int(ablations)}"]


def _extension():
    os.environ["CUDA_HOME"] = _toolkit_root()  # before torch's build helpers look for it
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    gencode_flags, code = _gencode_flags()
    _write_build_info(code, CUDA_HOME)
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
        *gencode_flags,
    ]
    if env_flag("FLASH_MLA_BACKEND_PTXAS_VERBOSE"):
        nvcc_flags.append("-Xptxas=-v")
    nvcc_flags += _ablation_flags()
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
