#!/usr/bin/env bash
# Build, GPU tests and benchmark on a GPU machine, in one go. Results and logs go to $OUT
# (default ./gpu-results). Stages, in order, any subset: build test bench sanitize (default: build test bench).
# Build-time packages the machine lacks (nvidia-cutlass) are taken from wheels in .whl/ if present.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
stages="${*:-build test bench}"
status=0
export PYTHONUNBUFFERED=1
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

run_stage() {  # name, command...; each stage is stopped after STAGE_TIMEOUT seconds (a hung kernel)
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  timeout -k 10 "${STAGE_TIMEOUT:-400}" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" = 0 ] || status=1
  return "$rc"
}

for stage in $stages; do
  case $stage in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
      python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$OUT/gpu.txt"
      nvcc --version | tail -2 >> "$OUT/gpu.txt"
      MAX_JOBS="${MAX_JOBS:-16}" FLASH_MLA_BACKEND_PTXAS_VERBOSE=1 run_stage build \
        python3 -m pip install -v --no-build-isolation --no-deps --no-index -e . || exit 1
      grep -E "ptxas info|bytes stack frame" "$OUT/build.log" | grep -v "^ *$" > "$OUT/ptxas.txt"
      ;;
    test)
      run_stage test python3 -m pytest -m gpu tests/ --ignore=tests/vllm --ignore=tests/sglang -q -rs --durations=10 -p no:cacheprovider
      ;;
    bench)
      run_stage bench python3 -m flash_mla_backend.bench --json "$OUT/bench.json"
      ;;
    sanitize)
      for tool in memcheck racecheck; do
        run_stage "sanitize-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
          python3 -m pytest -m gpu tests/test_decode_gpu.py -q -p no:cacheprovider -k "sweep and b2-sq2-sk140-hq16"
      done
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
exit $status
