"""Settings: flag > environment > default, validation, the documented table."""

from __future__ import annotations

from pathlib import Path

import pytest

from hubless_server.core.config import Settings
from hubless_server.core.flags import build_parser, describe, load_settings, metavar
from hubless_server.core.tasks import TASKS
from hubless_server.core.threads import available_cpus
from hubless_server.core.values import ConfigError, flag_name


def test_defaults() -> None:
    s = load_settings(["--models-dir", "/m"], {})
    assert s.models_dir == Path("/m")
    assert (s.host, s.port, s.metrics_port) == ("0.0.0.0", 50051, 9090)
    assert s.tasks == TASKS
    assert (s.device, s.dtype, s.log_format, s.log_level) == ("auto", "auto", "text", "INFO")
    assert s.verify_sha256 is False and s.load_alternates is True
    assert s.intra_op_threads >= 1


def test_flag_beats_env_beats_default() -> None:
    env = {"HUBLESS_MODELS_DIR": "/env", "HUBLESS_PORT": "7000", "HUBLESS_MAX_QUEUE": "99"}
    s = load_settings(["--port", "8000"], env)
    assert s.port == 8000  # flag over env
    assert s.max_queue == 99  # env over default
    assert s.models_dir == Path("/env")
    assert s.max_batch_size == 64  # default


def test_boolean_flags_and_env() -> None:
    assert load_settings(["--models-dir", "/m"], {"HUBLESS_VERIFY_SHA256": "true"}).verify_sha256
    s = load_settings(["--models-dir", "/m", "--no-verify-sha256"], {"HUBLESS_VERIFY_SHA256": "1"})
    assert s.verify_sha256 is False
    s = load_settings(["--models-dir", "/m", "--no-load-alternates"], {})
    assert s.load_alternates is False


def test_tasks_and_dtype_overrides() -> None:
    s = load_settings(
        ["--models-dir", "/m", "--tasks", "embedding, sentiment"],
        {"HUBLESS_DTYPE_OVERRIDES": "embedding=bfloat16,dialogpt-small=float32"},
    )
    assert s.tasks == ("embedding", "sentiment")
    assert s.dtype_for("embedding", "all-minilm-l6-v2") == "bfloat16"
    assert s.dtype_for("conversation", "dialogpt-small") == "float32"
    assert s.dtype_for("conversation", "dialogpt-medium") == "auto"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--models-dir"),
        (["--port", "x"], {"HUBLESS_MODELS_DIR": "/m"}, "--port='x'"),
        ([], {"HUBLESS_MODELS_DIR": "/m", "HUBLESS_PORT": "x"}, "HUBLESS_PORT"),
        (["--tasks", "translation"], {"HUBLESS_MODELS_DIR": "/m"}, "unknown task"),
        (["--dtype", "int8"], {"HUBLESS_MODELS_DIR": "/m"}, "not one of"),
        (["--dtype-overrides", "embedding"], {"HUBLESS_MODELS_DIR": "/m"}, "bad override"),
        (["--max-batch-size", "0"], {"HUBLESS_MODELS_DIR": "/m"}, "at least 1"),
        (["--max-queue", "2", "--max-texts", "3"], {"HUBLESS_MODELS_DIR": "/m"}, "--max-queue"),
        ([], {"HUBLESS_MODELS_DIR": "/m", "HUBLESS_VERIFY_SHA256": "maybe"}, "boolean"),
    ],
)
def test_invalid_values_name_their_source(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(argv, env)


def test_every_field_is_documented() -> None:
    rows = describe()
    assert all(
        flag.startswith("--") and env.startswith("HUBLESS_") and text for flag, env, _, text in rows
    )
    assert rows[2][:3] == ("--port", "HUBLESS_PORT", "50051")


def test_help_shows_a_metavar_and_the_default_of_every_setting() -> None:
    """``hubless-serve --help``: a word for each value (PATH, PORT, N, SECONDS, ...), never
    the generic VALUE, and each setting's default (or that it is required)."""
    import dataclasses

    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    kinds = {metavar(f.name) for f in dataclasses.fields(Settings) if not f.metadata["bool"]}
    assert {"PATH", "PORT", "N", "SECONDS", "LIST", "DTYPE", "HOST", "SIZE"} <= kinds
    text = " ".join(parser.format_help().split())
    for f in dataclasses.fields(Settings):
        action = actions[f.name]
        if not f.metadata["bool"]:
            assert action.metavar == metavar(f.name) != "VALUE", f.name
            assert f"{flag_name(f.name)} {action.metavar}" in text, f.name
        assert action.help and ("default" in action.help or "required" in action.help), f.name
    assert "(default: 50051)" in text and "(default: off)" in text


def test_placement_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    from hubless_server.runtimes.placement import (
        PlacementError,
        cpu_has_native_bf16,
        resolve_device,
        resolve_dtype,
    )

    assert resolve_dtype("auto", "cuda", native_bf16=False) == "float16"
    assert resolve_dtype("auto", "cpu", native_bf16=True) == "bfloat16"
    assert resolve_dtype("auto", "cpu", native_bf16=False) == "float32"
    assert resolve_dtype("float16", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu", native_bf16=False) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(PlacementError, match="no CUDA device"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse avx2\n")
    assert not cpu_has_native_bf16(cpuinfo)


def test_server_docs_document_every_setting() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "server.md"
    section = doc.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    for flag, env, default, _ in describe():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{flag}` ")), "")
        assert f"`{env}`" in row, f"{flag} missing from the settings table of docs/server.md"
        if default and flag != "--models-dir":
            assert f"`{default}`" in row, f"{flag}: docs/server.md default differs from {default!r}"


def test_available_cpus_respects_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    unlimited = available_cpus(tmp_path / "absent")
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert available_cpus(cpu_max) == unlimited
    cpu_max.write_text("50000 100000\n")  # half a CPU still gets one thread
    assert available_cpus(cpu_max) == 1
    cpu_max.write_text(f"{(unlimited + 4) * 100000} 100000\n")  # a quota above affinity
    assert available_cpus(cpu_max) == unlimited
