"""Test setup: 8 fake CPU devices, LLVM at -O0 (processes.TEST_XLA_FLAGS), offline Hugging Face, a persistent
compilation cache."""
import os
import pathlib

from processes import TEST_XLA_FLAGS  # noqa: E402

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import jax  # noqa: E402  (must come after XLA_FLAGS)

REPO = pathlib.Path(__file__).resolve().parents[1]
jax.config.update("jax_compilation_cache_dir", str(REPO / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still run in CI)")

