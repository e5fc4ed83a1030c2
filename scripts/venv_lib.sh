# Shared by the scripts that test in virtual environments of their own (source it).

# ensure_venv VENV PYTHON REQUIREMENTS: creates VENV with PYTHON if missing and installs
# REQUIREMENTS into it whenever they differ from what it was last installed from.
ensure_venv() {
    local venv=$1 python=$2 requirements=$3
    if [ ! -x "$venv/bin/python" ]; then
        echo "creating $venv with $python"
        "$python" -m venv "$venv"
    fi
    if ! cmp -s "$requirements" "$venv/.installed-requirements.txt"; then
        echo "installing $requirements into $venv (several GB the first time)"
        "$venv/bin/python" -m pip install -r "$requirements"
        cp "$requirements" "$venv/.installed-requirements.txt"
    fi
}

# python_version X.Y: an interpreter of that version: pythonX.Y on the PATH, else pyenv's if
# pyenv is installed.
python_version() {
    local found
    for found in "python$1" $(command -v pyenv >/dev/null && echo "$(pyenv root)"/versions/"$1".*/bin/"python$1"); do
        if "$found" --version >/dev/null 2>&1; then
            echo "$found"
            return
        fi
    done
    echo "no Python $1 found (pythonX.Y on the PATH or a pyenv version)" >&2
    return 1
}

# install_package VENV: our package, editable; with the CUDA kernels unless
# FLASH_MLA_BACKEND_SKIP_CUDA_BUILD=1 (a failed build fails the caller).
install_package() {
    "$1/bin/python" -m pip install -q --no-build-isolation --no-deps -e "$(dirname "${BASH_SOURCE[0]}")/.."
}

# run_pytest VENV ARGS...: pytest's exit status, except that collecting no test (5) is a failure.
run_pytest() {
    local venv=$1 status=0
    shift
    "$venv/bin/python" -m pytest "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests: the test setup is broken" >&2
        return 1
    fi
    return "$status"
}
