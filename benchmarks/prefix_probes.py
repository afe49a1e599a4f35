"""What a stage-2 model's queries pass on to its LLM: the tower probes applied to the LLM prefix.

`benchmarks/tower_probes.py` says what the frozen towers see (colour, shape, count per cell, colour per
cell, count of each present colour); this fits the same ridge probes (`xformer_jax.proj.synthetic.probes`) on the
queries after `llm_proj` of a trained stage-2 run (`evaluation.prefix_probes`), on the synthetic training
images, and scores them on the validation and test images. A task the towers read well and the prefix
does not is lost in the Q-Former.
Prints one JSON object.

  python benchmarks/prefix_probes.py --run=workdir/demo/stage2 --data=workdir/demo/data
"""
import argparse
import json
import logging
import os
import platform

from xformer_jax.data import synthetic
from xformer_jax.proj.synthetic import evaluation


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a stage-2 run directory (or one of its checkpoint steps)")
    parser.add_argument("--data", required=True, help="the synthetic dataset directory the run was trained on")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.WARNING)
    paths = synthetic.dataset_paths(args.data)
    if not os.path.exists(paths["info"]):
        raise SystemExit(f"--data={args.data}: no synthetic dataset there ({paths['info']} is missing)")
    result = {"machine": platform.processor() or platform.machine(), "run": args.run,
              **evaluation.prefix_probes(args.run, paths)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
