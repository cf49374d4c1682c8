"""hubless_volume.onnx_check: the standard-library reader that refuses ONNX models keeping
tensor data in other files, cross-checked against the ``onnx`` package's own parser on models
made with ``onnx.helper`` and exported by ``torch.onnx``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubless_volume import external_data_problems, external_data_problems_in_bytes
from hubless_volume.onnx_check import MAX_NESTING

onnx = pytest.importorskip("onnx")
np = pytest.importorskip("numpy")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# hand-written wire bytes: ir_version 8, graph {name: "main"}
MINIMAL = b"\x08\x08\x3a\x06\x12\x04main"


def _tensor(name: str, values: object = None) -> TensorProto:
    data = np.arange(6, dtype=np.float32).reshape(2, 3) if values is None else values
    return numpy_helper.from_array(np.asarray(data, dtype=np.float32), name)


def _external(tensor: TensorProto, location: str = "secret.bin") -> TensorProto:
    """``tensor`` turned into external data at ``location`` (what an attacker writes)."""
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _io(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3])


def _graph(
    nodes: list[onnx.NodeProto], initializers: list[TensorProto] | None = None, name: str = "g"
) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [_io("x")], [_io("y")], initializers or [])


def _model(graph: onnx.GraphProto, **kwargs: object) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kwargs)


def _plain() -> onnx.ModelProto:
    return _model(_graph([helper.make_node("Add", ["x", "w"], ["y"])], [_tensor("w")], "main"))


def _all_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Every tensor of ``model`` as the onnx package parsed it: the oracle."""

    def graph(g: onnx.GraphProto) -> Iterator[tuple[str, TensorProto]]:
        for t in g.initializer:
            yield "initializer", t
        for s in g.sparse_initializer:
            yield "sparse", s.values
            yield "sparse", s.indices
        for node in g.node:
            yield from attributes(node.attribute)

    def attributes(attrs: object) -> Iterator[tuple[str, TensorProto]]:
        for a in attrs:  # type: ignore[attr-defined]
            if a.HasField("t"):
                yield "attribute", a.t
            yield from (("attribute", t) for t in a.tensors)
            if a.HasField("sparse_tensor"):
                yield "attribute", a.sparse_tensor.values
            if a.HasField("g"):
                yield from graph(a.g)
            for sub in a.graphs:
                yield from graph(sub)

    yield from graph(model.graph)
    for info in model.training_info:
        yield from graph(info.initialization)
        yield from graph(info.algorithm)
    for function in model.functions:
        for node in function.node:
            yield from attributes(node.attribute)
        yield from attributes(function.attribute_proto)


def _oracle(data: bytes) -> set[str]:
    """Names of the tensors that ``onnx.load`` (no external data loaded) says are external."""
    model = onnx.load_from_string(data)
    return {
        t.name
        for _, t in _all_tensors(model)
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data)
    }


def _flagged(problems: list[str]) -> set[str]:
    """Tensor names our reader flags: ``... initializer 'w': keeps its data ...``."""
    return {p.split(": keeps")[0].rsplit(" '", 1)[1].rstrip("'") for p in problems}


def _check(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    """Our problems for ``model``, the same from bytes and from a file, and the same tensors
    as the onnx package's parser finds."""
    data = model.SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    problems = external_data_problems(path)
    assert external_data_problems_in_bytes(data) == problems
    assert _flagged([p for p in problems if "keeps its data" in p]) == _oracle(data)
    return problems


def test_a_self_contained_model_has_no_problem(tmp_path: Path) -> None:
    assert _check(_plain(), tmp_path) == []
    assert external_data_problems_in_bytes(MINIMAL) == []


def test_a_model_saved_with_external_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(
        _plain(), str(path), save_as_external_data=True, location="x.data", size_threshold=0
    )
    problems = external_data_problems(path)
    assert problems == ["graph 'main' > initializer 'w': keeps its data in another file ('x.data')"]
    assert _flagged(problems) == _oracle(path.read_bytes()) == {"w"}


def test_external_data_hidden_in_an_attribute_tensor(tmp_path: Path) -> None:
    node = helper.make_node("Constant", [], ["c"], name="const", value=_external(_tensor("hid")))
    add = helper.make_node("Add", ["x", "c"], ["y"])
    (problem,) = _check(_model(_graph([node, add])), tmp_path)
    assert problem.startswith("graph 'g' > node 'const' > attribute 'value' > tensor 'hid':")
    assert "'secret.bin'" in problem


def test_external_data_hidden_in_a_subgraph(tmp_path: Path) -> None:
    inner = _graph([helper.make_node("Add", ["x", "deep"], ["y"])], [_external(_tensor("deep"))])
    inner.name = "then"
    other = _graph([helper.make_node("Identity", ["x"], ["y"])], name="else")
    branch = helper.make_node(
        "If", ["cond"], ["y"], name="if", then_branch=inner, else_branch=other
    )
    outer = helper.make_graph(
        [branch],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _io("x")],
        [_io("y")],
    )
    (problem,) = _check(_model(outer), tmp_path)
    assert problem.startswith(
        "graph 'main' > node 'if' > attribute 'then_branch' > graph 'then' > initializer 'deep':"
    )


def test_external_data_in_sparse_initializers_functions_and_training_graphs(
    tmp_path: Path,
) -> None:
    sparse = helper.make_sparse_tensor(
        _external(_tensor("sv", [1.0, 2.0]), "a.bin"),
        numpy_helper.from_array(np.array([0, 4], dtype=np.int64), "si"),
        [2, 3],
    )
    graph = _graph([helper.make_node("Identity", ["x"], ["y"])])
    graph.sparse_initializer.append(sparse)
    function = helper.make_function(
        "local",
        "f",
        ["a"],
        ["b"],
        [helper.make_node("Constant", [], ["b"], name="fc", value=_external(_tensor("ft"), "b"))],
        [helper.make_opsetid("", 17)],
    )
    training = onnx.TrainingInfoProto()
    training.initialization.CopyFrom(_graph([], [_external(_tensor("init"), "c")], "init_graph"))
    model = _model(graph, functions=[function])
    model.training_info.append(training)
    problems = _check(model, tmp_path)
    assert _flagged(problems) == {"sv", "ft", "init"}
    assert any(p.startswith("function 'f' > node 'fc'") for p in problems)
    assert any(p.startswith("training info > initialization graph 'init_graph'") for p in problems)


def test_data_location_alone_or_external_entries_alone_are_refused(tmp_path: Path) -> None:
    marked = _tensor("marked")
    marked.data_location = TensorProto.EXTERNAL
    listed = _tensor("listed")
    entry = listed.external_data.add()
    entry.key, entry.value = "location", "elsewhere.bin"
    model = _model(_graph([helper.make_node("Identity", ["x"], ["y"])], [marked, listed]))
    problems = _check(model, tmp_path)
    assert _flagged(problems) == {"marked", "listed"}
    assert any("no location given" in p for p in problems)


def test_an_epcontext_node_is_refused(tmp_path: Path) -> None:
    node = helper.make_node(
        "EPContext", ["x"], ["y"], name="ctx", domain="com.microsoft", ep_cache_context="c.bin"
    )
    (problem,) = _check(_model(_graph([node])), tmp_path)
    assert problem.startswith("graph 'g' > node 'ctx': is an EPContext node")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"garbage bytes!", "wire type 7"),
        (b"", "it has no graph"),
        (b"\x08\x08", "it has no graph"),  # a valid message, but no graph
        (MINIMAL[:-2], "runs past the end"),  # truncated
        (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
        (b"\x38\x01", "field 7 is not a message"),  # graph as a number
        (b"\x00\x00", "field number 0"),
    ],
)
def test_bytes_that_are_not_an_onnx_model_are_refused(data: bytes, why: str) -> None:
    (problem,) = external_data_problems_in_bytes(data)
    assert problem.startswith("cannot be read as an ONNX model:") and why in problem


def test_a_truncated_real_model_is_refused(tmp_path: Path) -> None:
    data = _plain().SerializeToString()
    (problem,) = external_data_problems_in_bytes(data[: len(data) // 2])
    assert "cannot be read as an ONNX model" in problem


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field: key, length, payload."""

    def varint(value: int) -> bytes:
        out = b""
        while value > 0x7F:
            out += bytes([value & 0x7F | 0x80])
            value >>= 7
        return out + bytes([value])

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_nesting_deeper_than_protobuf_allows_is_refused() -> None:
    """Written by hand: protobuf itself (so ``onnx.helper``) refuses to build it."""
    graph = _field(2, b"leaf")
    for _ in range(MAX_NESTING // 3 + 1):  # graph > node > attribute > graph: 3 per level
        graph = _field(1, _field(5, _field(6, graph)))  # node { attribute { g } }
    (problem,) = external_data_problems_in_bytes(b"\x08\x08" + _field(7, graph))
    assert f"nested more than {MAX_NESTING} messages deep" in problem
    shallow = _field(2, b"leaf")
    for _ in range(10):
        shallow = _field(1, _field(5, _field(6, shallow)))
    assert external_data_problems_in_bytes(b"\x08\x08" + _field(7, shallow)) == []


def test_files_that_are_not_models(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.touch()
    assert external_data_problems(empty) == ["cannot be read as an ONNX model: the file is empty"]
    assert external_data_problems(tmp_path)[0].startswith("cannot be read:")
    assert "is a folder" in external_data_problems(tmp_path)[0]
    assert "No such file" in external_data_problems(tmp_path / "absent.onnx")[0]


def test_a_torch_export_passes_and_its_external_data_twin_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    class Tiny(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(8, 4)
            self.norm = torch.nn.LayerNorm(4)

        def forward(self, x: object) -> object:
            return self.norm(self.linear(x)).softmax(-1)

    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Tiny(), (torch.zeros(2, 8),), str(path), dynamo=False)
    assert external_data_problems(path) == []
    assert _oracle(path.read_bytes()) == set()
    model = onnx.load(str(path))
    names = {t.name for t in model.graph.initializer}
    twin = tmp_path / "twin.onnx"
    onnx.save_model(
        model, str(twin), save_as_external_data=True, location="twin.data", size_threshold=0
    )
    problems = external_data_problems(twin)
    assert _flagged(problems) == _oracle(twin.read_bytes()) == names
