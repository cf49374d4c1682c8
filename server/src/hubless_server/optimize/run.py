"""One optimize run over a volume: export, check parity, install, record; then goldens.

For each selected installed model of an encoder task (embedding, emotion, sentiment,
zero-shot): load it with the server's own runtime on PyTorch (float32, CPU), export the
encoder to ONNX in a staging folder on the volume (``.hubless-optimize/``), optionally run
ONNX Runtime's transformer optimizer on it, load the export with the same runtime on ONNX
Runtime and compare their answers on the fixed probes (:mod:`.parity`). Only an export that
is one self-contained file (no tensor keeps its data in another file: the server refuses
those) and passed is moved, atomically (:func:`hubless_volume.atomic_place_file`), to
``models--org--name/hubless-onnx/<commit>/model.onnx`` (joined through
:func:`hubless_volume.inside`) and recorded in the model's manifest entry (``artifacts``, with
its size, sha256 and parity figures); a model that failed keeps PyTorch, and why is recorded
instead (``optimize_error``) and logged.

The whole run holds the volume write lock (:class:`hubless_volume.VolumeWriteLock`), like a
fetch: a second optimizer (or a fetcher) waits, then finds the artifacts current. A model is
current when its entry records an ONNX artifact made with the same ``--optimize`` choice that
passes the file check (sizes; sha256 with ``--deep``), or records why it has none; a re-run
then does nothing but that check (``--force`` redoes them).

After its artifact, each selected model (generation models too) gets its golden outputs
(:mod:`.golden`, :func:`process_model`). Installing or dropping an artifact, like writing
goldens, drops the entry's signature: it no longer covers what the entry records.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubless_server.core.tasks import ONNX_KINDS, spec_of
from hubless_server.optimize.errors import ExportError, ParityFailed, VolumeFull
from hubless_server.optimize.parity import ParityResult, answers, compare, probe_items
from hubless_volume import (
    ArtifactRecord,
    Manifest,
    ModelEntry,
    artifact_folder,
    atomic_place_file,
    check_artifacts,
    check_entry,
    external_data_problems,
    inside,
    repo_folder_name,
    sha256_file,
    utc_now,
)

log = logging.getLogger(__name__)

STAGING = ".hubless-optimize"
ARTIFACT_NAME = "model.onnx"
OUTPUTS = {"embedding": "last_hidden_state", "classification": "logits", "zero_shot": "logits"}
DISK_MARGIN = 64 << 20


@dataclass
class Options:
    names: list[str] = field(default_factory=list)
    optimize: bool = False  # ONNX Runtime's transformer optimizer after the export
    force: bool = False  # redo current artifacts, goldens and recorded failures
    deep: bool = False  # hash installed artifacts to tell whether they are current
    threads: int = 0
    onnx: bool = True  # export the encoders to ONNX
    golden: bool = True  # record every model's golden outputs (.golden)


@dataclass
class Result:
    """What happened to one model. ``status``: ``optimized``, ``current``, ``kept-torch``
    (export or parity failed; recorded), ``corrupt`` (its files fail the check), ``-`` (no
    ONNX export: a generation model, or ``--no-onnx``). ``golden``: ``written``,
    ``current``, ``failed``, ``-`` (``--no-golden``, or a corrupt model)."""

    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    parity: dict[str, float] = field(default_factory=dict)
    keeps_torch: bool = False  # no artifact: this run's failure, or one recorded before
    golden: str = "-"


def process_model(
    models_dir: Path, manifest: Manifest, name: str, options: Options, staging: Path
) -> Result:
    """One selected model: its ONNX artifact (encoders, unless ``--no-onnx``), then its
    golden outputs (unless ``--no-golden``), each saved in the manifest as it is done."""
    from hubless_server.optimize.golden import write_golden

    started = time.monotonic()
    if options.onnx and encoder_kind(manifest.models[name]) is not None:
        result = optimize_model(models_dir, manifest, name, options, staging)
    else:
        result = Result(name, "-")
    if not options.golden or result.status == "corrupt":
        return result
    result.golden, detail = write_golden(
        models_dir, manifest, name, force=options.force, threads=options.threads
    )
    if result.golden == "corrupt":
        result.status, result.detail = "corrupt", detail
    elif detail:
        result.detail = f"{result.detail}; {detail}" if result.status != "-" else detail
    result.seconds = time.monotonic() - started
    return result


def encoder_kind(entry: ModelEntry) -> str | None:
    """The runtime kind of an entry's task when ONNX Runtime can serve it, else None."""
    kind = spec_of(entry.task).runtime
    return kind if kind in ONNX_KINDS else None


def is_current(models_dir: Path, entry: ModelEntry, options: Options) -> bool:
    """The entry needs nothing: its ONNX artifact is in place with its recorded size (and
    sha256 with ``deep``) and was made with the same ``optimize`` choice, or a failure is
    recorded; never with ``force``."""
    if options.force:
        return False
    artifact = entry.artifact("onnx")
    if artifact is None:
        return bool(entry.optimize_error)
    if artifact.optimized != options.optimize:
        return False
    return not check_artifacts(models_dir, entry, deep=options.deep)


def optimize_model(
    models_dir: Path, manifest: Manifest, name: str, options: Options, staging: Path
) -> Result:
    """Bring one model's artifact up to date and save the manifest; see the module doc."""
    entry = manifest.models[name]
    started = time.monotonic()
    if is_current(models_dir, entry, options):
        detail = f"keeps PyTorch: {entry.optimize_error}" if entry.optimize_error else "ok"
        return Result(name, "current", detail, keeps_torch=bool(entry.optimize_error))
    problems = check_entry(models_dir, entry)
    if problems:
        detail = f"{problems[0].detail}; run `hubless-fetch verify {name}`"
        log.error("%s: its files do not match the manifest: %s", name, detail)
        return Result(name, "corrupt", detail)
    work = staging / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        try:
            record, parity = _export_checked(models_dir, entry, options, work)
        except (ExportError, ParityFailed) as exc:
            return _record_failure(models_dir, manifest, entry, str(exc), started)
        except OSError:  # the volume (or its free space): not the model's fault
            raise
        except Exception as exc:  # the model does not load, an exporter bug...: keep PyTorch
            log.exception("%s: unexpected failure while optimizing", name)
            reason = f"unexpected {type(exc).__name__} (the optimizer's log has the details)"
            return _record_failure(models_dir, manifest, entry, reason, started)
        _install(models_dir, manifest, entry, record, work / ARTIFACT_NAME)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    log.info(
        "%s: ONNX artifact installed (%.1f MiB, parity %s) in %.1f s",
        name,
        record.size / 2**20,
        parity.figures,
        seconds,
        extra={"fields": {"model": name, "sha256": record.sha256[:12]}},
    )
    return Result(name, "optimized", "ok", seconds, dict(parity.figures))


def _export_checked(
    models_dir: Path, entry: ModelEntry, options: Options, work: Path
) -> tuple[ArtifactRecord, ParityResult]:
    """Export ``entry`` into ``work`` and check it; the record of the file that passed."""
    import torch

    from hubless_server.core.threads import available_cpus
    from hubless_server.optimize.export import export_onnx, ort_optimize
    from hubless_server.runtimes import KINDS
    from hubless_server.runtimes._common import pad_rows
    from hubless_server.runtimes.base import OnnxArtifact, RuntimeOptions

    torch.set_num_threads(options.threads or available_cpus())

    kind = encoder_kind(entry)
    assert kind is not None
    snapshot = entry.snapshot_dir(models_dir)
    _preflight(models_dir, entry, work)
    runtime_cls = KINDS[kind]
    reference = runtime_cls(entry.name, snapshot, RuntimeOptions(threads=options.threads))
    reference.load()
    probes = probe_items(kind)
    expected = answers(reference, probes)
    example = _example_batch(reference, probes, pad_rows)
    exported = work / "exported.onnx"
    forward = reference._loaded_forward()  # type: ignore[attr-defined]  # the encoder runtimes
    export_onnx(forward.model, example, OUTPUTS[kind], exported)
    artifact_file = work / ARTIFACT_NAME
    if options.optimize:
        fused = ort_optimize(exported, artifact_file, getattr(forward.model, "config", None))
        log.info("%s: ONNX Runtime's optimizer fused %s", entry.name, fused or "nothing")
        exported.unlink()
    else:
        exported.rename(artifact_file)
    del reference, forward
    _self_contained(artifact_file)
    size, sha256 = artifact_file.stat().st_size, sha256_file(artifact_file)
    candidate = runtime_cls(
        entry.name,
        snapshot,
        RuntimeOptions(
            backend="onnx",
            onnx=OnnxArtifact(artifact_file, size, sha256, models_dir),
            threads=options.threads,
        ),
    )
    candidate.load()
    info = candidate.info()
    if info.backend != "onnx":
        raise ParityFailed(info.backend_note or "ONNX Runtime cannot load the export")
    result = compare(kind, expected, answers(candidate, probes))
    if not result.passed:
        log.error("%s: parity check failed: %s %s", entry.name, result.reason, result.figures)
        raise ParityFailed(f"parity check failed: {result.reason}")
    import onnxruntime

    record = ArtifactRecord(
        kind="onnx",
        path=f"{artifact_folder('onnx', entry.commit)}/{ARTIFACT_NAME}",
        size=size,
        sha256=sha256,
        optimized=options.optimize,
        created_at=utc_now(),
        parity=dict(result.figures),
        tool={"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    )
    return record, result


def _self_contained(file: Path) -> None:
    """:class:`ExportError` unless ``file`` is one self-contained ONNX model: the server and
    ``hubless-fetch verify --deep`` refuse an artifact whose tensors keep their data in other
    files (:func:`hubless_volume.external_data_problems`); the export folds such data back
    (:func:`.export._one_file`), so this never fires on what the exporter writes."""
    problems = external_data_problems(file)
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise ExportError(f"the export is not a self-contained ONNX model: {shown}")


def _example_batch(runtime: Any, probes: list[Any], pad_rows: Any) -> dict[str, Any]:
    """A padded batch of two rows of different lengths (the shortest and the longest probe
    rows), the example the exporter traces with."""
    import torch

    rows: list[dict[str, list[int]]] = []
    for item in probes:
        features = runtime.prepare(item).features
        rows += features if isinstance(features, list) else [features]
    rows.sort(key=lambda row: len(row["input_ids"]))
    pair = [rows[0], rows[-1]]
    if len(pair[0]["input_ids"]) < 2 or len(pair[0]["input_ids"]) == len(pair[1]["input_ids"]):
        raise ExportError("the probes give no two rows of different lengths to trace with")
    return pad_rows(pair, getattr(runtime, "_pad_id", 0), torch.device("cpu"))


def _preflight(models_dir: Path, entry: ModelEntry, work: Path) -> None:
    """Room on the volume for the export, its optimised copy and the installed artifact: three
    times the weights plus a margin (a guess that errs on the safe side)."""
    weights = sum(f.size for f in entry.files if f.path.endswith((".safetensors", ".bin")))
    needed = 3 * weights + DISK_MARGIN
    free = shutil.disk_usage(work).free
    if free < needed:
        raise VolumeFull(
            f"{entry.name}: not enough disk space on {models_dir}: the export needs about "
            f"{needed / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"
        )


def _install(
    models_dir: Path, manifest: Manifest, entry: ModelEntry, record: ArtifactRecord, file: Path
) -> None:
    """Move ``file`` to the artifact's place (fsynced, atomic rename, the folder fsynced:
    :func:`hubless_volume.atomic_place_file`), then record it."""
    target = inside(models_dir, repo_folder_name(entry.repo_id), record.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_place_file(file, target, move=True)
    entry.artifacts = [a for a in entry.artifacts if a.kind != record.kind] + [record]
    entry.optimize_error = ""
    entry.signature = ""  # it no longer covers the entry's files: hubless-fetch sign again
    manifest.save(models_dir)


def _record_failure(
    models_dir: Path, manifest: Manifest, entry: ModelEntry, reason: str, started: float
) -> Result:
    log.error("%s: keeps PyTorch: %s", entry.name, reason, extra={"fields": {"model": entry.name}})
    if entry.artifact("onnx") is not None:
        entry.signature = ""  # it covered the artifact dropped here
    entry.artifacts = [a for a in entry.artifacts if a.kind != "onnx"]
    entry.optimize_error = reason[:1000]
    manifest.save(models_dir)
    return Result(entry.name, "kept-torch", reason, time.monotonic() - started, keeps_torch=True)
