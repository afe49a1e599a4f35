"""The pure train step: `make_train_step` turns a stage's loss (`train.objective`:
loss(params, frozen, batch, rng) -> (total, metrics)) into step(state, batch) -> (state, metrics), with
gradient accumulation, the optimizer update and BLIP's in-place clamp of the ITC temperature (see
`clamp_temperature`).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from xformer_jax.models import qformer as qformer_lib
from xformer_jax.train import optimizer as optimizer_lib
from xformer_jax.train.state import TrainState


def clamp_temperature(params: dict) -> dict:
    """temp clamped to [0.001, 0.5] after each update, as BLIP / ALBEF clamp it in place before each
    forward. LAVIS's BLIP-2 Q-Former does not clamp (its temp is free); the clamp is kept because it only
    acts when temp leaves a range where ITC is still well conditioned. Weight decay skips temp as in
    LAVIS's BLIP-2 (`get_optimizer_params` exempts every param with ndim < 2)."""
    if "qformer" not in params or "temp" not in params["qformer"]:
        return params
    qformer = dict(params["qformer"], temp=jnp.clip(params["qformer"]["temp"], *qformer_lib.TEMP_RANGE))
    return {**params, "qformer": qformer}


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    accum_steps: int = 1) -> Callable:
    def step(state: TrainState, batch: dict):
        grad_fn = jax.value_and_grad(lambda p, mb, r: loss_fn(p, state.frozen, mb, r), has_aux=True)
        (_, metrics), grads = optimizer_lib.accumulate_gradients(grad_fn, state.params, batch, accum_steps,
                                                                 state.step_key())
        new_state = state.apply_gradients(grads, tx)
        new_state = new_state.replace(params=clamp_temperature(new_state.params))
        metrics = dict(metrics, lr=schedule(state.step), grad_norm=optax.tree.norm(grads))
        return new_state, metrics
    return step

