"""hubless.v1.ZeroShotService."""

from __future__ import annotations

import grpc

from hubless.v1 import zero_shot_pb2, zero_shot_pb2_grpc
from hubless_server.core.redact import echo
from hubless_server.runtimes.base import ZeroShotItem
from hubless_server.services.common import (
    TaskServicer,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)
from hubless_server.services.emotion import ranked
from hubless_server.services.errors import RequestError, limit_exceeded

DEFAULT_TEMPLATE = "This example is {}."


def check_labels(labels: list[str], limit: int, max_chars: int) -> tuple[str, ...]:
    """At least one label, at most ``limit`` (--max-labels), none blank or longer than
    ``max_chars`` (--max-text-chars), no duplicates."""
    if not labels:
        raise RequestError("candidate_labels", "candidate_labels is empty: give at least one label")
    if len(labels) > limit:
        raise limit_exceeded(
            "candidate_labels",
            f"candidate_labels has {len(labels)} labels; at most {limit} (--max-labels)",
            "--max-labels",
            limit,
        )
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        field = f"candidate_labels[{index}]"
        if not label.strip():
            raise RequestError(field, f"{field} is empty or whitespace")
        if len(label) > max_chars:
            raise limit_exceeded(
                field,
                f"{field} has {len(label)} characters; at most {max_chars} (--max-text-chars)",
                "--max-text-chars",
                max_chars,
            )
        if label in seen:
            raise RequestError(
                field,
                f"{field} is {echo(label)!r}, like candidate_labels[{seen[label]}]; labels "
                "must be unique",
            )
        seen[label] = index
    return tuple(labels)


def check_template(template: str, max_chars: int) -> str:
    """The hypothesis template with one ``{}``, at most ``max_chars`` (--max-text-chars);
    empty means the default."""
    if not template:
        return DEFAULT_TEMPLATE
    if len(template) > max_chars:
        raise limit_exceeded(
            "hypothesis_template",
            f"hypothesis_template has {len(template)} characters; at most {max_chars} "
            "(--max-text-chars)",
            "--max-text-chars",
            max_chars,
        )
    if template.count("{}") != 1:
        raise RequestError(
            "hypothesis_template",
            f"hypothesis_template {echo(template)!r} must contain '{{}}' exactly once (where "
            f"the label goes), e.g. {DEFAULT_TEMPLATE!r}",
        )
    return template


def check_pairs(texts: int, labels: int, limit: int) -> None:
    """texts x candidate_labels, one model row each, within ``--max-zero-shot-pairs``."""
    pairs = texts * labels
    if pairs <= limit:
        return
    fit = limit // labels
    how = (
        f"split the texts into requests of at most {fit}"
        if fit
        else f"send at most {limit} candidate_labels"
    )
    raise limit_exceeded(
        "candidate_labels",
        f"texts x candidate_labels is {texts} x {labels} = {pairs} text-label pairs (one model "
        f"row each); at most {limit} per request (--max-zero-shot-pairs): {how}",
        "--max-zero-shot-pairs",
        limit,
    )


class ZeroShotService(TaskServicer, zero_shot_pb2_grpc.ZeroShotServiceServicer):
    """ClassifyZeroShot: every candidate label scored for each text by an NLI model."""

    task = "zero-shot"

    @unary
    async def ClassifyZeroShot(
        self, request: zero_shot_pb2.ClassifyZeroShotRequest, context: grpc.aio.ServicerContext
    ) -> zero_shot_pb2.ClassifyZeroShotResponse:
        settings = self.deps.settings
        texts = check_texts(request.texts, settings)
        labels = check_labels(
            list(request.candidate_labels), settings.max_labels, settings.max_text_chars
        )
        template = check_template(request.hypothesis_template, settings.max_text_chars)
        check_pairs(len(texts), len(labels), settings.max_zero_shot_pairs)
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(self.task, request.model, len(texts))
        assert record.batcher is not None
        items = [
            ZeroShotItem(text, labels, request.multi_label, template, truncate) for text in texts
        ]
        outputs = await record.batcher.run(items, deadline_of(context))
        response = zero_shot_pb2.ClassifyZeroShotResponse(model=model_ref(record))
        for output in outputs:
            result = response.results.add(truncated=output.truncated)
            for label, score in ranked(output):
                result.scores.add(label=label, score=score)
        return response
