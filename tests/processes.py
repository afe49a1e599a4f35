"""Launch scripts run as subprocesses by the tests: their environment (fake CPU devices, the shared
compilation cache), an output reader that never blocks, and a wait that kills on timeout."""
import os
import pathlib
import queue
import subprocess
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# The suite is mostly XLA:CPU compiles of tiny programs: LLVM at -O0 compiles them about a third faster
# (the same losses to the last bit on the tiny stage-1 step) and runs them slower, which tiny sizes do not feel.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def subprocess_env(num_devices: int) -> dict:
    env = dict(os.environ)
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices} {TEST_XLA_FLAGS}", JAX_PLATFORMS="cpu",
               HF_HUB_OFFLINE="1", JAX_COMPILATION_CACHE_DIR=str(REPO / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", PYTHONUNBUFFERED="1")
    return env


class OutputReader:
    """Drains a subprocess's stdout in a thread (so it never blocks on a full pipe)."""

    def __init__(self, proc):
        self.proc, self.lines, self._queue = proc, [], queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)

    def wait_for(self, predicate, timeout, others=()):
        """Returns the first new line matching `predicate`; fails on timeout or when this process or
        one of `others` (OutputReaders) exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1.0)
            except queue.Empty:
                if any(r.proc.poll() is not None for r in (self, *others)):
                    break
                continue
            if predicate(line):
                return line
        raise AssertionError("no matching output line (timed out or a process exited):\n" + outputs(self, *others))

    def text(self):
        self._thread.join(timeout=10)
        return "".join(self.lines)


def outputs(*readers) -> str:
    return "\n".join(f"--- process {i} (exit code {r.proc.poll()}):\n" + "".join(r.lines)[-4000:]
                     for i, r in enumerate(readers))


def finish(readers, timeout):
    """Waits for every process; kills them all on timeout. Returns their outputs."""
    deadline = time.monotonic() + timeout
    try:
        for reader in readers:
            reader.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError("timed out:\n" + outputs(*readers))
    finally:
        for reader in readers:
            if reader.proc.poll() is None:
                reader.proc.kill()
                reader.proc.wait()
    return [reader.text() for reader in readers]
