#!/usr/bin/env bash
# Copies revision REV of this repository to .variants/NAME with the package and its torch op
# namespace renamed to NAME, so that one GPU process can load it next to the current build and
# the benchmark can time the two side by side (`python -m flash_mla_backend.bench --compare NAME`
# with .variants/NAME on PYTHONPATH): how a kernel change is measured against the code before it.
#
#   bash scripts/make_variant.sh REV NAME       (here: it reads git)
#   (cd .variants/NAME && python3 setup.py build_ext --inplace)      (there, on the GPU machine)
set -euo pipefail
rev=$1 name=$2
[[ $name =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "NAME must be a Python identifier in lower case" >&2; exit 2; }
root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
dest="$root/.variants/$name"
rm -rf "$dest"
mkdir -p "$dest"
git -C "$root" archive "$rev" csrc flash_mla_backend setup.py pyproject.toml README.md | tar -x -C "$dest"
mv "$dest/flash_mla_backend" "$dest/$name"
grep -rlZ flash_mla_backend "$dest" | xargs -0 sed -i "s/flash_mla_backend/$name/g"
echo "made $dest from $(git -C "$root" rev-parse --short "$rev")"
