"""Tiny random-weight stand-ins for the catalog models, built offline and deterministically.

Each stand-in has the real model's architecture class and labels (from
``shared/reference/model-shapes.md``) with tiny dimensions, a tokenizer trained here on a small
built-in English corpus with the ``tokenizers`` library, and the decoy files a hub repository
carries that the fetcher must skip (:data:`DECOY_FILES`). Everything is seeded, so a rebuild with
the same library versions gives the same bytes.

Shapes: hidden 32, 2 layers, 4 heads, FFN 64 (``dialogpt-medium`` is bigger than
``dialogpt-small``: hidden 48, 3 layers). Sequence limits are small so truncation is testable with
modest text: tokenizers ``model_max_length`` 128 (:data:`MAX_TOKENS`), the embedder's
``max_seq_length`` 64 (:data:`EMBEDDER_MAX_SEQ_LENGTH`); position tables are sized to match.

Use :func:`cached_tiny_models` (what the ``tiny_models`` fixture does) to build once and reuse the
result across test sessions, or :func:`build_tiny_models` to build into a given directory.

Modules: :mod:`.catalog` (the catalog followed, labels, decoys, :class:`TinyModel`),
:mod:`.tokenizers` (corpus and tokenizer training), :mod:`.builders` (one builder per model) and
:mod:`.cache` (build, index, on-disk cache). Needs the ``tiny`` extra (torch, transformers, ...).
"""

from hubless_fakehub.tiny.builders import EMBEDDER_MAX_SEQ_LENGTH, EMBEDDING_DIM
from hubless_fakehub.tiny.cache import (
    build_tiny_models,
    cache_key,
    cached_tiny_models,
    load_tiny_models,
)
from hubless_fakehub.tiny.catalog import (
    DECOY_FILES,
    INDEX_NAME,
    LABELS,
    Catalog,
    CatalogModel,
    TinyModel,
    catalog_file,
    load_catalog,
)
from hubless_fakehub.tiny.tokenizers import MAX_TOKENS

__all__ = [
    "DECOY_FILES",
    "EMBEDDER_MAX_SEQ_LENGTH",
    "EMBEDDING_DIM",
    "INDEX_NAME",
    "LABELS",
    "MAX_TOKENS",
    "Catalog",
    "CatalogModel",
    "TinyModel",
    "build_tiny_models",
    "cache_key",
    "cached_tiny_models",
    "catalog_file",
    "load_catalog",
    "load_tiny_models",
]
