"""The demo's run (launch/demo.py): the study's parts, one model through both stages and its evaluation, then
what only the demo measures (held-out ITM and retrieval, the reconstruction through M'), its pictures and tables."""
import copy
import json
import os
import textwrap

import jax
import numpy as np
from PIL import Image

from xformer_jax import factory
from xformer_jax.data import pipeline, synthetic
from xformer_jax.models import mae as mae_lib
from xformer_jax.predict import rankings
from xformer_jax.proj.synthetic import attributes, cache, evaluation, parts as parts_lib, plots, probes, scenes, stages
from xformer_jax.train import objective

NUM_EXAMPLES = 8


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(records: list[dict], prefix: str = "") -> dict:
    """{key: (steps, values)} of every logged loss / ITM accuracy (eval records: keys under prefix)."""
    keys = dict.fromkeys(k[len(prefix):] for r in records for k in r
                         if k.startswith(prefix) and k[len(prefix):].startswith(("loss_", "itm_accuracy")))
    return {k: ([r["step"] for r in records if prefix + k in r], [r[prefix + k] for r in records if prefix + k in r])
            for k in keys}


def loss_curves(stage1: list[dict], stage2: list[dict], path: str) -> None:
    """Every stage-1 loss term, ITM accuracy and the stage-2 LM loss against the step, training (every
    logged step) and held out (the validation split at each eval step)."""
    train, held_out = {}, {}
    for stage, records in (("stage 1", stage1), ("stage 2", stage2)):
        train.update({f"{stage} {k}": v for k, v in _series(records).items()})
        held_out.update({f"{stage} {k}": v for k, v in _series(records, "eval/").items()})
    plots.line_chart(train, path, "synthetic scenes: stage 1 (Q-Former + X-Former), stage 2 (queries as the "
                                  "frozen OPT's prefix)", held_out)


def evaluate_retrieval(model, params, config, paths: dict, batch_size: int) -> dict:
    """ITC retrieval over the validation images, one caption each (`predict.rankings`, as launch/evaluate.py
    ranks; no ITM re-ranking)."""
    entries = [{"image": e["image"], "caption": e["caption"][:1]} for e in cache.load_json(paths["caption_val"])]
    ranked = rankings.rank_captions(rankings.Retriever(config, model, params), entries, paths["root"], batch_size,
                                    k_test=0)
    return ranked.recall()


def first_eval_batch(config) -> dict:
    """The model inputs of the first held-out batch (what the reconstruction is shown on)."""
    batch = next(iter(pipeline.make_eval_dataset(config)))
    return {k: batch[k] for k in ("pixel_values", "mae_pixel_values", "input_ids", "attention_mask")}


def reconstruction(model, params, batch) -> dict:
    """The masked-patch loss of the frozen MAE decoder reading M' (the dual block's output) and reading M
    (the MAE encoder's own output, what the decoder was trained on), on one held-out batch with one
    mask; and the predicted patches and mask of M' for the picture."""
    def losses(m, pixels, mae_pixels):
        images = m.encode_images(pixels, mae_pixels, jax.random.key(0))
        _, _, enriched = m.query_states(images)
        pred, mask = m.reconstruct(enriched, images), images["mae_mask"]
        alone = m.reconstruct(images["mae"], images)
        score = lambda p: objective.reconstruction(m.config.mae, p, mask, mae_pixels)  # noqa: E731
        return score(pred), score(alone), pred, mask
    with_queries, alone, pred, mask = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=losses))(
        params, batch["pixel_values"], batch["mae_pixel_values"])
    return {"with_queries": float(with_queries), "mae_alone": float(alone), "pred": pred, "mask": mask}


def reconstruction_picture(patch: int, batch: dict, pred, mask, path: str) -> None:
    pixels = batch["mae_pixel_values"][:6]
    patches = mae_lib.patchify(pixels, patch)
    mask = np.asarray(mask[:6])[..., None]
    masked = mae_lib.unpatchify(patches * (1 - mask), patch)
    filled = mae_lib.unpatchify(np.where(mask > 0, np.asarray(pred[:6]), patches), patch)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    to_rgb = lambda x: (np.clip(np.asarray(x) * std + mean, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)  # noqa: E731
    rows = [[to_rgb(a), to_rgb(b), to_rgb(c)] for a, b, c in zip(pixels, masked, filled)]
    plots.image_grid(rows, path, labels=["image", "masked input (50%)", "reconstruction from M'"])


def examples_picture(paths: dict, eval_dir: str, path: str, split: str = "test") -> None:
    """The first images of a split with the generated caption (marked right when every colour, shape and
    count it should name is right) and each question's generated answer, marked against the truth."""
    read = lambda name: cache.load_json(os.path.join(eval_dir, split, name))  # noqa: E731
    captions = {p["image_id"]: p["caption"] for p in read("caption_predictions.json")}
    answers = {p["question_id"]: p["answer"] for p in read("vqa_predictions.json")}
    entries = cache.load_json(paths[f"caption_{split}"])[:NUM_EXAMPLES]
    questions = cache.load_json(paths[f"vqa_{split}"])
    seed = cache.load_json(paths["info"])["seed"]
    images, texts = [], []
    for entry in entries:
        images.append(np.asarray(Image.open(os.path.join(paths["root"], entry["image"])).convert("RGB")))
        generated = captions[int(entry["image_id"])]
        facts, _ = attributes.caption_facts(generated, synthetic.scene_of(seed, int(entry["image_id"])))
        lines = [*((line, all(map(all, facts.values()))) for line in textwrap.wrap(f"generated: {generated}", 60)),
                 *((line, None) for line in textwrap.wrap(f"truth: {entry['caption'][0]}", 60))]
        for q in questions:
            if q["image"] == entry["image"]:
                right = answers[q["question_id"]] == q["answer"][0]
                text = f"Q: {q['question']}  A: {answers[q['question_id']]} (truth {q['answer'][0]})"
                lines += [(line, right) for line in textwrap.wrap(text, 60)]
        texts.append(lines)
    plots.captioned_images(images, texts, path)


def _table(header: list[str], rows: list[list]) -> str:
    cell = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(header) + " |", "| --- " * len(header) + "|",
                      *("| " + " | ".join(map(cell, row)) + " |" for row in rows)])


def print_tables(report: dict, seconds: dict) -> None:
    stage1, stage2 = report["stage1"], report["stage2"]
    training = lambda records: [r for r in records if "loss" in r]  # noqa: E731  (not the eval/ records)
    rows = [[f"{stage} {k}", f"{records[0][k]:.3f}", f"{records[-1][k]:.3f}"]
            for stage, records in (("stage 1", training(stage1)), ("stage 2", training(stage2)))
            for k in [k for k in records[-1] if k.startswith("loss_")]]
    print("\n" + _table(["quantity", "first logged step", "last step"], rows))
    held_out = [r for r in stage1 if "eval/itm_accuracy" in r]
    print(f"\nstage-1 ITM accuracy on held-out validation pairs (1 positive : 2 hard negatives, prior 66.7%): "
          f"{100 * held_out[0]['eval/itm_accuracy']:.1f}% at step {held_out[0]['step']} -> "
          f"{100 * held_out[-1]['eval/itm_accuracy']:.1f}% at step {held_out[-1]['step']}")
    rec = report["reconstruction"]
    print(f"reconstruction (held-out batch, masked-patch MSE): the frozen MAE decoder reading M' {rec['with_queries']:.4f}"
          f", reading the MAE encoder's own M {rec['mae_alone']:.4f}")
    recall, num_val = report["recall"], report["num_val"]
    print(f"\nstage-1 retrieval on the {num_val} validation scenes (ITC, chance R@1 = {100 / num_val:.1f}%): "
          f"image->text R@1 {recall['i2t_r1']:.1f} R@5 {recall['i2t_r5']:.1f}, "
          f"text->image R@1 {recall['t2i_r1']:.1f} R@5 {recall['t2i_r5']:.1f}")
    tasks = list(probes.TASKS)
    print("\nlinear probes of the frozen towers' patch tokens and of the stage-2 queries on held-out images "
          "(accuracy %, majority in brackets)\n")
    prefix = report["prefix_probes"]
    rows = [*report["probes"].items(), ("the stage-2 queries (the LLM's prefix)", prefix["prefix"])]
    print(_table(["features", *tasks], [[name, *(f"{r[t]['probe']:.1f} ({r[t]['majority']:.1f})" for t in tasks)]
                                        for name, r in rows]))
    print(f"\nthe stage-2 queries: mean cosine between two queries of a held-out image {prefix['query_cosine']:.3f} "
          "(1 would mean every query says the same)")
    for split, scores in report["scores"].items():
        vqa, blind = scores["vqa"], report["blind"][split]
        kinds = sorted(vqa["per_question_type"])
        print(f"\nzero-shot VQA on the {split} split ({vqa['num_questions']} questions, VQA accuracy %)\n")
        print(_table(["answers from", "all", *kinds], [
            [name, result["accuracy"], *(result["per_question_type"][k] for k in kinds)]
            for name, result in (("the model (queries as prefix)", vqa),
                                 ("the model, each question asked of another image", scores["vqa_shuffled_images"]),
                                 ("the most frequent training answer", blind["prior"]),
                                 (f"the best constant answer per type on {split}", blind["best_constant"]))]))
        caption, attrs, prior = scores["caption"], scores["attributes"], report["blind_caption"][split]
        print(f"\ncaptioning on the {split} split ({caption['num_images']} images): CIDEr-D {caption['CIDEr']:.1f}, "
              f"BLEU-4 {caption['Bleu_4']:.1f}; attribute facts right (%):\n")
        print(_table(["captions", "all facts", *attributes.FACTS, "phrase precision"], [
            [name, a["score"], *(a[f] for f in attributes.FACTS), a["precision"]]
            for name, a in (("generated", attrs), (f'blind: "{report["blind_text"]}"', prior))]))
    print("\nthe pretrained LLM reading each scene's complete description instead of the queries (its most likely "
          "first answer token is the truth's, %): " + ", ".join(f"{k} {v:.1f}" for k, v in report["ceiling"].items()))
    print("\n" + _table(["phase", "seconds"], [[name, f"{value:.0f}"] for name, value in seconds.items()]))


def run_demo(stage1, stage2, workdir: str, budget: parts_lib.Budget) -> None:
    """The recipe on `stage1` / `stage2` configs under workdir, then the pictures and the tables."""
    timer = cache.Timer()
    stage1 = copy.deepcopy(stage1)
    stage1.data.path = os.path.join(workdir, "data")
    parts = parts_lib.prepare_parts(stage1, stage2, workdir, budget, timer)
    with timer("tower probes"):
        tower_probes = evaluation.tower_probes(stage1, parts.paths, parts.towers)
    result = stages.run(stage1, stage2, parts, workdir, budget, timer)
    with timer("prefix probes"):
        prefix_probes = evaluation.prefix_probes(result.stage2_dir, parts.paths,
                                             os.path.join(result.eval_dir, "prefix_probes"))

    with timer("retrieval, baselines and pictures"):
        config = result.stage1_config
        model = factory.make_model(factory.model_config(config))
        params = {**result.stage1_state.params, **result.stage1_state.frozen}
        recall = evaluate_retrieval(model, params, config, parts.paths, budget.eval_batch_size)
        batch = first_eval_batch(config)
        report = {"stage1": read_metrics(os.path.join(result.stage1_dir, "metrics.jsonl")),
                  "stage2": read_metrics(os.path.join(result.stage2_dir, "metrics.jsonl")),
                  "recall": recall, "num_val": config.data.synthetic.num_val, "probes": tower_probes,
                  "prefix_probes": prefix_probes,
                  "scores": result.scores, "ceiling": evaluation.llm_reads_descriptions(stage2, parts)}
        rec = reconstruction(model, params, batch) if model.config.fusion.reconstructs else None
        report["reconstruction"] = rec
        report["blind"] = {s: evaluation.blind_baselines(parts.paths, os.path.join(workdir, "blind"), s)
                           for s in result.scores}
        report["blind_text"] = evaluation.blind_caption(parts.paths)
        report["blind_caption"] = {s: evaluation.caption_attributes(parts.paths, [
            {"image_id": i, "caption": report["blind_text"]}
            for i in (e["image_id"] for e in scenes.split_images(parts.paths, s))])
            for s in result.scores}
        loss_curves(report["stage1"], report["stage2"], os.path.join(workdir, "loss_curves.png"))
        if rec is not None:
            reconstruction_picture(config.model.mae.patch_size, batch, rec["pred"], rec["mask"],
                                   os.path.join(workdir, "reconstruction.png"))
        examples_picture(parts.paths, result.eval_dir, os.path.join(workdir, "examples.png"))
    print_tables(report, timer.seconds)
    print(f"\npictures: {workdir}/loss_curves.png, {workdir}/reconstruction.png, {workdir}/examples.png")
    print(f"predictions and scores: {result.eval_dir}/{{val,test}}")
    print(f"demo finished in {sum(timer.seconds.values()):.0f}s")
