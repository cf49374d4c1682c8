"""The HTTP door's routes, a Starlette app over the gRPC servicers.

- ``POST /v1/embeddings``: OpenAI embeddings (:mod:`.openai_compat`);
- ``GET /v1/models``, ``GET /v1/models/{name}``: the OpenAI model list and model, with the
  ``ModelInfo`` fields beside;
- ``POST /v1/tasks/{method}``: every unary RPC, the method in kebab case (``embed``,
  ``detect-emotion``, ``analyze-sentiment``, ``classify-zero-shot``, ``summarize``,
  ``reply``, ``list-models``, ``get-model``), request and response in the proto3 JSON mapping;
- ``POST /v1/tasks/stream-reply``: ``StreamReply`` as server-sent events;
- ``GET /healthz``: liveness, 200 while the process serves;
- ``GET /readyz[?service=NAME]``: the gRPC health status of ``NAME`` (default ``""``, the
  whole server): 200 when SERVING, else 503.

The routes are derived from the task table and the Models service descriptor, so a new task's
RPCs get their routes without an edit here. The app is served behind :class:`~.gate.Gate`:
a route sees only requests whose head passed (token, ``Host``, ``Origin``, ``Content-Type``)
and whose body was read within the limits. A call runs as its own task, cancelled when the
client disconnects or the deadline passes (``X-Hubless-Timeout`` seconds, or the OpenAI SDK's
``X-Stainless-Read-Timeout``), which drops its queued items as a cancelled gRPC call does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hubless.v1 import models_pb2
from hubless_server.core.tasks import TASK_SPECS
from hubless_server.inference.batching import ExpiredError
from hubless_server.services import SERVICERS
from hubless_server.services.common import ServiceDeps
from hubless_server.services.errors import ErrorScope, rpc_error
from hubless_server.services.models import ModelsService
from hubless_server.services.wire import add_service
from hubless_server.transport.auth import TokenFile
from hubless_server.transport.http import openai_compat
from hubless_server.transport.http.body import (
    UndecodableJson,
    off_loop,
    parse_json,
    parse_message,
)
from hubless_server.transport.http.dispatch import (
    Dispatcher,
    HandlerTable,
    HttpAbort,
    HttpServicerContext,
    deadline_from,
    grpc_peer,
)
from hubless_server.transport.http.errors import HttpError, from_status, plain
from hubless_server.transport.http.gate import Gate
from hubless_server.transport.http.limits import DoorLimits
from hubless_server.transport.http.refusals import Refusals
from hubless_server.transport.refusals import Refusals as AuthRefusals

log = logging.getLogger(__name__)

MODELS_DESCRIPTOR = models_pb2.DESCRIPTOR.services_by_name["ModelsService"]


class ClientGoneError(Exception):
    """The client disconnected before the answer was ready."""


def kebab(name: str) -> str:
    """``ClassifyZeroShot`` -> ``classify-zero-shot``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def error_response(error: HttpError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def _abort_error(abort: HttpAbort, request: Any = None, rename: bool = False) -> HttpError:
    error = from_status(abort.code, abort.details, abort.trailing_metadata)
    if not error.param and isinstance(request, UndecodableJson) and request.field:
        error.param = request.field
    if rename:
        error.param = openai_compat.openai_param(error.param)
        error.message = openai_compat.openai_message(error.message)
    return error


def _embed_request(body: bytes) -> tuple[Any, str]:
    """The ``EmbedRequest`` (or why not) and the encoding of an OpenAI embeddings body."""
    try:
        payload = parse_json(body)
    except ValueError as exc:
        why = f"not JSON: {exc}"
        return UndecodableJson(openai_compat.EMBED_BODY, len(body), why), "float"
    return openai_compat.embed_request(payload, len(body))


def _sse(message: Any) -> bytes:
    data = json.dumps(openai_compat.message_dict(message), separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class HttpApi:
    """The Starlette app of one server: its servicers over ``deps`` behind ``interceptors``
    (the gRPC port's own instances, so per-caller limits count both doors together).
    :attr:`asgi` is what to serve: the app behind the :class:`~.gate.Gate` (``tokens``
    checked from the headers, the body limits of ``limits``, ``Host`` checked when
    ``loopback_only``)."""

    def __init__(
        self,
        deps: ServiceDeps,
        interceptors: list[grpc.aio.ServerInterceptor],
        health: HealthServicer,
        *,
        tokens: TokenFile | None = None,
        limits: DoorLimits | None = None,
        loopback_only: bool = False,
        auth_refusals: AuthRefusals | None = None,
    ) -> None:
        table = HandlerTable()
        self.methods: dict[str, descriptor.MethodDescriptor] = {}
        services = [(spec.service, SERVICERS[spec.name](deps)) for spec in TASK_SPECS]
        services.append((MODELS_DESCRIPTOR, ModelsService(deps)))
        for service, servicer in services:
            add_service(table, service, servicer)  # type: ignore[arg-type]
            for method in service.methods:
                route = kebab(method.name)
                if route in self.methods:
                    raise RuntimeError(f"two RPCs map to /v1/tasks/{route}")
                self.methods[route] = method
        self.dispatcher = Dispatcher(table, interceptors)
        self.health = health
        self.app = Starlette(
            routes=[
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{name}", self.get_model, methods=["GET"]),
                Route("/v1/tasks/{method}", self.task, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET", "HEAD"]),
                Route("/readyz", self.readyz, methods=["GET", "HEAD"]),
            ],
            exception_handlers={HTTPException: self._http_exception, Exception: self._crash},
        )
        self.limits = limits or DoorLimits.from_settings(deps.settings)
        self.refusals = Refusals()
        self.asgi = Gate(
            self.app,
            limits=self.limits,
            tokens=tokens,
            loopback_only=loopback_only,
            refusals=self.refusals,
            auth_refusals=auth_refusals or AuthRefusals(),
            method_of=self.method_of,
        )

    def malformed_head(self, peer: str) -> None:
        """A request head uvicorn could not parse (answered 400): a refusal like the gate's."""
        self.refusals.refused(
            method="HTTP", code="INVALID_ARGUMENT", reason="MALFORMED_HTTP", status=400, peer=peer
        )

    def method_of(self, path: str) -> str:
        """The RPC a path calls, as the metrics and the access log name it
        (``EmbeddingsService.Embed``); ``Health.Check`` for the health routes, ``HTTP``
        for a path that calls none."""
        if path == "/v1/embeddings":
            return "EmbeddingsService.Embed"
        if path == "/v1/models":
            return "ModelsService.ListModels"
        if path.startswith("/v1/models/"):
            return "ModelsService.GetModel"
        if path in ("/healthz", "/readyz"):
            return "Health.Check"
        if path.startswith("/v1/tasks/"):
            method = self.methods.get(path[len("/v1/tasks/") :])
            if method is not None:
                return f"{method.containing_service.name}.{method.name}"
        return "HTTP"

    # ---- plumbing -------------------------------------------------------------------

    @staticmethod
    async def _http_exception(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = exc.detail if isinstance(exc, HTTPException) else "error"
        message = f"{request.method} {request.url.path}: {detail}"
        return error_response(plain(status, code, message))

    @staticmethod
    async def _crash(request: Request, exc: Exception) -> Response:
        """What escaped a route: 500 in the JSON shape (the gate logs it, throttled)."""
        message = f"internal error: {type(exc).__name__}"
        return error_response(plain(500, "internal", message))

    @staticmethod
    def _context(request: Request) -> HttpServicerContext:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        client = request.client
        peer = grpc_peer(client.host if client else None, client.port if client else None)
        deadline = deadline_from(headers, asyncio.get_running_loop().time())
        return HttpServicerContext(headers, peer, deadline)

    @staticmethod
    def _expired(method: str) -> HttpAbort:
        status = rpc_error(
            ExpiredError("the deadline passed before the answer was ready"), ErrorScope(method)
        ).to_status()
        return HttpAbort(status.code, status.details, status.trailing_metadata)

    @staticmethod
    def _internal(method: str, exc: Exception) -> HttpAbort:
        """INTERNAL for what escaped the servicers' own error handling (logged once)."""
        status = rpc_error(exc, ErrorScope(method)).to_status()
        return HttpAbort(status.code, status.details, status.trailing_metadata)

    async def _bounded(
        self, method: str, context: HttpServicerContext, call: Awaitable[Any]
    ) -> Any:
        """``call`` within the request's deadline (DEADLINE_EXCEEDED past it); every failure
        is an :class:`HttpAbort`."""
        remaining = context.time_remaining()
        try:
            if remaining is None:
                return await call
            async with asyncio.timeout(remaining):
                return await call
        except TimeoutError:
            raise self._expired(method) from None
        except HttpAbort:
            raise
        except Exception as exc:
            raise self._internal(method, exc) from exc

    async def _guarded(
        self,
        request: Request,
        method: str,
        context: HttpServicerContext,
        call: Callable[[], Awaitable[Any]],
        bounded: bool = True,
    ) -> Any:
        """Run ``call()`` as its own task (within the deadline when ``bounded``), cancelled
        when the client disconnects (:class:`ClientGoneError`)."""
        work = self._bounded(method, context, call()) if bounded else call()
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise ClientGoneError
        return task.result()

    async def _unary(
        self, request: Request, method: str, message: Any, context: HttpServicerContext
    ) -> Any:
        return await self._guarded(
            request, method, context, lambda: self.dispatcher.unary(method, message, context)
        )

    # ---- generic task routes --------------------------------------------------------

    async def task(self, request: Request) -> Response:
        method = self.methods.get(request.path_params["method"])
        if method is None:
            known = ", ".join(sorted(self.methods))
            message = f"no such method {request.url.path}; known: {known}"
            return error_response(plain(404, "not_found", message))
        body = await request.body()  # read by the gate, within the body limit
        message_class = message_factory.GetMessageClass(method.input_type)
        message = await off_loop(parse_message, body, message_class)
        context = self._context(request)
        name = f"/{method.containing_service.full_name}/{method.name}"
        if method.server_streaming:
            return await self._stream(request, name, message, context)
        try:
            response = await self._unary(request, name, message, context)
        except HttpAbort as abort:
            return error_response(_abort_error(abort, message))
        except ClientGoneError:
            return Response(status_code=499)
        return JSONResponse(openai_compat.message_dict(response))

    async def _stream(
        self, request: Request, method: str, message: Any, context: HttpServicerContext
    ) -> Response:
        """Server-sent events: ``data: <message JSON>`` per message. An error before the first
        message is an ordinary error answer; after it, an ``event: error`` with the error
        body ends the stream."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)

        async def pump() -> None:
            async for item in self.dispatcher.stream(method, message, context):
                await queue.put(("message", item))

        async def produce() -> None:
            try:
                await self._bounded(method, context, pump())
                await queue.put(("end", None))
            except HttpAbort as abort:
                await queue.put(("error", abort))

        producer = asyncio.ensure_future(produce())
        try:
            first = await self._guarded(request, method, context, queue.get, bounded=False)
        except ClientGoneError:
            producer.cancel()
            return Response(status_code=499)
        if first[0] == "error":
            producer.cancel()
            return error_response(_abort_error(first[1], message))

        async def events() -> AsyncIterator[bytes]:
            kind, value = first
            try:
                while kind == "message":
                    yield _sse(value)
                    kind, value = await queue.get()
                if kind == "error":
                    body = json.dumps(_abort_error(value, message).body(), separators=(",", ":"))
                    yield f"event: error\ndata: {body}\n\n".encode()
            finally:
                producer.cancel()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    # ---- OpenAI routes --------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        body = await request.body()  # read by the gate, within the body limit
        embed, encoding = await off_loop(_embed_request, body)
        context = self._context(request)
        try:
            response = await self._unary(request, openai_compat.EMBED_METHOD, embed, context)
        except HttpAbort as abort:
            return error_response(_abort_error(abort, embed, rename=True))
        except ClientGoneError:
            return Response(status_code=499)
        return JSONResponse(openai_compat.embeddings_response(response, encoding))

    async def list_models(self, request: Request) -> Response:
        context = self._context(request)
        method = openai_compat.LIST_MODELS_METHOD
        try:
            response = await self._unary(request, method, models_pb2.ListModelsRequest(), context)
        except HttpAbort as abort:
            return error_response(_abort_error(abort))
        except ClientGoneError:
            return Response(status_code=499)
        return JSONResponse(openai_compat.model_list(response))

    async def get_model(self, request: Request) -> Response:
        context = self._context(request)
        message = models_pb2.GetModelRequest(name=request.path_params["name"])
        try:
            response = await self._unary(request, openai_compat.GET_MODEL_METHOD, message, context)
        except HttpAbort as abort:
            return error_response(_abort_error(abort))
        except ClientGoneError:
            return Response(status_code=499)
        return JSONResponse(openai_compat.model_object(response.model))

    # ---- health ---------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "SERVING"})

    async def readyz(self, request: Request) -> Response:
        service = request.query_params.get("service", "")
        context = self._context(request)
        try:
            answer = await self.health.Check(
                health_pb2.HealthCheckRequest(service=service), context
            )
        except HttpAbort as abort:
            return error_response(_abort_error(abort))
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
        code = 200 if answer.status == health_pb2.HealthCheckResponse.SERVING else 503
        return JSONResponse({"service": service, "status": status}, status_code=code)
