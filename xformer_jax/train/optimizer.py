"""BLIP-2's optimizer: linear warmup + cosine schedule, AdamW with LAVIS's weight-decay mask, and
gradient accumulation over microbatches inside the jitted step."""
from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

NO_DECAY_NAMES = ("bias", "scale")  # Flax Dense/Conv biases, LayerNorm/RMSNorm gains


def default_optim_config() -> ml_collections.ConfigDict:
    """`config.optim`: BLIP-2 stage-1 values (the BLIP-2 paper; LAVIS's blip2 pretrain yaml)."""
    c = ml_collections.ConfigDict()
    c.lr = 1e-4  # peak (LAVIS init_lr)
    c.warmup_lr = 1e-6  # LAVIS warmup_lr: the lr at step 0
    c.min_lr = 1e-5  # reached at the last step
    c.warmup_steps = 5000  # 2000 for stage 2
    c.b1 = 0.9
    c.b2 = 0.98  # BLIP-2 paper; LAVIS's runner builds AdamW with its default 0.999
    c.eps = 1e-8
    c.weight_decay = 0.05  # decoupled (AdamW), scaled by the lr as in torch.optim.AdamW
    c.grad_clip = 0.0  # global-norm clipping threshold; 0 = off (LAVIS does not clip)
    c.accum_steps = 1  # microbatches per step; the global batch must divide by it
    # ((regex over a param path such as "qformer/qformer/layer_0/crossattention/key/kernel", multiplier), ...):
    # the first pattern that matches scales that param's lr (its torch param group's lr). Empty = one lr
    # for every param, as LAVIS; short runs (configs/demo.py) give the freshly initialised params more.
    c.lr_scales = ()
    return c


def validate(optim: ml_collections.ConfigDict, total_steps: int) -> None:
    """Raises ValueError naming the first bad `config.optim.*` key."""
    for key in ("lr", "warmup_lr", "min_lr", "eps", "weight_decay", "grad_clip"):
        if not optim[key] >= 0:
            raise ValueError(f"config.optim.{key}={optim[key]!r} must be >= 0")
    for key in ("b1", "b2"):
        if not 0 <= optim[key] < 1:
            raise ValueError(f"config.optim.{key}={optim[key]!r} must be in [0, 1)")
    if not isinstance(optim.accum_steps, int) or optim.accum_steps < 1:
        raise ValueError(f"config.optim.accum_steps={optim.accum_steps!r} must be a positive int")
    for entry in optim.lr_scales:
        if len(entry) != 2 or not isinstance(entry[0], str) or not entry[1] > 0:
            raise ValueError(f"config.optim.lr_scales entry {entry!r} must be (regex over a param path, multiplier > 0)")
    if not isinstance(optim.warmup_steps, int) or not 0 <= optim.warmup_steps < total_steps:
        raise ValueError(f"config.optim.warmup_steps={optim.warmup_steps!r} must be an int in "
                         f"[0, total_steps={total_steps})")


def lr_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """LAVIS LinearWarmupCosineLRScheduler, evaluated per iteration (step = updates done so far).

    Warmup: lr(s) = warmup_lr + (lr - warmup_lr) * s / warmup_steps for s < warmup_steps (as LAVIS).
    Then cosine from lr at s = warmup_steps to min_lr at s = total_steps (constant after).
    LAVIS steps its cosine once per *epoch* from epoch 0; the per-iteration curve here is its
    smooth version and does not depend on the epoch length.
    """
    validate(optim, total_steps)
    lr, warmup_lr, min_lr, warmup = optim.lr, optim.warmup_lr, optim.min_lr, optim.warmup_steps

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        ramp = warmup_lr + (lr - warmup_lr) * s / max(warmup, 1)
        progress = jnp.clip((s - warmup) / (total_steps - warmup), 0.0, 1.0)
        cosine = min_lr + (lr - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(s < warmup, ramp, cosine)

    return schedule


def _key_name(key) -> str:
    """A pytree path entry's name: a dict key or an attribute name."""
    return str(getattr(key, "key", getattr(key, "name", key)))


def weight_decay_mask(params: Any) -> Any:
    """True where AdamW decays: LAVIS `get_optimizer_params` on Flax names.

    LAVIS exempts `p.ndim < 2 or "bias" in name or "ln" in name or "bn" in name`. In BLIP-2 every
    LayerNorm / BatchNorm param is 1-D, so on Flax trees the rule is: no decay for ndim < 2 (norm
    scales and biases, `temp`) and for any leaf named "bias" or "scale" whatever its rank (e.g. a
    DenseGeneral bias). Kernels, embeddings and `query_tokens` are decayed.
    """
    def decays(path, leaf):
        name = _key_name(path[-1]) if path else None
        return leaf.ndim >= 2 and name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_path(lr_scales) -> optax.GradientTransformation:
    """Multiplies each param's update by the multiplier of the first `lr_scales` pattern its path matches
    (1 where none does): after AdamW this equals a torch param group with that multiple of the lr."""
    patterns = [(re.compile(pattern), float(scale)) for pattern, scale in lr_scales]

    def factor(path) -> float:
        name = "/".join(map(_key_name, path))
        return next((scale for pattern, scale in patterns if pattern.search(name)), 1.0)

    def scale(updates, params=None):
        del params
        return jax.tree_util.tree_map_with_path(lambda path, u: u * factor(path), updates)

    return optax.stateless(scale)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (when > 0), AdamW on `lr_schedule` with `weight_decay_mask`, then
    the per-param lr multipliers of `optim.lr_scales` (when any)."""
    parts = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             weight_decay=optim.weight_decay, mask=weight_decay_mask))
    if optim.lr_scales:
        parts.append(scale_by_path(optim.lr_scales))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def accumulate_gradients(loss_and_grad_fn: Callable, params: Any, batch: Any, accum_steps: int,
                         rng: jax.Array):
    """Mean of `loss_and_grad_fn` over `accum_steps` microbatches, one microbatch in memory at a time.

    `loss_and_grad_fn(params, microbatch, rng) -> ((loss, metrics), grads)`, i.e.
    `jax.value_and_grad(loss_fn, has_aux=True)`; the result has the same form, with loss, metrics
    and grads averaged over microbatches (equal to the full-batch values for per-example-mean losses;
    batch-coupled losses such as ITC then see one microbatch). Call it inside the jitted step.

    Microbatch i takes rows i, i + accum_steps, ... of every batch leaf, so with the batch sharded on
    its leading dim each device feeds every microbatch from its own rows (no resharding) as long as
    the per-device batch divides by `accum_steps`. Each microbatch gets `fold_in(rng, i)`;
    `accum_steps == 1` calls the function once with `rng` unchanged.
    """
    if accum_steps == 1:
        return loss_and_grad_fn(params, batch, rng)
    for leaf in jax.tree.leaves(batch):
        if leaf.shape[0] % accum_steps:
            raise ValueError(f"batch of {leaf.shape[0]} does not split into "
                             f"config.optim.accum_steps={accum_steps} microbatches")
    micro = jax.tree.map(
        lambda x: x.reshape((x.shape[0] // accum_steps, accum_steps) + x.shape[1:]).swapaxes(0, 1),
        batch)

    def body(total, xs):
        mb, i = xs
        out = loss_and_grad_fn(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(lambda t, o: t + o.astype(t.dtype), total, out), None

    shapes = jax.eval_shape(loss_and_grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), shapes)
    total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
    return jax.tree.map(lambda t, s: (t / accum_steps).astype(s.dtype), total, shapes)
