"""The paper's comparison in miniature on the synthetic benchmark (X-Former Table 1 / ablations).

Fusion variants blip2, concat, early_xattn, xformer, xformer without the reconstruction loss and xformer
with ITG reading the fused queries (`model.itg_context="fused"`), each with several seeds: stage 1 and
stage 2 with the demo's small models (configs/demo.py, shorter), then zero-shot VQA accuracy per question
type and captioning (CIDEr-D, caption facts) on the test split, against the blind baselines of that split.
Runs of one seed share the data order, so besides mean ± std over seeds the script prints paired
differences (xformer - blip2, xformer - xformer_norec, xformer_itg_fused - xformer) with the number of
seeds each way. The towers, the tokenizer and the LLM are pretrained once and shared by every run (a
workdir that already holds the demo's parts reuses them); each run is one call of
`xformer_jax.recipe.run`, so a rerun reuses finished runs. Prints one JSON object, then markdown tables.

  python benchmarks/mini_paper.py --workdir=workdir/demo [--variants=blip2,xformer,xformer_norec
      --seeds=0,1,2 --stage1_steps=100 --stage2_steps=400 --batch_size=16]
"""
import argparse
import copy
import json
import logging
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import demo as demo_config  # noqa: E402
from xformer_jax import recipe  # noqa: E402

# name -> (fusion kind, reconstruction loss weight); the paper's ablations as config changes.
VARIANTS = {
    "blip2": ("blip2", 1.0),
    "concat": ("concat", 1.0),
    "early_xattn": ("early_xattn", 1.0),
    "xformer": ("xformer", 1.0),
    "xformer_norec": ("xformer", 0.0),
    "xformer_itg_fused": ("xformer", 1.0),  # ITG's decoder attends to Z' (config.model.itg_context)
}
FUSED_ITG = ("xformer_itg_fused",)
QUESTION_TYPES = ("count", "color", "position", "exists")
SPLIT = "test"  # reported; nothing here is chosen on it
COMPARISONS = (("xformer", "blip2"), ("xformer", "xformer_norec"), ("xformer_itg_fused", "xformer"))


def variant_config(base, name: str, seed: int, batch_size: int = 0):
    """A copy of the stage-1 config `base` for one variant and seed (and batch size, unless 0)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; available: {', '.join(VARIANTS)}")
    config = copy.deepcopy(base)
    kind, rec_weight = VARIANTS[name]
    config.model.fusion.kind = kind
    config.loss.weights.rec = rec_weight
    config.model.itg_context = "fused" if name in FUSED_ITG else config.model.itg_context
    config.seed = seed
    config.batch_size = batch_size or config.batch_size
    return config


def run_metrics(scores: dict) -> dict[str, float]:
    """The figures the table compares, from one run's recipe.evaluate scores (or a blind baseline's VQA scores)."""
    vqa = scores.get("vqa", scores)
    metrics = {"vqa": vqa["accuracy"], **{t: vqa["per_question_type"][t] for t in QUESTION_TYPES}}
    if "caption" in scores:
        metrics["CIDEr"] = scores["caption"]["CIDEr"]
        metrics["facts"] = scores["attributes"]["score"]
    return metrics


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """{variant: {metric: {"mean", "std", "n"}}} over that variant's runs (std over seeds, ddof 0)."""
    summary = {}
    for name, results in runs.items():
        metrics = [run_metrics(r) for r in results]
        summary[name] = {key: {"mean": float(np.mean([m[key] for m in metrics])),
                               "std": float(np.std([m[key] for m in metrics])), "n": len(metrics)}
                         for key in metrics[0]}
    return summary


def paired(runs: dict[str, list[dict]], variant: str, baseline: str) -> dict[str, dict]:
    """{metric: {"mean", "std", "n", "wins"}} of variant minus baseline over the seeds both ran (run i of
    each is seed i): the same towers, LLM and data order, so seed-to-seed noise partly cancels."""
    pairs = list(zip(runs[variant], runs[baseline]))
    deltas = [{k: v - run_metrics(b)[k] for k, v in run_metrics(a).items()} for a, b in pairs]
    return {k: {"mean": float(np.mean([d[k] for d in deltas])), "std": float(np.std([d[k] for d in deltas])),
                "n": len(deltas), "wins": sum(d[k] > 0 for d in deltas)} for k in deltas[0]}


def markdown(summary: dict[str, dict[str, dict]]) -> str:
    """One row per variant: mean ± std over seeds of every metric (a metric a row lacks shows as —)."""
    columns = list(dict.fromkeys(key for row in summary.values() for key in row))
    lines = ["| variant | seeds | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 2) + "|"]
    for name, row in summary.items():
        cells = [f"{row[k]['mean']:.1f} ± {row[k]['std']:.1f}" if k in row else "—" for k in columns]
        lines.append(f"| {name} | {next(iter(row.values()))['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stage1_steps", type=int, default=100)
    parser.add_argument("--stage2_steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=16, help="both stages")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    workdir = os.path.abspath(args.workdir)
    # Seeds of one variant compile the same programs: later runs find them in this cache.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    timer = recipe.Timer(log=lambda line: print(line, file=sys.stderr, flush=True))

    stage1, stage2 = demo_config.get_config("stage1"), demo_config.get_config("stage2")
    stage1.data.path = os.path.join(workdir, "data")
    stage1.total_steps, stage2.total_steps = args.stage1_steps, args.stage2_steps
    stage1.eval_every = stage2.eval_every = 0  # the table scores the test split; no held-out curves needed
    stage2.batch_size = args.batch_size
    budget = recipe.Budget()
    parts = recipe.prepare_parts(stage1, stage2, workdir, budget, timer)
    runs = {}
    for name in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{name} seed {seed}", file=sys.stderr, flush=True)
            result = recipe.run(variant_config(stage1, name, seed, args.batch_size), stage2, parts,
                                os.path.join(workdir, "runs", f"{name}_seed{seed}"), budget, timer)
            runs.setdefault(name, []).append(result.scores[SPLIT])
            print(f"{name} seed {seed}: {json.dumps(run_metrics(result.scores[SPLIT]))}", file=sys.stderr, flush=True)
    blind = recipe.blind_baselines(parts.paths, os.path.join(workdir, "blind"), SPLIT)
    summary = {**aggregate(runs), **{f"blind: {name}": aggregate({name: [scores]})[name]
                                     for name, scores in blind.items()}}
    comparisons = {f"{a} - {b}": paired(runs, a, b) for a, b in COMPARISONS if a in runs and b in runs}
    print(json.dumps({"split": SPLIT, "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps,
                      "batch_size": args.batch_size, "summary": summary, "paired": comparisons, "runs": runs,
                      "seconds": timer.seconds}))
    print(markdown(summary))
    for name, deltas in comparisons.items():
        print(f"\npaired, {name} (mean ± std over seeds; wins = seeds where the first is higher):\n")
        print("| metric | difference | wins |\n| --- | --- | --- |")
        for metric, d in deltas.items():
            print(f"| {metric} | {d['mean']:+.1f} ± {d['std']:.1f} | {d['wins']} / {d['n']} |")


if __name__ == "__main__":
    main()
