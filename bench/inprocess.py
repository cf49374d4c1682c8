"""The in-process references of the embeddings suite, and the ONNX artifacts of the benchmarks.

:class:`InProcess`: ``SentenceTransformer.encode`` in the benchmark process (the PyTorch
ceiling and the single-call floor). :class:`InProcessOrt`: the same model on ONNX Runtime with
the artifact ``hubless-optimize`` made, the server's own session options (``--threads``
intra-op, one inter-op thread, no spinning), the model's fast tokenizer and numpy mean
pooling: what the server would cost without serving. ``ensure_onnx(volume, names)`` runs
``hubless-optimize`` on a benchmark volume (idempotent: a second run only checks sizes), so
``hubless-serve --backend onnx`` has its artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hubless_fakehub.real_models import real_minilm_dir
from hubless_volume import Manifest

from .workload import latency_summary

log = logging.getLogger("bench")


class InProcess:
    """The in-process reference: ``SentenceTransformer.encode`` in this process.

    bf16 is measured two ways, as the server may run it: under ``torch.autocast`` on the
    float32 weights, and with the weights themselves in bf16 (``model.to(torch.bfloat16)``, a
    second copy of the model, loaded on first use), which the server keeps when its probe
    holds parity (``ModelInfo.precision``).
    """

    def __init__(self, sentences: list[str], seconds: float, batch: int = 128) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(
            str(real_minilm_dir()), device="cpu", local_files_only=True
        )
        self.sentences = sentences
        self.seconds = seconds
        self.batch = batch
        self.last_cpu_ms = float("nan")  # CPU-ms per sentence of the last batched() call
        self._bf16_model: Any = None

    def enc(self, texts: list[str], bf16_weights: bool = False) -> np.ndarray:
        model = self.bf16_model() if bf16_weights else self.model
        return model.encode(
            texts, batch_size=self.batch, convert_to_numpy=True, normalize_embeddings=True
        )

    def bf16_model(self) -> Any:
        """A copy of the model with bf16 weights (no autocast)."""
        if self._bf16_model is None:
            from sentence_transformers import SentenceTransformer

            self._bf16_model = SentenceTransformer(
                str(real_minilm_dir()), device="cpu", local_files_only=True
            ).to(torch.bfloat16)
        return self._bf16_model

    def mean_tokens(self) -> float:
        tok = self.model.tokenizer
        return float(np.mean([len(tok(s)["input_ids"]) for s in self.sentences]))

    def single_call(self) -> dict[str, float]:
        """One sentence per ``encode`` call: throughput and latency percentiles."""
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

    def batched(self, autocast: bool, bf16_weights: bool = False) -> float:
        """Sentences/s encoding full batches (at least one batch, however slow), under bf16
        autocast or with bf16 weights; CPU-ms per sentence in ``last_cpu_ms``."""
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        b, sents = self.batch, self.sentences
        with ctx:
            self.enc(sents[:b], bf16_weights)
            n = 0
            t0, cpu0 = time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < self.seconds:
                self.enc([sents[(n + j) % len(sents)] for j in range(b)], bf16_weights)
                n += b
            self.last_cpu_ms = (time.process_time() - cpu0) * 1e3 / n
            return n / (time.perf_counter() - t0)

    def first_pass(
        self, n_check: int, profile_dir: Path | None, bf16: bool = True
    ) -> dict[str, Any]:
        """Accuracy, single-call latency, batched fp32 and bf16 (autocast and bf16 weights)
        throughput and CPU-ms per sentence."""
        out: dict[str, Any] = {"mean_tokens": round(self.mean_tokens(), 2), "batch": self.batch}
        ref = self.enc(self.sentences[:n_check])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = self.enc(self.sentences[:n_check])
        out["bf16_autocast_min_cosine"] = float(min_cosine(ref, bf))
        out["single_call_before"] = self.single_call()
        out["batched_fp32_before"] = self.batched(False)
        out["batched_fp32_cpu_ms_before"] = self.last_cpu_ms
        out["batched_bf16_sent_s"] = self.batched(True) if bf16 else float("nan")
        out["batched_bf16_cpu_ms"] = self.last_cpu_ms if bf16 else float("nan")
        if bf16:
            vecs = self.enc(self.sentences[:n_check], bf16_weights=True)
            out["bf16_weights_min_cosine"] = float(min_cosine(ref, vecs))
            out["batched_bf16_weights_before"] = self.batched(False, bf16_weights=True)
            out["batched_bf16_weights_cpu_ms_before"] = self.last_cpu_ms
        log.info(
            "in-process: single call p50 %.1f ms; batched fp32 %.0f/s, bf16 autocast %.0f/s, "
            "bf16 weights %.0f/s; bf16 min cosine %.5f; %.1f tokens/sentence",
            out["single_call_before"]["p50_ms"],
            out["batched_fp32_before"],
            out["batched_bf16_sent_s"],
            out.get("batched_bf16_weights_before", float("nan")),
            out["bf16_autocast_min_cosine"],
            out["mean_tokens"],
        )
        out["_reference"] = ref
        if profile_dir is not None:
            torch_profile(self.enc, self.sentences[: self.batch], profile_dir)
        return out

    def second_pass(self, out: dict[str, Any]) -> None:
        """Re-measure the fp32 and bf16-weights ceilings and the single-call floor after the
        servers ran, and keep the better of each (the stricter reference on a noisy
        machine)."""
        out["single_call_after"] = self.single_call()
        out["batched_fp32_after"] = self.batched(False)
        out["batched_fp32_cpu_ms_after"] = self.last_cpu_ms
        out["batched_fp32_cpu_ms_per_sent"] = min(
            out["batched_fp32_cpu_ms_before"], out["batched_fp32_cpu_ms_after"]
        )
        out["batched_fp32_sent_s"] = max(out["batched_fp32_before"], out["batched_fp32_after"])
        if "batched_bf16_weights_before" in out:
            after = self.batched(False, bf16_weights=True)
            out["batched_bf16_weights_sent_s"] = max(out["batched_bf16_weights_before"], after)
            out["batched_bf16_weights_cpu_ms"] = min(
                out["batched_bf16_weights_cpu_ms_before"], self.last_cpu_ms
            )
        out["single_call"] = min(
            out["single_call_before"], out["single_call_after"], key=lambda r: r["p50_ms"]
        )
        log.info(
            "in-process again: single call p50 %.1f ms; batched fp32 %.0f/s (reference: %.0f/s)",
            out["single_call_after"]["p50_ms"],
            out["batched_fp32_after"],
            out["batched_fp32_sent_s"],
        )


def torch_profile(enc: Callable[[list[str]], np.ndarray], batch: list[str], out: Path) -> None:
    """torch.profiler operator tables of one batched encode, fp32 and bf16 autocast."""
    from torch.profiler import ProfilerActivity, profile

    out.mkdir(parents=True, exist_ok=True)
    for label, autocast in (("fp32", False), ("bf16", True)):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with ctx:
            enc(batch)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                enc(batch)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        path = out / f"embeddings-in-process-{label}-ops.txt"
        path.write_text(f"one encode() of {len(batch)} sentences, {label}\n{table}\n")
        log.info("torch profile: %s", path)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


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
        data = read_artifact(OnnxArtifact(path, record.size, record.sha256, volume))
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
