#!/usr/bin/env bash
# Copies revision REV of this repository to .variants/NAME with the package and its torch op
# namespace renamed to NAME, so that one GPU process can load it next to the current build and
# the benchmark can time the two side by side (`python -m flash_mla_backend.bench --compare NAME`
# with .variants/NAME on PYTHONPATH): how a kernel change is measured against the code before it.
#
# With ABLATE (bits of csrc/decode/sm90/ablation.h), the variant's sm90 kernel leaves those stages
# out: build.env in the variant says so, and the variants stage of scripts/gpu_check.sh builds
# with it.
#
#   bash scripts/make_variant.sh REV NAME [ABLATE]      (here: it reads git)
#   bash scripts/gpu_check.sh variants compare          (there, on the GPU machine)
set -euo pipefail
rev=$1 name=$2 ablate=${3:-0}
[[ $name =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "NAME must be a Python identifier in lower case" >&2; exit 2; }
[[ $ablate =~ ^[0-9]+$ ]] || { echo "ABLATE must be a number" >&2; exit 2; }
root="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
dest="$root/.variants/$name"
rm -rf "$dest"
mkdir -p "$dest"
git -C "$root" archive "$rev" csrc flash_mla_backend setup.py pyproject.toml README.md | tar -x -C "$dest"
mv "$dest/flash_mla_backend" "$dest/$name"
grep -rlZ flash_mla_backend "$dest" | xargs -0 sed -i "s/flash_mla_backend/$name/g"
# Its own kernel-choice variable, so that `bench --kernels NAME` of the current build (which sets
# FLASH_MLA_BACKEND_KERNEL) leaves the variant on its planner's choice.
grep -rlZ FLASH_MLA_BACKEND_KERNEL "$dest" | xargs -0 -r sed -i "s/FLASH_MLA_BACKEND_KERNEL/${name^^}_KERNEL/g"
if [ "$ablate" != 0 ]; then
  grep -q FLASH_MLA_BACKEND_SM90_ABLATE "$dest/setup.py" || { echo "$rev has no sm90 ablations" >&2; exit 2; }
  echo "FLASH_MLA_BACKEND_SM90_ABLATE=$ablate" > "$dest/build.env"
fi
echo "made $dest from $(git -C "$root" rev-parse --short "$rev")"
