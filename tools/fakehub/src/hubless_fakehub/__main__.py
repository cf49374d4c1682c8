"""Run the fake hub standalone: ``python -m hubless_fakehub [--port N] org/name=DIR ...``.

Serves each directory as a hub repo until interrupted, printing the endpoint first (give it to
``hubless-fetch`` as ``HF_ENDPOINT``). ``--tiny-models DIR`` builds (once, cached in ``DIR``) and
serves the tiny stand-ins of every catalog model at their real repo ids.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

from hubless_fakehub.server import HubMirror


def iter_repo_args(values: list[str]) -> Iterator[tuple[str, Path]]:
    """Parse ``org/name=DIR`` command-line arguments."""
    for value in values:
        repo_id, sep, directory = value.partition("=")
        if not sep:
            raise SystemExit(f"expected org/name=DIR, got {value!r}")
        yield repo_id, Path(directory)


def main(argv: list[str] | None = None) -> None:
    """Serve directories as hub repos until interrupted (prints the endpoint first)."""
    parser = argparse.ArgumentParser(
        prog="python -m hubless_fakehub",
        description="A local, hub-compatible Hugging Face mirror serving directories as repos.",
    )
    parser.add_argument("repos", nargs="*", help="org/name=DIR")
    parser.add_argument("--tiny-models", type=Path, help="build/cache the tiny models here, serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    repos = dict(iter_repo_args(args.repos))
    if args.tiny_models:
        from hubless_fakehub.tiny import cached_tiny_models

        repos.update({m.repo_id: m.path for m in cached_tiny_models(args.tiny_models).values()})
    with HubMirror(repos, host=args.host, port=args.port) as mirror:
        print(mirror.endpoint, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
