"""The paper's comparison in miniature (benchmarks/mini_paper.py runs it): the fusion variants as config
changes, and the statistics over seeds its tables print.
"""
import copy

import numpy as np

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
DECIMALS = {"query cosine": 2}  # the table's other metrics are percentages or CIDEr: one decimal


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
    """The figures the table compares, from one run's evaluation.evaluate scores (or a blind baseline's VQA scores)."""
    vqa = scores.get("vqa", scores)
    metrics = {"vqa": vqa["accuracy"], **{t: vqa["per_question_type"][t] for t in QUESTION_TYPES}}
    if "caption" in scores:
        metrics["CIDEr"] = scores["caption"]["CIDEr"]
        metrics["facts"] = scores["attributes"]["score"]
    if "query_cosine" in scores:
        metrics["query cosine"] = scores["query_cosine"]
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


def mean_std(metric: str, stats: dict, signed: bool = False) -> str:
    """"mean ± std" of one metric's {"mean", "std"} at its decimals (DECIMALS; one by default)."""
    decimals = DECIMALS.get(metric, 1)
    return f"{stats['mean']:{'+' if signed else ''}.{decimals}f} ± {stats['std']:.{decimals}f}"


def markdown(summary: dict[str, dict[str, dict]]) -> str:
    """One row per variant: mean ± std over seeds of every metric (a metric a row lacks shows as —)."""
    columns = list(dict.fromkeys(key for row in summary.values() for key in row))
    lines = ["| variant | seeds | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 2) + "|"]
    for name, row in summary.items():
        cells = [mean_std(k, row[k]) if k in row else "—" for k in columns]
        lines.append(f"| {name} | {next(iter(row.values()))['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
