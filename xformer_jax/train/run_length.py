"""How many steps a run trains: `config.total_steps` when set; else `config.epochs` over the training data,
ceil(epochs * pairs / batch_size), where pairs is `config.dataset_size` when set (an override, for a source
one does not want counted) or the image-text pairs the configured sources hold, counted when the data
iterator indexes them. The count of a run's first start is kept in WORKDIR/data_count.json, so that a
resumed run keeps its schedule even if the data has grown since."""
import math
from typing import Optional

import jax
import ml_collections

from xformer_jax import storage

RECORD = "data_count.json"


def total_steps(config: ml_collections.ConfigDict, pairs: int) -> int:
    if config.total_steps is not None:
        return config.total_steps
    if config.get("epochs") is None:
        raise ValueError("config.total_steps and config.epochs are both unset: set one of them")
    if pairs < 1:
        raise ValueError(f"config.epochs={config.epochs}: the training data holds no pairs to count epochs over")
    return math.ceil(config.epochs * pairs / config.batch_size)


def pairs(config: ml_collections.ConfigDict, workdir: str, counted: int) -> tuple[int, str]:
    """(pairs, where the number comes from): config.dataset_size, the run's recorded count, or `counted`."""
    if config.get("dataset_size"):
        return config.dataset_size, "config.dataset_size"
    recorded = read(workdir)
    if recorded is not None:
        return recorded, f"counted at the run's first start ({storage.join(workdir, RECORD)})"
    return counted, f"counted in config.data.path={config.data.path}"


def with_total_steps(config: ml_collections.ConfigDict, workdir: str, counted: int) -> tuple[ml_collections.ConfigDict, str]:
    """(a copy of `config` with total_steps set, a line saying how it was chosen)."""
    out = config.copy_and_resolve_references()
    if config.total_steps is not None:
        return out, f"total_steps {config.total_steps} (config.total_steps)"
    number, source = pairs(config, workdir, counted)
    with out.unlocked():
        out.total_steps = total_steps(config, number)
    return out, (f"total_steps {out.total_steps} = config.epochs {config.epochs} x {number:,} pairs ({source}) / "
                 f"batch {config.batch_size}")


def read(workdir: str) -> Optional[int]:
    path = storage.join(workdir, RECORD)
    return int(storage.read_json(path)["pairs"]) if storage.exists(path) else None


def record(workdir: str, config: ml_collections.ConfigDict, counted: int) -> None:
    """WORKDIR/data_count.json at a run's first start (process 0): the pairs counted and where."""
    if jax.process_index() == 0 and read(workdir) is None:
        storage.write_json(storage.join(workdir, RECORD), {"pairs": counted, "data": config.data.path,
                                                           "kind": config.data.kind}, indent=2)
