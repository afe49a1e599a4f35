"""`make demo`: the main job on the built-in synthetic data, on CPU, with no downloads.

1. writes the synthetic scenes dataset (captions + VQA) under WORKDIR/data;
2. gives the small CLIP and MAE towers a short pretraining on those images (cached in WORKDIR/towers);
3. trains stage 1 of a small X-Former (`configs/demo.py:stage1`, Q-Former from the real MiniLM BERT)
   with launch/train.py's loop (rerunning resumes; a finished run is reused);
4. evaluates image-text retrieval on the validation split and prints a table;
5. draws WORKDIR/loss_curves.png and WORKDIR/reconstruction.png (image / masked input / reconstruction).
"""
import argparse
import json
import logging
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo as demo_config  # noqa: E402
from xformer_jax import plots, pretrain  # noqa: E402
from xformer_jax.data import pipeline  # noqa: E402
from xformer_jax.eval import retrieval  # noqa: E402
from xformer_jax.models import mae as mae_lib  # noqa: E402
from xformer_jax.train import build, loop  # noqa: E402


def pretrained_towers(config, workdir: str, steps: int) -> None:
    """Pretrains the towers once and points config.model.*.params_file at them."""
    os.makedirs(os.path.join(workdir, "towers"), exist_ok=True)
    model_config = build.stage1_config(config.model)
    paths = {name: os.path.join(workdir, "towers", f"{name}.msgpack") for name in ("vision", "mae")}
    if not all(os.path.exists(p) for p in paths.values()):
        start = time.perf_counter()
        batches = pipeline.make_train_iterator(config)
        mae_params, mae_loss = pretrain.pretrain_mae(model_config.mae, (b["mae_pixel_values"] for b in batches), steps)
        clip_params, clip_loss = pretrain.pretrain_clip(model_config.vision, batches, model_config.qformer.vocab_size,
                                                        steps)
        build.save_params(paths["mae"], mae_params)
        build.save_params(paths["vision"], clip_params)
        print(f"tower pretraining ({steps} steps each, {time.perf_counter() - start:.0f}s): "
              f"MAE loss {mae_loss[0]:.3f} -> {np.mean(mae_loss[-10:]):.3f}, "
              f"CLIP contrastive {clip_loss[0]:.3f} -> {np.mean(clip_loss[-10:]):.3f}", flush=True)
    for name, path in paths.items():
        config.model[name].params_file = path


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curves(records: list[dict], path: str) -> None:
    keys = [k for k in records[0] if k.startswith("loss")]
    series = {k: ([r["step"] for r in records if k in r], [r[k] for r in records if k in r]) for k in keys}
    plots.line_chart(series, path, "stage-1 training losses (synthetic scenes)")


def evaluate(model, params, config) -> tuple[dict, dict]:
    """ITC retrieval over the validation images (one caption each), and the first eval batch."""
    embed = jax.jit(lambda p, b: model.apply({"params": p}, b["pixel_values"], b["input_ids"], b["attention_mask"],
                                             b.get("mae_pixel_values"), method=model.retrieval_embeddings))
    images, texts, first = [], [], None
    for batch in pipeline.make_eval_dataset(config):
        keep = batch["mask"].astype(bool)
        inputs = {k: batch[k] for k in ("pixel_values", "mae_pixel_values", "input_ids", "attention_mask")}
        image_embeds, text_embeds = embed(params, inputs)
        images.append(np.asarray(image_embeds)[keep])
        texts.append(np.asarray(text_embeds)[keep])
        first = first or inputs
    image_embeds, text_embeds = np.concatenate(images), np.concatenate(texts)
    sims = np.einsum("iqd,td->iqt", image_embeds, text_embeds).max(axis=1)
    recall = retrieval.retrieval_recall(sims, np.arange(len(text_embeds)))
    return recall, first


def reconstruction_picture(model, params, batch, path: str) -> None:
    pred, mask = jax.jit(lambda p, b: model.apply({"params": p}, b["pixel_values"], b["mae_pixel_values"],
                                                  jax.random.key(0), method=model.reconstruct_images))(params, batch)
    patch = model.config.mae.patch_size
    pixels = batch["mae_pixel_values"][:6]
    patches = mae_lib.patchify(pixels, patch)
    mask = np.asarray(mask[:6])[..., None]
    masked = mae_lib.unpatchify(patches * (1 - mask), patch)
    filled = mae_lib.unpatchify(np.where(mask > 0, np.asarray(pred[:6]), patches), patch)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    to_rgb = lambda x: (np.clip(np.asarray(x) * std + mean, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)  # noqa: E731
    rows = [[to_rgb(a), to_rgb(b), to_rgb(c)] for a, b, c in zip(pixels, masked, filled)]
    plots.image_grid(rows, path, labels=["image", "masked input", "reconstruction"])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="workdir/demo")
    parser.add_argument("--steps", type=int, default=150, help="stage-1 training steps")
    parser.add_argument("--tower_steps", type=int, default=300, help="pretraining steps per tower")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    workdir = os.path.abspath(args.workdir)
    start = time.perf_counter()

    config = demo_config.get_config("stage1")
    config.data.path = os.path.join(workdir, "data")
    config.total_steps = args.steps
    config.checkpoint_every = args.steps
    config.optim.warmup_steps = min(config.optim.warmup_steps, args.steps // 5)
    pretrained_towers(config, workdir, args.tower_steps)

    stage1_dir = os.path.join(workdir, "stage1")
    print(f"stage 1: {args.steps} steps of {config.model.fusion.kind} on synthetic scenes -> {stage1_dir}", flush=True)
    state = loop.train(config, stage1_dir)  # a finished run is restored, not retrained
    model = build.make_model(build.model_config(config))
    params = {**state.params, **state.frozen}
    recall, batch = evaluate(model, params, config)
    records = read_metrics(os.path.join(stage1_dir, "metrics.jsonl"))
    loss_curves(records, os.path.join(workdir, "loss_curves.png"))
    reconstruction_picture(model, params, batch, os.path.join(workdir, "reconstruction.png"))

    first, last = records[0], records[-1]
    print("\n| quantity | first logged step | last step |\n| --- | --- | --- |")
    for key in [k for k in last if k.startswith("loss")]:
        print(f"| {key} | {first[key]:.3f} | {last[key]:.3f} |")
    print(f"\nretrieval on {config.data.synthetic.num_val} validation scenes (ITC, chance R@1 = "
          f"{100 / config.data.synthetic.num_val:.1f}%):")
    print(f"  image->text R@1 {recall['i2t_r1']:.1f}  R@5 {recall['i2t_r5']:.1f}   "
          f"text->image R@1 {recall['t2i_r1']:.1f}  R@5 {recall['t2i_r5']:.1f}")
    print(f"\npictures: {workdir}/loss_curves.png, {workdir}/reconstruction.png")
    print(f"demo finished in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
