"""Training's writer and resumer of the orbax checkpoints under WORKDIR/checkpoints/ (the layout and the
params-only reading are `xformer_jax.rundir`'s).

* Crash-safe: orbax writes each step into a temporary directory and renames it only once every
  process has finished (finalize); `latest_step` sees finalized steps only, and leftover temporary
  directories from a crash are deleted when the manager opens.
* Async: `save` returns once the arrays are copied to host memory; the write runs in the
  background. The grain iterator state is captured synchronously inside `save`.
* Topology-agnostic: `restore` places every array on the sharding its abstract target names, so a
  checkpoint written on one mesh restores onto any other (or one device).
"""
from __future__ import annotations

from typing import Any, Optional

import grain
import ml_collections
import orbax.checkpoint as ocp

from xformer_jax import storage
from xformer_jax.rundir import DATA_ITER, STATE, checkpoints_dir, item_handlers


def default_checkpoint_config() -> ml_collections.ConfigDict:
    """`config.checkpoint`."""
    c = ml_collections.ConfigDict()
    c.every_steps = 1000  # `save` writes only on multiples of this (force=True overrides)
    c.max_to_keep = 3  # newest N kept; None keeps all
    c.async_save = True  # write in a background thread while training continues
    # Multi-host: how often the processes agree whether any was sent SIGTERM (a collective that waits
    # for the device, so not every step); single-process runs check their own flag every step.
    c.preemption_poll_every = 10
    return c


class Checkpointer:
    """A thin `ocp.CheckpointManager` for {state: StandardSave, data_iter: grain CheckpointSave}."""

    def __init__(self, workdir: str, ckpt_config: ml_collections.ConfigDict):
        if not isinstance(ckpt_config.every_steps, int) or ckpt_config.every_steps < 1:
            raise ValueError(f"config.checkpoint.every_steps={ckpt_config.every_steps!r} must be a "
                             "positive int")
        keep = ckpt_config.max_to_keep
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"config.checkpoint.max_to_keep={keep!r} must be a positive int or None")
        self.directory = checkpoints_dir(workdir)
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            # No InitialSavePolicy (orbax's default would also write the first step of every run).
            save_decision_policy=policies.AnySavePolicy([
                policies.FixedIntervalPolicy(ckpt_config.every_steps),
                policies.PreemptionCheckpointingPolicy()]),
            max_to_keep=keep,
            enable_async_checkpointing=ckpt_config.async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=item_handlers())

    def save(self, step: int, state: Any, iterator: Optional[grain.DatasetIterator] = None,
             force: bool = False) -> bool:
        """Saves if `step` is a multiple of every_steps or `force` (preemption, last step).

        Returns whether a save started. Call it on every process with the same arguments.
        """
        items = {STATE: ocp.args.StandardSave(state)}
        if iterator is not None:
            items[DATA_ITER] = grain.checkpoint.CheckpointSave(iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def should_save(self, step: int) -> bool:
        """Whether `save(step)` without force writes (a multiple of every_steps, or orbax's preemption
        policy): the loop reads every pending step's metrics before such a step."""
        return self._manager.should_save(step)

    def latest_step(self) -> Optional[int]:
        """The newest finalized step, or None."""
        return self._manager.latest_step()

    def restore(self, step: Optional[int], abstract_state: Any,
                iterator: Optional[grain.DatasetIterator] = None) -> Any:
        """Returns the state at `step` (None = latest), each array on its abstract leaf's sharding.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`
        (`partitioning.with_shardings`). `iterator`, when given, is set to the saved position in place.
        """
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(f"no finalized checkpoint for step {step} in {self.directory} "
                                    f"(have {list(self._manager.all_steps())})")
        self._check_matches(step, abstract_state)
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            if not storage.isdir(storage.join(self.directory, str(step), DATA_ITER)):
                raise ValueError(f"checkpoint {self.directory}/{step} has no data iterator state; "
                                 "it was saved without an iterator")
            items[DATA_ITER] = grain.checkpoint.CheckpointRestore(iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]

    def _check_matches(self, step: int, abstract_state: Any) -> None:
        """ValueError naming the first leaf whose key or shape differs from the saved state."""
        saved = ocp.tree.to_flat_dict(self._manager.item_metadata(step)[STATE].tree)
        wanted = ocp.tree.to_flat_dict(abstract_state)
        problems = [f"{'/'.join(k)} missing from the checkpoint" for k in wanted if k not in saved]
        problems += [f"{'/'.join(k)} is in the checkpoint but not in the state" for k in saved
                     if k not in wanted]
        problems += [f"{'/'.join(k)}: checkpoint shape {tuple(saved[k].shape)} != state shape "
                     f"{tuple(v.shape)}" for k, v in wanted.items()
                     if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
        if problems:
            raise ValueError(f"checkpoint {self.directory}/{step} does not match the train state "
                             f"(changed model or optimizer config?): {len(problems)} mismatched leaves, "
                             f"e.g. {'; '.join(problems[:3])}")

    def wait(self) -> None:
        """Blocks until the background save (if any) is finalized."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.close()
