"""Catalog validation, file selection and settings: pure functions, no network."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hubless_fetcher.catalog import Catalog
from hubless_fetcher.errors import ExitCode
from hubless_fetcher.selection import select_files
from hubless_fetcher.settings import PACKAGED_CATALOG, ConfigError, Settings
from hubless_volume import TASKS
from tests.fetcher.conftest import Run

GOOD = """
version = 1
[[models]]
name = "a"
repo_id = "org/a"
task = "sentiment"
[[models]]
name = "b"
repo_id = "org/b"
revision = "v1"
task = "sentiment"
[tasks]
sentiment = ["b"]
"""


def test_packaged_catalog_is_valid() -> None:
    catalog = Catalog.load(PACKAGED_CATALOG)
    assert len(catalog.models) == 10
    assert catalog.tasks["summarization"] == ["bart-large-cnn", "bart-large"]
    assert set(catalog.tasks) == set(TASKS)
    assert catalog.tasks["conversation"] == ["dialogpt-medium", "dialogpt-small"]
    assert catalog.lock_path.name == "catalog.lock.json"


def test_unranked_models_go_last_and_revision_defaults_to_main() -> None:
    catalog = Catalog.from_dict(tomllib.loads(GOOD))
    assert catalog.tasks == {"sentiment": ["b", "a"]}
    assert catalog.models["a"].revision == "main"
    assert [m.name for m in catalog.select(["b", "a"])] == ["a", "b"]  # catalog order


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('task = "sentiment"', 'task = "translation"'), "unknown task 'translation'"),
        (('name = "b"', 'name = "a"'), "duplicate model name 'a'"),
        (('sentiment = ["b"]', 'sentiment = ["b", "zzz"]'), "names unknown model 'zzz'"),
        (("[tasks]", "[tasks]\nemotion = ['a']"), "lists 'a', whose task is 'sentiment'"),
        (("[tasks]", "[tasks]\nfrobnicate = []"), "unknown task 'frobnicate'"),
        (('repo_id = "org/a"', 'repo_id = "not a repo"'), "is not 'org/name'"),
        (('name = "a"', 'name = "a"\nrevsion = "x"'), "unknown keys revsion"),
        (('repo_id = "org/a"\n', ""), "missing or empty 'repo_id'"),
        (("version = 1", "version = 2"), "version 2 is not supported"),
    ],
)
def test_invalid_catalogs_name_the_problem(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match="is invalid") as err:
        Catalog.from_dict(tomllib.loads(GOOD.replace(*change, 1)))
    assert message in str(err.value)


def test_cli_reports_a_bad_catalog_as_an_invalid_file(run: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('task = "sentiment"', 'task = "nope"', 1))
    result = run("fetch", "--catalog", str(bad))
    assert result.code == ExitCode.INVALID_FILE
    assert f"catalog {bad} is invalid: models[0].task: unknown task 'nope'" in result.err
    bad.write_text("[[models]\n")
    assert run("fetch", "--catalog", str(bad)).code == ExitCode.INVALID_FILE
    assert run("fetch", "--catalog", str(tmp_path / "absent.toml")).code == ExitCode.USAGE


def test_settings_from_env_and_flags(run: Run) -> None:
    settings = Settings.from_env(
        {"HUBLESS_JOBS": "8", "HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://m/"}
    )
    assert (settings.jobs, settings.offline, settings.endpoint) == (8, True, "http://m")
    assert "hf_x" not in repr(settings)
    assert settings.with_overrides(jobs=2, models_dir=None).jobs == 2
    with pytest.raises(ConfigError, match="HUBLESS_TIMEOUT"):
        Settings.from_env({"HUBLESS_TIMEOUT": "soon"})
    assert run("list", HUBLESS_RETRIES="0").code == ExitCode.USAGE
    assert run("fetch", "--jobs", "0").code == ExitCode.USAGE


def test_selection_of_real_repository_layouts() -> None:
    bart_large = [
        ".gitattributes", "README.md", "config.json", "flax_model.msgpack", "merges.txt",
        "model.safetensors", "pytorch_model.bin", "rust_model.ot", "tf_model.h5",
        "tokenizer.json", "vocab.json", "generation_config.json",
    ]  # fmt: skip
    assert select_files(bart_large) == [
        "config.json", "generation_config.json", "merges.txt", "model.safetensors",
        "tokenizer.json", "vocab.json",
    ]  # fmt: skip
    bin_only = ["config.json", "pytorch_model.bin", "tf_model.h5", "training_args.bin"]
    assert select_files(bin_only) == ["config.json", "pytorch_model.bin"]
    sharded = [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
    ]  # fmt: skip
    assert select_files(sharded) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]  # fmt: skip
    minilm = [
        "1_Pooling/config.json", "2_Normalize/.gitkeep", "config.json",
        "config_sentence_transformers.json", "data_config.json", "model.safetensors",
        "modules.json", "onnx/model.onnx", "onnx/model_O1.onnx", "openvino/openvino_model.bin",
        "openvino/openvino_model.xml", "pytorch_model.bin", "rust_model.ot",
        "sentence_bert_config.json", "special_tokens_map.json", "tf_model.h5",
        "tokenizer.json", "tokenizer_config.json", "train_script.py", "vocab.txt",
    ]  # fmt: skip
    chosen = select_files(minilm)
    assert "1_Pooling/config.json" in chosen and "modules.json" in chosen
    assert not [p for p in chosen if p.startswith(("onnx/", "openvino/")) or p.endswith(".py")]
    assert [p for p in chosen if "model" in p and not p.endswith(".json")] == ["model.safetensors"]


def test_console_script_and_module_entry_points() -> None:
    script = Path(sys.executable).with_name("hubless-fetch")
    for argv in ([str(script), "--version"], [sys.executable, "-m", "hubless_fetcher", "-h"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        assert "hubless-fetch" in done.stdout
