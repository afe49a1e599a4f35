"""Image and caption preprocessing as BLIP-2 does it, written with PIL + numpy so it runs in grain workers.

One crop feeds both towers: the CLIP view and the MAE view see the same pixels (each resized to
its tower's size and normalised with its tower's statistics), as X-Former's dual branches need.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re

import numpy as np
from PIL import Image

BLIP_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default aspect range, which BLIP-2 keeps
_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")  # BlipCaptionProcessor.pre_caption's set
_SPACES = re.compile(r"\s{2,}")


def decode_image(data) -> Image.Image:
    """RGB image from encoded bytes (any PIL format) or a uint8 HWC / HW array; raises on corrupt data."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim not in (2, 3):
            raise ValueError(f"image array must be uint8 HW or HWC, got {data.dtype} {data.shape}")
        image = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    else:
        image = Image.open(io.BytesIO(bytes(data)))
    return image.convert("RGB")  # forces the full decode: truncated files raise here, not later


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float], ratio: tuple[float, float] = BLIP_RATIO) -> tuple:
    """(left, top, right, bottom) drawn like torchvision's RandomResizedCrop.get_params:
    area fraction uniform in `scale`, log-uniform aspect ratio, 10 tries, then a centre crop."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Training: random-resized-crop (+ optional flip); evaluation: plain resize of the whole image.
    Returns {"pixel_values", "mae_pixel_values"}: float32 CHW, bicubic, each with its own mean/std."""

    image_size: int
    mae_image_size: int
    clip_mean: tuple[float, float, float]
    clip_std: tuple[float, float, float]
    mae_mean: tuple[float, float, float]
    mae_std: tuple[float, float, float]
    train: bool
    scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = False

    def __call__(self, image: Image.Image, rng: np.random.Generator | None) -> dict[str, np.ndarray]:
        if self.train:
            image = image.crop(random_resized_crop_box(image.width, image.height, rng, self.scale))
        mirror = self.train and self.flip and rng.random() < 0.5
        views = {}
        for size in {self.image_size, self.mae_image_size}:
            view = image.resize((size, size), Image.Resampling.BICUBIC)
            if mirror:
                view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            views[size] = np.ascontiguousarray(np.asarray(view).transpose(2, 0, 1))  # uint8 CHW
        return {
            "pixel_values": _normalise(views[self.image_size], self.clip_mean, self.clip_std),
            "mae_pixel_values": _normalise(views[self.mae_image_size], self.mae_mean, self.mae_std),
        }

    def blank(self) -> dict[str, np.ndarray]:
        """Zeros of the output shapes: the padding example of evaluation batches."""
        return {"pixel_values": np.zeros((3, self.image_size, self.image_size), np.float32),
                "mae_pixel_values": np.zeros((3, self.mae_image_size, self.mae_image_size), np.float32)}


def _normalise(chw: np.ndarray, mean, std) -> np.ndarray:
    """(uint8 / 255 - mean) / std as one scale and one shift, in float32."""
    std = np.asarray(std, np.float32)[:, None, None]
    out = chw * (1 / (255 * std))
    out -= np.asarray(mean, np.float32)[:, None, None] / std
    return out


def clean_caption(caption: str, max_words: int = 50) -> str:
    """BlipCaptionProcessor.pre_caption: lowercase, its punctuation set -> spaces, runs of
    whitespace -> one space, trim, keep the first max_words words."""
    caption = _PUNCTUATION.sub(" ", caption.lower())
    caption = _SPACES.sub(" ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


def clean_question(question: str, max_words: int = 50) -> str:
    """BlipQuestionProcessor.pre_question, what LAVIS's VQA / GQA evaluation feeds the prompt: lowercase,
    its punctuation set deleted (not spaced), trailing spaces dropped, the first max_words words."""
    question = _PUNCTUATION.sub("", question.lower()).rstrip(" ")
    words = question.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else question
