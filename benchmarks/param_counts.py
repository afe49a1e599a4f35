"""Parameter counts of the stage-1 model at the paper's sizes, per fusion variant (no weights: jax.eval_shape).

  python benchmarks/param_counts.py                      # configs/paper.py, every variant
  python benchmarks/param_counts.py --config=configs/demo.py:stage1 --variants=xformer

Prints one JSON object: per variant total / trainable / frozen (vision, mae) counts, the top-level
breakdown, and the trainable params each variant adds over blip2 (the paper: X-Former adds ~20M).
"""
import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from xformer_jax import factory, partitioning  # noqa: E402
from xformer_jax.configs import cli  # noqa: E402
from xformer_jax.models import xformer  # noqa: E402

# name -> (fusion.kind, fusion.placement)
VARIANTS = {
    "blip2": ("blip2", "after_qformer"),
    "concat": ("concat", "after_qformer"),
    "early_xattn": ("early_xattn", "after_qformer"),
    "xformer": ("xformer", "after_qformer"),
    "xformer_per_xattn_layer": ("xformer", "per_xattn_layer"),
}
FUSION_KEYS = ("dual", "duals", "mae_xattn", "mae_to_clip")


def _size(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def count(model_cfg) -> dict:
    """Counts for one `config.model` section (shapes only)."""
    config = factory.stage1_config(model_cfg)
    model = xformer.Stage1Model(config)
    params = partitioning.unbox(jax.eval_shape(factory.init_fn(model, config), jax.random.key(0)))
    trainable, frozen = xformer.split_params(params)
    breakdown = {k: _size(v) for k, v in params.items()}
    fusion_keys = [k for k in params if k.startswith(FUSION_KEYS)]
    out = {
        "total": _size(params),
        "trainable": _size(trainable),
        "frozen": _size(frozen),
        "frozen_vision": breakdown.get("vision", 0),
        "frozen_mae": breakdown.get("mae", 0),
        "qformer": breakdown.get("qformer", 0),
        "fusion": sum(breakdown[k] for k in fusion_keys),
        "breakdown": breakdown,
    }
    if "mae" in params:
        # variants that never reconstruct do not build (or store) the MAE decoder
        out["frozen_mae_encoder"] = _size(params["mae"].get("encoder", {}))
        out["frozen_mae_decoder"] = _size(params["mae"].get("decoder", {}))
    return out


def counts(config, variants=tuple(VARIANTS)) -> dict:
    results = {}
    for name in variants:
        kind, placement = VARIANTS[name]
        model_cfg = config.model.copy_and_resolve_references()
        model_cfg.fusion.update(kind=kind, placement=placement)
        results[name] = count(model_cfg)
    if "blip2" in results:
        base = results["blip2"]["trainable"]
        for r in results.values():
            r["extra_trainable_over_blip2"] = r["trainable"] - base
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/paper.py:stage1")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    start = time.perf_counter()
    results = counts(cli.load_file(args.config), variants)
    print(json.dumps({"config": args.config, "variants": results,
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))


if __name__ == "__main__":
    main()
