"""Shared timing helpers for the benchmark scripts (each prints one JSON object)."""
import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def limit_threads() -> int:
    """--threads N (call before jax / torch start): pin the process to N cores; returns the thread count.

    XLA's CPU thread pool (which also runs independent ops concurrently, so XLA's single-threaded-Eigen
    flag alone still uses every core) sizes itself from the affinity mask; torch is told N threads.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--threads", type=int, default=0)
    threads = pre.parse_known_args()[0].threads
    if threads <= 0 or threads >= os.cpu_count():
        return os.cpu_count()
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[-threads:])
    return threads


def time_calls(fn, warmup: int, iters: int) -> float:
    """Seconds per call after `warmup` calls; `fn` must block until its result is ready."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def machine() -> dict:
    import jax
    import torch
    return {"jax_backend": jax.default_backend(), "jax_devices": jax.device_count(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "jax": jax.__version__, "torch": torch.__version__}


def synthetic_batch(model_config, batch: int, max_len: int, seed: int = 0) -> dict:
    """Images of the towers' shapes and right-padded token ids with varied lengths (>= 4 tokens)."""
    rng = np.random.default_rng(seed)
    v, m, q = model_config.vision, model_config.mae, model_config.qformer
    lengths = rng.integers(min(4, max_len), max_len + 1, size=batch)
    mask = (np.arange(max_len)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, min(q.vocab_size - 1, 30000), size=(batch, max_len)).astype(np.int32)
    ids[:, 0] = 101  # [CLS]
    ids[np.arange(batch), lengths - 1] = 102  # [SEP]
    ids = np.where(mask == 1, ids, q.pad_token_id).astype(np.int32)
    return {"pixel_values": rng.normal(size=(batch, 3, v.image_size, v.image_size)).astype(np.float32),
            "mae_pixel_values": rng.normal(size=(batch, 3, m.image_size, m.image_size)).astype(np.float32),
            "input_ids": ids, "attention_mask": mask, "image_id": np.arange(batch, dtype=np.int32)}


def compiled_cost(compiled) -> tuple[float, float]:
    """(FLOPs, bytes accessed) per call from XLA's cost analysis of a compiled computation."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan"))), float(analysis.get("bytes accessed", float("nan")))


def xla_flops(step_fn, state, batch) -> tuple[float, float]:
    """FLOPs per step from XLA's cost analysis of the compiled step (its own estimate of the HLO)."""
    return compiled_cost(step_fn.lower(state, batch).compile())


def count_params(tree) -> int:
    import jax
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
