"""Random access into webdataset tar shards (img2dataset's layout: KEY.jpg + KEY.txt / KEY.json).

The shards' headers are read once at start-up into an index of byte ranges, so grain can shuffle
globally and resume exactly; each example is then one ranged read per member (shards may lie in a
bucket: indexing reads each shard's headers once per start-up). A shard that cannot
be opened or ends early is logged and counted (`skipped_shards`); what it held before the damage
is kept.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile

import numpy as np

from xformer_jax import storage
from xformer_jax.data.records import Record, StringColumn, namespaced_id, numeric_id

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
_MEMBERS = ("image", "txt", "json")  # member kinds kept per key; offset -1 = absent


def expand_pattern(pattern: str) -> list[str]:
    """Shard paths from a pattern: brace ranges ({00000..00099}, zero padding kept), brace lists
    ({a,b}), glob wildcards, and several patterns joined by "::"."""
    return [path for part in expand_pattern_parts(pattern) for path in part]


def expand_pattern_parts(pattern: str) -> list[list[str]]:
    """The shard paths of each "::"-joined part of a pattern (one part per source)."""
    return [[path for expanded in _expand_braces(part)
             for path in (storage.glob(expanded) if re.search(r"[*?[]", expanded) else [expanded])]
            for part in pattern.split("::")]


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    if rng := re.fullmatch(r"(\d+)\.\.(\d+)", body):
        width = len(rng[1])
        items = [str(i).zfill(width) for i in range(int(rng[1]), int(rng[2]) + 1)]
    else:
        items = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    return [out for item in items for out in _expand_braces(head + item + tail)]


class TarShardSource:
    """One record per key (e.g. 000000123) in the given shards, in shard order. The image id is the key's
    number, namespaced by the "::" part of `pattern` the shard comes from (CC3M and CC12M keys overlap)."""

    def __init__(self, shards: list[str], pattern: str):
        self.path = pattern
        self.shards = list(shards)
        self.skipped_shards = 0
        parts = expand_pattern_parts(pattern)
        source_of = {path: number for number, part in enumerate(parts) for path in part}
        self._shard_source = np.asarray([source_of.get(shard, 0) for shard in self.shards], np.int32)
        self._num_sources = len(parts)
        keys, ranges, shard_ids = [], [], []
        for shard_id, shard in enumerate(self.shards):
            entries = self._index_shard(shard)
            keys += list(entries)
            ranges += list(entries.values())
            shard_ids += [shard_id] * len(entries)
        self._keys = StringColumn(keys)
        self._ranges = np.asarray(ranges, np.int64).reshape(-1, 2 * len(_MEMBERS))  # (offset, size) per kind
        self._shard_ids = np.asarray(shard_ids, np.int32)

    def _index_shard(self, shard: str) -> dict[str, list[int]]:
        entries: dict[str, list[int]] = {}
        try:
            file_size = storage.getsize(shard)
            with storage.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    if info.offset_data + info.size > file_size:
                        raise tarfile.ReadError(f"member {info.name} runs past the end of the file")
                    folder, base = os.path.split(info.name)
                    key, _, ext = base.partition(".")
                    ext = ext.lower()
                    kind = "image" if ext in IMAGE_EXTENSIONS else ext
                    if kind in _MEMBERS:
                        slot = 2 * _MEMBERS.index(kind)
                        entry = entries.setdefault(os.path.join(folder, key), [-1, 0] * len(_MEMBERS))
                        entry[slot:slot + 2] = info.offset_data, info.size
        except (OSError, tarfile.TarError) as error:
            self.skipped_shards += 1
            log.warning("unreadable shard %s (%s): kept the %d examples before the damage", shard, error, len(entries))
        return entries

    def __len__(self) -> int:
        return len(self._shard_ids)

    def describe(self, index: int) -> str:
        return f"{self.shards[self._shard_ids[index]]}:{self._keys[index]}"

    def __getitem__(self, index: int) -> Record:
        shard = self.shards[self._shard_ids[index]]
        (image_at, image_size), (txt_at, txt_size), (json_at, json_size) = self._ranges[index].reshape(-1, 2)
        if image_at < 0:
            raise ValueError("no image member")
        image = storage.read_range(shard, image_at, image_size)
        if txt_at >= 0:
            captions = [storage.read_range(shard, txt_at, txt_size).decode("utf-8")]
        elif json_at >= 0:
            caption = json.loads(storage.read_range(shard, json_at, json_size)).get("caption") or ""
            captions = [caption] if isinstance(caption, str) else list(caption)
        else:
            captions = []
        image_id = numeric_id(self._keys[index], fallback=index)
        source = int(self._shard_source[self._shard_ids[index]])
        return Record(image=image, captions=captions, image_id=namespaced_id(image_id, source, self._num_sources))

