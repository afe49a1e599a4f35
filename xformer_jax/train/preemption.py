"""Turns SIGTERM (TPU / cluster preemption notice) into a flag the training loop polls.

    with PreemptionGuard() as guard:
        for step in ...:
            ...
            if guard.should_stop(step):      # every process, same steps
                ckpt.save(step, state, it, force=True)
                break

The handler only sets a flag; the loop decides where to stop, so the checkpoint holds a whole step.
Multi-host: SIGTERM can reach hosts at different steps. `should_stop` all-gathers every process's
flag and stops everywhere if any host was signalled, so all processes stop at the same step and join
the same final save. That all-gather waits for the device to finish the step, so it runs only every
`poll_every` steps (config.checkpoint.preemption_poll_every): between polls the host keeps queueing
steps; the price is up to poll_every - 1 more steps before the save. Our handler replaces any SIGTERM handler installed
earlier (including JAX's preemption-sync service that orbax's `reached_preemption` reads); the
previous handlers come back on exit.
"""
from __future__ import annotations

import logging
import signal
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
    """Context manager catching `signals` (SIGTERM; add SIGINT to make Ctrl-C save and stop)."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM,), poll_every: int = 1):
        if not isinstance(poll_every, int) or poll_every < 1:
            raise ValueError(f"config.checkpoint.preemption_poll_every={poll_every!r} must be a positive int")
        self.signals = tuple(signals)
        self.poll_every = poll_every
        self._requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if not self._requested:
            logging.warning("received %s: stopping after this step", signal.Signals(signum).name)
        self._requested = True

    def __enter__(self) -> "PreemptionGuard":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        """This process received a signal (local view; use `should_stop` to act on it)."""
        return self._requested

    def should_stop(self, step: int) -> bool:
        """True on every process once any process was signalled. Multi-host, a collective at every
        poll_every-th step (False between): call it from every process at the same steps."""
        if jax.process_count() == 1:
            return self._requested
        if step % self.poll_every:
            return False
        flags = multihost_utils.process_allgather(np.array(self._requested))
        return bool(np.any(flags))
