"""Tiny files laid out exactly as their publishers ship them, for the tests of what users feed in:
facebook/opt-*'s tokenizer (vocab.json + merges.txt + tokenizer_config.json + special_tokens_map.json, no
tokenizer.json)."""
import json
import os

from tokenizers import Tokenizer

from xformer_jax.data import bpe


def opt_tokenizer(directory, texts, vocab_size: int = 400) -> str:
    """A byte-level BPE trained on `texts` (OPT's special tokens <s> 0, <pad> 1, </s> 2, <unk> 3), written as
    the facebook/opt-* repositories ship theirs: GPT2Tokenizer files, bos = eos = unk = </s>, pad <pad>."""
    os.makedirs(directory, exist_ok=True)
    trained = bpe.train_bpe(texts, os.path.join(directory, "bpe.json"), vocab_size)
    Tokenizer.from_file(trained).model.save(str(directory))  # vocab.json + merges.txt
    os.remove(trained)
    settings = {"add_bos_token": True, "add_prefix_space": False, "bos_token": "</s>", "eos_token": "</s>",
                "errors": "replace", "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>",
                "tokenizer_class": "GPT2Tokenizer", "unk_token": "</s>"}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(settings, f, indent=2)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "</s>"}, f, indent=2)
    return str(directory)
