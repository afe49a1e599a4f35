"""The configured model laid out on the mesh before any weight exists, and the storage dtype of its frozen parts."""
import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections

from xformer_jax import partitioning
from xformer_jax.factory import model as model_lib


@dataclasses.dataclass
class ModelLayout:
    """The configured model laid out on the mesh, before any weight exists: the model, its init and the
    sharding of every param. make_trainer fills it with weights and an optimizer, `predict.restore` with a
    checkpoint's params, and launch/plan.py compiles it with abstract arrays."""
    mesh: Any
    rules: Any
    model_config: Any
    model: Any
    init: Callable  # rng -> boxed params
    param_shardings: Any


def model_layout(config: ml_collections.ConfigDict, devices: Optional[Sequence[jax.Device]] = None) -> ModelLayout:
    mesh = partitioning.make_mesh(config.mesh, devices)
    rules = partitioning.logical_rules(config.mesh)
    model_config = model_lib.model_config(config)
    model = model_lib.make_model(model_config)
    init = model_lib.init_fn(model, model_config)
    rng = jax.random.key(config.seed)  # made outside the mesh: a mesh of deviceless (planning) devices can't run it
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init, rng)
        shardings = partitioning.param_shardings(abstract, mesh, rules)
    return ModelLayout(mesh, rules, model_config, model, init, shardings)


def with_frozen_dtype(params: dict, frozen_names, dtype_name: str) -> dict:
    """`params` with its frozen parts (`frozen_names`, the model config's frozen_collections) in
    config.model.frozen_dtype (`dtype_name`), the dtype they are stored in."""
    dtype = model_lib.dtype_of(dtype_name, "config.model.frozen_dtype")
    return {k: jax.tree.map(lambda x: x.astype(dtype), v) if k in frozen_names else v for k, v in params.items()}
