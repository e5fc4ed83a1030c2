#!/usr/bin/env bash
# Runs the SGLang plugin tests (tests/sglang_plugin) in their own virtual environment.
#
#   bash scripts/test_sglang.sh [VENV [PYTEST_ARGS...]]      (VENV defaults to .venv-sglang)
#
# SGLang 0.5.23 pins torch 2.14.1 and vLLM 0.33 pins torch 2.14.0, so SGLang gets a venv of its
# own. Our package is installed editable without the CUDA kernels: the CPU tests exercise only the
# plugin's class replacement.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/venv_lib.sh"
VENV="${1:-$ROOT/.venv-sglang}"

cd "$ROOT"
ensure_venv "$VENV" "$(python_version 3.11)" "$ROOT/requirements/sglang.txt"
FLASH_MLA_BACKEND_SKIP_CUDA_BUILD=1 install_package "$VENV"
run_pytest "$VENV" -rs tests/sglang_plugin "${@:2}"
