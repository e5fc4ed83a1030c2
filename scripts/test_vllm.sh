#!/usr/bin/env bash
# Runs the vLLM plugin tests against one vLLM release, in a virtual environment of its own.
#
#   bash scripts/test_vllm.sh [VENV [PYTEST_ARGS...]]      (default PYTEST_ARGS: -rs tests/vllm_plugin)
#
# VLLM_REQUIREMENTS names the pin file (default requirements/vllm-0.33.txt); VENV defaults to
# .venv-<pin file name>. Our package is built into the venv, editable and with the CUDA kernels,
# against the CUDA torch that vLLM pins (the toolkit: CUDA_HOME, else the nvcc on the PATH).
#
# The upstream-compatibility check, vLLM 0.26.0 (torch 2.11), runs on Python 3.12 so that its
# in-tree build (flash_mla_backend/_C.cpython-312-*.so) does not replace the 3.11 one of .venv:
#   VLLM_REQUIREMENTS=requirements/vllm-0.26.txt PYTHON_VERSION=3.12 bash scripts/test_vllm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv_lib.sh"
REQUIREMENTS="$(realpath "${VLLM_REQUIREMENTS:-$ROOT/requirements/vllm-0.33.txt}")"
VENV="${1:-$ROOT/.venv-$(basename "$REQUIREMENTS" .txt)}"
export MAX_JOBS="${MAX_JOBS:-2}"

cd "$ROOT"
ensure_venv "$VENV" "$(python_version "${PYTHON_VERSION:-3.11}")" "$REQUIREMENTS"
echo "building flash-mla-backend into $VENV (MAX_JOBS=$MAX_JOBS)"
install_package "$VENV"
if [ $# -gt 1 ]; then
    run_pytest "$VENV" "${@:2}"
else
    run_pytest "$VENV" -rs tests/vllm_plugin
fi
