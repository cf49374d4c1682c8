"""The stand-ins' tokenizers, trained here on a small built-in English corpus.

Three vocabularies, each shared by one family of models: byte-level BPE with RoBERTa specials
(RoBERTa, BART), byte-level BPE with GPT-2's single end-of-text token (DialoGPT) and uncased
WordPiece (BERT, DistilBERT, MiniLM). :func:`train_all` trains them once per build; the
``*_tokenizer`` functions save a ``transformers`` tokenizer of the family into a model directory
and return its vocabulary size. Training is deterministic, so rebuilds give the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_TOKENS = 128
"""``model_max_length`` of every tiny tokenizer (and the position table size)."""

_BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
_WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GPT2_EOS = "<|endoftext|>"
"""GPT-2's end-of-text token, also its BOS and pad."""

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
class Tokenizers:
    """Trained vocabularies shared by the models of one family."""

    roberta_vocab: dict[str, int]
    roberta_merges: list[tuple[str, str]]
    gpt2_vocab: dict[str, int]
    gpt2_merges: list[tuple[str, str]]
    wordpiece_vocab: dict[str, int]


def train_all() -> Tokenizers:
    roberta_vocab, roberta_merges = _train_bpe(_BPE_SPECIALS)
    roberta_vocab["<mask>"] = len(roberta_vocab)
    gpt2_vocab, gpt2_merges = _train_bpe([])
    gpt2_vocab[GPT2_EOS] = len(gpt2_vocab)
    return Tokenizers(roberta_vocab, roberta_merges, gpt2_vocab, gpt2_merges, _train_wordpiece())


def _save_tokenizer(tokenizer: Any, dest: Path) -> None:
    tokenizer.save_pretrained(str(dest))
    # transformers writes what it needs; drop its optional extras so the set of files is fixed.
    for extra in ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
        (dest / extra).unlink(missing_ok=True)


def roberta_tokenizer(toks: Tokenizers, dest: Path, cls_name: str = "RobertaTokenizer") -> int:
    import transformers

    tokenizer = getattr(transformers, cls_name)(
        vocab=dict(toks.roberta_vocab),
        merges=list(toks.roberta_merges),
        model_max_length=MAX_TOKENS,
    )
    _save_tokenizer(tokenizer, dest)
    _write_bpe_files(dest, toks.roberta_vocab, toks.roberta_merges)
    return len(toks.roberta_vocab)


def gpt2_tokenizer(toks: Tokenizers, dest: Path) -> int:
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer(
        vocab=dict(toks.gpt2_vocab), merges=list(toks.gpt2_merges), model_max_length=MAX_TOKENS
    )
    _save_tokenizer(tokenizer, dest)
    _write_bpe_files(dest, toks.gpt2_vocab, toks.gpt2_merges)
    return len(toks.gpt2_vocab)


def bert_tokenizer(toks: Tokenizers, dest: Path, cls_name: str = "BertTokenizer") -> int:
    import transformers

    tokenizer = getattr(transformers, cls_name)(
        vocab=dict(toks.wordpiece_vocab), do_lower_case=True, model_max_length=MAX_TOKENS
    )
    _save_tokenizer(tokenizer, dest)
    _write_wordpiece_files(dest, toks.wordpiece_vocab)
    return len(toks.wordpiece_vocab)
