"""A fake runtime and a fake volume: exercise the server core without torch models."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from hubless_server.runtimes.base import (
    ChatItem,
    ClassificationOutput,
    EmbeddingOutput,
    GenerationOutput,
    InputTooLongError,
    ModelRuntime,
    Prepared,
    RuntimeInfo,
    StreamPiece,
    SummarizeItem,
    TextItem,
    ZeroShotItem,
)
from hubless_volume import FileRecord, Manifest, ModelEntry, repo_folder_name

LABELS = {
    "emotion": ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"),
    "bert-multilingual-sentiment": ("1 star", "2 stars", "3 stars", "4 stars", "5 stars"),
    "twitter-roberta-sentiment": ("negative", "neutral", "positive"),
    "distilbert-sst2": ("NEGATIVE", "POSITIVE"),
}
CATALOG = {
    "emotion-english-distilroberta": ("j-hartmann/emotion-english-distilroberta-base", "emotion"),
    "bert-multilingual-sentiment": (
        "nlptown/bert-base-multilingual-uncased-sentiment",
        "sentiment",
    ),
    "twitter-roberta-sentiment": (
        "cardiffnlp/twitter-roberta-base-sentiment-latest",
        "sentiment",
    ),
    "distilbert-sst2": (
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        "sentiment",
    ),
    "bart-large-mnli": ("facebook/bart-large-mnli", "zero-shot"),
    "bart-large": ("facebook/bart-large", "summarization"),
    "dialogpt-medium": ("microsoft/DialoGPT-medium", "conversation"),
    "dialogpt-small": ("microsoft/DialoGPT-small", "conversation"),
    "all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "embedding"),
}
TASK_ORDER = {
    "emotion": ["emotion-english-distilroberta"],
    "sentiment": ["bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2"],
    "zero-shot": ["bart-large-mnli"],
    "summarization": ["bart-large"],
    "conversation": ["dialogpt-medium", "dialogpt-small"],
    "embedding": ["all-minilm-l6-v2"],
}


def make_fake_volume(root: Path, names: list[str] | None = None) -> Path:
    """A volume whose manifest lists ``names`` (default all nine) with one small file each."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(tasks={k: list(v) for k, v in TASK_ORDER.items()})
    for name in CATALOG if names is None else names:
        repo_id, task = CATALOG[name]
        commit = hashlib.sha1(name.encode()).hexdigest()
        snapshot = root / repo_folder_name(repo_id) / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        data = f'{{"name": "{name}"}}\n'.encode()
        (snapshot / "config.json").write_bytes(data)
        record = FileRecord("config.json", len(data), hashlib.sha256(data).hexdigest())
        manifest.models[name] = ModelEntry(name, repo_id, "main", commit, task, [record])
    manifest.save(root)
    return root


class FakeRuntime(ModelRuntime[Any, Any]):
    """Deterministic outputs; one token per word; records every predicted batch.

    Class-level knobs (set by tests, reset by ``reset()``): ``delay`` seconds per predict,
    ``fail_load`` model names, ``max_tokens`` input limit, ``step_delay`` per stream piece.
    """

    kind: ClassVar[str] = "fake"
    batches: ClassVar[list[tuple[str, list[Any]]]] = []
    delay: ClassVar[float] = 0.0
    step_delay: ClassVar[float] = 0.0
    fail_load: ClassVar[set[str]] = set()
    load_delay: ClassVar[float] = 0.0
    max_tokens: ClassVar[int] = 64
    stream_steps: ClassVar[list[int]] = []
    gate: ClassVar[threading.Event | None] = None

    @classmethod
    def reset(cls) -> None:
        cls.batches = []
        cls.delay = cls.step_delay = cls.load_delay = 0.0
        cls.fail_load = set()
        cls.max_tokens = 64
        cls.stream_steps = []
        cls.gate = None

    def __init__(self, name: str, path: Path, options: Any, task: str = "") -> None:
        super().__init__(name, path, options)
        self.task = task
        self.loaded = False

    def load(self) -> None:
        if self.load_delay:
            time.sleep(self.load_delay)
        if self.name in self.fail_load:
            raise RuntimeError(f"weights of {self.name} are unreadable")
        assert (self.path / "config.json").is_file()
        self.loaded = True

    def info(self) -> RuntimeInfo:
        labels: tuple[str, ...] = ()
        if self.task in ("emotion", "sentiment"):
            labels = LABELS.get(self.name, LABELS["emotion"])
        dimension = 3 if self.task == "embedding" else 0
        return RuntimeInfo(
            self.options.device,
            self.options.dtype,
            self.max_tokens,
            labels=labels,
            embedding_dimension=dimension,
        )

    def prepare(self, item: Any) -> Prepared[Any]:
        if isinstance(item, ChatItem):
            last = len(item.turns[-1].split())
            if last > self.max_tokens:  # the turn to answer must fit; older ones are dropped
                raise InputTooLongError(last, self.max_tokens)
            words = sum(len(t.split()) for t in item.turns)
            key = (item.max_new_tokens, item.temperature, item.top_p, item.seed)
            return Prepared(item, words, truncated=len(item.turns) > 3, batch_key=key)
        text = item.text
        if text == "boom":
            raise ValueError("the fake runtime refuses 'boom'")
        words = len(text.split())
        truncated = words > self.max_tokens
        if truncated and not item.truncate:
            raise InputTooLongError(words, self.max_tokens)
        rows = len(item.labels) if isinstance(item, ZeroShotItem) else 1
        key: Any = None
        if isinstance(item, SummarizeItem):
            key = (item.min_length, item.max_length, item.num_beams)
        if isinstance(item, TextItem):
            key = item.normalize
        return Prepared(
            item, min(words, self.max_tokens), rows=rows, truncated=truncated, batch_key=key
        )

    def predict(self, batch: list[Prepared[Any]]) -> list[Any]:
        type(self).batches.append((self.name, [p.item for p in batch]))
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        if any(getattr(p.item, "text", "") == "crash" for p in batch):
            raise RuntimeError("the fake runtime crashed")
        return [self._output(p) for p in batch]

    def _output(self, p: Prepared[Any]) -> Any:
        item = p.item
        if self.task == "embedding":
            return EmbeddingOutput([float(p.num_tokens), 1.0, 0.0], p.num_tokens, p.truncated)
        if self.task in ("emotion", "sentiment"):
            labels = LABELS.get(self.name, LABELS["emotion"])
            weights = [1.0 + (i == len(labels) - 1) * 2 for i in range(len(labels))]
            total = sum(weights)
            return ClassificationOutput(
                [(lb, w / total) for lb, w in zip(labels, weights, strict=True)], p.truncated
            )
        if self.task == "zero-shot":
            n = len(item.labels)
            return ClassificationOutput([(lb, 1.0 / n) for lb in item.labels], p.truncated)
        if self.task == "summarization":
            return GenerationOutput(item.text[:20], 5, True, p.truncated)
        return GenerationOutput(f"{self.name} says hi", 3, item.max_new_tokens > 3, p.truncated)

    def stream(self, prepared: Prepared[Any], cancelled: threading.Event) -> Iterator[StreamPiece]:
        item = prepared.item
        for step in range(item.max_new_tokens):
            if cancelled.is_set():
                return
            type(self).stream_steps.append(step)
            if self.step_delay:
                time.sleep(self.step_delay)
            yield StreamPiece(f"w{step} ", tokens=step + 1)
        yield StreamPiece(
            "", final=True, tokens=item.max_new_tokens, finished=False, truncated=prepared.truncated
        )


def fake_factory(task: str) -> type[ModelRuntime[Any, Any]]:
    """A runtime class per task (what ``runtime_class(task)`` returns in the real server)."""

    class TaskFake(FakeRuntime):
        def __init__(self, name: str, path: Path, options: Any) -> None:
            super().__init__(name, path, options, task)

    return TaskFake


def fake_safetensors(elements: int) -> bytes:
    """A safetensors file holding one float32 tensor of ``elements`` (memory estimates)."""
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [elements], "data_offsets": [0, 4 * elements]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + bytes(4 * elements)


def update_fake_model(
    root: Path,
    name: str,
    version: int = 2,
    *,
    corrupt: bool = False,
    prune: bool = True,
    weights: int = 0,
) -> str:
    """Install ``version`` of ``name`` as a new commit and point the manifest at it, as
    ``hubless-fetch fetch --refresh`` does (a model not installed yet is added). ``corrupt``
    records a wrong size for its file; ``prune`` removes the previous snapshot; ``weights``
    adds a safetensors file of that many float32 elements. Returns the new commit."""
    manifest = Manifest.load(root)
    previous = manifest.models.get(name)
    repo_id, task = CATALOG[name]
    commit = hashlib.sha1(f"{name}@{version}".encode()).hexdigest()
    snapshot = root / repo_folder_name(repo_id) / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    files = {"config.json": f'{{"name": "{name}", "version": {version}}}\n'.encode()}
    if weights:
        files["model.safetensors"] = fake_safetensors(weights)
    records = []
    for path, data in files.items():
        (snapshot / path).write_bytes(data)
        size = len(data) + (1 if corrupt and path == "config.json" else 0)
        records.append(FileRecord(path, size, hashlib.sha256(data).hexdigest()))
    manifest.models[name] = ModelEntry(name, repo_id, "main", commit, task, records)
    manifest.save(root)
    if prune and previous is not None and previous.commit != commit:
        shutil.rmtree(previous.snapshot_dir(root), ignore_errors=True)
    return commit


def remove_fake_model(root: Path, name: str) -> None:
    """``hubless-fetch remove NAME``: the manifest entry, then the files."""
    manifest = Manifest.load(root)
    entry = manifest.models.pop(name)
    manifest.save(root)
    shutil.rmtree(entry.snapshot_dir(root), ignore_errors=True)
