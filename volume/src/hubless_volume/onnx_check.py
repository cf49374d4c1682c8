"""Refuse ONNX artifacts that would make ONNX Runtime read any file but themselves.

An ONNX tensor may keep its bytes in another file ("external data": ``data_location =
EXTERNAL`` and a ``location`` entry). ONNX Runtime refuses only absolute and ``..``
locations; a location relative to the working folder loads, and the "embedding" such an
artifact returns is that file's bytes. The artifact's sha256 in the manifest says nothing
about it: whoever wrote the manifest wrote the artifact. ``hubless-optimize`` never writes
external data (an encoder of these sizes is far under protobuf's 2 GiB), so any artifact
that has some is refused, wherever the tensor hides: a graph's initializers and sparse
initializers, a node attribute's tensors, the subgraphs of control-flow nodes (``If``,
``Loop``, ``Scan``), training graphs and model-local functions. ``EPContext`` nodes, which
name a file of precompiled code, are refused too.

This is a minimal reader of the protobuf wire format over :class:`ModelProto`, standard
library only (the fetcher's image has no ``onnx`` package). The field numbers are those of
``onnx.proto`` (ONNX 1.23)::

    ModelProto         graph = 7, training_info = 20, functions = 25
    TrainingInfoProto  initialization = 1, algorithm = 2            (GraphProto)
    GraphProto         node = 1, name = 2, initializer = 5, sparse_initializer = 15
    NodeProto          name = 3, op_type = 4, attribute = 5
    AttributeProto     name = 1, t = 5, g = 6, tensors = 10, graphs = 11,
                       sparse_tensor = 22, sparse_tensors = 23
    FunctionProto      name = 1, node = 7, attribute_proto = 11
    SparseTensorProto  values = 1, indices = 2                      (TensorProto)
    TensorProto        name = 8, external_data = 13 (key = 1, value = 2), data_location = 14

It reads every occurrence of a field (protobuf merges repeated singular messages; this
reader visits each, so it sees at least what a parser would) and is stricter than protobuf
where strictness is safe: a field it descends into with another wire type, groups, a
truncated field or nesting deeper than protobuf's own limit (100 messages) make the file
unreadable, and an unreadable file is refused like one with external data. Large payloads
(``raw_data``) are skipped by their length, never copied: a file is read through ``mmap``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from hubless_volume.safeio import open_regular_file

MAX_NESTING = 100
"""Deepest message nesting read (protobuf's default recursion limit)."""
_MAX_LISTED = 20

# per message kind: field number -> (kind of the message it holds, how to name it)
_CHILDREN: dict[str, dict[int, tuple[str, str]]] = {
    "model": {
        7: ("graph", "graph"),
        20: ("training", "training info"),
        25: ("function", "function"),
    },
    "training": {1: ("graph", "initialization graph"), 2: ("graph", "algorithm graph")},
    "graph": {
        1: ("node", "node"),
        5: ("tensor", "initializer"),
        15: ("sparse", "sparse initializer"),
    },
    "node": {5: ("attribute", "attribute")},
    "attribute": {
        5: ("tensor", "tensor"),
        6: ("graph", "graph"),
        10: ("tensor", "tensor"),
        11: ("graph", "graph"),
        22: ("sparse", "sparse tensor"),
        23: ("sparse", "sparse tensor"),
    },
    "function": {7: ("node", "node"), 11: ("attribute", "attribute")},
    "sparse": {1: ("tensor", "values"), 2: ("tensor", "indices")},
    "tensor": {},
}
_NAME_FIELD = {"graph": 2, "node": 3, "attribute": 1, "function": 1, "tensor": 8}
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_NODE_OP_TYPE = 4


class _Unreadable(Exception):
    """The bytes are not a protobuf message this reader accepts."""


def _varint(buf: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end:
            raise _Unreadable(f"a number is cut off at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Unreadable(f"a number longer than 10 bytes ends at byte {pos}")


def _fields(buf: bytes | mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(number, wire type, a, b)`` of each field in ``buf[start:end]``: a varint's value in
    ``a``; a length-delimited field's span in ``a:b``; fixed-size fields are skipped."""
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Unreadable(f"field number 0 at byte {at}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _Unreadable(f"field {number} at byte {at} runs past the end of its message")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Unreadable(f"field {number} at byte {at} runs past the end of its message")
        else:
            what = "a protobuf group, which ONNX never uses" if wire in (3, 4) else "invalid"
            raise _Unreadable(f"field {number} at byte {at} has wire type {wire} ({what})")


def _text(buf: bytes | mmap.mmap, start: int, end: int) -> str:
    raw = bytes(buf[start : min(end, start + 200)])
    return raw.decode("utf-8", errors="replace")


def _problems(buf: bytes | mmap.mmap, size: int) -> list[str]:
    problems: list[str] = []
    has_graph = False
    # (kind, start, end, where, depth); the names come from each message's own fields
    stack: list[tuple[str, int, int, str, int]] = [("model", 0, size, "", 0)]
    while stack:
        kind, start, end, where, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _Unreadable(f"{where} is nested more than {MAX_NESTING} messages deep")
        children: list[tuple[str, int, int, str]] = []
        name = ""
        external: list[str] = []
        location = 0
        op_type = ""
        for number, wire, a, b in _fields(buf, start, end):
            child = _CHILDREN[kind].get(number)
            if child is not None:
                if wire != 2:
                    raise _Unreadable(f"{where or 'the model'}: field {number} is not a message")
                children.append((child[0], a, b, child[1]))
                has_graph |= kind == "model" and number == 7
            elif number == _NAME_FIELD.get(kind) and wire == 2:
                name = _text(buf, a, b)
            elif kind == "node" and number == _NODE_OP_TYPE and wire == 2:
                op_type = _text(buf, a, b)
            elif kind == "tensor" and number == _TENSOR_EXTERNAL_DATA:
                if wire != 2:
                    raise _Unreadable(f"{where}: external_data is not a message")
                external.append(_entry(buf, a, b))
            elif kind == "tensor" and number == _TENSOR_DATA_LOCATION:
                if wire != 0:
                    raise _Unreadable(f"{where}: data_location is not a number")
                location = location or a
        here = f"{where} {name!r}" if where and name else where
        if kind == "tensor" and (external or location):
            files = ", ".join(repr(e) for e in external if e) or "no location given"
            problems.append(f"{here}: keeps its data in another file ({files})")
        if kind == "node" and op_type == "EPContext":
            problems.append(f"{here}: is an EPContext node, which names a file of compiled code")
        for child_kind, a, b, label in reversed(children):
            nested = f"{here} > {label}" if here else label
            stack.append((child_kind, a, b, nested, depth + 1))
    if not has_graph:
        raise _Unreadable("it has no graph")
    return problems


def _entry(buf: bytes | mmap.mmap, start: int, end: int) -> str:
    """A ``StringStringEntryProto``'s value when its key is ``location`` ('' otherwise)."""
    key = value = ""
    for number, wire, a, b in _fields(buf, start, end):
        if wire == 2 and number == 1:
            key = _text(buf, a, b)
        elif wire == 2 and number == 2:
            value = _text(buf, a, b)
    return value if key == "location" else ""


def _listed(problems: list[str]) -> list[str]:
    if len(problems) <= _MAX_LISTED:
        return problems
    return [*problems[:_MAX_LISTED], f"... and {len(problems) - _MAX_LISTED} more"]


def external_data_problems_in_bytes(data: bytes) -> list[str]:
    """Why the ONNX model ``data`` must not be loaded: one line per tensor that keeps its
    data in another file (named by where it is: ``graph 'main_graph' > initializer 'w'``),
    per ``EPContext`` node, or one line saying why the bytes cannot be read as an ONNX model.
    Empty when the model is self-contained. At most 20 lines, then a count."""
    try:
        return _listed(_problems(data, len(data)))
    except _Unreadable as exc:
        return [f"cannot be read as an ONNX model: {exc}"]


def external_data_problems(path: Path | str) -> list[str]:
    """:func:`external_data_problems_in_bytes` for the file at ``path`` (read through
    ``mmap``; large tensors are skipped, not read). A path that is not a readable regular
    file is one problem too. Blocking file I/O: an asyncio caller runs it in a thread."""
    try:
        with open_regular_file(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return ["cannot be read as an ONNX model: the file is empty"]
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                try:
                    return _listed(_problems(buf, size))
                except _Unreadable as exc:
                    return [f"cannot be read as an ONNX model: {exc}"]
    except OSError as exc:
        return [f"cannot be read: {exc}"]
