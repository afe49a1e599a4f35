"""The training loop: build the sharded state, resume, step, log, checkpoint, stop cleanly.

Contract: WORKDIR/metrics.jsonl gets one JSON object per logged step (step, loss, every
loss_* term, lr, examples_per_sec, data/skipped, ...); TensorBoard events go to WORKDIR/tb; orbax
checkpoints (train state + data iterator position) to WORKDIR/checkpoints. Rerunning the same command
resumes from the newest checkpoint. SIGTERM saves a checkpoint and returns normally; a non-finite
loss (or gradient norm) raises NonFiniteLoss naming the step and term, before any state of that step
or a later one is saved (pending checkpoint writes of earlier steps are finished first). The host
reads a step's metrics one step late (`train.step_metrics`), so it never waits on the step it has just
dispatched, and reads all of them before each save, log line and evaluation. `config.stop_after_steps`
(optional, 0 = off) ends a run after that many steps of this invocation with a checkpoint, so long
schedules can run in chunks: rerun the same command to go on.
"""
import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from xformer_jax import factory, partitioning, rundir
from xformer_jax.convert import pretrained
from xformer_jax.data import pipeline
from xformer_jax.data.sharding import to_global_batch
from xformer_jax.models import xformer
from xformer_jax.train import (checkpointing, metrics as metrics_lib, objective, optimizer, preflight, run_length,
                               startup, steps)
from xformer_jax.train.preemption import PreemptionGuard
from xformer_jax.train.state import TrainState, state_shardings
from xformer_jax.train.step_metrics import PendingMetrics

MODEL_INPUTS = ("pixel_values", "mae_pixel_values", "input_ids", "attention_mask", "labels", "image_ids")
HOST_METRICS = ("data/skipped", "data/skipped_shards")


@dataclasses.dataclass
class Trainer:
    """Everything the loop needs, built once from config (also used by evaluation and tests)."""
    config: ml_collections.ConfigDict
    mesh: Any
    model: xformer.Stage1Model
    state: TrainState
    state_shardings: Any
    step_fn: Callable
    loss_fn: Callable
    weight_sources: dict = dataclasses.field(default_factory=dict)  # {component: where its weights came from}

    def global_batch(self, local: dict) -> dict:
        batch = dict(local)
        if "image_id" in batch:
            batch["image_ids"] = batch.pop("image_id")
        if not self.config.loss.use_image_ids:
            batch.pop("image_ids", None)
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        return to_global_batch(inputs, self.mesh, partitioning.batch_sharding(self.mesh).spec)


def validate(config: ml_collections.ConfigDict) -> None:
    for key in ("total_steps", "batch_size", "log_every", "checkpoint_every"):
        value = config[key]
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"config.{key}={value!r} must be a positive int")
    if config.eval_every < 0:
        raise ValueError(f"config.eval_every={config.eval_every!r} must be >= 0 (0 = no evaluation)")
    stop_after = config.get("stop_after_steps", 0)
    if not isinstance(stop_after, int) or stop_after < 0:
        raise ValueError(f"config.stop_after_steps={stop_after!r} must be an int >= 0 (0 = run to total_steps)")


def state_and_step(config: ml_collections.ConfigDict, layout: factory.ModelLayout, params) -> tuple[Callable, Any, Callable, Callable]:
    """(create(trainable, frozen, rng) -> TrainState, state shardings, jitted step, loss_fn) for `params`
    (real or abstract, unboxed)."""
    frozen_names = layout.model_config.frozen_collections
    trainable, frozen = xformer.split_params(params, frozen_names)
    trainable_sh, frozen_sh = xformer.split_params(layout.param_shardings, frozen_names)
    tx = optimizer.make_optimizer(config.optim, config.total_steps)
    schedule = optimizer.lr_schedule(config.optim, config.total_steps)
    create = functools.partial(TrainState.create, tx=tx)
    abstract_state = jax.eval_shape(create, trainable, frozen, jax.random.key(config.seed))
    sharding = state_shardings(abstract_state, trainable_sh, frozen_sh, layout.mesh)
    if config.stage == "stage2":
        loss_fn = objective.make_stage2_loss(layout.model)
    else:
        loss_fn = objective.make_stage1_loss(layout.model, config.loss, layout.mesh)
    loss_fn = partitioning.with_logical_rules(loss_fn, layout.mesh, layout.rules)
    step = partitioning.with_logical_rules(steps.make_train_step(loss_fn, tx, schedule, config.optim.accum_steps),
                                           layout.mesh, layout.rules)
    batch_sh = partitioning.batch_sharding(layout.mesh)
    step_fn = jax.jit(step, in_shardings=(sharding, batch_sh),
                      out_shardings=(sharding, partitioning.replicated(layout.mesh)), donate_argnums=(0,))
    return create, sharding, step_fn, loss_fn


def make_trainer(config: ml_collections.ConfigDict, load_pretrained: bool = True,
                 devices: Optional[Sequence[jax.Device]] = None) -> Trainer:
    """The sharded initial state (pretrained components merged) and the jitted step.

    `devices` (default: all) are the devices the mesh spans, e.g. `jax.devices()[:1]`."""
    validate(config)
    layout = factory.model_layout(config, devices)
    rng = jax.random.key(config.seed)
    loaded, sources = {}, {}
    if load_pretrained:
        loaded.update(pretrained.pretrained_parts(config.model, layout.model_config, config.seed))
        sources.update({name: startup.config_source(config.model, name) for name in loaded})
        if config.get("init_from"):  # the stage-1 run's towers and Q-Former win over config.model's sources
            try:
                restored, checkpoint = rundir.restore_params(config.init_from)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"config.init_from={config.init_from!r}: {e}") from None
            loaded.update(restored)
            sources.update({name: f"config.init_from={checkpoint.workdir} (step {checkpoint.step})"
                            for name in restored})
    with jax.set_mesh(layout.mesh), nn.logical_axis_rules(layout.rules):
        params = partitioning.init_sharded(layout.init, layout.param_shardings, rng)
    params = pretrained.merge_pretrained(params, loaded)
    frozen_names = layout.model_config.frozen_collections
    params = factory.with_frozen_dtype(params, frozen_names, config.model.frozen_dtype)
    create, sharding, step_fn, loss_fn = state_and_step(config, layout, params)
    trainable, frozen = xformer.split_params(params, frozen_names)
    state = jax.jit(create, out_shardings=sharding)(trainable, frozen, rng)
    sources = {name: sources.get(name, "random init") for name in params}
    return Trainer(config, layout.mesh, layout.model, state, sharding, step_fn, loss_fn, sources)


def host_metrics(local: dict) -> dict:
    """Per-process data counters, summed over processes."""
    values = np.array([float(local.get(k, 0)) for k in HOST_METRICS])
    if jax.process_count() > 1:
        values = np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)
    return dict(zip(HOST_METRICS, values.tolist()))


def prepare(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The config a run trains with (`factory.with_part_files`: tokenizers from the parts' directories;
    `factory.with_checkpoint_sizes`: their architectures from their config.json), once `preflight.check`
    passes: ValueError in one line naming the key, before any model is built or file written, unless every
    path, checkpoint, tokenizer and weight source is there and agrees with the config."""
    config = factory.with_part_files(config)
    preflight.check(config, workdir)
    return factory.with_checkpoint_sizes(config)


def train(config: ml_collections.ConfigDict, workdir: str,
          eval_hook: Optional[Callable[[Trainer, TrainState], dict]] = None, metrics_lag: int = 1) -> TrainState:
    """Runs (or resumes) training to config.total_steps (or config.stop_after_steps more steps);
    returns the final state. `metrics_lag` 0 reads every step's metrics before dispatching the next
    (the host then waits on the device each step: for debugging, and benchmarks/loop_sync.py)."""
    config = prepare(config, workdir)
    data_iter = pipeline.make_train_iterator(config)  # reads the data's index: bad data fails before the model
    counted = int(_sum_over_processes(data_iter.local_examples))
    try:  # the schedule against the run length the data gives, before the model is built
        config, length = run_length.with_total_steps(config, workdir, counted)
        try:
            optimizer.validate(config.optim, config.total_steps)
        except ValueError as e:
            raise ValueError(f"{e}; the run's {length}") from None
    except ValueError as e:
        data_iter.close()
        raise preflight.InputError(str(e)) from None
    trainer = make_trainer(config, load_pretrained=True)
    checkpoints = checkpointing.Checkpointer(workdir, config.checkpoint)
    writer = metrics_lib.MetricsWriter(workdir, config.total_steps)
    rundir.write_config(factory.with_checkpoint_fields(config, trainer.model.config), workdir)
    run_length.record(workdir, config, counted)
    try:
        state = trainer.state
        start = checkpoints.latest_step() or 0
        if start:
            target = partitioning.with_shardings(jax.eval_shape(lambda s: s, state), trainer.state_shardings)
            state = checkpoints.restore(start, target, data_iter)
            logging.info("resumed from step %d (%s)", start, checkpoints.directory)
        # Also at step 0: a run that crashed before its first checkpoint leaves lines to drop.
        writer.truncate_after(start)
        if start >= config.total_steps:
            logging.info("already at step %d of %d: nothing to do", start, config.total_steps)
        stop_after = config.get("stop_after_steps", 0)
        end = min(config.total_steps, start + stop_after) if stop_after else config.total_steps
        startup.say([startup.mesh_line(trainer.mesh), startup.params_line(state.params, state.frozen),
                     *startup.sources_lines(trainer.weight_sources), f"run length: {length}",
                     startup.run_line(start, end, config.total_steps, config.batch_size, counted)])
        local = next(data_iter) if end > start else None  # the first step's batch, which the compile reads
        step_fn = compile_step(trainer, state, trainer.global_batch(local)) if local is not None else None
        last_log = (time.perf_counter(), start)
        pending = PendingMetrics(metrics_lag)
        with PreemptionGuard(poll_every=config.checkpoint.preemption_poll_every) as guard:
            for step in range(start + 1, end + 1):
                local = local if step == start + 1 else next(data_iter)
                state, step_metrics = step_fn(state, trainer.global_batch(local))
                if step == start + 1:
                    jax.block_until_ready(step_metrics)
                    startup.say(f"step {step} took {time.perf_counter() - last_log[0]:.2f} s")
                pending.add(step, step_metrics)  # reads (and checks) the previous step's
                log = step % config.log_every == 0 or step == config.total_steps
                evaluate = eval_hook is not None and config.eval_every and step % config.eval_every == 0
                stop = guard.should_stop(step)
                save = stop or step == end or checkpoints.should_save(step)
                if log or evaluate or save:
                    step_metrics = pending.flush()  # every step up to this one is finite
                if log:
                    now = time.perf_counter()
                    rate = config.batch_size * (step - last_log[1]) / max(now - last_log[0], 1e-9)
                    last_log = (now, step)
                    record = {**{k: float(v) for k, v in step_metrics.items()}, **host_metrics(local),
                              "examples_per_sec": rate}
                    writer.write(step, record)
                    writer.progress_line(step, record, rate)
                if evaluate:
                    writer.write(step, {f"eval/{k}": v for k, v in eval_hook(trainer, state).items()})
                checkpoints.save(step, state, data_iter, force=stop or step == end)
                if stop:
                    logging.warning("preemption requested: checkpoint saved at step %d, exiting", step)
                    break
            else:
                if end < config.total_steps:
                    logging.info("config.stop_after_steps=%d: stopped at step %d of %d (checkpoint saved)",
                                 stop_after, end, config.total_steps)
    finally:
        # Finishes pending (async) checkpoint writes, also when a step raised (step_metrics.NonFiniteLoss).
        checkpoints.close()
        writer.close()
        data_iter.close()  # stops its read-ahead threads
    return state


def compile_step(trainer: Trainer, state: TrainState, batch: dict) -> Callable:
    """The train step compiled ahead of time for `state` and `batch` (the compile time said when it ends)."""
    startup.say("compiling the train step ...")
    began = time.perf_counter()
    compiled = trainer.step_fn.lower(state, batch).compile()
    startup.say(f"compiled the train step in {time.perf_counter() - began:.1f} s")
    return compiled


def _sum_over_processes(value: float) -> float:
    if jax.process_count() == 1:
        return value
    return float(np.asarray(multihost_utils.process_allgather(np.array(value, np.float64))).sum())


def _all_processes(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    return bool(np.all(multihost_utils.process_allgather(np.array(flag))))


def eval_losses(config: ml_collections.ConfigDict, num_batches: int) -> Callable[[Trainer, Any], dict]:
    """An eval hook: mean stage-1 losses over the first full batches of the evaluation split."""
    dataset = pipeline.make_eval_dataset(config)

    def hook(trainer: Trainer, state: TrainState) -> dict:
        loss = jax.jit(functools.partial(trainer.loss_fn, train=False))  # dropout off
        totals, count = {}, 0
        for local in dataset:
            if count == num_batches:
                break
            if not _all_processes(bool(np.all(local["mask"]))):
                continue  # a padded batch somewhere: every process skips it (the loss is a collective)
            _, values = loss(state.params, state.frozen, trainer.global_batch(local), jax.random.key(0))
            for k, v in jax.device_get(values).items():
                totals[k] = totals.get(k, 0.0) + float(v)
            count += 1
        return {k: v / max(count, 1) for k, v in totals.items()} | {"batches": float(count)}
    return hook

