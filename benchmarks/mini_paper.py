"""The paper's comparison in miniature on the synthetic benchmark (X-Former Table 1 / ablations).

Fusion variants blip2, concat, early_xattn, xformer, xformer without the reconstruction loss and xformer
with ITG reading the fused queries (`model.itg_context="fused"`), each with several seeds: stage 1 and
stage 2 with the demo's small models and lengths (configs/demo.py), then zero-shot VQA accuracy per question
type, captioning (CIDEr-D, caption facts) and the mean cosine between two queries of an image in the LLM
prefix (evaluation.prefix_probes) on the test split, against the blind baselines of that split.
Runs of one seed share the data order, so besides mean ± std over seeds the script prints paired
differences (xformer - blip2, xformer - xformer_norec, xformer_itg_fused - xformer) with the number of
seeds each way. The towers, the tokenizer and the LLM are pretrained once and shared by every run (a
workdir that already holds the demo's parts reuses them); each run is one call of
`xformer_jax.proj.synthetic.stages.run`, so a rerun reuses finished runs (the variants and the statistics are
xformer_jax/proj/synthetic/mini_paper.py's). Prints one JSON object, then markdown tables.

  python benchmarks/mini_paper.py --workdir=workdir/demo [--variants=blip2,xformer,xformer_norec
      --seeds=0,1,2 --stage1_steps=200 --stage2_steps=600 --batch_size=16]  (steps: the demo's by default)
"""
import argparse
import contextlib
import json
import logging
import os
import sys

import jax

from xformer_jax.configs import demo as demo_config
from xformer_jax.proj.synthetic import cache, evaluation, parts as parts_lib, stages
from xformer_jax.proj.synthetic.mini_paper import (VARIANTS, aggregate, markdown, mean_std, paired, run_metrics,
                                                   variant_config)

SPLIT = "test"  # reported; nothing here is chosen on it
COMPARISONS = (("xformer", "blip2"), ("xformer", "xformer_norec"), ("xformer_itg_fused", "xformer"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stage1_steps", type=int, default=0, help="0: the demo's")
    parser.add_argument("--stage2_steps", type=int, default=0, help="0: the demo's")
    parser.add_argument("--batch_size", type=int, default=16, help="both stages")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    workdir = os.path.abspath(args.workdir)
    # Seeds of one variant compile the same programs: later runs find them in this cache.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
    timer = cache.Timer(log=lambda line: print(line, file=sys.stderr, flush=True))

    stage1, stage2 = demo_config.get_config("stage1"), demo_config.get_config("stage2")
    stage1.data.path = os.path.join(workdir, "data")
    stage1.total_steps = args.stage1_steps or stage1.total_steps
    stage2.total_steps = args.stage2_steps or stage2.total_steps
    stage1.eval_every = stage2.eval_every = 0  # the table scores the test split; no held-out curves needed
    stage2.batch_size = args.batch_size
    budget = parts_lib.Budget()
    parts = parts_lib.prepare_parts(stage1, stage2, workdir, budget, timer)
    runs = {}
    for name in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{name} seed {seed}", file=sys.stderr, flush=True)
            run_dir = os.path.join(workdir, "runs", f"{name}_seed{seed}")
            with contextlib.redirect_stdout(sys.stderr):  # training progress lines: stdout keeps the JSON
                result = stages.run(variant_config(stage1, name, seed, args.batch_size), stage2, parts, run_dir,
                                    budget, timer, splits=(SPLIT,))
            # Collapsed queries (cosine near 1) leave the LLM one token read Q times: say so for every run.
            probes = evaluation.prefix_probes(os.path.join(run_dir, "stage2"), parts.paths,
                                          os.path.join(run_dir, "eval", "prefix_probes"))
            scores = {**result.scores[SPLIT], "query_cosine": probes["query_cosine"], "prefix_probes": probes["prefix"]}
            runs.setdefault(name, []).append(scores)
            print(f"{name} seed {seed}: {json.dumps(run_metrics(scores))}", file=sys.stderr, flush=True)
    blind = evaluation.blind_baselines(parts.paths, os.path.join(workdir, "blind"), SPLIT)
    summary = {**aggregate(runs), **{f"blind: {name}": aggregate({name: [scores]})[name]
                                     for name, scores in blind.items()}}
    comparisons = {f"{a} - {b}": paired(runs, a, b) for a, b in COMPARISONS if a in runs and b in runs}
    print(json.dumps({"split": SPLIT, "stage1_steps": stage1.total_steps, "stage2_steps": stage2.total_steps,
                      "batch_size": args.batch_size, "summary": summary, "paired": comparisons, "runs": runs,
                      "seconds": timer.seconds}))
    print(markdown(summary))
    for name, deltas in comparisons.items():
        print(f"\npaired, {name} (mean ± std over seeds; wins = seeds where the first is higher):\n")
        print("| metric | difference | wins |\n| --- | --- | --- |")
        for metric, d in deltas.items():
            print(f"| {metric} | {mean_std(metric, d, signed=True)} | {d['wins']} / {d['n']} |")


if __name__ == "__main__":
    main()
