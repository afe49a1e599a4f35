"""What the demo's frozen towers encode: linear probes of their patch tokens (`xformer_jax.proj.synthetic.probes`).

Pretrains (or reuses) the demo's CLIP-style and MAE towers on the synthetic training images
(`parts.pretrained_towers`, the demo's budget unless overridden), fits ridge probes for colour,
shape, count per cell, colour per cell (position) and the count of each present colour on the training
images and scores them on the validation and test images, next to the majority baseline and raw pixels.
Prints one JSON object.

  python benchmarks/tower_probes.py --workdir=/tmp/probes [--tower_steps=300 --tower_batch_size=32]
"""
import argparse
import json
import logging
import os
import platform
import sys

import numpy as np

from xformer_jax.configs import demo as demo_config
from xformer_jax.proj.synthetic import evaluation, parts, probes, scenes


def pixel_probes(paths: dict, config) -> dict:
    """The same probes on raw pixels (each patch's pixels as its token): what needs no tower at all."""
    patch = config.model.vision.patch_size

    def tokens(splits):
        entries = [e for s in splits for e in scenes.split_images(paths, s)]
        images = np.stack([np.asarray(i, np.float32) / 255 for i in scenes.load_images(entries, paths["root"])])
        n, side = len(images), images.shape[1] // patch
        grid = images.reshape(n, side, patch, side, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, side * side, -1)
        return probes.cell_features(grid), scenes.scenes_of(paths, [e["image_id"] for e in entries])
    (train, train_scenes), (held_out, held_out_scenes) = tokens(["train"]), tokens(evaluation.EVAL_SPLITS)
    return probes.probe_all(train, train_scenes, held_out, held_out_scenes)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tower_steps", type=int, default=parts.Budget.tower_steps)
    parser.add_argument("--tower_batch_size", type=int, default=parts.Budget.tower_batch_size)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    config = demo_config.get_config("stage1")
    config.data.path = os.path.join(os.path.abspath(args.workdir), "data")
    paths = scenes.dataset(config)
    towers = parts.pretrained_towers(config, os.path.join(os.path.abspath(args.workdir), "towers"), args.tower_steps,
                                      args.tower_batch_size, log=lambda line: print(line, file=sys.stderr))
    result = {"machine": platform.processor() or platform.machine(), "tower_steps": args.tower_steps,
              "tower_batch_size": args.tower_batch_size, **evaluation.tower_probes(config, paths, towers),
              "pixels": pixel_probes(paths, config)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
