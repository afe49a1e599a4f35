"""GFLOP/s of single float32 matmuls, XLA (jax.jit) against PyTorch, at the stage-1 step's shapes.

The stage-1 step spends most of its time in matmuls (benchmarks/step_profile.py), so the rate of the
backend's matmul kernels bounds how far the whole step can get ahead of PyTorch's. Shapes (m, k, n) are
the demo config's: Q-Former FFN in / out over the 3B ITM pairs' text rows, the tied LM head, weight
gradients, attention projections and per-head attention scores.

  python benchmarks/matmul_rates.py --threads 1
"""
import argparse
import json

import common

THREADS = common.limit_threads()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES = {"ffn_in": (1152, 384, 1536), "ffn_out": (1152, 1536, 384), "lm_head": (368, 384, 30523),
          "ffn_weight_grad": (384, 1152, 1536), "attention_projection": (1536, 384, 384),
          "attention_scores (per head)": (18432, 32, 32)}


def rates(m: int, k: int, n: int, iters: int) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    ja, jb = jax.device_put(a), jax.device_put(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2.0 * m * k * n
    jax_s = common.time_calls(lambda: matmul(ja, jb).block_until_ready(), warmup=2, iters=iters)
    torch_s = common.time_calls(lambda: ta @ tb, warmup=2, iters=iters)
    return {"m_k_n": [m, k, n], "jax_gflop_per_s": flops / jax_s / 1e9, "torch_gflop_per_s": flops / torch_s / 1e9,
            "ratio": torch_s / jax_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="pin to this many cores (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    results = {name: rates(*shape, args.iters) for name, shape in SHAPES.items()}
    print(json.dumps({"matmuls": results, "machine": {**common.machine(), "threads": THREADS}}, indent=2))


if __name__ == "__main__":
    main()
