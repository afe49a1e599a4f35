"""The public entry points: grain pipelines for training and evaluation, built from config.data.

Training: indices -> shuffle (reshuffled every epoch) -> load + augment + tokenise (seeded per
example) -> drop bad examples, counting them -> batch -> optional worker processes. The order is
a function of (seed, process_index, process_count, num_workers); the returned iterator's
get_state/set_state (JSON, as grain.checkpoint and orbax store it) resume it exactly.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import grain
import ml_collections
import numpy as np

from xformer_jax.data import config as data_config
from xformer_jax.data import sharding
from xformer_jax.data.examples import SKIPPED, Examples, Tokenizer
from xformer_jax.data.sources import open_source
from xformer_jax.data.tokenizers import LLMTokenizer, QFormerTokenizer
from xformer_jax.data.transforms import ImageTransform

SKIPPED_SHARDS = "data/skipped_shards"  # batch key: shards of this process that could not be read
# Threads per process (or worker) running the per-example map (PIL releases the GIL). The read-ahead
# buffers stay small: grain's default (500 examples) would hold ~0.6 GB of 224px float32 views.
_READ_THREADS = 4


def make_tokenizer(data: ml_collections.ConfigDict) -> Tokenizer:
    """Stage 2 (data.llm_tokenizer_path set): the LLM's tokens and labels; else the Q-Former's."""
    if data.llm_tokenizer_path:
        return LLMTokenizer(data.llm_tokenizer_path, data.max_txt_len, data.prompt,
                            data.llm_bos_token, data.llm_pad_token)
    return QFormerTokenizer(data.vocab_path or None, data.max_len)


def make_train_iterator(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                        process_count: int | None = None, tokenizer: Tokenizer | None = None) -> grain.DatasetIterator:
    """Endless iterator of this process's training batches (dicts of numpy arrays, batch first):
    pixel_values, mae_pixel_values (float32 NCHW), input_ids, attention_mask (+ labels in stage 2),
    image_id (int32), and the int64 scalars data/skipped (cumulative) and data/skipped_shards."""
    data = config.data
    data_config.validate(data)
    process_index, process_count = sharding.process_info(process_index, process_count)
    batch_size = sharding.local_batch_size(data.batch_size, process_count)
    source = open_source(data, True, process_index, process_count)
    examples = _examples(data, source, tokenizer, train=True)
    examples.probe()
    ds = grain.MapDataset.range(len(source)).seed(data.seed).shuffle().repeat().random_map(examples)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=4 * _READ_THREADS),
                            allow_nones=True)
    ds = _DropSkipped(ds, limit=len(source), name=source.path)
    ds = _with_workers(ds.batch(batch_size, drop_remainder=True, batch_fn=collate), data)
    return _CountSkipped(iter(ds), source.skipped_shards, len(source))


def make_eval_dataset(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                      process_count: int | None = None, tokenizer: Tokenizer | None = None) -> grain.IterDataset:
    """One pass over this process's part of the evaluation set, one record per image, resized
    without augmentation. Every process yields the same number of batches (hosts step together):
    `mask` is 0 for padding and for unreadable examples, which also add to the batch's data/skipped."""
    data = config.data
    data_config.validate(data)
    process_index, process_count = sharding.process_info(process_index, process_count)
    batch_size = sharding.local_batch_size(data.eval_batch_size or data.batch_size, process_count,
                                           "eval_batch_size" if data.eval_batch_size else "batch_size")
    source = open_source(data, False, process_index, process_count)
    examples = _examples(data, source, tokenizer, train=False)
    examples.probe()
    num_batches = math.ceil(math.ceil(source.global_len / process_count) / batch_size)
    ds = grain.MapDataset.range(num_batches * batch_size).map(examples.eval_item)
    # Batched before to_iter_dataset, so every process and worker count gives the same batches;
    # the read threads then build whole batches.
    ds = ds.batch(batch_size, batch_fn=collate).to_iter_dataset(
        grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_THREADS))
    return _with_workers(ds, data)


def collate(elements: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stacks every field along a new batch axis; the skip counts are summed instead."""
    return {key: np.int64(sum(e[key] for e in elements)) if key == SKIPPED else np.stack([e[key] for e in elements])
            for key in elements[0]}


def image_transform(data: ml_collections.ConfigDict, train: bool) -> ImageTransform:
    """config.data's preprocessing: training crops (and flips); evaluation and prediction resize the whole image."""
    return ImageTransform(
        image_size=data.image_size, mae_image_size=data.mae_image_size or data.image_size,
        clip_mean=tuple(data.clip_mean), clip_std=tuple(data.clip_std),
        mae_mean=tuple(data.mae_mean), mae_std=tuple(data.mae_std),
        train=train, scale=data_config.crop_scale(data), flip=data_config.flip_enabled(data))


def _examples(data, source, tokenizer, train: bool) -> Examples:
    return Examples(source, image_transform(data, train), tokenizer or make_tokenizer(data), data.max_words,
                    data.prompt)


def _with_workers(ds: grain.IterDataset, data: ml_collections.ConfigDict) -> grain.IterDataset:
    if not data.num_workers:
        return ds
    from absl import flags  # grain's workers read absl flags; a library caller may never have parsed them
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                       per_worker_buffer_size=data.worker_buffer_size))


class _DropSkipped(grain.IterDataset):
    """Drops the Nones (bad examples) and tags each kept example with how many it replaced."""

    def __init__(self, parent: grain.IterDataset, limit: int, name: str):
        super().__init__(parent)
        self._limit, self._name = limit, name

    def __iter__(self) -> grain.DatasetIterator:
        return _DropSkippedIterator(self._parent.__iter__(), self._limit, self._name)


class _DropSkippedIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, limit: int, name: str):
        super().__init__(parent)
        self._limit, self._name = limit, name

    def __next__(self) -> dict[str, Any]:
        skipped = 0
        while (element := next(self._parent)) is None:
            skipped += 1
            if skipped >= self._limit:  # a whole epoch's worth in a row: the data has become unreadable
                raise RuntimeError(f"config.data: {skipped} examples in a row of {self._name} were unreadable "
                                   "(see the WARNING lines)")
        element[SKIPPED] = skipped
        return element

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class _CountSkipped(grain.DatasetIterator):
    """Main-process end of the pipeline: turns per-batch skip counts (from whichever worker made
    the batch) into this process's running total, which is part of the checkpointed state; knows how
    many records this process's part of the source holds (`local_examples`), for the run's epochs."""

    def __init__(self, parent: grain.DatasetIterator, skipped_shards: int, local_examples: int):
        super().__init__(parent)
        self._skipped = 0
        self._skipped_shards = np.int64(skipped_shards)
        self.local_examples = local_examples  # the records this process's part of the source holds

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        self._skipped += int(batch[SKIPPED])
        return {**batch, SKIPPED: np.int64(self._skipped), SKIPPED_SHARDS: self._skipped_shards}

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": self._parent.get_state(), "skipped": self._skipped}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["pipeline"])
        self._skipped = int(state["skipped"])
