"""What every source yields (a Record), and compact storage for the per-example strings of big indexes.

Sources are pickled into each grain worker process, so millions of Python strings would be
copied per worker; a StringColumn is one bytes buffer plus offsets instead.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

_INT32_MAX = 2**31 - 1


@dataclasses.dataclass
class Record:
    """One raw example: encoded image bytes or a uint8 array, its captions, an integer image id."""

    image: bytes | np.ndarray
    captions: list[str]
    image_id: int


class StringColumn:
    """An immutable sequence of str stored as UTF-8 in one buffer."""

    def __init__(self, values: Sequence[str]):
        encoded = [v.encode("utf-8") for v in values]
        self._buffer = b"".join(encoded)
        self._ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        start = int(self._ends[index - 1]) if index > 0 else 0
        return self._buffer[start:int(self._ends[index])].decode("utf-8")


def numeric_id(*candidates, fallback: int) -> int:
    """The trailing digits of the first candidate that has them ("coco_391895", "COCO_val2014_000000184613",
    a tar key "000000123"), else `fallback`; ids beyond int32 also fall back. Image ids only tell
    the ITM sampler which pairs share an image, so a rare clash costs little."""
    for candidate in candidates:
        match = re.search(r"(\d+)$", str(candidate))
        if match and int(match.group(1)) <= _INT32_MAX:
            return int(match.group(1))
    return fallback


def namespaced_id(image_id: int, source: int, num_sources: int) -> int:
    """An image id unique across the `num_sources` sources a path joins with "::" (COCO's image 391895 and
    Visual Genome's image 391895 are different images; with use_image_ids, equal ids make ITC positives).
    image_id * num_sources + source, wrapped into int32 (the batch dtype): one source keeps its ids, and
    ids stay distinct while image_id < 2**31 / num_sources (COCO, VG and img2dataset keys are far below)."""
    return (image_id * num_sources + source) % (_INT32_MAX + 1)
