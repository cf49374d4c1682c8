"""Live model updates, end to end: ``hubless-fetch fetch --refresh`` brings a new commit of a
model into the volume that running ``hubless-serve`` processes read, and they answer with it
within the reload interval while several clients keep calling, without one failed request.
One server reads the volume itself, one a read-only bind mount of it (a mount namespace, as
in test_offline_netns; needs root and util-linux ``unshare``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from hubless_client import Client, ModelState
from hubless_fakehub import HubMirror
from hubless_volume import Manifest
from tests.e2e import procs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EMBEDDER = "all-minilm-l6-v2"
REPO = "sentence-transformers/all-MiniLM-L6-v2"
SENTIMENT = "distilbert-sst2"
INTERVAL_S = 1.0
SERVICES = ("", procs.TASK_SERVICES["embedding"], procs.TASK_SERVICES["sentiment"])
ARGS = ("--tasks", "embedding,sentiment", "--reload-interval", str(INTERVAL_S))


def can_bind_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


def read_only_view(volume: Path, view: Path) -> list[str]:
    """A command prefix that runs the rest in a mount namespace where ``view`` is a read-only
    bind mount of ``volume`` (same files, live: the fetcher's changes show through)."""
    view.mkdir(parents=True, exist_ok=True)
    src, dst = shlex.quote(str(volume)), shlex.quote(str(view))
    script = (
        f"mount --bind {src} {dst} && mount -o remount,bind,ro {dst} {dst} && "
        f'! touch {dst}/.probe 2>/dev/null && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


class Load:
    """Client threads calling Embed and AnalyzeSentiment in a loop until stopped."""

    def __init__(self, targets: list[str], per_target: int = 3) -> None:
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.seen: dict[str, list[str]] = {}  # thread -> embedding commits in order
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(target, i), daemon=True)
            for target in targets
            for i in range(per_target)
        ]

    def _run(self, target: str, index: int) -> None:
        key = f"{target}#{index}"
        with Client(target, timeout=30) as client:
            while not self.stop.is_set():
                try:
                    if index % 3 == 2:
                        client.analyze_sentiment(["what a great day"])
                        continue
                    result = client.embed([f"client {index} says hello", "a second text"])
                except Exception as exc:  # every failure counts
                    with self.lock:
                        self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
                    continue
                with self.lock:
                    self.seen.setdefault(key, []).append(result.model.commit)

    def latest(self) -> dict[str, str]:
        with self.lock:
            return {key: commits[-1] for key, commits in self.seen.items() if commits}

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@pytest.fixture
def volume(hub_mirror: HubMirror, tmp_path: Path) -> Iterator[Path]:
    models = tmp_path / "models"
    procs.fetch(models, hub_mirror.endpoint, [EMBEDDER, SENTIMENT], hf_home=tmp_path / "hf-fetch")
    yield models


def test_a_fetched_commit_is_served_within_the_interval_without_failures(
    hub_mirror: HubMirror, volume: Path, tmp_path: Path
) -> None:
    old = Manifest.load(volume).models[EMBEDDER].commit
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                procs.running_server(volume, tmp_path / "srv", extra_args=ARGS, wait_for=SERVICES)
            )
        ]
        if can_bind_mount():
            view = tmp_path / "read-only-view"
            servers.append(
                stack.enter_context(
                    procs.running_server(
                        view,
                        tmp_path / "srv-ro",
                        extra_args=ARGS,
                        wait_for=SERVICES,
                        command_prefix=read_only_view(volume, view),
                    )
                )
            )
        else:  # say so: the read-only half needs a mount namespace
            print("no root or no unshare: the read-only bind-mount server is not run")
        targets = [server.target for server in servers]
        load = stack.enter_context(Load(targets))
        for server in servers:
            stack.enter_context(server.explain_death())
        time.sleep(1.5)
        assert set(load.latest().values()) == {old}

        config = json.loads(hub_mirror.files(REPO)["config.json"].data)
        config["hubless_live_update"] = 2  # a new upstream commit, same weights
        new = hub_mirror.update_repo(REPO, {"config.json": json.dumps(config).encode()})
        args = ["fetch", "--refresh", "--models-dir", str(volume), EMBEDDER]
        env = procs.child_env(tmp_path / "hf-fetch", HF_ENDPOINT=hub_mirror.endpoint)
        procs.run_cli([procs.console_script("hubless-fetch"), *args], env, procs.FETCH_TIMEOUT_S)
        fetched = time.monotonic()
        assert Manifest.load(volume).models[EMBEDDER].commit == new

        deadline = fetched + 60
        while set(load.latest().values()) != {new}:
            assert time.monotonic() < deadline, f"still answering with {load.latest()}"
            time.sleep(0.1)
        took = time.monotonic() - fetched
        time.sleep(1.0)  # keep calling the new version for a while
    assert load.errors == []
    # within the interval plus one (tiny) load and warm-up, with room for a slow CI machine
    assert took < INTERVAL_S + 15, f"took {took:.1f} s"
    for key, commits in load.seen.items():  # old, then new, never back
        switch = commits.index(new)
        assert set(commits[:switch]) <= {old} and set(commits[switch:]) == {new}, key
    print(f"new commit answered {took:.2f} s after the fetch; {len(servers)} server(s)")


def test_models_report_the_swap_and_health_stays_serving(
    hub_mirror: HubMirror, volume: Path, tmp_path: Path
) -> None:
    with procs.running_server(
        volume, tmp_path / "srv", extra_args=ARGS, wait_for=SERVICES
    ) as server:
        client = server.client(timeout=10)
        before = client.get_model(EMBEDDER)
        assert before.state is ModelState.READY and before.loaded_at is not None
        new = hub_mirror.update_repo(REPO, {"README.md": b"# changed upstream\n"})
        env = procs.child_env(tmp_path / "hf-fetch", HF_ENDPOINT=hub_mirror.endpoint)
        args = ["fetch", "--refresh", "--models-dir", str(volume), EMBEDDER]
        procs.run_cli([procs.console_script("hubless-fetch"), *args], env, procs.FETCH_TIMEOUT_S)
        statuses: set[str] = set()
        replacing: set[str] = set()
        deadline = time.monotonic() + 60
        while True:
            statuses.add(client.health(procs.TASK_SERVICES["embedding"]).value)
            info = client.get_model(EMBEDDER)
            replacing.add(info.replacing_commit)
            if info.commit == new and info.state is ModelState.READY and not info.replacing_commit:
                break
            assert time.monotonic() < deadline, f"no swap: {info}"
            time.sleep(0.05)
        assert statuses == {"SERVING"}
        assert info.loaded_at is not None and info.loaded_at > before.loaded_at
        assert replacing <= {"", before.commit}
        assert "swapped in" in server.log_tail(200)
