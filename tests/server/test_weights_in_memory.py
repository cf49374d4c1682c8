"""A loaded model holds its weights in process memory: no file of the models volume stays
memory-mapped, so a file the fetcher replaces or prunes never faults a running server and its
disk space is freed at once. Real tiny models of every runtime kind, in-process."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from hubless.v1 import (
    conversation_pb2,
    conversation_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    summarization_pb2,
    summarization_pb2_grpc,
    zero_shot_pb2,
    zero_shot_pb2_grpc,
)
from hubless_volume import Manifest
from tests.server.harness import RunningServer, settings_for

MakeVolume = Callable[[list[str] | None], Path]


def mapped_files_under(root: Path) -> list[str]:
    """Paths under ``root`` (or whose resolved path is) that this process has mapped."""
    roots = {str(root), str(root.resolve())}
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        path = parts[5] if len(parts) == 6 else ""
        if any(path.startswith(r + "/") for r in roots):
            found.append(path)
    return sorted(set(found))


def test_no_volume_file_is_mapped_and_pruned_files_do_not_matter(
    volume_factory: MakeVolume, tmp_path: Path
) -> None:
    volume = volume_factory(None)  # the nine tiny models: every runtime kind
    manifest = Manifest.load(volume)
    server = RunningServer(settings_for(volume, "--reload-interval", "0"), None)
    try:
        ch = server.channel
        listed = models_pb2_grpc.ModelsServiceStub(ch).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
        ready = {m.name for m in listed.models if m.state == models_pb2.MODEL_STATE_READY}
        assert ready == set(manifest.models)
        assert mapped_files_under(volume) == []

        # The fetcher prunes everything (a new commit of every model, retention over): the
        # loaded models answer from memory.
        for folder in volume.glob("models--*"):
            shutil.rmtree(folder)
        embedded = embeddings_pb2_grpc.EmbeddingsServiceStub(ch).Embed(
            embeddings_pb2.EmbedRequest(texts=["still here"]), timeout=30
        )
        assert embedded.dimension > 0
        classified = zero_shot_pb2_grpc.ZeroShotServiceStub(ch).ClassifyZeroShot(
            zero_shot_pb2.ClassifyZeroShotRequest(texts=["budget"], candidate_labels=["a", "b"]),
            timeout=30,
        )
        assert len(classified.results[0].scores) == 2
        summary = summarization_pb2_grpc.SummarizationServiceStub(ch).Summarize(
            summarization_pb2.SummarizeRequest(texts=["The council met."], max_length=6),
            timeout=60,
        )
        assert summary.summaries[0].tokens > 0
        reply = conversation_pb2_grpc.ConversationServiceStub(ch).Reply(
            conversation_pb2.ReplyRequest(turns=["hello"], max_new_tokens=4), timeout=60
        )
        assert reply.tokens > 0
        assert mapped_files_under(volume) == []
    finally:
        server.stop()
