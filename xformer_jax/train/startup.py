"""What a run says before its first step: the mesh and its devices, the parameter counts, where each part's
weights come from, how long the run is in steps and in epochs over the data, and how long the train step
took to compile. Pure functions of the run's objects, returning lines; the loop prints them on process 0."""
from __future__ import annotations

import math
from typing import Mapping, Optional

import jax
import ml_collections
import numpy as np

from xformer_jax.factory.sections import WEIGHT_SOURCES

def mesh_line(mesh) -> str:
    devices = mesh.devices.reshape(-1)
    kinds = "/".join(sorted({d.device_kind for d in devices}))
    axes = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return f"mesh {axes}: {len(devices)} x {kinds} ({devices[0].platform}), {jax.process_count()} process(es)"


def count(tree) -> int:
    return int(sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(tree)))


def params_line(trainable, frozen) -> str:
    trainable_n, frozen_n = count(trainable), count(frozen)
    return (f"parameters: {_millions(trainable_n)} trainable, {_millions(frozen_n)} frozen "
            f"({_millions(trainable_n + frozen_n)} in all)")


def config_source(model: ml_collections.ConfigDict, part: str) -> str:
    """`config.model.vision.hf_dir=/ckpt/clip`: the key (and its value) that gave `part` its weights."""
    keys = [key for key in WEIGHT_SOURCES.get(part, ()) if model[part].get(key)]
    return f"config.model.{part}.{keys[0]}={model[part][keys[0]]}" if keys else f"config.model.{part}"


def sources_lines(sources: Mapping[str, str]) -> list[str]:
    """One line per top-level component of the params (vision, qformer, mae, dual, llm, llm_proj, ...)."""
    width = max(map(len, sources), default=0)
    return [f"weights of {name:<{width}}  {source}" for name, source in sources.items()]


def run_line(start: int, end: int, total_steps: int, batch_size: int, examples: int) -> str:
    """`steps 1-1000 of 1000, batch 64 = 64,000 examples: 3.20 epochs of 20,000 examples`."""
    seen = total_steps * batch_size
    epochs = f"{seen / examples:.2f} epochs of {examples:,} examples" if examples else "no examples counted"
    this = (f"steps {start + 1}-{end} of {total_steps}" if end > start
            else f"nothing to do: at step {start} of {total_steps}")
    return f"run: {this}, batch {batch_size}; the whole run is {seen:,} examples = {epochs}"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e4 else str(n)


def say(lines, process_index: Optional[int] = None) -> None:
    """Prints `lines` (a str or a list of them) on process 0 only."""
    if (jax.process_index() if process_index is None else process_index) != 0:
        return
    for line in [lines] if isinstance(lines, str) else lines:
        print(line, flush=True)

