"""The train state: one pytree with trainable params, frozen params, optimizer state and the rng.

Frozen towers live in `frozen`, outside `opt_state`, so AdamW keeps no moments for them. The
optimizer itself is not in the state (the state stays a plain pytree that orbax saves as is); pass
the same `tx` to `create` and `apply_gradients`.

Building it straight into its shardings:

    create = functools.partial(TrainState.create, tx=tx)
    abstract = jax.eval_shape(create, params, frozen, rng)
    shardings = state_shardings(abstract, param_shardings, frozen_shardings, mesh)
    state = jax.jit(create, out_shardings=shardings)(params, frozen, rng)
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from xformer_jax import partitioning


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any  # trainable
    frozen: Any  # frozen towers; never updated, no optimizer state
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32 key data (jax.random.key_data): saves as a plain array

    @classmethod
    def create(cls, params: Any, frozen: Any, rng: jax.Array, tx: optax.GradientTransformation
               ) -> "TrainState":
        """`rng` may be a typed key or raw key data; it is stored raw."""
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        return cls(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen,
                   opt_state=tx.init(params), rng=rng)

    def apply_gradients(self, grads: Any, tx: optax.GradientTransformation) -> "TrainState":
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state)

    def step_key(self) -> jax.Array:
        """This step's typed key: fold_in(rng, step), so a resumed run draws the same keys."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def _mirror_params(opt_state: Any, params_abstract: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Sub-trees of `opt_state` shaped like the params (Adam's mu / nu, ...) take the params'
    shardings; every other leaf (counts, schedule state) is replicated."""
    params_def = jax.tree.structure(params_abstract)
    shapes = [x.shape for x in jax.tree.leaves(params_abstract)]

    def mirrors(node):
        return (jax.tree.structure(node) == params_def
                and [x.shape for x in jax.tree.leaves(node)] == shapes)

    return jax.tree.map(
        lambda node: param_shardings if mirrors(node) else partitioning.replicated(mesh),
        opt_state, is_leaf=mirrors)


def state_shardings(abstract_state: TrainState, param_shardings: Any, frozen_shardings: Any,
                    mesh: Mesh) -> TrainState:
    """NamedShardings for every leaf of `abstract_state` (from `jax.eval_shape(TrainState.create)`)."""
    return TrainState(
        step=partitioning.replicated(mesh),
        params=param_shardings,
        frozen=frozen_shardings,
        opt_state=_mirror_params(abstract_state.opt_state, abstract_state.params, param_shardings,
                                 mesh),
        rng=partitioning.replicated(mesh),
    )
