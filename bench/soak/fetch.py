"""Scenario 5: ``kill -9`` of ``hubless-fetch fetch`` at a random moment, then the volume must
verify (``hubless-fetch verify --deep`` exit 0) and hold no half-installed model."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from hubless_fakehub.stack import child_env, fetcher_argv
from hubless_volume import Manifest, ManifestError, check_entry

from .env import run_fetcher
from .scenario import Scenario

VERIFY_TIMEOUT_S = 300.0
FILE_DELAY_S = 0.1
# `remove` deletes the model's files at once (by default they stay as its previous
# generation), so the fetch after it downloads them again: the kills land in real downloads.
ENV = {"HUBLESS_KEEP_PREVIOUS": "0"}
NOTHING_INSTALLED = "no models installed"  # verify's message (exit 5) on an empty volume


def installed(models_dir: Path) -> list[str]:
    """Names in the volume's manifest (empty when there is none)."""
    return sorted(Manifest.load(models_dir).models)


def half_installed(models_dir: Path) -> dict[str, str]:
    """Models of the manifest whose files are not all there with their size and sha256
    (checked here, independently of ``hubless-fetch verify``): name -> first problem."""
    try:
        manifest = Manifest.load(models_dir)
    except ManifestError as exc:
        return {"<manifest>": str(exc)}
    out: dict[str, str] = {}
    for name, entry in manifest.models.items():
        problems = check_entry(models_dir, entry, deep=True)
        if problems:
            out[name] = str(problems[0])
    return out


def orphan_snapshots(models_dir: Path) -> int:
    """Snapshot folders no manifest entry points at (files of a model whose manifest entry
    was not written yet: invisible to the server, reused by the next fetch)."""
    try:
        manifest = Manifest.load(models_dir)
    except ManifestError:
        return -1
    known = {entry.snapshot_dir(models_dir).resolve() for entry in manifest.models.values()}
    found = [p.resolve() for p in models_dir.glob("*/snapshots/*") if p.is_dir()]
    return sum(1 for p in found if p not in known)


def staging_files(models_dir: Path) -> int:
    staging = models_dir / ".staging"
    return sum(1 for p in staging.rglob("*") if p.is_file()) if staging.is_dir() else 0


def _timed_fetch(models_dir: Path, hf_home: Path, endpoint: str) -> float:
    t0 = time.monotonic()
    result = run_fetcher("fetch", models_dir, hf_home, endpoint=endpoint, env=ENV)
    if result.returncode != 0:
        raise RuntimeError(f"calibration fetch exited {result.returncode}: {result.stderr[-2000:]}")
    return time.monotonic() - t0


def fetch_kills(mirror: Any, work: Path, *, runs: int, seed: int, fresh_every: int = 5) -> Scenario:
    sc = Scenario(
        "fetch-kill",
        f"5. kill -9 of the fetcher: {runs} runs",
        setup=(
            f"One volume. Every {fresh_every}th run starts from an empty volume; the others "
            "first complete the volume with an unkilled `hubless-fetch fetch` (it resumes what "
            "the previous kill interrupted) and `hubless-fetch remove` two random models "
            "(`HUBLESS_KEEP_PREVIOUS=0`: their files go, so they are downloaded again). Then "
            "`hubless-fetch "
            "fetch` (the whole catalog, from the fake hub, each file download delayed "
            f"{FILE_DELAY_S * 1e3:.0f} ms as on a slow link) gets SIGKILL after a random delay "
            "(seeded), uniform between 0 and the time an unkilled fetch of the same kind took. "
            "After each kill: `hubless-fetch verify --deep` and an independent check of every "
            "manifest entry (every file present with its size and sha256)."
        ),
    )
    # A slow link: every file download answers after FILE_DELAY_S, so the downloads and
    # installs, not the interpreter's start-up, take most of a fetch's time.
    mirror.add_fault(method="GET", delay=FILE_DELAY_S, times=None)
    endpoint = mirror.endpoint
    rng = random.Random(seed)
    vol = work / "fetchkill-models"
    hf_home = work / "fetchkill-hf-home"
    logs = work / "fetchkill-logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(vol, ignore_errors=True)
    t_fresh = _timed_fetch(vol, hf_home, endpoint)
    catalog = installed(vol)
    for name in rng.sample(catalog, 2):
        removed = run_fetcher("remove", vol, hf_home, name, env=ENV)
        if removed.returncode != 0:
            raise RuntimeError(
                f"remove {name} exited {removed.returncode}: {removed.stderr[-2000:]}"
            )
    t_partial = _timed_fetch(vol, hf_home, endpoint)
    sc.figures["unkilled fetch: empty volume / two models missing (s)"] = (
        f"{t_fresh:.2f} / {t_partial:.2f}"
    )

    rows: list[list[Any]] = []
    half_total = 0
    verify_failures = 0
    killed_runs = 0
    empty_runs = 0
    resume_failures = resume_runs = remove_failures = 0
    for i in range(runs):
        if i % fresh_every == 0:
            shutil.rmtree(vol, ignore_errors=True)
            work_done, span, resumed = "empty volume", t_fresh, "—"
        else:
            # First an unkilled fetch finishes what the previous kill interrupted.
            resume = run_fetcher("fetch", vol, hf_home, endpoint=endpoint, env=ENV)
            complete = resume.returncode == 0 and installed(vol) == catalog
            resume_failures += not complete
            resume_runs += 1
            resumed = f"{resume.returncode}, {len(installed(vol))}/{len(catalog)} models"
            if not complete:
                sc.data.setdefault("resume_output", {})[str(i + 1)] = resume.stderr[-2000:]
            names = rng.sample(installed(vol), min(2, len(installed(vol))))
            failed = []
            for name in names:
                removed = run_fetcher("remove", vol, hf_home, name, env=ENV)
                if removed.returncode != 0:
                    failed.append(f"{name} (exit {removed.returncode})")
                    sc.data.setdefault("remove_output", {})[f"{i + 1} {name}"] = (
                        removed.stdout[-1000:] + removed.stderr[-2000:]
                    )
            remove_failures += len(failed)
            work_done = "removed " + ", ".join(names)
            if failed:
                work_done += "; remove FAILED: " + ", ".join(failed)
            span = t_partial
        before = len(installed(vol))
        delay = rng.uniform(0.0, span)
        with open(logs / f"run-{i:02d}.log", "wb") as log:
            proc = subprocess.Popen(
                fetcher_argv("fetch", vol),
                env=child_env(hf_home, HF_ENDPOINT=endpoint, **ENV),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(30)
        killed_runs += killed
        after = len(installed(vol))
        staged = staging_files(vol)
        orphans = orphan_snapshots(vol)
        verify = run_fetcher("verify", vol, hf_home, "--deep", timeout=VERIFY_TIMEOUT_S, env=ENV)
        half = half_installed(vol)
        half_total += len(half)
        # An empty manifest is refused by verify (exit 5, "no models installed"): by design
        # (tests/fetcher/test_bundle_verify.py), so it is expected when no model was installed.
        empty = after == 0 and NOTHING_INSTALLED in verify.stderr
        verify_ok = verify.returncode == 0 or (empty and verify.returncode == 5)
        empty_runs += empty
        verify_failures += not verify_ok
        rows.append(
            [
                i + 1,
                resumed,
                work_done,
                f"{delay:.2f}",
                "SIGKILL" if killed else f"exited {rc} first",
                f"{before} -> {after}",
                staged,
                orphans,
                f"{verify.returncode} (empty volume)" if empty else verify.returncode,
                ", ".join(f"{k}: {v}" for k, v in half.items()) or "0",
            ]
        )
        if not verify_ok:
            sc.data.setdefault("verify_output", {})[str(i + 1)] = verify.stderr[-2000:]
        if half:
            sc.data.setdefault("half_installed", {})[str(i + 1)] = half

    final = run_fetcher("fetch", vol, hf_home, endpoint=endpoint, env=ENV)
    final_verify = run_fetcher("verify", vol, hf_home, "--deep", timeout=VERIFY_TIMEOUT_S, env=ENV)
    complete = installed(vol)
    final_half = half_installed(vol)
    final_staged, final_unrecorded = staging_files(vol), orphan_snapshots(vol)

    sc.table(
        "Runs (resume fetch: the unkilled fetch that first completes what the previous kill "
        "interrupted; models: in the manifest before the killed fetch -> after the kill; "
        "staged: partial "
        "files left in `.staging/`, resumed by the next run; unrecorded: snapshot folders no "
        "manifest entry points at):",
        [
            "run",
            "resume fetch (exit, models)",
            "work to do",
            "kill after (s)",
            "fetch",
            "models",
            "staged",
            "unrecorded",
            "verify --deep exit",
            "half-installed",
        ],
        rows,
    )
    sc.figures.update(
        {
            "runs": runs,
            "killed while running / exited before the kill": (
                f"{killed_runs} / {runs - killed_runs}"
            ),
            "verify --deep failures": verify_failures,
            "half-installed models found": half_total,
            "final unkilled fetch exit / verify --deep exit": (
                f"{final.returncode} / {final_verify.returncode}"
            ),
            "models installed at the end": f"{len(complete)} of {len(catalog)}",
            "after the final fetch: staged files / unrecorded snapshot folders": (
                f"{final_staged} / {final_unrecorded}"
            ),
        }
    )
    sc.check(
        "verify --deep exits 0 after every kill (5 with 'no models installed' when the kill "
        "came before the first model was installed)",
        verify_failures == 0,
        f"{verify_failures} failed; {empty_runs} runs left no model installed",
    )
    sc.check("no half-installed model after any kill", half_total == 0, half_total)
    sc.check("every `hubless-fetch remove` exits 0", remove_failures == 0, remove_failures)
    sc.check(
        "the unkilled fetch after each kill completes the catalog (exit 0, every model)",
        resume_failures == 0,
        f"{resume_failures} failed of {resume_runs}",
    )
    sc.check(
        "a final unkilled fetch completes the catalog and verifies",
        final.returncode == 0
        and final_verify.returncode == 0
        and complete == catalog
        and not final_half,
        f"fetch {final.returncode}, verify {final_verify.returncode}, "
        f"{len(complete)}/{len(catalog)} models, half-installed {len(final_half)}",
    )
    return sc
