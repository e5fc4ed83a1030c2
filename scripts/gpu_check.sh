#!/usr/bin/env bash
# Everything that runs on a GPU machine: build, GPU tests, benchmark, sanitizers, and the vLLM
# checks. Results and logs go to $OUT (default ./gpu-results). Stages run in the order given
# (default: build test bench):
#   build       compile and install the package (editable) into the machine's python3
#   test        the kernels' GPU tests (pytest -m gpu, plugin tests apart)
#   bench       python -m flash_mla_backend.bench (BENCH_ARGS: its arguments, default none)
#   variants    builds every .variants/NAME at once (scripts/make_variant.sh: an older revision,
#               renamed, or a stage-ablated build)
#   compare     the benchmark with peers in the same process: every built .variants/NAME and, if
#               .peers/flash_mla is there (../shared/tools/anchors), upstream FlashMLA
#               (COMPARE_ARGS: further benchmark arguments, default --kv-cache bf16)
#   sanitize    compute-sanitizer memcheck, racecheck and synccheck on small cases of each kernel
#   vllm-tests  tests/vllm_plugin on the GPU, against the vLLM in /tmp/site (from the e2e stage, or
#               from .device/vllm-bundle if no vLLM is there yet)
#   sglang-tests  tests/sglang_plugin on the GPU, against the Python-only SGLang 0.5.23 of
#               .device/sglang-bundle (scripts/make_sglang_bundle.sh), installed into /tmp/site-sglang
#               if no SGLang is there yet: a folder of its own, as its dependencies (pydantic,
#               transformers 5, ...) are not the versions vLLM's bundles put into /tmp/site
#   e2e-park    first copy of the end-to-end check: park .device/vllm-e2e/part1 in /tmp/p
#   e2e         second copy, same machine: vLLM 0.26.0's offline engine (installed from
#               ../shared/tools/vllm-gpu-e2e's parts) serves a tiny DeepSeek model, TRITON_MLA against
#               our FLASHMLA, token by token: scripts/vllm_e2e.py (E2E_BACKENDS, E2E_KV_DTYPE,
#               E2E_EAGER, E2E_PHASES, E2E_TOL, E2E_MTP for speculative decoding with an MTP draft);
#               E2E_SPAWN=1 runs the engine core in a spawned process, which must load our plugin itself
# Build-time packages the machine lacks (nvidia-cutlass) come from wheels in .whl/ if present;
# .device/ is made by scripts/prepare_device_bundles.sh (docs/gpu-host.md says what to carry when).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
SITE=/tmp/site
SGLANG_SITE=/tmp/site-sglang
mkdir -p "$OUT"
stages="${*:-build test bench}"
status=0
export PYTHONUNBUFFERED=1
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 1
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
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
      run_stage test python3 -m pytest -m gpu tests/ --ignore=tests/vllm_plugin --ignore=tests/sglang_plugin \
        -q -rs --durations=10 -p no:cacheprovider
      ;;
    bench)
      # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
      run_stage bench python3 -m flash_mla_backend.bench --json "$OUT/bench.json" ${BENCH_ARGS:-}
      ;;
    variants)
      # All at once, sharing the cores (one build leaves most of them idle while its largest file
      # compiles); a variant's build.env (make_variant.sh) holds its build settings.
      variants=(.variants/*/)
      [ -d "${variants[0]}" ] || continue
      jobs=$(( (${MAX_JOBS:-16} + ${#variants[@]} - 1) / ${#variants[@]} ))
      for variant in "${variants[@]}"; do
        (
          cd "$variant" || exit 1
          if [ -f build.env ]; then set -a; . ./build.env; set +a; fi
          MAX_JOBS=$jobs run_stage "variant-$(basename "$variant")" python3 setup.py build_ext --inplace >/dev/null
        ) &
      done
      for job in $(jobs -p); do wait "$job" || status=1; done
      for variant in "${variants[@]}"; do tail -n 1 "$OUT/variant-$(basename "$variant").log"; done
      ;;
    compare)
      peers=() paths=()
      for variant in .variants/*/; do
        [ -d "$variant" ] && peers+=("$(basename "$variant")") && paths+=("$PWD/$variant")
      done
      [ -d .peers/flash_mla ] && peers+=(flash_mla) && paths+=("$PWD/.peers")
      list() { local IFS=$1; shift; echo "$*"; }
      # shellcheck disable=SC2086
      PYTHONPATH="$(list : "${paths[@]}")${PYTHONPATH:+:$PYTHONPATH}" run_stage compare \
        python3 -m flash_mla_backend.bench --compare "$(list , "${peers[@]}")" --json "$OUT/compare.json" \
        ${COMPARE_ARGS:---kv-cache bf16}
      ;;
    sanitize)
      for tool in memcheck racecheck synccheck; do
        run_stage "sanitize-$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 \
          python3 -m pytest -m gpu tests/test_decode_gpu.py -q -p no:cacheprovider \
          -k "(decode_sweep and (b2-sq2-sk140-hq16 or b6-sq2-sk140-hq64)) or (fp8_decode_sweep and b6-sq4-sk140-hq16)"
      done
      # Misuse: no read or write outside the inputs (each case runs in a child process, which
      # compute-sanitizer follows).
      run_stage sanitize-memcheck-misuse compute-sanitizer --tool memcheck --error-exitcode 1 \
        python3 -m pytest -m gpu tests/test_misuse_gpu.py -q -p no:cacheprovider \
        -k "(sm80_m16-bf16 and block-past-end) or (sm90-bf16 and negative-block) or (sm90_seesaw-bf16 and block-past-end) or (sm90_narrow16-bf16 and negative-block) or (sm90_narrow32-bf16 and block-past-end) or (sm80_m64-fp8 and stale) or (sm90-fp8 and block-past-end) or (sm90_narrow16-fp8 and negative-block) or (sm90_narrow32-fp8 and block-past-end)"
      ;;
    vllm-tests)
      [ -d "$SITE/vllm" ] || bash .device/vllm-bundle/install.sh || exit 1
      PYTHONPATH="$SITE:$PYTHONPATH" run_stage vllm-tests python3 -m pytest -rs -m gpu tests/vllm_plugin -q \
        -p no:cacheprovider
      ;;
    sglang-tests)
      if [ ! -d "$SGLANG_SITE/sglang" ]; then
        SITE="$SGLANG_SITE" run_stage sglang-install bash .device/sglang-bundle/install.sh ||
          { rm -rf "$SGLANG_SITE"; exit 1; }  # its log says why; the next run installs afresh
      fi
      PYTHONPATH="$SGLANG_SITE${PYTHONPATH:+:$PYTHONPATH}" run_stage sglang-tests \
        python3 -m pytest -rs -m gpu tests/sglang_plugin -q -p no:cacheprovider
      ;;
    e2e-park)
      mkdir -p /tmp/p && cp -r .device/vllm-e2e/part1 /tmp/p/ || exit 1
      ;;
    e2e)
      [ -d .device/vllm-e2e/part1 ] || cp -r /tmp/p/part1 .device/vllm-e2e/ || exit 1
      name=e2e${E2E_KV_DTYPE:+-$E2E_KV_DTYPE}
      [ "${E2E_MTP:-0}" != 0 ] && name=$name-mtp$E2E_MTP
      [ "${E2E_EAGER:-1}" = 0 ] && name=$name-graphs
      if [ "${E2E_SPAWN:-0}" = 1 ]; then
        # Insecure serialization lets vllm_e2e.py's probe of the attention impls reach the other process.
        export VLLM_ENABLE_V1_MULTIPROCESSING=1 VLLM_WORKER_MULTIPROC_METHOD=spawn VLLM_ALLOW_INSECURE_SERIALIZATION=1
        name=$name-spawn
      fi
      # Installed once per machine (~45 s), then each e2e stage runs the check alone.
      if [ ! -f "$SITE/.vllm-engine-installed" ]; then
        SKIP_E2E=1 SITE="$SITE" run_stage e2e-install bash .device/vllm-e2e/install.sh || exit 1
        touch "$SITE/.vllm-engine-installed"
      fi
      # FlashInfer is not installed there; VLLM_USE_FLASHINFER_SAMPLER=0 keeps vLLM's sampler off it.
      E2E_BACKENDS=${E2E_BACKENDS:-TRITON_MLA,FLASHMLA} VLLM_USE_FLASHINFER_SAMPLER=0 TVM_FFI_DISABLE_TORCH_C_DLPACK=1 \
        PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" run_stage "$name" python3 scripts/vllm_e2e.py
      # Our plugin's log line in every FLASHMLA engine process (each phase; the spawned one too).
      grep -H "flash-mla-backend" /tmp/v26e2e/log_*_FLASHMLA.txt | tee -a "$OUT/$name.log" ||
        { echo "no plugin log line found"; status=1; }
      ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
exit $status
