"""Which part of the data each process reads, and how per-process batches become global jax.Arrays."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def process_info(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(index, count), defaulting to jax.process_index() / jax.process_count()."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} must lie in [0, process_count={count})")
    return index, count


def local_batch_size(global_batch: int, process_count: int, key: str = "batch_size") -> int:
    if global_batch % process_count:
        raise ValueError(f"config.data.{key}={global_batch} is not divisible by the process count {process_count}: "
                         "every process loads an equal share of the global batch")
    return global_batch // process_count


def split_files(files: list[str], process_index: int, process_count: int, key: str) -> list[str]:
    """Every process_count-th file, starting at process_index: disjoint, and together all files."""
    if len(files) < process_count:
        raise ValueError(f"config.data.{key} names {len(files)} shards, fewer than the {process_count} processes")
    return files[process_index::process_count]


class ProcessSlice:
    """The records process_index, process_index + process_count, ... of a source."""

    def __init__(self, source, process_index: int, process_count: int):
        self.source = source
        self.path, self.skipped_shards = source.path, source.skipped_shards
        self.global_len = len(source)
        self._start, self._step = process_index, process_count

    def __len__(self) -> int:
        return len(range(self._start, self.global_len, self._step))

    def __getitem__(self, index: int):
        return self.source[self._start + index * self._step]

    def describe(self, index: int) -> str:
        return self.source.describe(self._start + index * self._step)


def to_global_batch(local_batch: dict[str, Any], mesh: Mesh, batch_spec: PartitionSpec) -> dict[str, Any]:
    """Global arrays from every process's local batch, the leading (batch) axis laid out by batch_spec.

    Scalars (the per-process counters `data/skipped`, `data/skipped_shards`) are returned unchanged:
    they are metrics for the loop to log, not inputs of the step.
    """
    sharding = NamedSharding(mesh, batch_spec)
    return {key: jax.make_array_from_process_local_data(sharding, value) if np.ndim(value) else value
            for key, value in local_batch.items()}
