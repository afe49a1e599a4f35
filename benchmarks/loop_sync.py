"""examples/s of `loop.train` when the host reads every step's metrics at once (waiting on the device each
step, the loop before 2026-11-30) and when it reads them one step late (`metrics_lag=1`, the default).

  python -m benchmarks.loop_sync                       # configs/demo.py:stage1, 40 steps per run
  python -m benchmarks.loop_sync --steps 60 --rounds 2 --log_every 10

Each round trains the demo config from scratch once per mode (the order alternates between rounds), logging
every `log_every` steps; a run's rate is the mean examples/s of its logged intervals after the first (which
holds compilation). Checkpoints only at the end, no evaluation. Prints one JSON object: the machine, the
per-run rates and `speedup` (lag 1 over lag 0, ratio of the medians).
"""
import argparse
import json
import os
import platform
import statistics
import tempfile

from benchmarks import common
from configs import demo
from xformer_jax.train import loop


def run(steps: int, log_every: int, batch: int, lag: int, root: str, name: str) -> float:
    config = demo.get_config("stage1")
    config.update(total_steps=steps, log_every=log_every, checkpoint_every=10 * steps, eval_every=0)
    config.optim.warmup_steps = 1  # the demo's 20 would not fit a short run
    if batch:
        config.batch_size = batch
    config.data.path = os.path.join(root, "data")
    workdir = os.path.join(root, name)
    loop.train(config, workdir, metrics_lag=lag)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rates = [json.loads(line)["examples_per_sec"] for line in f]
    return statistics.fmean(rates[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--batch", type=int, default=0, help="0: the demo's batch size")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.steps < 2 * args.log_every:
        raise ValueError(f"--steps {args.steps} must cover at least two log intervals of {args.log_every}")
    rates = {0: [], 1: []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            for lag in ((0, 1) if r % 2 == 0 else (1, 0)):
                rates[lag].append(run(args.steps, args.log_every, args.batch, lag, root, f"round{r}_lag{lag}"))
    print(json.dumps({
        "machine": {**common.machine(), "cpu": platform.processor() or platform.machine()},
        "config": "configs/demo.py:stage1", "steps": args.steps, "log_every": args.log_every,
        "batch": args.batch or demo.get_config("stage1").batch_size,
        "examples_per_sec_sync_every_step": rates[0], "examples_per_sec_one_step_late": rates[1],
        "speedup": statistics.median(rates[1]) / statistics.median(rates[0])}))


if __name__ == "__main__":
    main()
