"""Training metrics: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard scalars
under WORKDIR/tb, and a console progress line. Only process 0 writes files.

Every `write` reaches storage before it returns, so a crash loses nothing already logged: a local file
is appended, flushed and fsync'd; an object-store file (gs://), which cannot be appended to, is
uploaded whole again (a few hundred bytes per logged step). On resume, `truncate_after(restored_step)`
drops the entries the crashed run logged past its last checkpoint, so the file of a resumed run equals
that of an uninterrupted one. TensorBoard event files in a bucket are written the same way: tensorboardX
is given a writer (`ObjectStoreEvents`) that uploads the file whole on each flush through `storage`.
"""
from __future__ import annotations

import io
import json
import os
import time
from typing import Mapping, Optional

import jax
import tensorboardX

from xformer_jax import storage


class ObjectStoreEvents:
    """tensorboardX's writer of one event file in an object store: objects cannot be appended to, so each
    flush uploads the whole file (scalars only: a few KB). tensorboardX's own GCS writer needs
    google-cloud-storage and uploads once more from `__del__`, at interpreter exit."""

    def __init__(self, path: str):
        self.path, self.buffer = path, io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        storage.write(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectStoreEventsFactory:
    def open(self, path: str) -> ObjectStoreEvents:
        return ObjectStoreEvents(path)

    def directory_check(self, path: str) -> None:
        del path  # object stores have no directories to make


for _scheme in ("gs", "s3"):
    tensorboardX.record_writer.register_writer_factory(_scheme, _ObjectStoreEventsFactory())


class MetricsWriter:

    def __init__(self, workdir: str, total_steps: int):
        self.total_steps = total_steps
        self.is_writer = jax.process_index() == 0
        self.path = storage.join(workdir, "metrics.jsonl")
        self.tb_dir = storage.join(workdir, "tb")
        self._remote = storage.is_url(workdir)
        self._file = None
        self._lines: Optional[list[str]] = None  # an object-store file's whole text, rewritten on each write
        self._tb = None
        self._purge_step = None
        self._start: Optional[tuple[float, int]] = None  # (time, step) of the first progress line
        if self.is_writer:
            storage.makedirs(workdir)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        """Appends {"step": step, **metrics} (values as floats) and the TensorBoard scalars."""
        if not self.is_writer:
            return
        record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._append(json.dumps(record) + "\n")
        if self._tb is None:
            self._tb = tensorboardX.SummaryWriter(self.tb_dir, purge_step=self._purge_step)
        for key, value in record.items():
            if key != "step":
                self._tb.add_scalar(key, value, int(step))
        self._tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drops metrics.jsonl entries with step > `step` (and a torn last line); TensorBoard hides
        events from step + 1 on when the next event is written (tensorboardX purge_step)."""
        if not self.is_writer:
            return
        self.close()
        self._purge_step = step + 1
        if not storage.exists(self.path):
            self._lines = []
            return
        kept = []
        for line in storage.read_text(self.path).splitlines(keepends=True):
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
            except (json.JSONDecodeError, KeyError):
                continue  # torn write from a crash
        storage.write_lines(self.path, kept)
        self._lines = kept

    def _append(self, line: str) -> None:
        if self._remote:
            if self._lines is None:
                self._lines = storage.read_text(self.path).splitlines(keepends=True) if storage.exists(self.path) else []
            self._lines.append(line)
            storage.write_lines(self.path, self._lines)
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def progress_line(self, step: int, metrics: Mapping[str, float], examples_per_sec: float) -> str:
        """`step 120/1000 (12.0%) loss 3.2100 loss_itc 1.0500 ... | 512.3 ex/s | eta 0:14:02`.

        ETA uses the mean step time since this writer's first progress line. Printed on process 0.
        """
        now = time.time()
        if self._start is None:
            self._start = (now, step)
        elapsed, done = now - self._start[0], step - self._start[1]
        eta = "?"
        if done > 0:
            seconds = int(elapsed / done * max(self.total_steps - step, 0))
            eta = f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        terms = " ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
        line = (f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:.1f}%) {terms} | "
                f"{examples_per_sec:.1f} ex/s | eta {eta}")
        if self.is_writer:
            print(line, flush=True)
        return line

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
