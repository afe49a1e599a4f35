"""Input-pipeline throughput: decode + random-resized-crop + flip + two normalised views + tokenise.

Compares this project's grain pipeline (make_train_iterator, kind "json") with a torch DataLoader
doing the same work (PIL crops and resizes, torch ops for tensor conversion, flip and
normalisation, the same WordPiece tokenizer) on the same JPEG files, at each worker count.
Prints one JSON object. With --train_step_seconds (a measured step time), it also says whether
each pipeline keeps up with the step: images/s >= batch_size / step time.

python benchmarks/input_pipeline.py [--num_images=256 --batch_size=32 --batches=24 --workers=0,2
                                     --image_size=224 --train_step_seconds=0.5]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import tempfile
import time

import numpy as np
from PIL import Image

from xformer_jax.data import QFormerTokenizer, default_data_config, make_train_iterator
from xformer_jax.data.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from xformer_jax.data.transforms import clean_caption


def write_images(root: str, num_images: int) -> str:
    """COCO-like files: 500x375 JPEGs (smooth colour fields + noise) and a LAVIS caption list."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    entries = []
    for i in range(num_images):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC), np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", f"{i:06d}.jpg"), quality=90)
        entries.append({"image": f"images/{i:06d}.jpg", "caption": f"A photo of object {i}, seen from the LEFT.",
                        "image_id": i})
    path = os.path.join(root, "captions.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return path


def grain_images_per_second(annotations: str, args, workers: int) -> float:
    import ml_collections
    config = ml_collections.ConfigDict({"data": default_data_config()})
    config.data.update(dict(kind="json", path=annotations, image_size=args.image_size, batch_size=args.batch_size,
                            num_workers=workers, flip=True))
    iterator = make_train_iterator(config, process_index=0, process_count=1)
    next(iterator)  # start-up (workers, first fill) is not throughput
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    iterator.close()
    return args.batch_size * args.batches / elapsed


class TorchCaptions:
    """torch Dataset: the same files and the same work as the grain pipeline."""

    def __init__(self, annotations: str, image_size: int, tokenizer: QFormerTokenizer):
        import torch
        with open(annotations, encoding="utf-8") as f:
            self.entries = json.load(f)
        self.root = os.path.dirname(annotations)
        self.size = image_size
        self.tokenizer = tokenizer
        self.stats = [(torch.tensor(m).view(3, 1, 1), torch.tensor(s).view(3, 1, 1))
                      for m, s in ((CLIP_MEAN, CLIP_STD), (IMAGENET_MEAN, IMAGENET_STD))]

    def __len__(self):
        return len(self.entries)

    def crop_box(self, width: int, height: int):
        """torchvision's RandomResizedCrop parameters, scale (0.5, 1), ratio (3/4, 4/3)."""
        area = width * height
        for _ in range(10):
            target = area * random.uniform(0.5, 1.0)
            aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left, top = random.randint(0, width - w), random.randint(0, height - h)
                return left, top, left + w, top + h
        return 0, 0, width, height  # never reached for 4:3 images at scale >= 0.5

    def __getitem__(self, index):
        import torch
        entry = self.entries[index]
        with Image.open(os.path.join(self.root, entry["image"])) as image:
            image = image.convert("RGB")
        image = image.crop(self.crop_box(*image.size)).resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div_(255)  # as ToTensor
        if random.random() < 0.5:
            pixels = torch.flip(pixels, dims=[2])
        clip, mae = ((pixels - mean) / std for mean, std in self.stats)
        tokens = self.tokenizer([clean_caption(entry["caption"])])
        return {"pixel_values": clip, "mae_pixel_values": mae, "input_ids": torch.from_numpy(tokens["input_ids"][0]),
                "attention_mask": torch.from_numpy(tokens["attention_mask"][0])}


def torch_images_per_second(annotations: str, args, workers: int) -> float:
    import torch
    torch.set_num_threads(1)  # as DataLoader workers do; intra-op threads on per-image ops only add overhead
    dataset = TorchCaptions(annotations, args.image_size, QFormerTokenizer())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    batches = iter(_forever(loader))
    next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    elapsed = time.perf_counter() - start
    return args.batch_size * args.batches / elapsed


def _forever(loader):
    while True:
        yield from loader


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32, help="per-process batch")
    parser.add_argument("--batches", type=int, default=24, help="timed batches after one warm-up batch")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--train_step_seconds", type=float, default=None,
                        help="measured train step time: report whether each pipeline keeps up")
    parser.add_argument("--data_dir", default="", help="where the JPEGs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        annotations = write_images(args.data_dir or tmp, args.num_images)
        result = {
            "setup": {"num_images": args.num_images, "source_size": [500, 375], "image_size": args.image_size,
                      "batch_size": args.batch_size, "timed_batches": args.batches, "cpu_count": os.cpu_count()},
            "grain_images_per_s": {str(w): round(grain_images_per_second(annotations, args, w), 1) for w in workers},
            "torch_images_per_s": {str(w): round(torch_images_per_second(annotations, args, w), 1) for w in workers},
        }
    if args.train_step_seconds:
        needed = args.batch_size / args.train_step_seconds
        result["train_step_seconds"] = args.train_step_seconds
        result["needed_images_per_s"] = round(needed, 1)
        result["keeps_up"] = {f"{name}_{w}": result[f"{name}_images_per_s"][str(w)] >= needed
                              for name in ("grain", "torch") for w in workers}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
