"""Record -> model features (pixels for both towers, tokens, image id); bad input is logged and skipped.

Runs inside grain (worker processes too), so a bad example becomes None plus one WARNING line
naming its file; the pipeline counts the Nones into `data/skipped`.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from xformer_jax.data.tokenizers import IGNORE_INDEX
from xformer_jax.data.transforms import ImageTransform, clean_caption, decode_image

log = logging.getLogger(__name__)
SKIPPED = "data/skipped"  # batch key: examples skipped (train: cumulative per process; eval: in this batch)

Tokenizer = Callable[[Sequence[str]], dict[str, np.ndarray]]


class Examples:
    """Loads example `index` of `source`: captions cleaned as BLIP (empty -> bad), one picked at
    random for training (the first for evaluation), prompt prepended, image decoded and transformed."""

    def __init__(self, source, image_transform: ImageTransform, tokenizer: Tokenizer,
                 max_words: int = 50, prompt: str = ""):
        self.source = source
        self.image_transform = image_transform
        self.tokenizer = tokenizer
        self.max_words = max_words
        self.prompt = prompt

    def load(self, index: int, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        """Raises on unreadable or unusable input."""
        record = self.source[index]
        captions = [c for c in (clean_caption(c, self.max_words) for c in record.captions) if c]
        if not captions:
            raise ValueError(f"empty caption after cleaning: {record.captions!r}")
        caption = captions[int(rng.integers(len(captions)))] if self.image_transform.train else captions[0]
        features = self.image_transform(decode_image(record.image), rng)
        tokens = self.tokenizer([self.prompt + caption])
        return {**features, **{k: v[0] for k, v in tokens.items()}, "image_id": np.int32(record.image_id)}

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
        """grain random_map: the features, or None for a bad example."""
        try:
            return self.load(index, rng)
        except Exception as error:  # PIL, IO and JSON raise many types; every one means "skip this example"
            log.warning("skipping %s: %s: %s", self.source.describe(index), type(error).__name__, error)
            return None

    def eval_item(self, index: int) -> dict[str, np.ndarray]:
        """grain map for evaluation: never drops (hosts must see equal batch counts); padding
        (index >= len) and bad examples get mask 0, bad ones also `data/skipped` 1."""
        features = None
        if index < len(self.source):
            features = self(index, None)
            skipped = int(features is None)
        else:
            skipped = 0
        if features is None:
            return {**self.blank(), "mask": np.int32(0), SKIPPED: skipped}
        return {**features, "mask": np.int32(1), SKIPPED: 0}

    def blank(self) -> dict[str, np.ndarray]:
        tokens = {k: np.full_like(v[0], IGNORE_INDEX if k == "labels" else 0) for k, v in self.tokenizer([""]).items()}
        return {**self.image_transform.blank(), **tokens, "image_id": np.int32(-1)}

    def probe(self, tries: int = 32) -> None:
        """Fails at start-up, naming the source, when none of `tries` spread-out examples can be read."""
        if not len(self.source):
            raise ValueError(f"config.data: {self.source.path} holds no examples")
        first_error = None
        for index in np.unique(np.linspace(0, len(self.source) - 1, min(tries, len(self.source))).astype(int)):
            try:
                self.load(int(index), np.random.default_rng(0))
                return
            except Exception as error:  # same as __call__: any failure is a bad example
                first_error = first_error or f"{self.source.describe(int(index))}: {type(error).__name__}: {error}"
        raise ValueError(f"config.data: nothing readable in {self.source.path}; every example tried failed, "
                         f"the first with {first_error}")
