"""`make demo`: what exists today, run for real on the built-in synthetic data.

Generates the synthetic dataset, builds small CLIP and MAE towers, encodes a batch of scenes, runs
MAE masked reconstruction, prints shapes, losses and timings as a table, and writes a
reconstruction grid (image / masked input / reconstruction) to WORKDIR/reconstruction.png.
"""
import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from xformer_jax.data import synthetic  # noqa: E402
from xformer_jax.models import mae, vit  # noqa: E402

IMAGE_SIZE = 64
PATCH = 8
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def load_images(paths: dict, split: str, count: int) -> np.ndarray:
    with open(paths[f"caption_{split}"]) as f:
        entries = json.load(f)
    files = sorted({e["image"] for e in entries})[:count]
    images = [np.asarray(Image.open(os.path.join(paths["root"], name)).convert("RGB")) for name in files]
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def to_uint8(nchw):
    return (np.clip(np.asarray(nchw) * STD + MEAN, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)


def save_grid(path, *columns):
    """One row per example, one column per stage."""
    rows = [np.concatenate(row, axis=1) for row in zip(*columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="workdir/demo")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    start = time.perf_counter()
    paths = synthetic.write_dataset(os.path.join(args.workdir, "data"), seed=0, num_train=64, num_val=16,
                                    num_test=16, image_size=IMAGE_SIZE)
    print(f"synthetic dataset: {paths['root']} ({time.perf_counter() - start:.1f}s)")
    pixels = (load_images(paths, "val", args.batch) - MEAN) / STD

    clip_cfg = vit.VisionConfig(kind="clip", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=128, image_size=IMAGE_SIZE, patch_size=PATCH)
    mae_cfg = mae.MAEConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                            decoder_hidden_size=32, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                            decoder_intermediate_size=64, image_size=IMAGE_SIZE, patch_size=PATCH, mask_ratio=0.5)
    clip, mae_model = vit.VisionTransformer(clip_cfg), mae.MAEForPreTraining(mae_cfg)
    key = jax.random.key(0)
    clip_params = clip.init(key, pixels)["params"]
    mae_params = mae_model.init(key, pixels, mask_rng=key)["params"]

    clip_out, clip_s = timed(jax.jit(lambda p, x: clip.apply({"params": p}, x, output_hidden_states=True)),
                             clip_params, pixels)
    features, _ = timed(jax.jit(lambda p, x: clip.apply({"params": p}, x, method=clip.features)), clip_params, pixels)
    mae_out, mae_s = timed(jax.jit(lambda p, x, k: mae_model.apply({"params": p}, x, mask_rng=k)),
                           mae_params, pixels, jax.random.key(1))

    rows = [
        ("CLIP last_hidden_state", str(tuple(clip_out["last_hidden_state"].shape)), f"{clip_s * 1e3:.1f} ms"),
        ("CLIP hidden_states", f"{len(clip_out['hidden_states'])} x {tuple(features.shape)}", ""),
        ("CLIP features (layer -2)", str(tuple(features.shape)), ""),
        ("MAE decoder logits", str(tuple(mae_out["logits"].shape)), f"{mae_s * 1e3:.1f} ms"),
        ("MAE masked patches", f"{int(mae_out['mask'].sum())} of {mae_out['mask'].size}", ""),
        ("MAE reconstruction loss (untrained)", f"{float(mae_out['loss']):.4f}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, timing in rows:
        print(f"  {name:<{width}}  {value:<22} {timing}")

    patches = mae.patchify(jnp.asarray(pixels), PATCH)
    masked = mae.unpatchify(patches * (1 - mae_out["mask"][..., None]), PATCH)
    recon = mae.unpatchify(jnp.where(mae_out["mask"][..., None] > 0, mae_out["logits"], patches), PATCH)
    grid_path = os.path.join(args.workdir, "reconstruction.png")
    save_grid(grid_path, to_uint8(pixels[:4]), to_uint8(masked[:4]), to_uint8(recon[:4]))
    print(f"reconstruction grid (image | masked | reconstruction): {grid_path}")


if __name__ == "__main__":
    main()
