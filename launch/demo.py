"""`make demo`: the whole recipe on the built-in synthetic data, on CPU, with no downloads.

1. writes the synthetic scenes dataset (captions + VQA) under WORKDIR/data;
2. pretrains the small CLIP and MAE towers (WORKDIR/towers) and prints linear probes of what their
   frozen features encode; trains a byte-level BPE plus the small OPT on descriptions followed by
   captions / questions and answers (WORKDIR/llm);
3. trains stage 1 (`configs/demo.py:stage1`, Q-Former from the real MiniLM BERT) and stage 2
   (`configs/demo.py:stage2`, the queries as prefix of the frozen OPT, captions only);
4. evaluates, on the validation and the test split, zero-shot VQA per question type against two blind
   answerers (the training prior and the best constant answer per type) and against the same model asked
   each question about another image (shuffled images), and captions (CIDEr-D and the
   colour / shape / count facts they state, against the best blind caption); stage-1 ITM accuracy on
   held-out pairs, the reconstruction through M' against the MAE's own, ITC retrieval, and the towers' probes
   applied to the stage-2 queries the LLM reads (`evaluation.prefix_probes`, with how alike an image's queries
   are); prints tables;
5. draws WORKDIR/loss_curves.png (both stages, training and held-out), WORKDIR/reconstruction.png (image /
   masked input / reconstruction) and WORKDIR/examples.png (test images, generated captions and answers
   marked right or wrong).
Every phase is reused when its output is already there. The code is xformer_jax/proj/synthetic/'s.
"""
import logging
import os

import script_args  # launch/script_args.py, beside this script
from xformer_jax import storage
from xformer_jax.configs import demo as demo_config
from xformer_jax.proj.synthetic import demo, parts


def main():
    parser = script_args.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="workdir/demo", help="a local directory (the demo's caches, "
                        "plots and synthetic data live on local disk)")
    parser.add_argument("--scale", type=float, default=1.0, help="every training length (towers, LLM, stage 1, "
                        "stage 2) times this: 1 fits 15 minutes on 2 CPU cores; a GPU affords more")
    args = parser.parse_args()
    if storage.is_url(args.workdir):
        parser.error(f"--workdir={args.workdir}: the demo runs in a local directory; a bucket is for "
                     "launch/train.py runs")
    if not args.scale > 0:
        parser.error(f"--scale={args.scale}: must be > 0")
    logging.getLogger().setLevel(logging.WARNING)
    stage1, stage2, budget = parts.scaled(demo_config.get_config("stage1"), demo_config.get_config("stage2"),
                                          parts.Budget(), args.scale)
    demo.run_demo(stage1, stage2, os.path.abspath(args.workdir), budget)


if __name__ == "__main__":
    main()
