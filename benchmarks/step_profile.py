"""Where the stage-1 train step's time goes: XLA's own trace of the jitted step, by op kind and by pass.

Traces a few steps with jax.profiler, reads the trace back (jax.profiler.ProfileData) and joins every
executed op with its instruction in the compiled step's HLO, which says whether it is a matmul (a dot,
or a library fusion around one), how many FLOPs it does and which model code made it (op_name
metadata). Prints one JSON object: step seconds, matmul time / GFLOP / GFLOP/s and share, time by pass
(ITM, ITC text, ITG text, LM head, image queries, fusion, towers, optimizer) split into matmul and
other ops, forward and backward, and the slowest ops (the analysis is xformer_jax/plan/profile.py's).

  python benchmarks/profile.py --threads 1     # configs/demo.py:stage1 sizes on one core
  python benchmarks/profile.py --small         # xformer_jax/configs/tiny.py sizes, a quick check
"""
import argparse
import json

import common

THREADS = common.limit_threads()

import jax  # noqa: E402

import stage1_step  # noqa: E402
from xformer_jax import factory  # noqa: E402
from xformer_jax.plan import profile  # noqa: E402
from xformer_jax.train import loop  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="traced steps (after two untraced ones)")
    parser.add_argument("--small", action="store_true", help="xformer_jax/configs/tiny.py sizes")
    parser.add_argument("--top", type=int, default=15, help="how many of the slowest ops to list")
    parser.add_argument("--threads", type=int, default=0, help="pin to this many cores (0: all)")
    args = parser.parse_args()

    config = stage1_step.make_config(args.small, args.batch)
    model_config = factory.stage1_config(config.model)
    trainer = loop.make_trainer(config, load_pretrained=False)
    batch = trainer.global_batch(common.synthetic_batch(model_config, args.batch, config.data.max_len))
    holder = {"state": trainer.state}

    def step():
        holder["state"], _ = jax.block_until_ready(trainer.step_fn(holder["state"], batch))

    step_s = common.time_calls(step, warmup=2, iters=max(args.steps, 1))
    hlo = trainer.step_fn.lower(holder["state"], batch).compile().as_text()
    result = profile.summarise(profile.trace_ops(step, args.steps), hlo, step_s, args.top)
    result.update(config="xformer_jax/configs/tiny.py" if args.small else "configs/demo.py:stage1 (random Q-Former)",
                  batch=args.batch, machine={**common.machine(), "threads": THREADS})
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
