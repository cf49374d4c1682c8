"""bf16 weights kept only where the probe answers like float32 (runtimes/bf16.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from hubless_server.runtimes import bf16
from hubless_server.runtimes._common import Precision

CPU = torch.device("cpu")
AUTOCAST = Precision(CPU, "bfloat16", torch.float32, torch.bfloat16)


class _Linear(torch.nn.Module):
    """A stand-in model: ``model(**inputs).<output>`` like a transformers model."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(32, 16)
        self.head = torch.nn.Linear(16, 4)
        self.scale = scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        hidden = self.embed(input_ids) * self.scale
        return SimpleNamespace(last_hidden_state=hidden, logits=self.head(hidden[:, 0]))


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_only_native_bf16_cpus_under_autocast_want_bf16_weights() -> None:
    assert bf16.wants_bf16_weights(AUTOCAST, native_bf16=True)
    assert not bf16.wants_bf16_weights(AUTOCAST, native_bf16=False)
    fp32 = Precision(CPU, "float32", torch.float32)
    assert not bf16.wants_bf16_weights(fp32, native_bf16=True)


def test_logits_compare_top_label_and_probabilities() -> None:
    mask = torch.ones(2, 1)
    ref = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert bf16.compare("logits", ref, ref + 1e-4, mask)[0]
    swapped = torch.tensor([[0.0, 2.0, 0.0], [0.0, 3.0, 0.0]])
    ok, figure = bf16.compare("logits", ref, swapped, mask)
    assert not ok and "changed" in figure
    nudged = ref.clone()
    nudged[0, 1] += 0.2  # same top label, probability moved by more than 0.01
    assert not bf16.compare("logits", ref, nudged, mask)[0]


def test_hidden_states_compare_pooled_cosine_over_the_mask() -> None:
    mask = torch.tensor([[1, 1, 0]])
    ref = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    padded_only = ref.clone()
    padded_only[0, 2] = torch.tensor([-9.0, 9.0])  # differs only where the mask is 0
    ok, figure = bf16.compare("last_hidden_state", ref, padded_only, mask)
    assert ok and "min cosine 1.0" in figure
    turned = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]]])
    assert not bf16.compare("last_hidden_state", ref, turned, mask)[0]


def test_parity_keeps_bf16_weights() -> None:
    model = _Linear()
    reloads: list[int] = []
    kept, precision = bf16.settle_bf16_weights(
        "m", model, AUTOCAST, "last_hidden_state", _inputs(), lambda: reloads.append(1)
    )
    assert kept is model and not reloads
    assert model.embed.weight.dtype == torch.bfloat16
    assert precision.weights == torch.bfloat16 and precision.autocast is None
    assert precision.describe().startswith("bfloat16 weights (parity")


def test_missed_parity_reads_float32_weights_again_under_autocast(monkeypatch) -> None:
    monkeypatch.setattr(bf16, "compare", lambda *args: (False, "min cosine 0.99000"))
    fresh = _Linear()
    model, precision = bf16.settle_bf16_weights(
        "m", _Linear(), AUTOCAST, "logits", _inputs(), lambda: fresh
    )
    assert model is fresh and fresh.head.weight.dtype == torch.float32
    assert precision.weights == torch.float32 and precision.autocast == torch.bfloat16
    assert "missed parity" in precision.describe() and "0.99000" in precision.describe()
