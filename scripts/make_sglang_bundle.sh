#!/usr/bin/env bash
# Builds a Python-only SGLang 0.5.23 bundle for the GPU host (Python 3.12, torch 2.11.0+cu130,
# triton, pytest; no SGLang, no network), so that tests/sglang_plugin runs there. Run it here: it
# downloads from PyPI.
#   usage: scripts/make_sglang_bundle.sh OUTDIR   then, on the GPU host: bash OUTDIR/install.sh
#   afterwards: export PYTHONPATH=${SITE:-/tmp/site}:$PYTHONPATH
# The sglang wheel is a CPython 3.11 binary built for torch 2.14.1, but all that its attention
# path needs is Python: the bundle holds the wheel's files minus its compiled Rust extensions (and
# minus multimodal_gen, the diffusion runtime); the cp312 / pure-Python packages that SGLang's
# attention, memory-pool, model-runner and test-kit modules import, installed here by pip from
# their wheels into one tree; and import stubs of our own (scripts/sglang_bundle/stubs) for the
# compiled packages built for torch 2.14.1 (sgl_kernel, flashinfer, flash_mla) and for compiled
# libraries those modules import but the attention path never uses (PIL, torchvision,
# sentencepiece, setproctitle, datasets). Both trees are xz tarballs (the 56 wheels alone would be
# about 50 MB).
# Size: about 31 MB, 23 MB of it the dependencies (numpy and transformers the largest).
# Takes about 5 minutes (xz -9e).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
here="$ROOT/scripts/sglang_bundle"
out="${1:?usage: make_sglang_bundle.sh OUTDIR}"
SGLANG_VERSION=0.5.23
# The interpreter that installs the wheels into the tree: Python 3.12, as on the GPU host.
is_py312() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; }
if [ -z "${PY312:-}" ]; then
  for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3; do
    if is_py312 "$candidate"; then PY312=$candidate; break; fi
  done
fi
is_py312 "${PY312:-none}" || { echo "make_sglang_bundle: no Python 3.12 found; set PY312" >&2; exit 1; }

# What the modules in scripts/sglang_bundle/check_imports.py import, found by importing them on
# Python 3.12 + torch 2.11 (with and without a pretended GPU), at SGLang 0.5.23's pins where it has
# one. Not here: torch's own dependencies (filelock, fsspec, jinja2, networkx, sympy,
# typing-extensions, cuda-bindings, setuptools), pytest's (packaging, pygments), triton.
DEPS=(
  aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 annotated-doc==0.0.7 annotated-types==0.8.0
  anyio==4.16.0 apache-tvm-ffi==0.1.11 attrs==26.1.0 certifi==2026.10.19.post1 click==8.5.1
  compressed-tensors==0.18.0 dill==0.4.1 distro==1.9.0 einops==0.8.2 fastapi==0.136.3 frozenlist==1.8.0
  gguf==0.19.0 h11==0.16.0 httpcore==1.0.9 httpcore2==2.16.2 httpx==0.28.1 httpx2==2.16.2
  huggingface-hub==2.4.0 idna==3.20 ipython==9.18.1 jiter==0.19.0 loguru==0.7.3 msgspec==0.23.0
  multidict==7.2.1 numpy==2.5.5 nvidia-ml-py==13.615.71 openai==2.8.0 orjson==3.13.0
  partial-json-parser==0.2.1.1.post7 propcache==0.5.4 psutil==7.2.2 pybase64==1.5.1 pydantic==2.14.4
  pydantic-core==2.50.5 pyyaml==6.0.4 pyzmq==27.3.0 regex==2026.11.19 requests==2.34.2
  safetensors==0.8.0 sniffio==1.3.1 starlette==1.10.0 tokenizers==0.23.2
  tqdm==4.70.1 traitlets==5.16.1 transformers==5.19.0 truststore==0.10.5 typer==0.29.2
  typing-inspection==0.4.5 urllib3==2.8.0 uvicorn==0.54.0 yarl==1.25.1
)

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"

# SGLang's own files, as the vLLM bundle does it: everything but compiled code.
python3 -m pip download -q --no-deps -d "$tmp" "sglang==$SGLANG_VERSION"
mkdir -p "$tmp/sglang-tree"
(cd "$tmp/sglang-tree" && unzip -q "$tmp"/sglang-"$SGLANG_VERSION"-*.whl)
echo "compiled modules of the sglang wheel, left out (its Rust extensions; the modules in check_imports.py import without them):"
(cd "$tmp/sglang-tree" && find sglang -name '*.so' | sort | sed 's/^/  /')
(cd "$tmp/sglang-tree" && find sglang "sglang-$SGLANG_VERSION.dist-info" -type f ! -name '*.so' \
   ! -path 'sglang/multimodal_gen/*' ! -name RECORD | LC_ALL=C sort) > "$tmp/sglang-files"
tar -cf - -C "$tmp/sglang-tree" -T "$tmp/sglang-files" | xz -9e -T0 > "$out/sglang-$SGLANG_VERSION-py.tar.xz"

# The dependencies: cp312 manylinux wheels (or pure ones), installed by pip into one tree.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
  --platform manylinux_2_5_x86_64 -d "$tmp/whl" "${DEPS[@]}"
"$PY312" -m pip install -q --no-index --no-deps --no-compile --target "$tmp/deps-tree" "$tmp"/whl/*.whl
(cd "$tmp/whl" && ls *.whl) > "$out/wheels.txt"
# Left out of the tree, to keep the bundle small, only what nothing imports at run time: console
# scripts, test suites, type stubs, TVM-FFI's C++ headers (for JIT builds of SGLang kernels the
# bundle does not run), and transformers' modular_*.py (the sources its modeling files are
# generated from). numpy's f2py stays: a host's scipy (which transformers imports) reaches it
# through `from numpy import *` (the H100 host, 2026-12-07).
(cd "$tmp/deps-tree" && rm -rf bin tvm_ffi/include tvm_ffi/3rdparty &&
   find . -depth \( -name tests -o -name __pycache__ \) -type d -exec rm -rf {} + &&
   find . \( -name '*.pyi' -o -path './transformers/models/*/modular_*.py' \) -delete)
tar -cf - -C "$tmp/deps-tree" . | xz -9e -T0 > "$out/deps-py312.tar.xz"

cp -r "$here/stubs" "$here/install.sh" "$here/check_imports.py" "$out/"
find "$out/stubs" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$out"
