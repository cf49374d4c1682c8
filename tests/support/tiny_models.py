"""Tiny random-weight stand-ins for the nine catalog models, built offline and deterministically.

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
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import random
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

DECOY_FILES: tuple[str, ...] = (
    "pytorch_model.bin",
    "tf_model.h5",
    "flax_model.msgpack",
    "rust_model.ot",
    "onnx/model.onnx",
    "README.md",
    ".gitattributes",
)
"""Files every tiny model directory carries that the fetcher must not download."""

MAX_TOKENS = 128
"""``model_max_length`` of every tiny tokenizer (and the position table size)."""
EMBEDDER_MAX_SEQ_LENGTH = 64
"""``max_seq_length`` of the tiny sentence-transformers embedder."""
EMBEDDING_DIM = 32
"""Dimension of the tiny embedder's vectors."""
INDEX_NAME = "tiny-models.json"
"""Index written at the root of a build: name -> TinyModel fields."""

_SEED = 1234
_HIDDEN, _LAYERS, _HEADS, _FFN = 32, 2, 4, 64
_BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
_WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_GPT2_EOS = "<|endoftext|>"

LABELS: dict[str, tuple[str, ...]] = {
    "emotion-english-distilroberta": (
        "anger",
        "disgust",
        "fear",
        "joy",
        "neutral",
        "sadness",
        "surprise",
    ),
    "bert-multilingual-sentiment": ("1 star", "2 stars", "3 stars", "4 stars", "5 stars"),
    "twitter-roberta-sentiment": ("negative", "neutral", "positive"),
    "distilbert-sst2": ("NEGATIVE", "POSITIVE"),
    "bart-large-mnli": ("contradiction", "neutral", "entailment"),
}
"""The real models' labels, in id order (``id2label[i] == LABELS[name][i]``)."""

_CORPUS = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.
I am so happy today, this is the best day of my life!
This movie was terrible and boring; I want my money back.
What a wonderful surprise, I did not expect to see you here.
I am afraid of the dark and the strange noises outside the house.
That smell is disgusting, please open the window right now.
She was angry because nobody listened to her during the meeting.
He felt sad and lonely after his best friend moved to another city.
The weather is fine, nothing special, just an ordinary afternoon.
The product arrived on time and works exactly as described. Five stars.
Awful service, the food was cold and the waiter was rude. One star.
It is okay, not great, not bad, three stars from me.
Hello, how are you? I am fine, thank you. And you?
Do you want to grab a coffee later this week? Sure, let us meet on Friday.
What is your favourite book? I really love reading science fiction novels.
The government announced a new policy on renewable energy and climate change.
Scientists discovered a new species of bird in the rain forest of South America.
The stock market fell sharply on Monday after weak economic data was released.
The team won the championship after a dramatic final match that ended in penalties.
This example is about politics, sports, technology, business, health or travel.
The new phone has a bright screen, a fast processor and a long battery life.
Machine learning models can classify text, answer questions and summarise documents.
A sentence embedding maps a piece of text to a vector of numbers.
Please summarise the following article in a few short sentences.
The city council met on Tuesday to discuss the budget for schools and roads.
Thanks a lot for your help, I really appreciate it!
I love this song, it always makes me smile and dance.
Why did you do that? I cannot believe it, this is outrageous!
Numbers like 1, 2, 3, 10, 42, 100 and 2026 appear in text too.
"Quotes", (parentheses), [brackets], hyphen-ated words, e-mail@example.com & more...
"""


@dataclass(frozen=True)
class TinyModel:
    """One tiny stand-in: catalog identity, where its files are, and its labels (id order)."""

    name: str
    repo_id: str
    task: str
    path: Path
    labels: tuple[str, ...] = ()
    architecture: str = ""

    def files(self, *, decoys: bool = False) -> list[str]:
        """Relative paths (``/``-separated, sorted) of the model's files; decoys only if asked."""
        out = []
        for file in sorted(self.path.rglob("*")):
            if file.is_file():
                rel = file.relative_to(self.path).as_posix()
                if decoys or rel not in DECOY_FILES:
                    out.append(rel)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "repo_id": self.repo_id,
            "task": self.task,
            "path": self.path.name,
            "labels": list(self.labels),
            "architecture": self.architecture,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], root: Path) -> TinyModel:
        return cls(
            name=data["name"],
            repo_id=data["repo_id"],
            task=data["task"],
            path=root / data["path"],
            labels=tuple(data["labels"]),
            architecture=data["architecture"],
        )


@dataclass(frozen=True)
class CatalogModel:
    """One ``[[models]]`` entry of the default catalog."""

    name: str
    repo_id: str
    revision: str
    task: str


@dataclass(frozen=True)
class Catalog:
    """The default catalog (``hubless_volume/catalog.toml``), read with tomllib."""

    models: list[CatalogModel]
    tasks: dict[str, list[str]] = field(default_factory=dict)


def load_catalog() -> Catalog:
    """Read the fetcher's packaged default catalog."""
    text = (importlib.resources.files("hubless_volume") / "catalog.toml").read_text("utf-8")
    data = tomllib.loads(text)
    models = [
        CatalogModel(m["name"], m["repo_id"], m.get("revision", "main"), m["task"])
        for m in data["models"]
    ]
    tasks = {task: list(names) for task, names in data.get("tasks", {}).items()}
    return Catalog(models=models, tasks=tasks)


# --------------------------------------------------------------------------- tokenizers


def _corpus() -> list[str]:
    return [line for line in _CORPUS.splitlines() if line.strip()]


def _train_bpe(specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(
        _corpus(), vocab_size=600, min_frequency=2, special_tokens=specials, show_progress=False
    )
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges  # type: ignore[return-value]


def _train_wordpiece() -> dict[str, int]:
    """An uncased WordPiece vocabulary from the corpus: specials, then every character (alone
    and as a ``##`` continuation), then the corpus words by descending frequency.

    Built by counting rather than with the ``tokenizers`` WordPiece trainer, whose tie-breaking
    between equally frequent merges is not stable from one run to the next.
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer = BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    pre = BertPreTokenizer()
    counts: dict[str, int] = {}
    for line in _corpus():
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({ch for word in counts for ch in word})
    tokens = list(_WORDPIECE_SPECIALS)
    tokens += chars + [f"##{ch}" for ch in chars]
    tokens += [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    return {tok: i for i, tok in enumerate(tokens)}


def _write_bpe_files(dest: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    ordered = dict(sorted(vocab.items(), key=lambda item: item[1]))
    (dest / "vocab.json").write_text(json.dumps(ordered, ensure_ascii=False) + "\n", "utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (dest / "merges.txt").write_text("\n".join(lines) + "\n", "utf-8")


def _write_wordpiece_files(dest: Path, vocab: dict[str, int]) -> None:
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda item: item[1])]
    (dest / "vocab.txt").write_text("\n".join(tokens) + "\n", "utf-8")


@dataclass
class _Tokenizers:
    """Trained vocabularies shared by the models of one family."""

    roberta_vocab: dict[str, int]
    roberta_merges: list[tuple[str, str]]
    gpt2_vocab: dict[str, int]
    gpt2_merges: list[tuple[str, str]]
    wordpiece_vocab: dict[str, int]


def _train_all() -> _Tokenizers:
    roberta_vocab, roberta_merges = _train_bpe(_BPE_SPECIALS)
    roberta_vocab["<mask>"] = len(roberta_vocab)
    gpt2_vocab, gpt2_merges = _train_bpe([])
    gpt2_vocab[_GPT2_EOS] = len(gpt2_vocab)
    return _Tokenizers(roberta_vocab, roberta_merges, gpt2_vocab, gpt2_merges, _train_wordpiece())


def _save_tokenizer(tokenizer: Any, dest: Path) -> None:
    tokenizer.save_pretrained(str(dest))
    # transformers writes what it needs; drop its optional extras so the set of files is fixed.
    for extra in ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
        (dest / extra).unlink(missing_ok=True)


def _roberta_tokenizer(toks: _Tokenizers, dest: Path, cls_name: str = "RobertaTokenizer") -> int:
    import transformers

    tokenizer = getattr(transformers, cls_name)(
        vocab=dict(toks.roberta_vocab),
        merges=list(toks.roberta_merges),
        model_max_length=MAX_TOKENS,
    )
    _save_tokenizer(tokenizer, dest)
    _write_bpe_files(dest, toks.roberta_vocab, toks.roberta_merges)
    return len(toks.roberta_vocab)


def _gpt2_tokenizer(toks: _Tokenizers, dest: Path) -> int:
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer(
        vocab=dict(toks.gpt2_vocab), merges=list(toks.gpt2_merges), model_max_length=MAX_TOKENS
    )
    _save_tokenizer(tokenizer, dest)
    _write_bpe_files(dest, toks.gpt2_vocab, toks.gpt2_merges)
    return len(toks.gpt2_vocab)


def _bert_tokenizer(toks: _Tokenizers, dest: Path, cls_name: str = "BertTokenizer") -> int:
    import transformers

    tokenizer = getattr(transformers, cls_name)(
        vocab=dict(toks.wordpiece_vocab), do_lower_case=True, model_max_length=MAX_TOKENS
    )
    _save_tokenizer(tokenizer, dest)
    _write_wordpiece_files(dest, toks.wordpiece_vocab)
    return len(toks.wordpiece_vocab)


# --------------------------------------------------------------------------- models


def _labels_kwargs(name: str) -> dict[str, Any]:
    labels = LABELS[name]
    return {
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _seed(name: str) -> None:
    import torch

    digest = hashlib.sha256(f"{_SEED}:{name}".encode()).digest()
    torch.manual_seed(int.from_bytes(digest[:4], "big"))


def _save_model(model: Any, dest: Path, name: str) -> None:
    model.eval()
    model.save_pretrained(str(dest), safe_serialization=True)
    (dest / "model.safetensors").chmod(0o644)
    _write_decoys(model, dest, name)


def _build_roberta(name: str, toks: _Tokenizers, dest: Path) -> str:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    vocab = _roberta_tokenizer(toks, dest)
    config = RobertaConfig(
        vocab_size=vocab,
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        intermediate_size=_FFN,
        max_position_embeddings=MAX_TOKENS + 2,
        type_vocab_size=1,
        pad_token_id=toks.roberta_vocab["<pad>"],
        bos_token_id=toks.roberta_vocab["<s>"],
        eos_token_id=toks.roberta_vocab["</s>"],
        **_labels_kwargs(name),
    )
    _seed(name)
    _save_model(RobertaForSequenceClassification(config), dest, name)
    return "RobertaForSequenceClassification"


def _build_bert(name: str, toks: _Tokenizers, dest: Path) -> str:
    from transformers import BertConfig, BertForSequenceClassification

    vocab = _bert_tokenizer(toks, dest)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=_HIDDEN,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        intermediate_size=_FFN,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=toks.wordpiece_vocab["[PAD]"],
        **_labels_kwargs(name),
    )
    _seed(name)
    _save_model(BertForSequenceClassification(config), dest, name)
    return "BertForSequenceClassification"


def _build_distilbert(name: str, toks: _Tokenizers, dest: Path) -> str:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    vocab = _bert_tokenizer(toks, dest, "DistilBertTokenizer")
    config = DistilBertConfig(
        vocab_size=vocab,
        dim=_HIDDEN,
        n_layers=_LAYERS,
        n_heads=_HEADS,
        hidden_dim=_FFN,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=toks.wordpiece_vocab["[PAD]"],
        **_labels_kwargs(name),
    )
    _seed(name)
    _save_model(DistilBertForSequenceClassification(config), dest, name)
    return "DistilBertForSequenceClassification"


def _bart_config(toks: _Tokenizers, vocab: int, **extra: Any) -> Any:
    from transformers import BartConfig

    return BartConfig(
        vocab_size=vocab,
        d_model=_HIDDEN,
        encoder_layers=_LAYERS,
        decoder_layers=_LAYERS,
        encoder_attention_heads=_HEADS,
        decoder_attention_heads=_HEADS,
        encoder_ffn_dim=_FFN,
        decoder_ffn_dim=_FFN,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=toks.roberta_vocab["<pad>"],
        bos_token_id=toks.roberta_vocab["<s>"],
        eos_token_id=toks.roberta_vocab["</s>"],
        decoder_start_token_id=toks.roberta_vocab["</s>"],
        **extra,
    )


def _build_bart_mnli(name: str, toks: _Tokenizers, dest: Path) -> str:
    from transformers import BartForSequenceClassification

    vocab = _roberta_tokenizer(toks, dest, "BartTokenizer")
    config = _bart_config(toks, vocab, **_labels_kwargs(name))
    _seed(name)
    _save_model(BartForSequenceClassification(config), dest, name)
    return "BartForSequenceClassification"


def _build_bart(name: str, toks: _Tokenizers, dest: Path) -> str:
    from transformers import BartForConditionalGeneration, GenerationConfig

    vocab = _roberta_tokenizer(toks, dest, "BartTokenizer")
    config = _bart_config(toks, vocab)
    _seed(name)
    model = BartForConditionalGeneration(config)
    # As the real facebook/bart-large, but greedy and short so tests stay fast.
    model.generation_config = GenerationConfig(
        bos_token_id=toks.roberta_vocab["<s>"],
        eos_token_id=toks.roberta_vocab["</s>"],
        pad_token_id=toks.roberta_vocab["<pad>"],
        decoder_start_token_id=toks.roberta_vocab["</s>"],
        forced_bos_token_id=toks.roberta_vocab["<s>"],
        forced_eos_token_id=toks.roberta_vocab["</s>"],
        no_repeat_ngram_size=3,
        num_beams=1,
        max_length=48,
    )
    _save_model(model, dest, name)
    return "BartForConditionalGeneration"


def _gpt2_builder(hidden: int, layers: int, heads: int) -> Callable[[str, _Tokenizers, Path], str]:
    def build(name: str, toks: _Tokenizers, dest: Path) -> str:
        from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

        vocab = _gpt2_tokenizer(toks, dest)
        eos = toks.gpt2_vocab[_GPT2_EOS]
        config = GPT2Config(
            vocab_size=vocab,
            n_positions=MAX_TOKENS,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=2 * hidden,
            bos_token_id=eos,
            eos_token_id=eos,
        )
        _seed(name)
        model = GPT2LMHeadModel(config)
        model.generation_config = GenerationConfig(
            bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, max_length=MAX_TOKENS
        )
        _save_model(model, dest, name)
        return "GPT2LMHeadModel"

    return build


def _build_minilm(name: str, toks: _Tokenizers, dest: Path) -> str:
    import sentence_transformers
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    vocab = _bert_tokenizer(toks, dest)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=EMBEDDING_DIM,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        intermediate_size=_FFN,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=toks.wordpiece_vocab["[PAD]"],
    )
    _seed(name)
    _save_model(BertModel(config), dest, name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    _write_json(dest / "modules.json", modules)
    _write_json(
        dest / "sentence_bert_config.json",
        {"max_seq_length": EMBEDDER_MAX_SEQ_LENGTH, "do_lower_case": False},
    )
    _write_json(
        dest / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "pytorch": torch.__version__,
            },
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    (dest / "1_Pooling").mkdir()
    _write_json(
        dest / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": EMBEDDING_DIM,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    return "BertModel"


_BUILDERS: dict[str, Callable[[str, _Tokenizers, Path], str]] = {
    "emotion-english-distilroberta": _build_roberta,
    "bert-multilingual-sentiment": _build_bert,
    "twitter-roberta-sentiment": _build_roberta,
    "distilbert-sst2": _build_distilbert,
    "bart-large-mnli": _build_bart_mnli,
    "bart-large": _build_bart,
    "dialogpt-medium": _gpt2_builder(hidden=48, layers=3, heads=4),
    "dialogpt-small": _gpt2_builder(hidden=_HIDDEN, layers=_LAYERS, heads=_HEADS),
    "all-minilm-l6-v2": _build_minilm,
}


# --------------------------------------------------------------------------- decoys


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", "utf-8")


def _junk(name: str, kind: str, size: int) -> bytes:
    rng = random.Random(f"{_SEED}:{name}:{kind}")
    return rng.randbytes(size)


_GITATTRIBUTES = """\
*.bin filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
"""


def _write_decoys(model: Any, dest: Path, name: str) -> None:
    """Write the files a real hub repository has beside the weights the fetcher wants."""
    import torch

    state = {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    torch.save(state, dest / "pytorch_model.bin")
    (dest / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + _junk(name, "h5", 4096))
    (dest / "flax_model.msgpack").write_bytes(_junk(name, "msgpack", 3072))
    (dest / "rust_model.ot").write_bytes(b"PK\x03\x04" + _junk(name, "ot", 3072))
    (dest / "onnx").mkdir(exist_ok=True)
    (dest / "onnx" / "model.onnx").write_bytes(_junk(name, "onnx", 2048))
    (dest / "README.md").write_text(
        f"---\nlicense: mit\ntags:\n- hubless-test\n---\n\n# {name} (tiny)\n\n"
        "A tiny random-weight stand-in built by hubless's tests. Not a useful model.\n",
        "utf-8",
    )
    (dest / ".gitattributes").write_text(_GITATTRIBUTES, "utf-8")


# --------------------------------------------------------------------------- entry points


def build_tiny_models(dest: Path) -> dict[str, TinyModel]:
    """Build all nine tiny models under ``dest/<name>/`` and write ``dest/tiny-models.json``.

    Returns catalog name -> :class:`TinyModel`, in catalog order.
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    toks = _train_all()
    out: dict[str, TinyModel] = {}
    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        built = {
            entry.name: _BUILDERS[entry.name](entry.name, toks, _mkdir(dest / entry.name))
            for entry in load_catalog().models
        }
    finally:
        if not quiet:
            enable_progress_bars()
    for entry in load_catalog().models:
        model_dir = dest / entry.name
        architecture = built[entry.name]
        out[entry.name] = TinyModel(
            name=entry.name,
            repo_id=entry.repo_id,
            task=entry.task,
            path=model_dir,
            labels=LABELS.get(entry.name, ()),
            architecture=architecture,
        )
    _write_json(dest / INDEX_NAME, [model.to_json() for model in out.values()])
    return out


def load_tiny_models(root: Path) -> dict[str, TinyModel]:
    """Read a build made by :func:`build_tiny_models` back from its index."""
    root = Path(root)
    data = json.loads((root / INDEX_NAME).read_text("utf-8"))
    return {item["name"]: TinyModel.from_json(item, root) for item in data}


def cache_key() -> str:
    """Hash of this builder's source, the catalog and the versions of the libraries it uses."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    catalog = importlib.resources.files("hubless_volume") / "catalog.toml"
    digest.update(catalog.read_bytes())
    for dist in ("torch", "transformers", "tokenizers", "sentence-transformers", "safetensors"):
        digest.update(f"{dist}={importlib.metadata.version(dist)}\n".encode())
    return digest.hexdigest()[:16]


def cached_tiny_models(cache_root: Path) -> dict[str, TinyModel]:
    """The tiny models from ``cache_root/<cache_key()>``, built there first if absent.

    Safe with several processes at once: one builds (into a temp dir, then renamed), the others
    wait on a file lock and reuse the result.
    """
    cache_root = Path(cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    final = cache_root / cache_key()
    if (final / INDEX_NAME).is_file():
        return load_tiny_models(final)
    with FileLock(str(final) + ".lock"):
        if (final / INDEX_NAME).is_file():
            return load_tiny_models(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_root))
        try:
            build_tiny_models(tmp)
            tmp.chmod(0o755)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        _prune(cache_root, keep=final.name)
    return load_tiny_models(final)


def _prune(cache_root: Path, keep: str, min_age: float = 3600.0) -> None:
    """Remove builds for other keys (older sources or libraries) untouched for ``min_age`` s."""
    now = time.time()
    for entry in cache_root.iterdir():
        key = entry.name.lstrip(".").split(".")[0]
        if key == keep or now - entry.stat().st_mtime < min_age:
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
