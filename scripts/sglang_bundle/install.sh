#!/usr/bin/env bash
# Installs the Python-only SGLang 0.5.23 bundle (scripts/make_sglang_bundle.sh) into $SITE
# (default /tmp/site) on the GPU host, then checks that the modules our plugin and
# tests/sglang_plugin use import. Run from anywhere; needs only python3 with torch 2.11.
#   afterwards: export PYTHONPATH=$SITE:$PYTHONPATH
# The dependency tree was installed by pip from cp312 wheels when the bundle was built (shipped as
# one xz tarball: the wheels would not fit the copy to the host), so here it is only unpacked.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SITE="${SITE:-/tmp/site}"
PY="${PYTHON:-python3}"
mkdir -p "$SITE"
"$PY" -c 'import sys, torch; assert sys.version_info[:2] == (3, 12), sys.version' ||
  { echo "install.sh: the bundle's compiled dependencies are for CPython 3.12" >&2; exit 1; }
tar -xJf deps-py312.tar.xz -C "$SITE"
# SGLang's .py files and dist-info (our plugin reads importlib.metadata.version("sglang")).
tar -xJf sglang-0.5.23-py.tar.xz -C "$SITE"
# Import stubs: the shared helper always; each stub package only where the host has no working one.
cp stubs/_sglang_bundle_stub.py "$SITE/"
install_stub() { rm -rf "${SITE:?}/$1"; cp -r "stubs/$1" "$SITE/$1" && touch "$SITE/$1/.sglang-bundle-stub"; }
host_packages=()
for pkg in sgl_kernel flashinfer flash_mla PIL torchvision sentencepiece setproctitle datasets; do
  if [ -e "$SITE/$pkg" ] && [ ! -f "$SITE/$pkg/.sglang-bundle-stub" ]; then
    continue  # a real one in $SITE
  fi
  rm -rf "${SITE:?}/$pkg"
  if PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import $pkg" >/dev/null 2>&1; then
    echo "install.sh: using the machine's own $pkg"
    host_packages+=("$pkg")
  else
    install_stub "$pkg"
  fi
done
check_imports() { PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" check_imports.py "$@"; }
if ! check_imports -v; then
  # A package of the machine's own can import alone and still break the bundle's transformers
  # (the H100 host's, 2026-12-06: AutoProcessor failed to import); the attention path calls none
  # of them, so the stubs, as on a machine without them.
  [ ${#host_packages[@]} -gt 0 ] || exit 1
  echo "install.sh: the imports fail with the machine's own ${host_packages[*]}; using the stubs instead"
  for pkg in "${host_packages[@]}"; do install_stub "$pkg"; done
  check_imports -v
fi
echo "installed; use: export PYTHONPATH=$SITE:\$PYTHONPATH"
