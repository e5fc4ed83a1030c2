"""flash_mla_backend and its vLLM plugin package import where vLLM is not installed."""

import subprocess
import sys

IMPORT_WITHOUT_VLLM = """
import sys
sys.modules["vllm"] = None  # any import of vllm now fails, as if it were not installed
import flash_mla_backend
from flash_mla_backend import vllm_plugin
from flash_mla_backend.vllm_plugin import compat
assert not any(name == "vllm" or name.startswith("vllm.") for name in sys.modules if sys.modules[name] is not None)
print("ok", vllm_plugin.BACKEND_CLASS_PATH, compat.SUPPORTED_VLLM_VERSIONS)
"""


def test_package_and_plugin_module_import_without_vllm():
    done = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_VLLM], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")
