"""Shared timing helpers for the benchmark scripts (each prints one JSON object)."""
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
