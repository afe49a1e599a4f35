"""Prediction inputs: images from files (local or in a bucket), their evaluation pixels, and batches of one size."""
import io
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from xformer_jax import storage
from xformer_jax.data.transforms import ImageTransform


def load_images(paths: Sequence[str]) -> list[Image.Image]:
    """RGB images; a missing or unreadable file is an error naming it."""
    images = []
    for path in paths:
        if not storage.isfile(path):
            raise FileNotFoundError(f"image {path} not found")
        try:
            images.append(Image.open(io.BytesIO(storage.read_bytes(path))).convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"image {path} cannot be read ({e})") from None
    return images


def pixels(transform: ImageTransform, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP pixels, MAE pixels) NCHW from PIL images, as evaluation preprocesses them."""
    views = [transform(image.convert("RGB"), None) for image in images]
    return np.stack([v["pixel_values"] for v in views]), np.stack([v["mae_pixel_values"] for v in views])


def padded_batches(items: Sequence, size: int) -> Iterator[tuple[list, int]]:
    """(batch, number of real items): batches of exactly `size`, the last one filled with repeats of its last
    item, so that a jitted function sees one shape and compiles once."""
    if size < 1:
        raise ValueError(f"batch size {size} must be positive")
    for start in range(0, len(items), size):
        chunk = list(items[start:start + size])
        yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)
