"""A step's metrics on the host one step late, checked for non-finite losses, so the loop never waits on
the step it has just dispatched.

Reading a step's metrics (`jax.device_get`) waits for that step. If the loop read step N right after
dispatching it, the host would prepare step N+1 (next batch, host-to-device transfer) only once the
device sat idle. `PendingMetrics` reads step N after step N+1 is queued (MaxText's metric logger does
the same), and reads every pending step before a checkpoint save, a log line, an evaluation and at the
end, so a non-finite loss still stops the run, naming its step and term, before any state that came
out of that step (or a later one) is saved.
"""
import math
from typing import Callable, Optional

import jax


class NonFiniteLoss(FloatingPointError):
    pass


def check_finite(step: int, metrics: dict) -> None:
    """NonFiniteLoss naming the step and every non-finite loss term. grad_norm is checked too: a
    finite loss with non-finite gradients has already poisoned the updated state."""
    checked = sorted(k for k in metrics if k.startswith("loss")) + [k for k in ("grad_norm",) if k in metrics]
    bad = {key: float(metrics[key]) for key in checked if not math.isfinite(float(metrics[key]))}
    if bad:
        terms = ", ".join(f"{key} is {value}" for key, value in bad.items())
        raise NonFiniteLoss(f"step {step}: {terms}; stopping. The last checkpoint (if any) was saved "
                            "before this step and is intact.")


class PendingMetrics:
    """Dispatched steps' metrics, read `lag` steps late (0: right after each step, which waits on it)."""

    def __init__(self, lag: int = 1, fetch: Callable = jax.device_get):
        if lag not in (0, 1):
            raise ValueError(f"metrics lag {lag!r} must be 0 (read each step at once) or 1 (one step late)")
        self._fetch, self._lag = fetch, lag
        self._queue: list = []  # [(step, metrics still on the device)], oldest first
        self.newest: Optional[dict] = None  # host metrics of the newest step read

    def add(self, step: int, metrics) -> None:
        """Queues the metrics of the step just dispatched; reads and checks the steps before the last `lag`."""
        self._queue.append((step, metrics))
        self._read(keep=self._lag)

    def flush(self) -> dict:
        """Reads and checks every pending step; returns the newest step's host metrics."""
        self._read(keep=0)
        return self.newest

    def _read(self, keep: int) -> None:
        while len(self._queue) > keep:
            step, metrics = self._queue.pop(0)
            self.newest = self._fetch(metrics)
            check_finite(step, self.newest)
