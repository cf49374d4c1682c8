"""hubless benchmarks: prints markdown tables, writes JSON and PNG files to bench/results/.

    python -m bench.run [--suite embeddings|classification|generation|coldstart|all]
                        [--duration S] [--concurrency 1,8,64] [--shapes 64x1,8x32]
                        [--json-dir bench/results] [--quick]

Suites:
  embeddings      real all-MiniLM-L6-v2: hubless fp32/bf16, in-process batched encode,
                  one-request-at-a-time serving, infinity-emb and MLServer (own venvs)
  classification  emotion, sentiment, zero-shot (5 labels) on full-size random-weight models
  generation      summarization and conversation tokens/s, time to first token (StreamReply)
  coldstart       hubless-serve start to SERVING and peak RSS with every full-size catalog model

Not a test: numbers depend on the machine and on what else runs; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Shape

if not __package__:  # run as a file (python bench/run.py): run the package's module instead
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import runpy

    runpy.run_module("bench.run", run_name="__main__", alter_sys=True)
    raise SystemExit(0)

BENCH_DIR = Path(__file__).resolve().parent

SUITES = ["embeddings", "classification", "generation", "coldstart"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--suite", choices=[*SUITES, "all"], default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per load point")
    parser.add_argument("--warmup", type=float, default=None, help="seconds before each")
    parser.add_argument("--concurrency", default=None, help="comma-separated, e.g. 1,8,64")
    parser.add_argument(
        "--shapes",
        type=_shapes,
        default=None,
        help="embeddings: request shapes CLIENTSxSENTENCES measured on hubless-torch fp32/bf16 "
        "and the null server, comma-separated (default 64x1,8x32; none with --smoke; 'none' "
        "for none)",
    )
    parser.add_argument("--json-dir", type=Path, default=None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check in about a minute: embeddings only (unless --suite), short "
        "points, no peers, results under bench/.logs/quick/",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI smoke (make bench-smoke): embeddings with the real MiniLM, hubless on ONNX "
        "Runtime and on PyTorch and the in-process references only, 1 s points at 1 and 8 "
        "clients, no peers; exits 1 if a system fails (targets are reported, not enforced)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip infinity-emb/MLServer")
    parser.add_argument(
        "--no-peer-install", action="store_true", help="use peer venvs only if already there"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra hubless-serve argument (repeatable), e.g. --server-arg=--max-batch-size=64",
    )
    parser.add_argument(
        "--hubless-variant",
        action="append",
        default=[],
        metavar="LABEL=ARGS",
        help="embeddings suite: also measure hubless-serve (fp32) with these extra arguments, "
        "e.g. --hubless-variant 'batch128=--max-batch-size 128' (repeatable; not in targets)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy flame graphs of the servers under load"
    )
    return parser.parse_args(argv)


def _shapes(spec: str) -> list[Shape]:
    from .settings import parse_shapes

    try:
        return list(parse_shapes(spec))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "sentence_transformers", "transformers", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads libgomp: idle OpenMP workers sleep instead of spinning. hubless-serve
    # does the same by default; the in-process reference, the per-request baseline and the
    # peers (children inherit it) get it too, so no system wins by its OpenMP settings.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from .settings import Settings

    torch.set_num_threads(args.threads)
    st = Settings(threads=args.threads, server_args=args.server_arg, profile=args.profile)
    for spec in args.hubless_variant:
        label, _, extra = spec.partition("=")
        st.hubless_variants[f"hubless-fp32-{label.strip()}"] = extra.split()
    if args.quick or args.smoke:
        st.duration_s, st.warmup_s, st.quick, st.peers = 1.0, 0.5, True, False
        st.concurrency = [1, 8]
        st.json_dir = BENCH_DIR / ".logs" / ("smoke" if args.smoke else "quick")
        st.smoke = args.smoke
        if args.smoke:  # CI keeps its quick points; --shapes adds the shapes
            st.shapes = []
    if args.shapes is not None:
        st.shapes = args.shapes
    if args.duration is not None:
        st.duration_s = args.duration
    if args.warmup is not None:
        st.warmup_s = args.warmup
    if args.concurrency:
        st.concurrency = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    if args.json_dir is not None:
        st.json_dir = args.json_dir
    if args.no_peers:
        st.peers = False
    if args.no_peer_install:
        st.peer_install = False

    suite = args.suite or ("embeddings" if args.quick or args.smoke else "all")
    chosen = SUITES if suite == "all" else [suite]
    t0 = time.perf_counter()
    failed: list[str] = []
    for name in chosen:
        logging.info("=== suite %s ===", name)
        try:
            module = importlib.import_module(f".suite_{name}", __package__)
            module.run(st)
        except Exception:
            logging.exception("suite %s failed", name)
            failed.append(name)
    logging.info("done in %.0f s; results in %s", time.perf_counter() - t0, st.json_dir)
    if failed:
        logging.error("failed suites: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
