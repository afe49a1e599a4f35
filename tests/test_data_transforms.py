"""Image views (crop geometry, one crop for both towers, normalisation, flip), BLIP caption cleaning, config."""
import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from xformer_jax.data.config import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, default_data_config,
                                     crop_scale, flip_enabled, validate)
from xformer_jax.data.transforms import (BLIP_RATIO, ImageTransform, clean_caption, decode_image,
                                         random_resized_crop_box)


def transform(train, flip=False, size=24, mae_size=24):
    return ImageTransform(size, mae_size, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, train=train,
                          scale=(0.5, 1.0), flip=flip)


def unnormalise(chw, mean, std):
    return chw.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)


def test_crop_boxes_follow_blip_scale_and_aspect_ranges():
    rng = np.random.default_rng(0)
    areas, aspects = [], []
    for _ in range(500):
        left, top, right, bottom = random_resized_crop_box(120, 80, rng, (0.5, 1.0))
        assert 0 <= left < right <= 120 and 0 <= top < bottom <= 80
        w, h = right - left, bottom - top
        areas.append(w * h / (120 * 80))
        aspects.append(w / h)
    assert 0.47 < min(areas) and max(areas) <= 1.0 and np.ptp(areas) > 0.3
    assert BLIP_RATIO[0] - 0.05 < min(aspects) and max(aspects) < BLIP_RATIO[1] + 0.05
    # A strip no crop of the allowed shapes fits: centre crop at the nearest allowed aspect ratio.
    assert random_resized_crop_box(400, 10, rng, (0.9, 1.0)) == (193, 0, 206, 10)  # w = round(10 * 4/3)


def test_eval_view_is_bicubic_resize_of_the_whole_image_with_each_towers_statistics():
    pixels = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    out = transform(train=False, size=16, mae_size=20)(Image.fromarray(pixels), None)
    assert out["pixel_values"].shape == (3, 16, 16) and out["mae_pixel_values"].shape == (3, 20, 20)
    expected = np.asarray(Image.fromarray(pixels).resize((16, 16), Image.Resampling.BICUBIC), np.float32) / 255
    np.testing.assert_allclose(unnormalise(out["pixel_values"], CLIP_MEAN, CLIP_STD), expected, atol=1e-5)
    expected = np.asarray(Image.fromarray(pixels).resize((20, 20), Image.Resampling.BICUBIC), np.float32) / 255
    np.testing.assert_allclose(unnormalise(out["mae_pixel_values"], IMAGENET_MEAN, IMAGENET_STD), expected, atol=1e-5)


def test_training_views_share_one_crop_and_flip():
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :8] = 255  # a white band on the left
    image = Image.fromarray(pixels)
    flipped_any = unflipped_any = False
    for seed in range(20):
        out = transform(train=True, flip=True)(image, np.random.default_rng(seed))
        clip = unnormalise(out["pixel_values"], CLIP_MEAN, CLIP_STD)
        mae = unnormalise(out["mae_pixel_values"], IMAGENET_MEAN, IMAGENET_STD)
        np.testing.assert_allclose(clip, mae, atol=1e-5)  # same crop, same flip, different normalisation
        left, right = clip[:, :4].mean(), clip[:, -4:].mean()
        flipped_any |= right > left + 0.5
        unflipped_any |= left > right + 0.5
    assert flipped_any and unflipped_any
    for seed in range(20):  # flip off: the band never moves to the right
        clip = unnormalise(transform(train=True)(image, np.random.default_rng(seed))["pixel_values"], CLIP_MEAN,
                           CLIP_STD)
        assert clip[:, :4].mean() >= clip[:, -4:].mean()


def test_decode_accepts_bytes_and_uint8_arrays_and_rejects_corrupt_data():
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    assert np.array_equal(np.asarray(decode_image(buffer.getvalue()))[..., 1], gray)
    assert decode_image(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)
    assert decode_image(np.zeros((4, 5, 1), np.uint8)).mode == "RGB"
    with pytest.raises(OSError):
        decode_image(buffer.getvalue()[:40])
    with pytest.raises(ValueError, match="uint8"):
        decode_image(np.zeros((4, 5, 3), np.float32))


@pytest.mark.parametrize("raw, expected", [
    ("A man, riding a HORSE!!  on the beach.", "a man, riding a horse on the beach"),
    ("  (Two) dogs: playing*#~; \n", "two dogs playing"),
    ("it's a \"quoted\" word?", "it's a quoted word?"),
    ("tabs\tand\t\tnewlines\n\nhere", "tabs\tand newlines here"),
    ("...!!!", ""),
])
def test_caption_cleaning_matches_blip_caption_processor(raw, expected):
    assert clean_caption(raw) == expected


def test_caption_cleaning_keeps_max_words():
    assert clean_caption(" ".join(f"w{i}" for i in range(60))) == " ".join(f"w{i}" for i in range(50))
    assert clean_caption("one two three", max_words=2) == "one two"


def test_config_defaults_validate_and_flip_and_crop_default_by_kind():
    data = default_data_config()
    validate(data)
    assert data.mae_image_size is None and data.flip is None and data.batch_size == 64
    assert not flip_enabled(data)  # synthetic: captions say left / right
    assert crop_scale(data) == (1.0, 1.0)  # synthetic: captions state counts a crop would change
    data.kind, data.path = "webdataset", "x/{0..1}.tar"
    assert flip_enabled(data) and crop_scale(data) == (0.5, 1.0)  # BLIP-2's photos
    data.flip, data.min_scale = False, 0.8
    assert not flip_enabled(data) and crop_scale(data) == (0.8, 1.0)
    with pytest.raises(ValueError, match=r"config.data.max_len=0 must be a positive integer"):
        validate(ml_collections.ConfigDict({**default_data_config().to_dict(), "max_len": 0}))
