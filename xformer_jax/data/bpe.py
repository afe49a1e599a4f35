"""A byte-level BPE tokenizer trained locally, laid out like OPT's (<s>=0, <pad>=1, </s>=2, <unk>=3).

The demo's small LLM has no pretrained tokenizer offline; this trains one on the synthetic captions
and answers with the `tokenizers` library and writes a tokenizer.json that `LLMTokenizer` reads.
"""
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from xformer_jax import storage

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")


def train_bpe(texts: Iterable[str], path: str, vocab_size: int = 512) -> str:
    """Trains on `texts` (each gets its trailing newline, the eos of generation) and writes `path`."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (256 bytes + specials)")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator((t + "\n" for t in texts), trainer=trainer)
    storage.write(path, tokenizer.to_str(pretty=True))
    return path
