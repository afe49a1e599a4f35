"""The pure, jitted train steps: stage-1 losses (ITC, ITM, ITG, reconstruction) over the global batch.

`make_stage1_loss` builds loss(params, frozen, batch, rng) -> (total, metrics); `make_train_step`
turns any such loss into step(state, batch) -> (state, metrics), with gradient accumulation,
the optimizer update and BLIP's in-place clamp of the ITC temperature (see `clamp_temperature`).
"""
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from xformer_jax import losses
from xformer_jax.models import qformer as qformer_lib
from xformer_jax.models import xformer
from xformer_jax.train import optimizer as optimizer_lib
from xformer_jax.train.state import TrainState

ITC_GRAD_MODES = ("global", "local")


def loss_weights(loss_config: ml_collections.ConfigDict, terms: tuple) -> dict:
    weights = {k: float(v) for k, v in loss_config.weights.to_dict().items()}
    unknown = sorted(set(weights) - set(terms) - {"rec"})
    if unknown:
        raise ValueError(f"config.loss.weights has unknown terms {unknown}; known: {sorted(terms)}")
    return {k: v for k, v in weights.items() if k in terms}


def dropout_rngs(rng, train: bool) -> dict:
    """The "dropout" rng of a training forward (folded from the step's key, so the masking and ITM keys
    stay those of a run without dropout); none at evaluation, which turns dropout off."""
    return {"dropout": jax.random.fold_in(rng, 2)} if train else {}


def make_stage1_loss(model: xformer.Stage1Model, loss_config: ml_collections.ConfigDict, mesh) -> Callable:
    if loss_config.itc_grad not in ITC_GRAD_MODES:
        raise ValueError(f"config.loss.itc_grad={loss_config.itc_grad!r} is not one of {ITC_GRAD_MODES}")
    terms = ("itc", "itm", "itg", "rec") if model.config.fusion.reconstructs else ("itc", "itm", "itg")
    weights = loss_weights(loss_config, terms)

    def loss_fn(params, frozen, batch, rng, train: bool = True):
        mask_rng, itm_rng = jax.random.split(rng)
        out = model.apply({"params": {**params, **frozen}}, batch["pixel_values"], batch["input_ids"],
                          batch["attention_mask"], mae_pixel_values=batch.get("mae_pixel_values"),
                          mask_rng=mask_rng, itm_rng=itm_rng, image_ids=batch.get("image_ids"),
                          rngs=dropout_rngs(rng, train))
        itc = losses.itc_loss_sharded(out["image_embeds"], out["text_embeds"], out["temp"], mesh,
                                      mode=loss_config.itc_grad,
                                      label_smoothing=model.config.itc_label_smoothing,
                                      image_ids=batch.get("image_ids"))
        total, terms_f32 = losses.total_loss(xformer.stage1_terms(out, itc), weights)
        metrics = {"loss": total, **{f"loss_{k}": v for k, v in terms_f32.items()},
                   "itm_accuracy": out["itm_accuracy"], "temp": out["temp"]}
        return total, metrics
    return loss_fn


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


def make_stage2_loss(model) -> Callable:
    """Stage 2: the LLM's prefix LM loss (+ reconstruction, weighted by the model config, when set)."""
    weights = {"lm": 1.0, "rec": model.config.reconstruction_weight}

    def loss_fn(params, frozen, batch, rng, train: bool = True):
        out = model.apply({"params": {**params, **frozen}}, batch["pixel_values"], batch["input_ids"],
                          batch["attention_mask"], batch["labels"], mae_pixel_values=batch.get("mae_pixel_values"),
                          mask_rng=rng, rngs=dropout_rngs(rng, train))
        total, terms = losses.total_loss(out, {k: v for k, v in weights.items() if k in out})
        return total, {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}
    return loss_fn
