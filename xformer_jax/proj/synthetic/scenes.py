"""The written synthetic dataset: its files, its images and the scenes behind them."""
import os
from typing import Sequence

import ml_collections

from xformer_jax.data import synthetic
from xformer_jax.predict import inputs
from xformer_jax.proj.synthetic import cache

def dataset(config: ml_collections.ConfigDict) -> dict:
    """Writes (or reuses) the synthetic dataset config.data describes; returns its paths."""
    return synthetic.write_dataset(config.data.path, **config.data.synthetic.to_dict())


def split_images(paths: dict, split: str) -> list[dict]:
    """One caption entry per image of a split (its "image" and "image_id"), in file order."""
    return list({e["image_id"]: e for e in cache.load_json(paths[f"caption_{split}"])}.values())


def load_images(entries: Sequence[dict], root: str) -> list:
    """The RGB images of annotation entries ({"image": path relative to root})."""
    return inputs.load_images([os.path.join(root, e["image"]) for e in entries])


def scenes_of(paths: dict, image_ids) -> list:
    """The synthetic scenes behind a written dataset's images (what generated text is checked against)."""
    seed = cache.load_json(paths["info"])["seed"]
    return [synthetic.scene_of(seed, int(i)) for i in image_ids]
