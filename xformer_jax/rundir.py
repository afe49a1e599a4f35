"""A run directory (WORKDIR) and everything that reads or writes its files.

  WORKDIR/config.json        the run's whole ConfigDict (`write_config` / `read_config`): what training resumes,
                             `config.init_from`, generation, evaluation, retrieval and export rebuild the model from
  WORKDIR/checkpoints/STEP/  an orbax checkpoint with two items: "state" (the TrainState: params, frozen,
                             opt_state, rng, step) and "data_iter" (the grain iterator position);
                             `train.checkpointing.Checkpointer` writes them
Readers take "a workdir or a checkpoint path" (`resolve`): a workdir (its newest finalized step), its
checkpoints/ directory, or one step directory. `restore_params` reads a step's params (trainable and
frozen) alone, as host NumPy arrays or straight onto the shardings of a mesh: no optimizer is built and
the optimizer state is never read. Nothing here knows the model; the layers above pass it shardings.
"""
import dataclasses
import logging
from typing import Any, Optional

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from xformer_jax import storage

CONFIG_FILE = "config.json"
CHECKPOINTS = "checkpoints"
STATE, DATA_ITER = "state", "data_iter"  # the checkpoint's items
PARAM_GROUPS = ("params", "frozen")  # the TrainState fields that hold the model's params


def item_handlers() -> dict:
    """The handlers of both items: a manager that reads only the state still needs both, or orbax warns
    that it found an item it cannot restore."""
    return {STATE: ocp.StandardCheckpointHandler(), DATA_ITER: grain.checkpoint.CheckpointHandler()}


def checkpoints_dir(workdir: str) -> str:
    return storage.join(storage.absolute(workdir), CHECKPOINTS)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """WORKDIR/config.json, written whole by process 0."""
    if jax.process_index() != 0:
        return
    storage.write(storage.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
    path = storage.join(workdir, CONFIG_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: a run directory holds the config.json that launch/train.py "
                                "or launch/convert.py wrote")
    try:
        return ml_collections.ConfigDict(storage.read_json(path))
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One finalized step of a run: its workdir, its step directory and the step."""
    workdir: str
    directory: str
    step: int


def latest_step(directory: str) -> Optional[int]:
    """The newest finalized step in a checkpoints/ directory, or None."""
    with ocp.CheckpointManager(directory, item_handlers=item_handlers()) as manager:
        return manager.latest_step()


def resolve(path: str) -> Checkpoint:
    """The checkpoint `path` names: a workdir (its newest finalized step), its checkpoints/ directory, or
    one step directory (WORKDIR/checkpoints/N)."""
    path = storage.absolute(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    name, parent = storage.basename(path), storage.dirname(path)
    if name.isdigit() and storage.basename(parent) == CHECKPOINTS:
        if not storage.isdir(storage.join(path, STATE)):
            raise FileNotFoundError(f"{path} is not a finished checkpoint (no {STATE}/ inside)")
        return Checkpoint(storage.dirname(parent), path, int(name))
    directory = path if name == CHECKPOINTS else storage.join(path, CHECKPOINTS)
    if not storage.isdir(directory):
        raise FileNotFoundError(f"{path} is neither a workdir (with {CHECKPOINTS}/), a {CHECKPOINTS} directory nor "
                                f"a step directory WORKDIR/{CHECKPOINTS}/N")
    step = latest_step(directory)
    if step is None:
        raise FileNotFoundError(f"no finalized checkpoint in {directory}")
    return Checkpoint(storage.dirname(directory), storage.join(directory, str(step)), step)


def check_run(path: str, key: str, stage: Optional[str] = None) -> Checkpoint:
    """The checkpoint `path` names (`resolve`), or ValueError in one line naming `key` and `path`: a bucket
    that cannot be reached, nothing that is a run there, a run of another stage than `stage`."""
    storage.check_bucket(path, key)
    try:
        checkpoint = resolve(path)
        found = read_config(checkpoint.workdir).get("stage") if stage else None
    except FileNotFoundError as e:
        raise ValueError(f"{key}={path}: {e}") from None
    if stage and found != stage:
        raise ValueError(f"{key}={path}: holds a {found} run; a {stage} run is needed")
    return checkpoint


def restore_params(path: str, shardings: Optional[dict] = None) -> tuple[dict, Checkpoint]:
    """({component: params}, checkpoint): every param (trainable and frozen) of the checkpoint `path` names.

    Without `shardings` every saved param comes back as a host NumPy array. With `shardings` ({component:
    tree of jax.sharding.Sharding}, e.g. the model's param shardings) exactly those params are read, each
    straight onto its sharding (a checkpoint written on one mesh restores onto any other); a component the
    checkpoint lacks is an error naming it. Saved dtypes are kept (frozen towers may be stored in bfloat16).
    """
    checkpoint = resolve(path)
    state_dir = epath.Path(checkpoint.directory) / STATE
    handler = ocp.PyTreeCheckpointHandler()
    try:
        saved = handler.metadata(state_dir).tree
        if not set(PARAM_GROUPS) <= set(saved):
            raise ValueError(f"{state_dir} is not a train state checkpoint (has {sorted(saved)})")
        wanted = _wanted(saved, shardings, state_dir)
        item = jax.tree.map(lambda _: np.zeros((), np.float32), wanted)
        restore_args = jax.tree.map(_restore_arg, wanted)
        restored = handler.restore(state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                          partial_restore=True))
    finally:
        handler.close()
    logging.info("params of %s step %d", checkpoint.workdir, checkpoint.step)
    return {name: value for group in PARAM_GROUPS for name, value in restored[group].items()}, checkpoint


def _wanted(saved: dict, shardings: Optional[dict], state_dir) -> dict:
    """{group: {component: leaves}}: the saved params (metadata leaves), or the given shardings regrouped as saved."""
    if shardings is None:
        return {group: saved[group] for group in PARAM_GROUPS}
    group_of = {name: group for group in PARAM_GROUPS for name in saved[group]}
    missing = sorted(set(shardings) - set(group_of))
    if missing:
        raise ValueError(f"{state_dir} has no params for {missing} (it has {sorted(group_of)})")
    return {group: {name: tree for name, tree in shardings.items() if group_of[name] == group}
            for group in PARAM_GROUPS}


def _restore_arg(leaf: Any) -> ocp.RestoreArgs:
    if isinstance(leaf, jax.sharding.Sharding):
        return ocp.ArrayRestoreArgs(sharding=leaf)
    return ocp.RestoreArgs(restore_type=np.ndarray)
