"""The stand-in builders: one random-weight ``transformers`` model per catalog entry.

Each builder writes a model of the real one's architecture class with tiny dimensions (hidden 32,
2 layers, 4 heads, FFN 64; ``dialogpt-medium`` is bigger than ``dialogpt-small``: hidden 48,
3 layers), its tokenizer (:mod:`.tokenizers`), seeded weights in ``model.safetensors`` and the
decoy files of a hub repository (:data:`~.catalog.DECOY_FILES`), and returns the architecture.
:data:`BUILDERS` maps catalog names to builders.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubless_fakehub.tiny.catalog import LABELS
from hubless_fakehub.tiny.tokenizers import (
    GPT2_EOS,
    MAX_TOKENS,
    Tokenizers,
    bert_tokenizer,
    gpt2_tokenizer,
    roberta_tokenizer,
)

EMBEDDER_MAX_SEQ_LENGTH = 64
"""``max_seq_length`` of the tiny sentence-transformers embedder."""
EMBEDDING_DIM = 32
"""Dimension of the tiny embedder's vectors."""

_SEED = 1234
_HIDDEN, _LAYERS, _HEADS, _FFN = 32, 2, 4, 64


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


def _build_roberta(name: str, toks: Tokenizers, dest: Path) -> str:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    vocab = roberta_tokenizer(toks, dest)
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


def _build_bert(name: str, toks: Tokenizers, dest: Path) -> str:
    from transformers import BertConfig, BertForSequenceClassification

    vocab = bert_tokenizer(toks, dest)
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


def _build_distilbert(name: str, toks: Tokenizers, dest: Path) -> str:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    vocab = bert_tokenizer(toks, dest, "DistilBertTokenizer")
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


def _bart_config(toks: Tokenizers, vocab: int, **extra: Any) -> Any:
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


def _build_bart_mnli(name: str, toks: Tokenizers, dest: Path) -> str:
    from transformers import BartForSequenceClassification

    vocab = roberta_tokenizer(toks, dest, "BartTokenizer")
    config = _bart_config(toks, vocab, **_labels_kwargs(name))
    _seed(name)
    _save_model(BartForSequenceClassification(config), dest, name)
    return "BartForSequenceClassification"


def _build_bart(name: str, toks: Tokenizers, dest: Path) -> str:
    from transformers import BartForConditionalGeneration, GenerationConfig

    vocab = roberta_tokenizer(toks, dest, "BartTokenizer")
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


def _gpt2_builder(hidden: int, layers: int, heads: int) -> Callable[[str, Tokenizers, Path], str]:
    def build(name: str, toks: Tokenizers, dest: Path) -> str:
        from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

        vocab = gpt2_tokenizer(toks, dest)
        eos = toks.gpt2_vocab[GPT2_EOS]
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


def _build_minilm(name: str, toks: Tokenizers, dest: Path) -> str:
    import sentence_transformers
    import torch
    import transformers
    from transformers import BertConfig, BertModel

    vocab = bert_tokenizer(toks, dest)
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
    write_json(dest / "modules.json", modules)
    write_json(
        dest / "sentence_bert_config.json",
        {"max_seq_length": EMBEDDER_MAX_SEQ_LENGTH, "do_lower_case": False},
    )
    write_json(
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
    write_json(
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


BUILDERS: dict[str, Callable[[str, Tokenizers, Path], str]] = {
    "emotion-english-distilroberta": _build_roberta,
    "bert-multilingual-sentiment": _build_bert,
    "twitter-roberta-sentiment": _build_roberta,
    "distilbert-sst2": _build_distilbert,
    "bart-large-mnli": _build_bart_mnli,
    "bart-large-cnn": _build_bart,  # bart-large's architecture, its own seeded weights
    "bart-large": _build_bart,
    "dialogpt-medium": _gpt2_builder(hidden=48, layers=3, heads=4),
    "dialogpt-small": _gpt2_builder(hidden=_HIDDEN, layers=_LAYERS, heads=_HEADS),
    "all-minilm-l6-v2": _build_minilm,
}


def new_dir(path: Path) -> Path:
    """Create the directory ``path`` (it must not exist yet) and return it."""
    path.mkdir()
    return path


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (key order kept), ending in a newline."""
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
