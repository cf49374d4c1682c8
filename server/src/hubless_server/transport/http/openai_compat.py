"""The OpenAI shapes: ``POST /v1/embeddings`` and ``GET /v1/models[/{name}]``.

These translate between the OpenAI API's JSON and the hubless request and response
messages; the call itself goes through the gRPC servicers like every HTTP request
(:mod:`.dispatch`). What is supported of the OpenAI embeddings request:

- ``input``: a string or a list of strings (token-id arrays are refused: the server
  tokenises with the model's own tokenizer), each one a text of ``EmbedRequest.texts`` with
  the same limits;
- ``model``: a catalog name (``all-minilm-l6-v2``); empty picks the task's default; an unknown
  name is NOT_FOUND (HTTP 404, ``code`` ``model_not_found``);
- ``encoding_format``: ``float`` (the default) or ``base64``, the little-endian float32 bytes
  of each vector, base64-encoded (what the OpenAI SDK asks for and decodes by default);
- ``dimensions`` is refused unless null (the vectors have the model's size); ``user`` and
  unknown keys are ignored.

The vectors are L2-normalised (``normalize`` unset), like OpenAI's; ``usage`` counts the tokens
the model read (after truncation).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import Message

from hubless.v1 import embeddings_pb2, models_pb2
from hubless_server.transport.http.body import UndecodableJson

EMBED_METHOD = "/hubless.v1.EmbeddingsService/Embed"
LIST_MODELS_METHOD = "/hubless.v1.ModelsService/ListModels"
GET_MODEL_METHOD = "/hubless.v1.ModelsService/GetModel"
ENCODINGS = ("float", "base64")
EMBED_BODY = "OpenAI embeddings request"
"""What a malformed ``/v1/embeddings`` body is not (``message_type`` of its error)."""


def _refuse(size: int, field: str, why: str) -> UndecodableJson:
    return UndecodableJson(EMBED_BODY, size, why, field=field)


def embed_request(payload: Any, size: int) -> tuple[Message | UndecodableJson, str]:
    """The ``EmbedRequest`` of an OpenAI embeddings body (or why it is not one) and the
    requested encoding."""
    if not isinstance(payload, dict):
        return _refuse(size, "", "the body must be a JSON object"), "float"
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        return _refuse(size, "encoding_format", "encoding_format must be float or base64"), "float"
    raw = payload.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        why = (
            "input must be a string or a list of strings (token-id arrays are not supported: "
            "the server tokenises with the model's tokenizer)"
        )
        return _refuse(size, "input", why), encoding
    model = payload.get("model") or ""
    if not isinstance(model, str):
        return _refuse(size, "model", "model must be a string (a catalog name)"), encoding
    if payload.get("dimensions") is not None:
        why = "dimensions is not supported: the vectors have the model's size; leave it out"
        return _refuse(size, "dimensions", why), encoding
    return embeddings_pb2.EmbedRequest(texts=texts, model=model), encoding


def openai_param(field: str | None) -> str | None:
    """``texts[3]`` -> ``input[3]``: the BadRequest field as the OpenAI request names it."""
    if field is None:
        return None
    return re.sub(r"^texts(?=\[|$)", "input", field)


def _vector(values: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")
    return list(values)  # float32 values as Python floats: exact, so they round-trip


def embeddings_response(response: embeddings_pb2.EmbedResponse, encoding: str) -> dict[str, Any]:
    """An OpenAI ``CreateEmbeddingResponse``."""
    tokens = sum(e.tokens for e in response.embeddings)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _vector(e.values, encoding)}
            for i, e in enumerate(response.embeddings)
        ],
        "model": response.model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def message_dict(message: Message) -> dict[str, Any]:
    """A message in the proto3 JSON mapping, with the protos' field names and every field."""
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return result


def model_object(info: models_pb2.ModelInfo) -> dict[str, Any]:
    """An OpenAI ``Model`` (``id``, ``object``, ``created``, ``owned_by``) with the
    ``ModelInfo`` fields beside."""
    created = info.loaded_at.seconds if info.HasField("loaded_at") else 0
    return {
        "id": info.name,
        "object": "model",
        "created": created,
        "owned_by": info.repo_id.split("/", 1)[0] if "/" in info.repo_id else "hubless",
        **message_dict(info),
    }


def model_list(response: models_pb2.ListModelsResponse) -> dict[str, Any]:
    """The OpenAI model list: the models that answer now (state READY)."""
    ready = [m for m in response.models if m.state == models_pb2.MODEL_STATE_READY]
    return {"object": "list", "data": [model_object(m) for m in ready]}
