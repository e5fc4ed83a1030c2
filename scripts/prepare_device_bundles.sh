#!/usr/bin/env bash
# Builds, under .device/ (git-ignored), what the GPU host needs for the vLLM and SGLang checks; it
# has no network, so this runs here (it downloads from PyPI), and the run tool carries the folders over.
#   .device/vllm-bundle  Python-only vLLM 0.26.0: tests/vllm_plugin on the GPU   (shared/tools/vllm-gpu-bundle)
#   .device/vllm-e2e     vLLM 0.26.0's offline engine: end-to-end check  (shared/tools/vllm-gpu-e2e)
#   .device/sglang-bundle  Python-only SGLang 0.5.23: tests/sglang_plugin on the GPU
#                          (scripts/make_sglang_bundle.sh)
# A folder that exists is kept; delete it to rebuild. docs/gpu-host.md says how the GPU host uses them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${SHARED_TOOLS:-$ROOT/../shared/tools}"

build() {  # build FOLDER MAKE_SCRIPT
    if [ -d "$1" ]; then
        echo "prepare_device_bundles: $1 exists, kept"
        return
    fi
    # Into a temporary folder first, so that a failed build leaves nothing that looks complete.
    rm -rf "$1.partial"
    bash "$2" "$1.partial"
    mv "$1.partial" "$1"
}

mkdir -p "$ROOT/.device"
build "$ROOT/.device/vllm-bundle" "$TOOLS/vllm-gpu-bundle/make-bundle.sh"
build "$ROOT/.device/vllm-e2e" "$TOOLS/vllm-gpu-e2e/make-parts.sh"
build "$ROOT/.device/sglang-bundle" "$ROOT/scripts/make_sglang_bundle.sh"
du -sh "$ROOT/.device/vllm-bundle" "$ROOT/.device/vllm-e2e/part1" "$ROOT/.device/vllm-e2e/part2" \
  "$ROOT/.device/sglang-bundle"
