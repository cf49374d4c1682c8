"""hubless.v1.ZeroShot."""

from __future__ import annotations

import grpc

from hubless.v1 import zero_shot_pb2, zero_shot_pb2_grpc
from hubless_server.runtimes.base import ZeroShotItem
from hubless_server.services.common import (
    InvalidArgument,
    ServiceDeps,
    check_texts,
    deadline_of,
    model_ref,
    truncate_flag,
    unary,
)
from hubless_server.services.emotion import ranked

TASK = "zero-shot"
DEFAULT_TEMPLATE = "This example is {}."


def check_labels(labels: list[str], limit: int) -> tuple[str, ...]:
    if not labels:
        raise InvalidArgument("candidate_labels is empty: give at least one label")
    if len(labels) > limit:
        raise InvalidArgument(
            f"candidate_labels has {len(labels)} labels; at most {limit} (--max-labels)"
        )
    seen: set[str] = set()
    for index, label in enumerate(labels):
        if not label.strip():
            raise InvalidArgument(f"candidate_labels[{index}] is empty or whitespace")
        if label in seen:
            raise InvalidArgument(f"candidate_labels has {label!r} twice; labels must be unique")
        seen.add(label)
    return tuple(labels)


def check_template(template: str) -> str:
    if not template:
        return DEFAULT_TEMPLATE
    if template.count("{}") != 1:
        raise InvalidArgument(
            f"hypothesis_template {template!r} must contain '{{}}' exactly once (where the "
            f"label goes), e.g. {DEFAULT_TEMPLATE!r}"
        )
    return template


class ZeroShotService(zero_shot_pb2_grpc.ZeroShotServicer):
    def __init__(self, deps: ServiceDeps) -> None:
        self.deps = deps

    @unary
    async def Classify(
        self, request: zero_shot_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> zero_shot_pb2.ClassifyResponse:
        settings = self.deps.settings
        texts = check_texts(request.texts, settings)
        labels = check_labels(list(request.candidate_labels), settings.max_labels)
        template = check_template(request.hypothesis_template)
        truncate = truncate_flag(request.truncation)
        record = self.deps.resolve(TASK, request.model, len(texts))
        assert record.batcher is not None
        items = [
            ZeroShotItem(text, labels, request.multi_label, template, truncate) for text in texts
        ]
        outputs = await record.batcher.run(items, deadline_of(context))
        response = zero_shot_pb2.ClassifyResponse(model=model_ref(record))
        for output in outputs:
            result = response.results.add(truncated=output.truncated)
            for label, score in ranked(output):
                result.scores.add(label=label, score=score)
        return response
