"""The plugin as vLLM finds and loads it: entry point, registry override, log line, the disable
variable, an unsupported vLLM left alone, the "flashmla" name in vLLM's configuration, and a
worker process started with spawn."""

import importlib.metadata
import json
import logging
import multiprocessing
import runpy
import subprocess
import sys

import pytest

pytest.importorskip("vllm.plugins", reason="vLLM is not installed")

import vllm.platforms  # noqa: E402
import vllm.plugins  # noqa: E402
from vllm.config import AttentionConfig, DeviceConfig, VllmConfig, set_current_vllm_config  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402

from flash_mla_backend import __version__, vllm_plugin  # noqa: E402
from flash_mla_backend.vllm_plugin import compat  # noqa: E402
from flash_mla_backend.vllm_plugin.backend import FlashMLAPluginBackend  # noqa: E402


def user_choosing(attention_config):
    """The context vLLM selects backends in, for a user who passed this attention config."""
    return set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"),
                                              attention_config=attention_config))


@pytest.fixture
def plugin_log_records():
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    saved_level = vllm_plugin.logger.level
    vllm_plugin.logger.setLevel(logging.DEBUG)
    vllm_plugin.logger.addHandler(handler)
    yield records
    vllm_plugin.logger.removeHandler(handler)
    vllm_plugin.logger.setLevel(saved_level)


def test_entry_point_is_declared_in_vllms_plugin_group():
    (entry_point,) = [
        ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins") if ep.name == "flash_mla_backend"
    ]
    assert entry_point.value == "flash_mla_backend.vllm_plugin:register"
    assert entry_point.load() is vllm_plugin.register


def test_vllm_plugin_loader_points_flashmla_at_our_backend(restore_flashmla_registration, monkeypatch):
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    monkeypatch.setattr(vllm.plugins, "plugins_loaded", False)  # as in a freshly started process
    restore_flashmla_registration.clear_override()

    vllm.plugins.load_general_plugins()

    assert AttentionBackendEnum.FLASHMLA.get_path() == vllm_plugin.SELECTION_PATH
    with user_choosing(AttentionConfig(backend=AttentionBackendEnum.FLASHMLA)):
        assert AttentionBackendEnum.FLASHMLA.get_class() is FlashMLAPluginBackend
    with user_choosing(AttentionConfig()):
        assert AttentionBackendEnum.FLASHMLA.get_class().__module__ == "vllm.v1.attention.backends.mla.flashmla"
    assert FlashMLAPluginBackend.get_name() == "FLASHMLA"


def test_register_is_idempotent_and_logs_one_line(restore_flashmla_registration, monkeypatch, plugin_log_records):
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    restore_flashmla_registration.clear_override()

    vllm_plugin.register()
    vllm_plugin.register()

    assert AttentionBackendEnum.FLASHMLA.get_path() == vllm_plugin.SELECTION_PATH
    (record,) = plugin_log_records
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert f"flash-mla-backend {__version__} registered with vLLM {compat.installed_vllm_version()}" in message
    assert "--attention-backend flashmla runs its kernels" in message
    assert f"vLLM's automatic choice is unchanged ({vllm_plugin.AUTOMATIC_ENV}=1 lets it pick them" in message


def test_disable_variable_keeps_vllms_own_backend(restore_flashmla_registration, monkeypatch, plugin_log_records):
    monkeypatch.setenv(vllm_plugin.DISABLE_ENV, "1")
    restore_flashmla_registration.clear_override()

    vllm_plugin.register()

    assert not AttentionBackendEnum.FLASHMLA.is_overridden()
    assert AttentionBackendEnum.FLASHMLA.get_path() == AttentionBackendEnum.FLASHMLA.value
    (record,) = plugin_log_records
    assert f"{vllm_plugin.DISABLE_ENV} is set" in record.getMessage()


@pytest.mark.parametrize("version", ["0.25.1", "0.34.0"])
def test_unsupported_vllm_is_left_alone(restore_flashmla_registration, monkeypatch, plugin_log_records, version):
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    monkeypatch.setattr(compat, "installed_vllm_version", lambda: version)
    restore_flashmla_registration.clear_override()

    vllm_plugin.register()

    assert not AttentionBackendEnum.FLASHMLA.is_overridden()
    (record,) = plugin_log_records
    assert record.levelno == logging.WARNING
    assert f"supports vLLM {compat.SUPPORTED_VLLM_VERSIONS}, not the installed {version}" in record.getMessage()
    assert "FLASHMLA is vLLM's own" in record.getMessage()


@pytest.mark.parametrize(
    "version, supported", [("0.26.0", True), ("0.33.0+cu130", True), ("0.25.1", False), ("0.34.0", False)]
)
def test_supported_vllm_version_range(version, supported):
    assert compat.is_supported_vllm_version(version) is supported


def test_flashmla_name_resolves_through_vllms_attention_config(our_flashmla_registration):
    # --attention-backend flashmla goes through validate_backend_before; LLM(attention_config=
    # {"backend": "flashmla"}) and --attention-config.backend through the config's own parsing.
    assert AttentionConfig.validate_backend_before("flashmla") is AttentionBackendEnum.FLASHMLA
    config = AttentionConfig(**{"backend": "flashmla"})
    assert config.backend is AttentionBackendEnum.FLASHMLA
    with user_choosing(config):
        assert config.backend.get_class() is FlashMLAPluginBackend


def test_flashmla_name_resolves_through_vllms_command_line(our_flashmla_registration, cuda_platform_class, monkeypatch):
    from vllm.engine.arg_utils import EngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # The parser's defaults ask the platform for the device type, which vLLM cannot infer on a
    # machine without a GPU; the CUDA platform answers as on a GPU server.
    monkeypatch.setattr(vllm.platforms, "current_platform", cuda_platform_class())

    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    engine_args = EngineArgs.from_cli_args(parser.parse_args(["--model", "any", "--attention-backend", "flashmla"]))

    backend = AttentionConfig.validate_backend_before(engine_args.attention_backend)
    with user_choosing(AttentionConfig(backend=backend)):
        assert backend.get_class() is FlashMLAPluginBackend


SPAWNED_WORKER = """
import json
import torch
import vllm.plugins
from vllm.v1.attention.backends.registry import AttentionBackendEnum

vllm.plugins.load_general_plugins()  # what each vLLM worker process does first
with open(result_path, "w") as f:
    json.dump({"flashmla": AttentionBackendEnum.FLASHMLA.get_path(),
               "cuda_initialized": torch.cuda.is_initialized()}, f)
"""


def test_plugin_registers_in_a_spawned_worker_process(tmp_path, monkeypatch):
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    script, result = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(SPAWNED_WORKER)
    # runpy.run_path is importable in the fresh interpreter, whatever pytest's import mode.
    worker = multiprocessing.get_context("spawn").Process(
        target=runpy.run_path, args=(str(script),), kwargs={"init_globals": {"result_path": str(result)}}
    )
    worker.start()
    worker.join(timeout=300)

    assert worker.exitcode == 0
    # Registered, and without touching CUDA (vLLM has not picked the worker's GPU yet at that point).
    assert json.loads(result.read_text()) == {"flashmla": vllm_plugin.SELECTION_PATH, "cuda_initialized": False}


def test_log_line_shows_in_a_fresh_vllm_process(monkeypatch):
    # Whether or not vLLM has set up its logging when it loads plugins (see compat.log_line), the
    # user sees the line on stdout, where vLLM logs by default.
    monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    done = subprocess.run(
        [sys.executable, "-c", "import vllm.plugins; vllm.plugins.load_general_plugins()"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if "flash-mla-backend" in line]
    assert f"flash-mla-backend {__version__} registered with vLLM" in line
    assert "INFO" in line
