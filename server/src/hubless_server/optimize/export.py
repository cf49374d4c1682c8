"""Export an encoder to ONNX, and optionally run ONNX Runtime's transformer optimizer on it.

The exporter is torch's ``dynamo`` one (``torch.onnx.export(..., dynamo=True)``, torch.export
underneath, onnxscript to write the graph): with torch 2.13 and transformers 5 the legacy
TorchScript exporter (``dynamo=False``) traced all-MiniLM-L6-v2 without complaint and gave an
ONNX model whose outputs were off by up to 5.05 on a batch shaped unlike the example (the
attention-mask code was traced for the example's shapes), while the dynamo export matched
PyTorch to 3.5e-5 on any shape. Both batch and sequence axes are dynamic; one file holds the
graph and the weights (the single-file format caps a model at 2 GB: bart-large-mnli in float32
is 1.63 GB).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from hubless_server.optimize.errors import ExportError

log = logging.getLogger(__name__)

ONNX_LIMIT = 2 << 30  # protobuf's cap on one serialised message
# ONNX Runtime's transformer optimizer model types by transformers model_type
_ORT_MODEL_TYPES = {"bart": "bart", "mbart": "bart"}


class _Outputs(torch.nn.Module):
    """The model with positional inputs named ``names`` and one output, ``output``."""

    def __init__(self, model: torch.nn.Module, names: list[str], output: str) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.output = output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, tensors, strict=True)))
        return getattr(out, self.output)


def export_onnx(
    model: torch.nn.Module, example: dict[str, torch.Tensor], output: str, path: Path
) -> None:
    """Write ``model`` as ONNX to ``path`` with dynamic batch and sequence axes; ``example``
    is a padded batch of at least two rows of different lengths (the inputs' names are its
    keys, in order) and ``output`` the attribute of the model output to keep."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if weights >= ONNX_LIMIT:
        raise ExportError(
            f"the weights take {weights / 2**30:.2f} GiB: more than one ONNX file can hold (2 GiB)"
        )
    names = list(example)
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1)
    wrapper = _Outputs(model, names, output).eval()
    chatter = io.StringIO()  # the exporter prints its progress; keep it for the debug log
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(chatter),
            torch.inference_mode(False),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                tuple(example[name] for name in names),
                str(path),
                input_names=names,
                output_names=[output],
                dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in names),),
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        log.debug("exporter output:\n%s", chatter.getvalue())
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {first[:200]}") from exc
    log.debug("exporter output:\n%s", chatter.getvalue())
    _one_file(path)


def _one_file(path: Path) -> None:
    """Make the export one self-contained file. The exporter writes the weights beside the
    graph (``<name>.data``) when the graph with its weights would pass protobuf's 2 GB; the
    artifact is one file that the server reads whole, and the server refuses any tensor that
    keeps its data in another file, so such an export (told by the file beside it, or by a
    tensor with external data: :func:`hubless_volume.external_data_problems`) is folded back
    into one file when it fits, and refused (:class:`ExportError`) otherwise."""
    from hubless_volume import external_data_problems

    extra = [p for p in path.parent.iterdir() if p != path and p.name.startswith(path.name)]
    if not extra and not external_data_problems(path):
        return
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    if total >= ONNX_LIMIT - (64 << 20):
        raise ExportError(
            f"the export's weights take {total / 2**30:.2f} GiB: more than one ONNX file can "
            "hold (2 GiB)"
        )
    for tensor in model.graph.initializer:  # now inline: forget where they came from
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    onnx.save_model(model, str(path), save_as_external_data=False)
    for file in extra:
        file.unlink()


def ort_optimize(source: Path, target: Path, config: Any) -> dict[str, int]:
    """Run ONNX Runtime's transformer optimizer (operator fusion: LayerNorm, GELU, attention
    where it recognises the pattern) from ``source`` to ``target``; returns the fused
    operator counts. Level 1 only (no hardware-specific rewrites): the server's session
    applies its own graph optimisations when it loads the file."""
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = _ORT_MODEL_TYPES.get(getattr(config, "model_type", ""), "bert")
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            optimized = optimize_model(
                str(source),
                model_type=model_type,
                num_heads=heads,
                hidden_size=hidden,
                opt_level=1,
                use_gpu=False,
            )
            optimized.save_model_to_file(str(target))
    except Exception as exc:
        raise ExportError(f"ONNX Runtime's optimizer failed: {type(exc).__name__}") from exc
    fused = optimized.get_fused_operator_statistics()
    return {name: int(count) for name, count in fused.items() if count}
