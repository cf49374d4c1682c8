"""The tasks the server serves: one table, and everything task-shaped derives from it.

A :class:`TaskSpec` ties a volume task name (``hubless_volume.TASKS``) to its gRPC service
(the name health checks and reflection use, taken from the generated stubs' descriptor), the
proto ``Task`` enum value, the servicer class and the kind of runtime that runs its models.
``app.py`` registers services (``wire.add_service`` with the descriptor) and health names
from it, ``config.py`` validates ``--tasks`` against it, ``services/models.py`` maps the
``Task`` enum with it and ``runtimes.runtime_class`` picks runtimes through it;
``tests/test_tasks_agree.py`` checks that it, the proto enum and the volume's task list agree.

This module is a leaf: it imports only the generated stubs. The servicers sit layers above
(they import the registry and the settings, which import this table), so they bind
themselves to it by task name (``services.SERVICERS``); the runtime is named by kind, a key
of ``hubless_server.runtimes.KINDS``, so reading the table never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import ServiceDescriptor

from hubless.v1 import (
    common_pb2,
    conversation_pb2,
    embeddings_pb2,
    emotion_pb2,
    sentiment_pb2,
    summarization_pb2,
    zero_shot_pb2,
)


@dataclass(frozen=True)
class TaskSpec:
    """One served task.

    ``name`` is the volume task name (manifest entries, ``--tasks``); ``task`` the
    ``hubless.v1.Task`` value; ``service`` the proto service descriptor (``app.py`` registers
    the servicer with it through ``wire.add_service``); ``runtime`` the runtime kind;
    ``load_all_models`` says that every installed model of the task is loaded, because
    requests choose among them by name.
    """

    name: str
    task: int
    service: ServiceDescriptor
    runtime: str
    load_all_models: bool = False

    @property
    def service_name(self) -> str:
        """The full gRPC service name, e.g. ``hubless.v1.EmbeddingsService`` (health name)."""
        return self.service.full_name


TASK_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="emotion",
        task=common_pb2.TASK_EMOTION,
        service=emotion_pb2.DESCRIPTOR.services_by_name["EmotionService"],
        runtime="classification",
    ),
    TaskSpec(
        name="sentiment",
        task=common_pb2.TASK_SENTIMENT,
        service=sentiment_pb2.DESCRIPTOR.services_by_name["SentimentService"],
        runtime="classification",
        load_all_models=True,
    ),
    TaskSpec(
        name="zero-shot",
        task=common_pb2.TASK_ZERO_SHOT,
        service=zero_shot_pb2.DESCRIPTOR.services_by_name["ZeroShotService"],
        runtime="zero_shot",
    ),
    TaskSpec(
        name="summarization",
        task=common_pb2.TASK_SUMMARIZATION,
        service=summarization_pb2.DESCRIPTOR.services_by_name["SummarizationService"],
        runtime="seq2seq",
    ),
    TaskSpec(
        name="conversation",
        task=common_pb2.TASK_CONVERSATION,
        service=conversation_pb2.DESCRIPTOR.services_by_name["ConversationService"],
        runtime="chat",
    ),
    TaskSpec(
        name="embedding",
        task=common_pb2.TASK_EMBEDDING,
        service=embeddings_pb2.DESCRIPTOR.services_by_name["EmbeddingsService"],
        runtime="embedding",
    ),
)
"""Every task, in the order the server plans, loads and reports them."""

TASKS: tuple[str, ...] = tuple(spec.name for spec in TASK_SPECS)
"""The task names (``--tasks`` accepts these)."""

ONNX_KINDS = frozenset({"embedding", "classification", "zero_shot"})
"""Runtime kinds (encoders) that ``hubless-optimize`` exports and ONNX Runtime can serve
(``--backend``); the generation kinds always run on PyTorch."""

_BY_NAME = {spec.name: spec for spec in TASK_SPECS}
_BY_ENUM = {spec.task: spec for spec in TASK_SPECS}


def spec_of(name: str) -> TaskSpec:
    """The spec of task ``name``; ValueError for an unknown task."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def spec_for_enum(value: int) -> TaskSpec | None:
    """The spec of a ``hubless.v1.Task`` value; None for UNSPECIFIED or an unknown value."""
    return _BY_ENUM.get(value)
