"""hubless.v1.ZeroShotService."""

from __future__ import annotations

import grpc

from hubless.v1 import zero_shot_pb2, zero_shot_pb2_grpc
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


def check_labels(labels: list[str], limit: int) -> tuple[str, ...]:
    """At least one label, at most ``limit`` (--max-labels), none blank, no duplicates."""
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
        if label in seen:
            raise RequestError(
                field,
                f"{field} is {label!r}, like candidate_labels[{seen[label]}]; labels must be "
                "unique",
            )
        seen[label] = index
    return tuple(labels)


def check_template(template: str) -> str:
    """The hypothesis template with one ``{}``; empty means the default."""
    if not template:
        return DEFAULT_TEMPLATE
    if template.count("{}") != 1:
        raise RequestError(
            "hypothesis_template",
            f"hypothesis_template {template!r} must contain '{{}}' exactly once (where the "
            f"label goes), e.g. {DEFAULT_TEMPLATE!r}",
        )
    return template


class ZeroShotService(TaskServicer, zero_shot_pb2_grpc.ZeroShotServiceServicer):
    """ClassifyZeroShot: every candidate label scored for each text by an NLI model."""

    task = "zero-shot"

    @unary
    async def ClassifyZeroShot(
        self, request: zero_shot_pb2.ClassifyZeroShotRequest, context: grpc.aio.ServicerContext
    ) -> zero_shot_pb2.ClassifyZeroShotResponse:
        settings = self.deps.settings
        texts = check_texts(request.texts, settings)
        labels = check_labels(list(request.candidate_labels), settings.max_labels)
        template = check_template(request.hypothesis_template)
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
