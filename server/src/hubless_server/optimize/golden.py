"""Golden outputs: what each model answers when it is installed, for the server's self-test.

For every selected model (encoders and generation models alike) ``hubless-optimize`` loads it
with the server's own runtime on PyTorch in float32 on the CPU, runs the fixed probes of its
kind through it (:func:`hubless_server.runtimes.probes.record_probes`: sentence vectors,
label probabilities, zero-shot scores, greedy first tokens) and writes them beside its
artifacts, ``models--org--name/hubless-golden/<commit>/golden.json``
(:func:`hubless_volume.save_golden`), recorded in the manifest entry (``golden``). The entry's
signature is dropped then (it no longer covers what the entry records: ``hubless-fetch sign``
signs it again). The server runs the same probes at every load and compares
(:mod:`hubless_server.models.golden`).

Idempotent: an entry whose golden file is in place and matches its record (size, sha256,
model, commit, task) is current and left alone, unless ``--force``. Runs under the volume
write lock the whole optimize run holds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hubless_server import __version__
from hubless_server.core.tasks import spec_of
from hubless_volume import (
    Golden,
    GoldenError,
    Manifest,
    ModelEntry,
    VolumePathError,
    check_entry,
    load_golden,
    save_golden,
    utc_now,
)

log = logging.getLogger(__name__)

REFERENCE = {"backend": "torch", "dtype": "float32", "device": "cpu"}
"""What the goldens are made with, whatever the server serves with."""


def golden_is_current(models_dir: Path, entry: ModelEntry, force: bool = False) -> bool:
    """The entry records golden outputs whose file is in place and is theirs."""
    if force:
        return False
    try:
        return load_golden(models_dir, entry) is not None
    except (GoldenError, VolumePathError):
        return False


def write_golden(
    models_dir: Path, manifest: Manifest, name: str, *, force: bool = False, threads: int = 0
) -> tuple[str, str]:
    """Bring one model's golden outputs up to date and save the manifest when they changed;
    ``(status, detail)`` with status ``written``, ``current``, ``failed`` (the model cannot be
    loaded or answer: nothing is recorded) or ``corrupt`` (its files fail the check)."""
    entry = manifest.models[name]
    if golden_is_current(models_dir, entry, force):
        return "current", ""
    problems = check_entry(models_dir, entry)
    if problems:
        detail = f"{problems[0].detail}; run `hubless-fetch verify {name}`"
        log.error("%s: its files do not match the manifest: %s", name, detail)
        return "corrupt", detail
    started = time.monotonic()
    try:
        golden = make_golden(models_dir, entry, threads)
    except OSError:  # the volume: not the model's fault
        raise
    except Exception as exc:
        log.exception("%s: cannot record golden outputs", name)
        return "failed", f"golden outputs not recorded ({type(exc).__name__}: see the log)"
    entry.golden = save_golden(models_dir, entry, golden)
    entry.signature = ""  # it no longer covers the entry's files: hubless-fetch sign again
    manifest.save(models_dir)
    log.info(
        "%s: golden outputs recorded (%d probes) in %.1f s",
        name,
        len(golden.probes),
        time.monotonic() - started,
        extra={"fields": {"model": name, "sha256": entry.golden.sha256[:12]}},
    )
    return "written", ""


def make_golden(models_dir: Path, entry: ModelEntry, threads: int = 0) -> Golden:
    """Load ``entry`` on PyTorch float32 on the CPU and record its answers to the probes."""
    import torch
    import transformers

    from hubless_server.core.threads import available_cpus
    from hubless_server.runtimes import KINDS
    from hubless_server.runtimes.base import RuntimeOptions
    from hubless_server.runtimes.probes import ZERO_SHOT_TEMPLATE, record_probes

    torch.set_num_threads(threads or available_cpus())
    kind = spec_of(entry.task).runtime
    runtime = KINDS[kind](
        entry.name, entry.snapshot_dir(models_dir), RuntimeOptions(threads=threads)
    )
    runtime.load()
    probes = record_probes(runtime, kind)
    return Golden(
        model=entry.name,
        commit=entry.commit,
        task=entry.task,
        probes=probes,
        created_at=utc_now(),
        reference=dict(REFERENCE),
        tool={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "hubless-server": __version__,
        },
        hypothesis_template=ZERO_SHOT_TEMPLATE if entry.task == "zero-shot" else "",
    )
