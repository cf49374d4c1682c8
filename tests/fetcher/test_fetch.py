"""fetch end to end against a local hub: layout, integrity, idempotence, offline, disk."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubless_fakehub import HubMirror
from hubless_fakehub.proxy import FaultProxy
from hubless_fakehub.tiny import DECOY_FILES, TinyModel
from hubless_fetcher.errors import ExitCode
from hubless_volume import Manifest, repo_folder_name
from tests.fetcher.conftest import Run


def test_fetch_all_then_verify_deep(
    run: Run, proxy: FaultProxy, models_dir: Path, tiny_models: dict[str, TinyModel]
) -> None:
    stale = models_dir / ".staging" / "0123-left-by-a-crashed-run"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"partial")
    result = run("fetch")
    assert result.code == ExitCode.OK, result.err
    assert not stale.exists()
    contents = {(m.path / f).read_bytes() for m in tiny_models.values() for f in m.files()}
    assert len(proxy.file_requests()) == len(contents)  # shared files are transferred once
    assert result.err.count(": downloaded ") == len(contents)  # one log line per file ...
    assert result.err.count("INFO hubless_fetcher.fetch installed ") == 10  # ... and per model
    manifest = Manifest.load(models_dir)
    assert sorted(manifest.models) == sorted(tiny_models)
    for name, model in tiny_models.items():
        entry = manifest.models[name]
        assert [f.path for f in entry.files] == model.files()  # decoys left out
        snapshot = entry.snapshot_dir(models_dir)
        for record in entry.files:
            assert (snapshot / record.path).read_bytes() == (model.path / record.path).read_bytes()
    assert manifest.tasks["sentiment"][0] == "bert-multilingual-sentiment"
    requested = {r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in proxy.file_requests()}
    assert not requested & set(DECOY_FILES)
    assert "model.safetensors" in requested and "1_Pooling/config.json" in requested
    assert "total disk use" in result.out and "installed" in result.out

    deep = run("verify", "--deep")
    assert deep.code == ExitCode.OK
    assert deep.out.count(": ok") == 10
    assert not list((models_dir / ".staging").glob("*"))


def test_transformers_loads_offline(
    run: Run, models_dir: Path, tiny_models: dict[str, TinyModel]
) -> None:
    transformers = pytest.importorskip("transformers")
    assert run("fetch", "distilbert-sst2", "dialogpt-small").code == ExitCode.OK
    manifest = Manifest.load(models_dir)
    for name in ("distilbert-sst2", "dialogpt-small"):
        entry = manifest.models[name]
        for revision in (entry.commit, "main"):
            config = transformers.AutoConfig.from_pretrained(
                entry.repo_id, revision=revision, cache_dir=models_dir, local_files_only=True
            )
            assert config.architectures == [tiny_models[name].architecture]
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            entry.repo_id, revision=entry.commit, cache_dir=models_dir, local_files_only=True
        )
        assert tokenizer("hello world")["input_ids"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        revision=manifest.models["distilbert-sst2"].commit,
        cache_dir=models_dir,
        local_files_only=True,
    )
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}


def test_rerun_transfers_nothing_and_needs_no_network(
    run: Run, proxy: FaultProxy, env: dict[str, str]
) -> None:
    assert run("fetch").code == ExitCode.OK
    before = len(proxy.log)
    started = time.monotonic()
    again = run("fetch", HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there
    assert again.code == ExitCode.OK, again.err
    assert time.monotonic() - started < 1.5
    assert len(proxy.log) == before
    assert again.out.count("up to date") == 10
    offline = run("fetch", HF_HUB_OFFLINE="1")
    assert offline.code == ExitCode.OK


def test_offline_with_missing_models_opens_no_connection(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    assert run("fetch", "dialogpt-small").code == ExitCode.OK
    before = len(proxy.log)
    result = run("fetch", "dialogpt-small", "bart-large", HF_HUB_OFFLINE="1")
    assert result.code == ExitCode.OFFLINE_MISSING
    assert len(proxy.log) == before
    assert "bart-large" in result.err and "HF_HUB_OFFLINE" in result.err
    assert "up to date" in result.out and "missing" in result.out
    assert sorted(Manifest.load(models_dir).models) == ["dialogpt-small"]


def test_refresh_notices_a_moved_branch(
    run: Run, hub: HubMirror, proxy: FaultProxy, models_dir: Path
) -> None:
    assert run("fetch", "dialogpt-small").code == ExitCode.OK
    repo = "microsoft/DialoGPT-small"
    old = Manifest.load(models_dir).models["dialogpt-small"].commit
    changed = b'{"max_length": 77}\n'
    new = hub.update_repo(repo, {"generation_config.json": changed})

    assert run("fetch", "dialogpt-small").code == ExitCode.OK  # no network: still the old one
    assert Manifest.load(models_dir).models["dialogpt-small"].commit == old

    before = len(proxy.file_requests())
    # no retention: the old commit goes at once (the default keeps it, test_retention.py)
    assert run("fetch", "--refresh", "dialogpt-small", HUBLESS_KEEP_PREVIOUS="0").code == 0
    entry = Manifest.load(models_dir).models["dialogpt-small"]
    assert entry.commit == new
    fetched = [r.path for r in proxy.file_requests()[before:]]
    assert len(fetched) == 1 and fetched[0].endswith("generation_config.json")  # blobs reused
    snapshot = entry.snapshot_dir(models_dir)
    assert (snapshot / "generation_config.json").read_bytes() == changed
    repo_dir = models_dir / repo_folder_name(repo)
    assert (repo_dir / "refs" / "main").read_text() == new
    assert [p.name for p in (repo_dir / "snapshots").iterdir()] == [new]  # old commit pruned
    assert len(list((repo_dir / "blobs").iterdir())) == len(entry.files)

    assert run("fetch", "--refresh", "dialogpt-small").code == ExitCode.OK
    assert len(proxy.file_requests()) == before + 1  # already current: nothing transferred


def test_not_enough_disk_refuses_before_downloading(
    run: Run, proxy: FaultProxy, models_dir: Path
) -> None:
    seen: list[Path] = []

    def tiny_disk(path: Path) -> int:
        seen.append(path)
        return 10_000

    dry = run("fetch", "--dry-run", free_space=tiny_disk)
    assert dry.code == ExitCode.OK and dry.out.count("would fetch") == 10
    assert proxy.file_requests() == [] and seen == []

    result = run("fetch", free_space=tiny_disk)
    assert result.code == ExitCode.NO_SPACE
    assert "not enough disk space" in result.err and "free" in result.err
    assert seen == [models_dir]
    assert proxy.file_requests() == []
    assert Manifest.load(models_dir).models == {}

    margin = run("fetch", "dialogpt-small", free_space=lambda p: 10**9, HUBLESS_DISK_MARGIN="2e9")
    assert margin.code == ExitCode.NO_SPACE
    assert run("fetch", "dialogpt-small", free_space=lambda p: 10**9).code == ExitCode.OK


def test_unknown_name_is_a_usage_error(run: Run) -> None:
    result = run("fetch", "no-such-model")
    assert result.code == ExitCode.USAGE
    assert "no-such-model" in result.err and "dialogpt-small" in result.err


def test_list_json_du_and_remove(run: Run, models_dir: Path) -> None:
    assert run("fetch", "bart-large", "bart-large-mnli").code == ExitCode.OK
    listing = json.loads(run("list", "--json").out)
    assert [m["name"] for m in listing] == ["bart-large", "bart-large-mnli"]
    assert {"task", "repo_id", "commit", "size", "verified_at"} <= set(listing[0])
    table = run("list").out
    assert "summarization" in table and "verified-at" in table
    du = run("du")
    assert du.code == ExitCode.OK and "bart-large-mnli" in du.out and "total" in du.out

    removed = run("remove", "bart-large-mnli", "--keep-previous", "0")
    assert removed.code == ExitCode.OK
    assert sorted(Manifest.load(models_dir).models) == ["bart-large"]
    assert not (models_dir / repo_folder_name("facebook/bart-large-mnli")).exists()
    assert run("verify", "--deep").code == ExitCode.OK
    assert run("remove", "bart-large-mnli").code == ExitCode.USAGE


def test_progress_bars_on_a_terminal(
    run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    result = run("fetch", "dialogpt-small")
    assert result.code == ExitCode.OK
    assert "model.safetensors" in result.err and "B/s" in result.err  # tqdm's bar
    assert "INFO installed dialogpt-small" in result.err  # log lines written around the bars


def test_the_fetcher_imports_no_torch_or_transformers() -> None:
    code = (
        "import sys, huggingface_hub\n"
        "from hubless_fetcher import bundle, cli, fetch, remote, volume\n"
        "from huggingface_hub import HfApi\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_two_commits_of_one_repo_share_blobs_and_remove_keeps_the_other(
    run: Run, hub: HubMirror, proxy: FaultProxy, catalog: Path, models_dir: Path
) -> None:
    repo = "microsoft/DialoGPT-small"
    assert run("fetch", "dialogpt-small").code == ExitCode.OK
    first = Manifest.load(models_dir).models["dialogpt-small"].commit
    second = hub.update_repo(repo, {"generation_config.json": b'{"max_length": 5}\n'})
    catalog.write_text(
        catalog.read_text() + f'\n[[models]]\nname = "dialogpt-small-v1"\nrepo_id = "{repo}"\n'
        f'revision = "{first}"\ntask = "conversation"\n'
    )
    assert run("fetch", "--refresh", "dialogpt-small").code == ExitCode.OK
    before = len(proxy.file_requests())
    assert run("fetch", "dialogpt-small-v1").code == ExitCode.OK
    assert len(proxy.file_requests()) == before + 1  # only the file that differs
    manifest = Manifest.load(models_dir)
    assert manifest.models["dialogpt-small"].commit == second
    assert manifest.models["dialogpt-small-v1"].commit == first
    assert manifest.tasks["conversation"][-1] == "dialogpt-small-v1"

    assert run("remove", "dialogpt-small", HUBLESS_KEEP_PREVIOUS="0").code == ExitCode.OK
    repo_dir = models_dir / repo_folder_name(repo)
    assert [p.name for p in (repo_dir / "snapshots").iterdir()] == [first]
    assert not (repo_dir / "refs" / "main").exists()
    assert run("verify", "--deep").code == ExitCode.OK


def test_any_offline_switch_means_no_connection(
    run: Run, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("fetch", "dialogpt-small", TRANSFORMERS_OFFLINE="1").code == ExitCode.OFFLINE_MISSING
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # set at its import by someone else
    result = run("fetch", "dialogpt-small")
    assert result.code == ExitCode.OFFLINE_MISSING and "offline mode" in result.err
    assert proxy.log == []
