"""The embeddings suite's request shapes (bench/shapes.py, bench/settings.py): parsing, the
efficiency and own-CPU arithmetic, the in-process reference at the server's precision, and
the null server answering multi-sentence requests. No timing is asserted."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from bench import shapes
from bench.loadgen import LoadResult
from bench.null_server import DIMENSION, NullEmbeddings
from bench.settings import Settings, Shape, parse_shapes
from hubless.v1 import embeddings_pb2


def test_parse_shapes_reads_clients_x_sentences_in_order_without_repeats() -> None:
    assert parse_shapes("64x1, 8X32,64x1") == [Shape(64, 1), Shape(8, 32)]
    assert parse_shapes("none") == []
    assert Shape(8, 32).label == "8x32"


@pytest.mark.parametrize("spec", ["64", "64x", "x1", "0x1", "8x0", "64*1"])
def test_parse_shapes_refuses_what_is_not_a_shape(spec: str) -> None:
    with pytest.raises(ValueError, match="bad shape"):
        parse_shapes(spec)


def point(items_per_s: float, cpu_ms_per_item: float, texts: int) -> dict[str, Any]:
    return {
        "items_per_s": items_per_s,
        "p50_ms": 10.0,
        "server_cpu_ms_per_item": cpu_ms_per_item,
        "server_cpu_ms_per_request": cpu_ms_per_item * texts,
    }


SHAPES = [Shape(64, 1), Shape(8, 32)]
IN_PROCESS = {
    "batch": 128,
    "batched_fp32_cpu_ms_per_sent": 5.0,
    "batched_bf16_weights_cpu_ms": 2.0,
    "batched_bf16_cpu_ms": 3.0,
}


def systems(bf16_precision: str) -> dict[str, dict[str, Any]]:
    return {
        "hubless-torch-fp32": {
            "precision": "float32 weights",
            "shapes": {"64x1": point(200, 6.25, 1), "8x32": point(300, 5.0, 32)},
        },
        "hubless-torch-bf16": {
            "precision": bf16_precision,
            "shapes": {"64x1": point(300, 4.0, 1), "8x32": point(500, 2.5, 32)},
        },
        "null-grpc": {"shapes": {"64x1": point(3000, 0.25, 1), "8x32": point(9000, 0.01, 32)}},
    }


def test_efficiency_and_own_cpu_above_the_null_server() -> None:
    s = shapes.summarise(
        systems("bfloat16 weights (parity: min cosine 0.9998)"), IN_PROCESS, SHAPES
    )
    fp32, bf16 = s["hubless"]["fp32"], s["hubless"]["bf16"]
    assert fp32["points"]["64x1"]["efficiency"] == pytest.approx(0.8)
    assert fp32["points"]["8x32"]["efficiency"] == pytest.approx(1.0)
    assert bf16["in_process_cpu_ms_per_sentence"] == 2.0  # the server kept bf16 weights
    assert bf16["points"]["8x32"]["efficiency"] == pytest.approx(0.8)
    # own = 6.25 - 5.0 = 1.25 per request; above the null server's 0.25 -> 1.0
    assert fp32["own_cpu_ms_above_null"] == pytest.approx(1.0)
    assert bf16["own_cpu_ms_above_null"] == pytest.approx(4.0 - 2.0 - 0.25)
    assert s["null_grpc"]["8x32"]["cpu_ms_per_request"] == pytest.approx(0.32)
    met = {t["target"].split(":")[0]: t["met"] for t in s["targets"]}
    assert met["64x1 fp32 efficiency"] is False
    assert met["8x32 fp32 efficiency"] is True
    assert met["64x1 fp32"] is False


def test_bf16_under_autocast_is_compared_with_in_process_autocast() -> None:
    precision = "float32 weights under bfloat16 autocast (bfloat16 weights missed parity)"
    s = shapes.summarise(systems(precision), IN_PROCESS, SHAPES)
    assert s["hubless"]["bf16"]["in_process_cpu_ms_per_sentence"] == 3.0
    assert "autocast" in s["hubless"]["bf16"]["in_process_reference"]


def test_unmeasured_shapes_are_reported_not_measured() -> None:
    s = shapes.summarise({}, {"batch": 128, "batched_bf16_cpu_ms": math.nan}, SHAPES)
    assert {t["met"] for t in s["targets"]} == {None}
    assert "not measured" not in shapes.markdown(s)  # the table, not the targets
    assert "64x1" in shapes.markdown(s) and shapes.markdown({**s, "shapes": []}) == ""


def test_a_shape_window_holds_several_requests() -> None:
    st = Settings(duration_s=1.0, warmup_s=0.5)
    swept = [LoadResult(8, 1.0, 64, 64, 0), LoadResult(1, 1.0, 16, 16, 0)]  # best 64 per s
    warmup, duration = shapes.window(st, Shape(8, 32), swept)
    assert duration == pytest.approx(3 * 8 * 32 / 64) and warmup == pytest.approx(6.0)
    assert shapes.window(st, Shape(1, 1), swept) == (0.5, 1.0)  # the settings' when it fits
    assert shapes.window(st, Shape(8, 32), []) == (0.5, 1.0)  # nothing to estimate from


def test_payloads_carry_the_shape_s_sentences() -> None:
    reqs = shapes.payloads(["a", "b", "c"], 2)
    parsed = [embeddings_pb2.EmbedRequest.FromString(r).texts for r in reqs]
    assert [list(t) for t in parsed] == [["a", "b"], ["b", "c"], ["c", "a"]]


def test_null_server_answers_every_text_of_a_request() -> None:
    texts = [f"sentence number {i} here" for i in range(32)]
    resp = asyncio.run(NullEmbeddings().Embed(embeddings_pb2.EmbedRequest(texts=texts), None))
    assert len(resp.embeddings) == 32 and resp.dimension == DIMENSION
    assert all(len(e.values) == DIMENSION and e.tokens == 4 for e in resp.embeddings)
