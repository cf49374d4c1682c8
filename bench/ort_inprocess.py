"""ONNX Runtime in the benchmarks: the artifacts, and in-process ONNX Runtime (the ceiling).

``ensure_onnx(volume, names)`` runs ``hubless-optimize`` on a benchmark volume (idempotent: a
second run only checks sizes), so ``hubless-serve --backend onnx`` has its artifacts.
:class:`InProcessOrt` encodes with the same artifact in this process, with the server's own
session options (``--threads`` intra-op, one inter-op thread, no spinning), the model's
fast tokenizer and numpy mean pooling: what the server would cost without serving.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from workload import latency_summary

from hubless_volume import Manifest

log = logging.getLogger("bench")


def ensure_onnx(volume: Path, names: list[str], threads: int) -> dict[str, Any]:
    """``hubless-optimize NAME...`` on ``volume``; the parity figures of each artifact, or
    why a model has none."""
    exe = Path(sys.executable).with_name("hubless-optimize")
    argv = [str(exe), "--models-dir", str(volume), "--threads", str(threads), *names]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"hubless-optimize exited {proc.returncode}:\n{proc.stdout[-2000:]}")
    log.info(
        "hubless-optimize %s: %.1f s\n%s", " ".join(names), time.perf_counter() - t0, proc.stdout
    )
    manifest = Manifest.load(volume)
    out: dict[str, Any] = {}
    for name in names:
        entry = manifest.models[name]
        artifact = entry.artifact("onnx")
        out[name] = (
            {"parity": artifact.parity, "size": artifact.size, "optimized": artifact.optimized}
            if artifact is not None
            else {"error": entry.optimize_error}
        )
    return out


class InProcessOrt:
    """all-MiniLM-L6-v2 on ONNX Runtime in this process: tokenise, run, mean-pool, normalise."""

    def __init__(self, volume: Path, name: str, sentences: list[str], seconds: float, threads: int):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        from hubless_server.runtimes.backends import read_artifact, session_options
        from hubless_server.runtimes.base import OnnxArtifact

        entry = Manifest.load(volume).models[name]
        record = entry.artifact("onnx")
        if record is None:
            raise RuntimeError(f"{name} has no ONNX artifact: {entry.optimize_error}")
        path = entry.artifact_path(volume, record)
        data = read_artifact(OnnxArtifact(path, record.size, record.sha256))
        self.session = ort.InferenceSession(
            data, session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(entry.snapshot_dir(volume)), local_files_only=True
        )
        self.sentences = sentences
        self.seconds = seconds
        self.last_cpu_ms = float("nan")

    def enc(self, texts: list[str]) -> np.ndarray:
        feats = self.tokenizer(
            texts, padding=True, truncation=True, max_length=256, return_tensors="np"
        )
        hidden = self.session.run(None, {n: feats[n] for n in self.inputs})[0]
        mask = feats["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def batched(self, batch: int) -> float:
        """Sentences/s encoding full batches; CPU-ms per sentence in ``last_cpu_ms``."""
        sents = self.sentences
        self.enc(sents[:batch])
        n = 0
        t0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < self.seconds:
            self.enc([sents[(n + j) % len(sents)] for j in range(batch)])
            n += batch
        self.last_cpu_ms = (time.process_time() - cpu0) * 1e3 / n
        return n / (time.perf_counter() - t0)

    def single_call(self) -> dict[str, float]:
        for s in self.sentences[:20]:
            self.enc([s])
        lat: list[float] = []
        t_end = time.perf_counter() + self.seconds / 2
        i = 0
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            self.enc([self.sentences[i % len(self.sentences)]])
            lat.append(time.perf_counter() - t0)
            i += 1
        return {
            "sent_s": len(lat) / sum(lat),
            **{k: round(v, 2) for k, v in latency_summary(lat).items()},
        }
