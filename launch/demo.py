"""`make demo`: the whole recipe on the built-in synthetic data, on CPU, with no downloads.

1. writes the synthetic scenes dataset (captions + VQA) under WORKDIR/data;
2. pretrains the small CLIP and MAE towers (WORKDIR/towers), and a byte-level BPE plus the small OPT
   on descriptions followed by captions / questions and answers (WORKDIR/llm);
3. trains stage 1 (`configs/demo.py:stage1`, Q-Former from the real MiniLM BERT) and stage 2
   (`configs/demo.py:stage2`, the queries as prefix of the frozen OPT, captions only);
4. evaluates zero-shot VQA per question type and captioning CIDEr on the validation split, and
   stage-1 image-text retrieval; prints a table;
5. draws WORKDIR/loss_curves.png (both stages), WORKDIR/reconstruction.png (image / masked input /
   reconstruction) and WORKDIR/examples.png (validation images, generated captions and answers).
Every phase is reused when its output is already there (`xformer_jax.recipe`).
"""
import argparse
import copy
import json
import logging
import os
import sys

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo as demo_config  # noqa: E402
from xformer_jax import plots, recipe, retrieve  # noqa: E402
from xformer_jax.data import pipeline  # noqa: E402
from xformer_jax.eval import retrieval  # noqa: E402
from xformer_jax.models import mae as mae_lib  # noqa: E402
from xformer_jax.train import build  # noqa: E402

NUM_EXAMPLES = 8


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curves(stage1: list[dict], stage2: list[dict], path: str) -> None:
    series = {}
    for stage, records, keys in (("stage 1", stage1, [k for k in stage1[0] if k.startswith("loss")]),
                                 ("stage 2", stage2, ["loss_lm"])):
        for k in keys:
            series[f"{stage} {k}"] = ([r["step"] for r in records if k in r], [r[k] for r in records if k in r])
    plots.line_chart(series, path, "training losses on synthetic scenes (stage 1: Q-Former + X-Former; "
                                   "stage 2: queries as the frozen OPT's prefix)")


def evaluate_retrieval(model, params, config) -> tuple[dict, dict]:
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
    sims = retrieve.similarities(image_embeds, text_embeds)
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


def examples_picture(paths: dict, eval_dir: str, path: str) -> None:
    """The first validation images with the generated caption, and each question with the generated
    answer and the truth."""
    read = lambda name: recipe.load_json(os.path.join(eval_dir, name))  # noqa: E731
    captions = {p["image_id"]: p["caption"] for p in read("caption_predictions.json")}
    answers = {p["question_id"]: p["answer"] for p in read("vqa_predictions.json")}
    entries = recipe.load_json(paths["caption_val"])[:NUM_EXAMPLES]
    questions = recipe.load_json(paths["vqa_val"])
    images, texts = [], []
    for entry in entries:
        images.append(np.asarray(Image.open(os.path.join(paths["root"], entry["image"])).convert("RGB")))
        lines = [f"generated: {captions[int(entry['image_id'])]}", f"truth: {entry['caption'][0]}"]
        lines += [f"Q: {q['question']}  A: {answers[q['question_id']]} (truth {q['answer'][0]})"
                  for q in questions if q["image"] == entry["image"]]
        texts.append("\n".join(lines))
    plots.captioned_images(images, texts, path)


def print_tables(stage1: list[dict], stage2: list[dict], recall: dict, scores: dict, prior: dict,
                 ceiling: dict, num_val: int, seconds: dict) -> None:
    print("\n| quantity | first logged step | last step |\n| --- | --- | --- |")
    for stage, records in (("stage 1", stage1), ("stage 2", stage2)):
        for key in [k for k in records[-1] if k.startswith("loss_")]:
            print(f"| {stage} {key} | {records[0][key]:.3f} | {records[-1][key]:.3f} |")
    print(f"\nstage-1 retrieval on the {num_val} validation scenes (ITC, chance R@1 = {100 / num_val:.1f}%): "
          f"image->text R@1 {recall['i2t_r1']:.1f} R@5 {recall['i2t_r5']:.1f}, "
          f"text->image R@1 {recall['t2i_r1']:.1f} R@5 {recall['t2i_r5']:.1f}")
    vqa = scores["vqa"]
    kinds = sorted(vqa["per_question_type"])
    print(f"\nzero-shot VQA on the validation split ({vqa['num_questions']} questions, VQA accuracy %)\n")
    print("| answers from | all | " + " | ".join(kinds) + " |\n" + "| --- " * (len(kinds) + 2) + "|")
    for name, result in (("the model (queries as prefix)", vqa), ("the most frequent training answer", prior)):
        print(f"| {name} | {result['accuracy']:.1f} | "
              + " | ".join(f"{result['per_question_type'][k]:.1f}" for k in kinds) + " |")
    print("\nthe pretrained LLM reading each scene's true caption instead of the queries (its most likely first "
          "answer token is the truth's, %): " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items()))
    caption = scores["caption"]
    print(f"\ncaptioning on the validation split ({caption['num_images']} images): CIDEr-D {caption['CIDEr']:.1f}, "
          f"BLEU-4 {caption['Bleu_4']:.1f}")
    print("\n| phase | seconds |\n| --- | --- |")
    for name, value in seconds.items():
        print(f"| {name} | {value:.0f} |")


def run_demo(stage1, stage2, workdir: str, budget: recipe.Budget) -> None:
    """The recipe on `stage1` / `stage2` configs under workdir, then the pictures and the tables."""
    timer = recipe.Timer()
    stage1 = copy.deepcopy(stage1)
    stage1.data.path = os.path.join(workdir, "data")
    parts = recipe.prepare_parts(stage1, stage2, workdir, budget, timer)
    result = recipe.run(stage1, stage2, parts, workdir, budget, timer)

    with timer("retrieval and pictures"):
        config = result.stage1_config
        model = build.make_model(build.model_config(config))
        params = {**result.stage1_state.params, **result.stage1_state.frozen}
        recall, batch = evaluate_retrieval(model, params, config)
        records1 = read_metrics(os.path.join(result.stage1_dir, "metrics.jsonl"))
        records2 = read_metrics(os.path.join(result.stage2_dir, "metrics.jsonl"))
        loss_curves(records1, records2, os.path.join(workdir, "loss_curves.png"))
        reconstruction_picture(model, params, batch, os.path.join(workdir, "reconstruction.png"))
        examples_picture(parts.paths, result.eval_dir, os.path.join(workdir, "examples.png"))
        prior = recipe.answer_prior(parts.paths, os.path.join(workdir, "prior"))
        ceiling = recipe.llm_reads_captions(stage2, parts)
    print_tables(records1, records2, recall, result.scores, prior, ceiling, config.data.synthetic.num_val,
                 timer.seconds)
    print(f"\npictures: {workdir}/loss_curves.png, {workdir}/reconstruction.png, {workdir}/examples.png")
    print(f"predictions and scores: {result.eval_dir}")
    print(f"demo finished in {sum(timer.seconds.values()):.0f}s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdir/demo")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    run_demo(demo_config.get_config("stage1"), demo_config.get_config("stage2"), os.path.abspath(args.workdir),
             recipe.Budget())


if __name__ == "__main__":
    main()
