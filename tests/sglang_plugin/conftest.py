"""Runs SGLang-importing checks in fresh Python processes.

A fresh process per check because SGLang loads its plugins once per process (as in a real server,
where the launcher and each scheduler process load them anew). On a machine without a GPU driver,
importing SGLang's FlashMLA backend fails: its `flash_mla` extension links against libcuda.so.1.
An empty shared library with that soname satisfies the loader (no CUDA call is made), so the
child processes get one on LD_LIBRARY_PATH when the real driver is missing.
"""

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from flash_mla_backend.sglang_plugin import DISABLE_ENV

CHILD_TIMEOUT_S = 600


def _driver_is_installed() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def child_env(tmp_path_factory):
    """The environment of a child process that imports SGLang's FlashMLA backend."""
    env = {name: value for name, value in os.environ.items() if name != DISABLE_ENV}
    if _driver_is_installed():
        return env
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("the SGLang tests need a C compiler (cc) to build a stand-in libcuda.so.1 on this GPU-less machine")
    stub_dir = tmp_path_factory.mktemp("libcuda_stub")
    source = stub_dir / "empty.c"
    source.write_text("/* stands in for the CUDA driver library at load time only */\n")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(stub_dir / "libcuda.so.1"), str(source)],
        check=True,
    )
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(stub_dir), env.get("LD_LIBRARY_PATH")]))
    return env


@pytest.fixture(scope="session")
def run_child(child_env):
    """run_child(code, env=None) -> (result, stderr).

    Runs `code` in a fresh interpreter; its last stdout line must be a JSON document, returned
    as `result`. Fails the test with the child's stderr if it exits non-zero.
    """

    def run(code, env=None):
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            env={**child_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_S,
        )
        if proc.returncode != 0:
            pytest.fail(f"child process exited with {proc.returncode}; its stderr ends:\n{proc.stderr[-6000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr

    return run
