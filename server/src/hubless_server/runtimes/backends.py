"""What runs an encoder's forward pass: PyTorch, or an ONNX Runtime session.

The encoder runtimes (embedding, classification, zero-shot) tokenise, validate, truncate,
batch, pad, pool and score the same way whatever computes the forward pass; only the pass
itself differs. A :class:`Forward` takes the padded batch (``input_ids``, ``attention_mask``
and, where the tokenizer makes them, ``token_type_ids``, as CPU int64 tensors on the CPU
backend) and returns the model's main output as a float32 tensor: ``last_hidden_state`` for an
embedder, ``logits`` for a classifier.

* :class:`TorchForward`: the ``transformers`` model in eager mode (``inference_mode``, autocast
  when the precision asks for it); any device.
* :class:`OnnxForward`: an ONNX Runtime ``InferenceSession`` on the CPU, from the artifact
  ``hubless-optimize`` installed beside the model and recorded in the manifest. The file is
  read whole (a regular file inside the volume) and checked against its recorded size and
  sha256, and refused when a tensor keeps its data in another file (ONNX Runtime would read
  it from the working folder), before the session is built from those bytes (a flipped byte
  is caught here, and nothing stays mapped from the volume);
  intra-op threads are ``--threads``, inter-op 1, sequential execution, and the thread pool
  does not spin unless ``OMP_WAIT_POLICY=ACTIVE`` (the same policy as torch's OpenMP pool).

:func:`load_forward` picks one for a runtime: the ONNX session when the options ask for it
and the artifact loads, PyTorch otherwise; when the artifact was asked for and is unusable the
reason is logged and kept (``Forward.note``), and ``ModelInfo`` shows it.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from hubless_server.core.tasks import ONNX_KINDS
from hubless_volume import VolumeFileError, external_data_problems_in_bytes, read_volume_file

from ._common import (
    LockedTokenizer,
    Precision,
    input_limit,
    load_pretrained,
    load_tokenizer,
    pad_token_id,
    resolve_precision,
)
from .base import OnnxArtifact, RuntimeOptions
from .bf16 import probe_inputs, settle_bf16_weights, wants_bf16_weights
from .placement import cpu_has_native_bf16

log = logging.getLogger(__name__)

__all__ = ["ONNX_KINDS", "ArtifactError", "Forward", "OnnxForward", "TorchForward", "load_forward"]

BACKENDS = ("torch", "onnx")


class ArtifactError(RuntimeError):
    """The ONNX artifact cannot be used; ``public`` says why without paths."""

    def __init__(self, message: str, public: str) -> None:
        super().__init__(message)
        self.public = public


class Forward(abc.ABC):
    """One forward pass over a padded batch; ``name`` is the backend ("torch" or "onnx")."""

    name: ClassVar[str] = ""
    note: str = ""  # why this backend serves although another was asked for

    @abc.abstractmethod
    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's output tensor for one padded batch."""

    @property
    @abc.abstractmethod
    def dtype(self) -> str:
        """The dtype the pass computes in, for ``RuntimeInfo``."""


class TorchForward(Forward):
    """The eager ``transformers`` model; ``output`` names the attribute of its output."""

    name = "torch"

    def __init__(self, model: Any, precision: Precision, output: str) -> None:
        self.model = model
        self.precision = precision
        self.output = output

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode(), self.precision.context():
            out = getattr(self.model(**inputs), self.output)
        return out.float()

    @property
    def dtype(self) -> str:
        return self.precision.requested


class OnnxForward(Forward):
    """An ONNX Runtime session on the CPU (float32)."""

    name = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inputs = [i.name for i in session.get_inputs()]
        self.output = session.get_outputs()[0].name

    @classmethod
    def load(cls, artifact: OnnxArtifact, threads: int) -> OnnxForward:
        """The session of ``artifact`` after checking its bytes; :class:`ArtifactError`
        when it is missing, not what the manifest says, or not a model ONNX Runtime runs."""
        data = read_artifact(artifact)
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ArtifactError(
                f"onnxruntime is not installed: {exc}", "onnxruntime is not installed"
            ) from exc
        try:
            session = ort.InferenceSession(
                data, session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own (Fail, InvalidGraph, ...)
            raise ArtifactError(
                f"ONNX Runtime cannot load {artifact.path}: {type(exc).__name__}: {exc}",
                f"ONNX Runtime cannot load it ({type(exc).__name__})",
            ) from exc
        return cls(session)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: inputs[name].numpy() for name in self.inputs}
        (out,) = self.session.run([self.output], feeds)
        return torch.from_numpy(out)

    @property
    def dtype(self) -> str:
        return "float32"


def read_artifact(artifact: OnnxArtifact) -> bytes:
    """The artifact's bytes, checked before ONNX Runtime sees them: a regular file inside the
    volume (no FIFO, device, or link leaving it: :func:`hubless_volume.read_volume_file`, never
    more than its recorded size read), with its recorded size and sha256, and a self-contained
    ONNX model (:func:`hubless_volume.external_data_problems_in_bytes`: no tensor that keeps
    its data in another file, which ONNX Runtime would read from the working folder).
    :class:`ArtifactError` otherwise."""
    name = artifact.path
    try:
        st = os.stat(name)
        if stat.S_ISREG(st.st_mode) and st.st_size != artifact.size:
            raise _size_differs(name, st.st_size, artifact.size)
        data = read_volume_file(artifact.models_dir, name, artifact.size)
    except FileNotFoundError:
        raise ArtifactError(f"{name} is missing", "the file is missing") from None
    except VolumeFileError as exc:
        public = exc.reason if "/" not in exc.reason else "is not a file inside the volume"
        raise ArtifactError(
            f"{name}: refused: {exc.reason}", f"refused: the file {public}"
        ) from None
    except OSError as exc:
        raise ArtifactError(
            f"cannot read {name}: {exc}", f"the file cannot be read ({exc.strerror})"
        ) from None
    if len(data) != artifact.size:
        raise _size_differs(name, len(data), artifact.size)
    digest = hashlib.sha256(data).hexdigest()
    if digest != artifact.sha256:
        raise ArtifactError(
            f"{name}: sha256 {digest} != {artifact.sha256} in the manifest",
            "its sha256 differs from the manifest",
        )
    problems = external_data_problems_in_bytes(data)
    if problems:
        unreadable = problems[0].startswith("cannot be read")
        raise ArtifactError(
            f"{name}: refused: not a self-contained ONNX model: {'; '.join(problems[:3])}",
            "refused: it cannot be read as an ONNX model"
            if unreadable
            else "refused: not a self-contained ONNX model (it names other files: external data)",
        )
    return data


def _size_differs(name: Path, actual: int, recorded: int) -> ArtifactError:
    return ArtifactError(
        f"{name} has {actual} bytes, the manifest says {recorded}",
        f"its size differs from the manifest ({actual} != {recorded} bytes)",
    )


def session_options(threads: int) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op (0: ORT's default, the cores),
    one inter-op thread, sequential execution, every graph optimisation, no spinning unless
    ``OMP_WAIT_POLICY=ACTIVE``, errors-only logging."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    spin = os.environ.get("OMP_WAIT_POLICY", "PASSIVE").strip().upper() == "ACTIVE"
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def load_forward(
    name: str,
    options: RuntimeOptions,
    precision: Precision,
    load_torch: Callable[[], Any],
    output: str,
    probe: Callable[[], dict[str, torch.Tensor]] | None = None,
) -> tuple[Forward, Any, Precision]:
    """The forward pass of model ``name``, its torch model (None on ONNX) and the precision
    it runs at.

    ``options.backend == "onnx"`` with an artifact: the ONNX session, or, when the artifact
    cannot be used, PyTorch with the reason in ``Forward.note`` (and a warning in the log).
    Otherwise PyTorch (``load_torch()`` loads the weights only then); bf16 asked on a CPU with
    bf16 instructions keeps bf16 weights where ``probe()``'s batch answers like float32
    (:mod:`.bf16`)."""
    note = ""
    if options.backend == "onnx":
        if options.onnx is None:
            note = "no ONNX artifact is installed (run hubless-optimize); serving with PyTorch"
        else:
            try:
                forward: Forward = OnnxForward.load(options.onnx, options.threads)
            except ArtifactError as exc:
                log.warning(
                    "model %s: ONNX artifact unusable, serving with PyTorch: %s",
                    name,
                    exc,
                    extra={"fields": {"model": name, "backend": "torch"}},
                )
                note = f"ONNX artifact unusable: {exc.public}; serving with PyTorch"
            else:
                return forward, None, precision
    model = load_torch()
    if probe is not None and wants_bf16_weights(precision, cpu_has_native_bf16()):
        model, precision = settle_bf16_weights(name, model, precision, output, probe(), load_torch)
    forward = TorchForward(model, precision, output)
    forward.note = note
    return forward, model, precision


@dataclass
class LoadedClassifier:
    """A sequence-classification model with what its runtime needs around it: ``forward``
    computes the logits (PyTorch or ONNX Runtime, :mod:`.backends`); ``model`` is the torch
    model, None when ONNX Runtime serves it."""

    config: Any
    precision: Precision
    tokenizer: LockedTokenizer
    limit: int
    pad_id: int
    model: Any
    forward: Any = None


def load_sequence_classifier(
    path: Path, options: RuntimeOptions, name: str = ""
) -> LoadedClassifier:
    """Config, tokenizer (locked), input limit, pad id and forward pass of a classifier
    folder, offline (emotion, sentiment and NLI zero-shot models); the torch weights are
    loaded only when PyTorch runs the model (:func:`load_forward`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    requested = resolve_precision(options)
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    tokenizer = load_tokenizer(path)
    locked = LockedTokenizer(tokenizer)
    limit, pad_id = input_limit(tokenizer, config), pad_token_id(tokenizer, config)
    forward, model, precision = load_forward(
        name or path.name,
        options,
        requested,
        lambda: load_pretrained(AutoModelForSequenceClassification, path, requested),
        "logits",
        probe=lambda: probe_inputs(locked, pad_id, limit),
    )
    return LoadedClassifier(
        config=config,
        precision=precision,
        tokenizer=locked,
        limit=limit,
        pad_id=pad_id,
        model=model,
        forward=forward,
    )
