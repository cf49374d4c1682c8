"""Golden outputs: what a model answered, when it was installed, on a few fixed probe texts.

The file hashes (the manifest) and the signature (:mod:`hubless_volume.signing`) prove that
the bytes on the volume are the ones that were fetched; they cannot tell that what is served
still *answers* as it did: a transformers or torch upgrade in the image, a wrong ONNX export
or a tokenizer mismatch change outputs silently. So the step that already has torch and writes
to the volume (``hubless-optimize``) records, per model and commit, the float32 outputs of a
few probe texts in a small JSON file beside its artifacts, and the server runs the same probes
at every load and compares (within tolerances that depend on the precision it serves with;
the comparison is the server's, the file format is here).

Where: ``models--org--name/hubless-golden/<commit>/golden.json``; the manifest entry records it
as ``golden`` (:class:`GoldenRecord`: path, size, sha256, like an artifact), so ``verify``,
bundles, pruning and the signature treat it like the other derived files.

Format (``version`` 1)::

    {
      "version": 1,
      "model": "distilbert-sst2", "commit": "<40-hex>", "task": "sentiment",
      "created_at": "2026-12-01T10:00:00+00:00",
      "reference": {"backend": "torch", "dtype": "float32", "device": "cpu"},
      "tool": {"torch": "2.13.0+cpu", "transformers": "4.57.0"},
      "hypothesis_template": "",          # zero-shot only; "" = the server's default
      "multi_label": false,               # zero-shot only
      "probes": [
        {"text": "I love this.", "labels": ["NEGATIVE", "POSITIVE"], "scores": [0.01, 0.99]}
      ]
    }

A probe holds its input ``text`` and the outputs of its task, and only those:

- ``embedding``: ``embedding``, the sentence vector (every probe the same length);
- ``sentiment``, ``emotion``: ``labels`` (the model's, in its order, the same in every probe)
  and ``scores``, each label's probability;
- ``zero-shot``: ``labels``, the candidate labels given (input), and ``scores``, each one's;
- ``summarization``, ``conversation``: ``tokens``, the greedy first token ids (conversation:
  ``text`` is one user turn).

:meth:`Golden.load` is as strict as the manifest (any other shape, a number that is not
finite, a probability outside [0, 1], an output of another task: :class:`GoldenError`);
:meth:`Golden.save` writes atomically (:mod:`hubless_volume.atomic`; :func:`save_golden`: at
its place for a manifest entry, returning the record). :func:`load_golden` is what a reader
calls: the file a manifest entry records, read as the volume's own files are
(:mod:`hubless_volume.safeio`: a regular file inside the volume, size-capped, never blocking on
a FIFO), its size and sha256 checked, its model, commit and task matched to the entry's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubless_volume.atomic import atomic_write_bytes
from hubless_volume.jsonfile import capped_json, parse_json, read_checked
from hubless_volume.paths import (
    GOLDEN_KIND,
    GOLDEN_NAME,
    derived_folder,
    inside,
    repo_folder_name,
)
from hubless_volume.schema import (
    SchemaError,
    check_commit,
    check_name,
    check_object,
    check_relpath,
    check_sha256,
    check_size,
    check_task,
    check_timestamp,
    check_type,
)

if TYPE_CHECKING:
    from hubless_volume.manifest import ModelEntry

GOLDEN_VERSION = 1
MAX_PROBES = 64
MAX_TEXT = 2000
MAX_VECTOR = 8192
MAX_LABELS = 64
MAX_TOKENS = 256
_MAX_FILE = 32 << 20
"""Cap on a golden-outputs file: probes at their limits (64 of 8192 floats, each float at
its longest, ``-1.2345678314585239e-05``) are 18.1 MB as written (measured); 24 probes of
1024 floats are 0.7 MB."""
_GOLDEN_KEYS = ("version", "model", "commit", "task", "probes")
_GOLDEN_OPTIONAL = ("created_at", "reference", "tool", "hypothesis_template", "multi_label")
_PROBE_OPTIONAL = ("embedding", "labels", "scores", "tokens")
_OUTPUTS: dict[str, frozenset[str]] = {
    "embedding": frozenset({"embedding"}),
    "sentiment": frozenset({"labels", "scores"}),
    "emotion": frozenset({"labels", "scores"}),
    "zero-shot": frozenset({"labels", "scores"}),
    "summarization": frozenset({"tokens"}),
    "conversation": frozenset({"tokens"}),
}
"""Per task, the outputs every probe must have (and the only ones it may have)."""


class GoldenError(SchemaError):
    """A golden-outputs file is missing, differs from its manifest record, does not belong to
    its entry, or has another shape (the file and the field are named)."""


@dataclass(frozen=True)
class GoldenRecord:
    """The manifest's record of a model's golden-outputs file: its path relative to the
    repository folder (a file of ``hubless-golden/<commit>/``), its size and sha256."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(
        cls, data: Any, commit: str, file: str = "manifest", field: str = "golden"
    ) -> GoldenRecord:
        """The record from its JSON object; its path must be a file of
        ``hubless-golden/<commit>/`` (the entry's commit); :class:`SchemaError` otherwise."""
        data = check_object(data, file, field, required=("path", "size", "sha256"))
        path = check_relpath(data["path"], file, f"{field}.path")
        folder = golden_folder(commit)
        head, _, name = path.rpartition("/")
        if head != folder or not name:
            raise SchemaError(file, f"{field}.path", f"{path!r} is not a file of {folder}/")
        return cls(
            path=path,
            size=check_size(data["size"], file, f"{field}.size"),
            sha256=check_sha256(data["sha256"], file, f"{field}.sha256"),
        )


def golden_folder(commit: str) -> str:
    """``hubless-golden/<commit>``: where a commit's golden outputs live, relative to the
    model's repository folder."""
    return derived_folder(GOLDEN_KIND, commit)


@dataclass(frozen=True)
class GoldenProbe:
    """One probe text and the outputs recorded for it (only those of the file's task are
    set; see the module's table)."""

    text: str
    embedding: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"text": self.text}
        for key in _PROBE_OPTIONAL:
            if getattr(self, key):
                data[key] = list(getattr(self, key))
        return data

    @classmethod
    def from_json(cls, data: Any, task: str, file: str, field: str) -> GoldenProbe:
        data = check_object(data, file, field, required=("text",), optional=_PROBE_OPTIONAL)
        text = check_type(data["text"], str, file, f"{field}.text")
        if not text.strip() or len(text) > MAX_TEXT:
            raise SchemaError(file, f"{field}.text", f"must be 1 to {MAX_TEXT} characters")
        wanted = _OUTPUTS[task]
        given = {key for key in _PROBE_OPTIONAL if key in data}
        if given != wanted:
            raise SchemaError(
                file,
                field,
                f"a {task} probe has {', '.join(sorted(wanted))} "
                f"(this one has {', '.join(sorted(given)) or 'no output'})",
            )
        probe = cls(
            text=text,
            embedding=_floats(data.get("embedding", []), MAX_VECTOR, file, f"{field}.embedding"),
            labels=_labels(data.get("labels", []), file, f"{field}.labels"),
            scores=_floats(data.get("scores", []), MAX_LABELS, file, f"{field}.scores"),
            tokens=_tokens(data.get("tokens", []), file, f"{field}.tokens"),
        )
        if "scores" in wanted:
            if len(probe.scores) != len(probe.labels):
                raise SchemaError(
                    file,
                    f"{field}.scores",
                    f"{len(probe.scores)} scores for {len(probe.labels)} labels",
                )
            if any(not 0.0 <= s <= 1.0 for s in probe.scores):
                raise SchemaError(file, f"{field}.scores", "a score is outside [0, 1]")
        return probe


@dataclass
class Golden:
    """A model's golden outputs for one commit (the file's content).

    ``reference`` says what produced them (``backend``, ``dtype``, ``device``), ``tool`` the
    library versions; ``hypothesis_template`` and ``multi_label`` are the zero-shot settings
    the probes ran with (``""`` meaning the server's default template)."""

    model: str
    commit: str
    task: str
    probes: list[GoldenProbe]
    created_at: str = ""
    reference: dict[str, str] = field(default_factory=dict)
    tool: dict[str, str] = field(default_factory=dict)
    hypothesis_template: str = ""
    multi_label: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": GOLDEN_VERSION,
            "model": self.model,
            "commit": self.commit,
            "task": self.task,
        }
        if self.created_at:
            data["created_at"] = self.created_at
        data["reference"] = dict(self.reference)
        data["tool"] = dict(self.tool)
        if self.task == "zero-shot":
            data["hypothesis_template"] = self.hypothesis_template
            data["multi_label"] = self.multi_label
        data["probes"] = [p.to_json() for p in self.probes]
        return data

    @classmethod
    def from_json(cls, data: Any, file: str = "golden outputs") -> Golden:
        """The content from parsed JSON, every field checked; :class:`GoldenError`
        naming ``file`` and the field for any other shape."""
        try:
            return cls._parse(data, file)
        except GoldenError:
            raise
        except SchemaError as exc:
            raise GoldenError(exc.file, exc.field, exc.message) from None

    @classmethod
    def _parse(cls, data: Any, file: str) -> Golden:
        data = check_object(data, file, "", required=_GOLDEN_KEYS, optional=_GOLDEN_OPTIONAL)
        version = data["version"]
        if version != GOLDEN_VERSION or isinstance(version, bool):
            raise SchemaError(
                file, "version", f"unsupported format version {version!r} (expected 1)"
            )
        task = check_task(data["task"], file, "task")
        zero_shot = {"hypothesis_template", "multi_label"} & set(data)
        if zero_shot and task != "zero-shot":
            raise SchemaError(file, sorted(zero_shot)[0], f"is for zero-shot, not {task}")
        template = check_type(data.get("hypothesis_template", ""), str, file, "hypothesis_template")
        if len(template) > MAX_TEXT:
            raise SchemaError(file, "hypothesis_template", f"is longer than {MAX_TEXT} characters")
        raw = check_type(data["probes"], list, file, "probes")
        if not raw or len(raw) > MAX_PROBES:
            raise SchemaError(file, "probes", f"must list 1 to {MAX_PROBES} probes")
        probes = [GoldenProbe.from_json(p, task, file, f"probes[{i}]") for i, p in enumerate(raw)]
        _check_consistent(probes, task, file)
        created = data.get("created_at", "")
        return cls(
            model=check_name(data["model"], file, "model"),
            commit=check_commit(data["commit"], file, "commit"),
            task=task,
            probes=probes,
            created_at=check_timestamp(created, file, "created_at") if created != "" else "",
            reference=_strings(data.get("reference", {}), file, "reference"),
            tool=_strings(data.get("tool", {}), file, "tool"),
            hypothesis_template=template,
            multi_label=check_type(data.get("multi_label", False), bool, file, "multi_label"),
        )

    @classmethod
    def load(cls, path: Path, *, models_dir: Path | None = None) -> Golden:
        """Read a golden-outputs file: a regular file (with ``models_dir``, inside that
        volume) of at most 32 MiB, read without blocking on a FIFO
        (:func:`hubless_volume.jsonfile.read_checked`); :class:`GoldenError` if it is absent,
        not such a file, unreadable, not JSON or of another shape."""
        file = f"golden outputs {path}"
        return cls.from_bytes(_read(path, file, models_dir), file)

    @classmethod
    def from_bytes(cls, raw: bytes, file: str = "golden outputs") -> Golden:
        """The content from the file's bytes (UTF-8 JSON, a key twice refused), every field
        checked; :class:`GoldenError` naming ``file`` and the field otherwise."""
        try:
            data = parse_json(raw, file)
        except SchemaError as exc:
            raise GoldenError(exc.file, exc.field, exc.message) from None
        return cls.from_json(data, file)

    def save(self, path: Path) -> bytes:
        """Write the file atomically at ``path``, checked first (what is written reads back
        with :meth:`load`); returns the bytes written."""
        data = self.to_json()
        Golden.from_json(data, f"golden outputs {path}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = capped_json(data, f"golden outputs {path}", _MAX_FILE, GoldenError)
        atomic_write_bytes(path, raw)
        return raw


def save_golden(models_dir: Path, entry: ModelEntry, golden: Golden) -> GoldenRecord:
    """Write ``golden`` for ``entry`` at its place on the volume
    (``models--org--name/hubless-golden/<commit>/golden.json``) and return the record to set
    as ``entry.golden`` (then save the manifest, holding the volume write lock).
    :class:`GoldenError` if ``golden`` names another model, commit or task than ``entry``."""
    _check_belongs(golden, entry, "golden outputs")
    relative = f"{golden_folder(entry.commit)}/{GOLDEN_NAME}"
    path = inside(Path(models_dir), repo_folder_name(entry.repo_id), relative)
    content = golden.save(path)
    return GoldenRecord(relative, len(content), hashlib.sha256(content).hexdigest())


def load_golden(models_dir: Path, entry: ModelEntry) -> Golden | None:
    """The golden outputs ``entry`` records, or ``None`` when it records none.

    The file must be a regular file of its own (not a link, not a FIFO or a device) inside
    the volume, of at most 32 MiB; it is read once, without blocking, and what is hashed is
    what is parsed. Raises :class:`GoldenError` when the file is missing or not such a file,
    its size or sha256 differs from the record, it has another shape, or it names another
    model, commit or task than the entry; :class:`~hubless_volume.paths.VolumePathError` if
    its path leads off the volume."""
    record = entry.golden
    if record is None:
        return None
    path = entry.golden_path(Path(models_dir))
    file = f"golden outputs {path}"
    if path.is_symlink():
        raise GoldenError(file, "", "is a link, not a file")
    content = _read(path, file, models_dir)
    digest = hashlib.sha256(content).hexdigest()
    if len(content) != record.size or digest != record.sha256:
        raise GoldenError(
            file, "", f"differs from its manifest record (size {len(content)}, sha256 {digest})"
        )
    golden = Golden.from_bytes(content, file)
    _check_belongs(golden, entry, file)
    return golden


def _read(path: Path, file: str, models_dir: Path | None) -> bytes:
    """The bytes of a golden-outputs file (:func:`~hubless_volume.jsonfile.read_checked`);
    :class:`GoldenError` naming ``file`` when it is absent or refused."""
    try:
        return read_checked(path, file, limit=_MAX_FILE, models_dir=models_dir)
    except FileNotFoundError:
        raise GoldenError(file, "", "is missing") from None
    except SchemaError as exc:
        raise GoldenError(exc.file, exc.field, exc.message) from None


def _check_belongs(golden: Golden, entry: ModelEntry, file: str) -> None:
    """:class:`GoldenError` unless ``golden`` is of ``entry``'s model, commit and task."""
    for key in ("model", "commit", "task"):
        theirs = getattr(golden, key)
        ours = getattr(entry, "name" if key == "model" else key)
        if theirs != ours:
            raise GoldenError(file, key, f"{theirs!r} is not the entry's {ours!r}")


def _check_consistent(probes: list[GoldenProbe], task: str, file: str) -> None:
    """Every embedding the same length; a classifier's labels the same in every probe."""
    if task == "embedding":
        sizes = {len(p.embedding) for p in probes}
        if len(sizes) > 1:
            raise SchemaError(file, "probes", f"embeddings of different lengths {sorted(sizes)}")
    if task in ("sentiment", "emotion"):
        for i, probe in enumerate(probes):
            if probe.labels != probes[0].labels:
                raise SchemaError(file, f"probes[{i}].labels", "differ from the first probe's")


def _number(value: Any, file: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(file, field, f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise SchemaError(file, field, f"{value!r} is not a finite number")
    return number


def _floats(value: Any, limit: int, file: str, field: str) -> list[float]:
    items = check_type(value, list, file, field)
    if len(items) > limit:
        raise SchemaError(file, field, f"has {len(items)} numbers, at most {limit}")
    return [_number(v, file, f"{field}[{i}]") for i, v in enumerate(items)]


def _labels(value: Any, file: str, field: str) -> list[str]:
    items = check_type(value, list, file, field)
    if len(items) > MAX_LABELS:
        raise SchemaError(file, field, f"has {len(items)} labels, at most {MAX_LABELS}")
    labels = [check_type(v, str, file, f"{field}[{i}]") for i, v in enumerate(items)]
    for i, label in enumerate(labels):
        if not label or len(label) > 200:
            raise SchemaError(file, f"{field}[{i}]", "must be 1 to 200 characters")
        if label in labels[:i]:
            raise SchemaError(file, f"{field}[{i}]", f"{label!r} is listed twice")
    return labels


def _tokens(value: Any, file: str, field: str) -> list[int]:
    items = check_type(value, list, file, field)
    if len(items) > MAX_TOKENS:
        raise SchemaError(file, field, f"has {len(items)} tokens, at most {MAX_TOKENS}")
    return [check_size(v, file, f"{field}[{i}]") for i, v in enumerate(items)]


def _strings(value: Any, file: str, field: str) -> dict[str, str]:
    data = check_type(value, dict, file, field)
    for key, text in data.items():
        if not isinstance(key, str) or not key or len(key) > 40:
            raise SchemaError(file, field, f"{key!r} is not a key")
        if len(check_type(text, str, file, f"{field}[{key!r}]")) > 100:
            raise SchemaError(file, f"{field}[{key!r}]", "is longer than 100 characters")
    return dict(data)
