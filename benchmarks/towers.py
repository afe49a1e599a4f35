"""Forward images/s of the JAX CLIP and MAE towers against transformers' PyTorch classes.

Same config, batch, dtype and inputs in one process; prints JSON with the ratio (JAX / PyTorch).
  python benchmarks/towers.py                  # ViT-B/16 at 224 px, batch 8, float32
  python benchmarks/towers.py --small          # a tiny config, for a quick check
"""
import argparse
import json
import tempfile

import common
import jax
import numpy as np
import torch
import transformers as T

from xformer_jax.convert import from_hf

VIT_B16 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               image_size=224, patch_size=16)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=64, patch_size=16)
MAE_DECODER = dict(decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
                   decoder_intermediate_size=2048)
TINY_DECODER = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                    decoder_intermediate_size=64)


def measure(reference, torch_inputs, jax_fn, batch, warmup, iters):
    with torch.inference_mode():
        torch_s = common.time_calls(lambda: reference(**torch_inputs), warmup, iters)
    jax_s = common.time_calls(lambda: jax.block_until_ready(jax_fn()), warmup, iters)
    return {"torch_images_per_s": batch / torch_s, "jax_images_per_s": batch / jax_s, "ratio": torch_s / jax_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    size, decoder = (TINY, TINY_DECODER) if args.small else (VIT_B16, MAE_DECODER)
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(args.batch, 3, size["image_size"], size["image_size"])).astype(np.float32)
    noise = rng.uniform(size=(args.batch, (size["image_size"] // size["patch_size"]) ** 2)).astype(np.float32)
    results = {"config": size, "batch": args.batch, "dtype": "float32", "machine": common.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        clip = T.CLIPVisionModel(T.CLIPVisionConfig(**size, attn_implementation="sdpa")).eval()
        clip.save_pretrained(f"{tmp}/clip")
        module, params = from_hf(f"{tmp}/clip")
        forward = jax.jit(lambda p, x: module.apply({"params": p}, pixel_values=x)["last_hidden_state"])
        results["clip"] = measure(clip, {"pixel_values": torch.from_numpy(pixels)},
                                  lambda: forward(params, pixels), args.batch, 2, args.iters)
        mae = T.ViTMAEForPreTraining(T.ViTMAEConfig(**size, **decoder, attn_implementation="sdpa")).eval()
        mae.save_pretrained(f"{tmp}/mae")
        module, params = from_hf(f"{tmp}/mae")
        forward = jax.jit(lambda p, x, n: module.apply({"params": p}, pixel_values=x, noise=n)["logits"])
        results["mae_pretraining"] = measure(
            mae, {"pixel_values": torch.from_numpy(pixels), "noise": torch.from_numpy(noise)},
            lambda: forward(params, pixels, noise), args.batch, 2, args.iters)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
