"""Random-access sources of Records, chosen by config.data.kind, already restricted to this process.

Every source has len(), [index] -> Record (may raise on bad data: the caller skips and counts),
describe(index) naming the file for log lines, `path` for errors, and `skipped_shards`.
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from xformer_jax import storage
from xformer_jax.data import sharding, synthetic
from xformer_jax.data.config import image_roots
from xformer_jax.data.records import Record, StringColumn, namespaced_id, numeric_id
from xformer_jax.data.tar_shards import TarShardSource, expand_pattern

_CAPTION_SEPARATOR = "\x1f"  # joins an image's captions inside one StringColumn entry


class JsonCaptionSource:
    """LAVIS caption files ([{"image", "caption": str | [str], "image_id"?}, ...]) or COCO caption
    files ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}).

    Image paths are relative to image_root (default: the annotation file's folder) unless absolute;
    image_root may name one folder per file, "::"-joined (`data.config.image_roots`).
    With per_image=True, entries of the same image merge into one record (evaluation). Image ids are
    namespaced per file (`namespaced_id`), so several files never share an id.
    """

    def __init__(self, files: list[str], image_root: str = "", per_image: bool = False, root_key: str = "image_root"):
        self.path = "::".join(files)
        self.skipped_shards = 0
        images, captions, raw_ids = [], [], []
        for number, (file, root) in enumerate(zip(files, image_roots(image_root, len(files), root_key))):
            root = root or storage.dirname(storage.absolute(file))
            for image, caption, raw_id in _read_annotations(file):
                images.append(storage.join(root, image))
                captions.append([caption] if isinstance(caption, str) else list(caption))
                raw_ids.append((number, raw_id))
        if per_image:
            images, captions, raw_ids = _merge_by_image(images, captions, raw_ids)
        first_index = {}
        ids = [namespaced_id(numeric_id(raw, os.path.splitext(os.path.basename(image))[0],
                                        fallback=first_index.setdefault(image, len(first_index))), number, len(files))
               for image, (number, raw) in zip(images, raw_ids)]
        self._images = StringColumn(images)
        self._captions = StringColumn([_CAPTION_SEPARATOR.join(c) for c in captions])
        self._ids = np.asarray(ids, np.int32)

    def __len__(self) -> int:
        return len(self._ids)

    def describe(self, index: int) -> str:
        return self._images[index]

    def __getitem__(self, index: int) -> Record:
        image = storage.read_bytes(self._images[index])
        captions = self._captions[index]
        return Record(image, captions.split(_CAPTION_SEPARATOR) if captions else [], int(self._ids[index]))


def _read_annotations(file: str):
    """(image path, caption or captions, raw image id) triples of one annotation file."""
    try:
        data = storage.read_json(file)
    except (OSError, ValueError) as error:
        raise ValueError(f"config.data.path: cannot read {file} as JSON ({error})") from error
    if isinstance(data, dict) and {"images", "annotations"} <= data.keys():
        names = {im["id"]: im["file_name"] for im in data["images"]}
        return [(names[a["image_id"]], a["caption"], a["image_id"]) for a in data["annotations"]]
    if isinstance(data, list) and all(isinstance(e, dict) and "image" in e for e in data):
        return [(e["image"], e.get("caption", []), e.get("image_id")) for e in data]
    raise ValueError(f"config.data.path: {file} is neither a LAVIS caption list (entries with 'image' and "
                     "'caption') nor a COCO captions file ('images' and 'annotations')")


def _merge_by_image(images, captions, raw_ids):
    merged: dict[str, tuple[list, object]] = {}
    for image, caps, raw in zip(images, captions, raw_ids):
        merged.setdefault(image, ([], raw))[0].extend(caps)
    return list(merged), [c for c, _ in merged.values()], [r for _, r in merged.values()]


class TfdsSource:
    """A prepared TFDS dataset read through tfds.data_source (ArrayRecord; no TensorFlow needed)."""

    def __init__(self, name: str, split: str, data_dir: str, image_key: str, caption_key: str, image_id_key: str):
        self.path = f"{name}[{split}]" + (f" in {data_dir}" if data_dir else "")
        self.skipped_shards = 0
        self._args = (name, split, data_dir or None)
        self._keys = (image_key, caption_key, image_id_key)
        self._source = None
        try:
            source = self._open()
        except Exception as error:  # tfds raises several types for a missing dataset, version or split
            raise ValueError(f"config.data.path: tfds dataset {self.path} cannot be opened ({error})") from error
        features = source.dataset_info.features.keys()
        for key_name, key in (("image_key", image_key), ("caption_key", caption_key)):
            if key.split("/")[0] not in features:
                raise ValueError(f"config.data.{key_name}={key!r} is not a feature of {self.path} ({sorted(features)})")
        self._has_id = image_id_key.split("/")[0] in features
        self._len = len(source)

    def _open(self):
        if self._source is None:
            import tensorflow_datasets as tfds  # only this kind pays its import
            name, split, data_dir = self._args
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        return self._source

    def __getstate__(self):
        return {**self.__dict__, "_source": None}  # each worker process reopens the files

    def __len__(self) -> int:
        return self._len

    def describe(self, index: int) -> str:
        return f"tfds {self.path} record {index}"

    def __getitem__(self, index: int) -> Record:
        features = self._open()[index]
        image_key, caption_key, id_key = self._keys
        captions = _nested(features, caption_key)
        captions = [captions] if isinstance(captions, (str, bytes)) else list(np.asarray(captions).reshape(-1))
        captions = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions]
        image_id = int(_nested(features, id_key)) if self._has_id else index
        return Record(_nested(features, image_key), captions, image_id)


def _nested(features: dict, key: str):
    for part in key.split("/"):
        features = features[part]
    return features


def open_source(data: ml_collections.ConfigDict, train: bool, process_index: int, process_count: int):
    """This process's part of the training (train=True) or evaluation source named by config.data.

    Training webdataset shards are split between processes file by file, so each host indexes only
    its own shards; everything else is split record by record (every process_count-th record).
    """
    if data.kind == "webdataset":
        pattern = data.path if train else _eval_path(data)
        shards = expand_pattern(pattern)
        if train:
            return TarShardSource(sharding.split_files(shards, process_index, process_count, "path"), pattern)
        return sharding.ProcessSlice(TarShardSource(shards, pattern), process_index, process_count)
    if data.kind == "tfds":
        split = data.split if train else data.eval_split
        source = TfdsSource(data.path, split, data.tfds_data_dir, data.image_key, data.caption_key, data.image_id_key)
    elif data.kind == "synthetic":
        if not train and data.eval_split not in ("val", "test"):
            raise ValueError(f"config.data.eval_split={data.eval_split!r}: synthetic data has 'val' and 'test'")
        paths = synthetic.write_dataset(data.path, **data.synthetic.to_dict())
        source = JsonCaptionSource([paths["caption_train" if train else f"caption_{data.eval_split}"]],
                                   paths["root"], per_image=not train)
    else:
        files = (data.path if train else _eval_path(data)).split("::")
        root_key = "eval_image_root" if not train and data.eval_image_root else "image_root"
        source = JsonCaptionSource(files, data[root_key], per_image=not train, root_key=root_key)
    return sharding.ProcessSlice(source, process_index, process_count)


def _eval_path(data: ml_collections.ConfigDict) -> str:
    if not data.eval_path:
        raise ValueError(f"config.data.eval_path is empty: data.kind={data.kind!r} evaluates on that file / pattern")
    for path in data.eval_path.split("::") if data.kind == "json" else ():
        storage.check_bucket(path, "config.data.eval_path")
        if not storage.exists(path):
            raise ValueError(f"config.data.eval_path: {path} does not exist")
    return data.eval_path
