"""The server forces offline mode and keeps every cache off the models volume."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from hubless_server.core.offline import apply_offline_env


def test_offline_switches_are_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    apply_offline_env()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert constants.HF_HUB_OFFLINE is True


def test_caches_default_to_the_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", "/explicit/triton")
    apply_offline_env()
    assert os.environ["TORCH_HOME"].startswith(tempfile.gettempdir())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"].startswith(tempfile.gettempdir())
    assert os.environ["TRITON_CACHE_DIR"] == "/explicit/triton"  # explicit settings are kept


def test_importing_the_package_applies_it() -> None:
    code = "import os, hubless_server; print(os.environ['HF_HUB_OFFLINE'], os.environ['HF_HOME'])"
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    env.pop("HF_HOME", None)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    offline, hf_home = result.stdout.split()
    assert offline == "1"
    assert hf_home.startswith(tempfile.gettempdir())
