"""Device mesh, logical->mesh axis rules and the shardings of params and batches.

Model code names logical axes only (`nn.with_logical_partitioning`); this module turns them into
`NamedSharding`s on a ("data", "fsdp", "tensor") mesh using rules that live in `config.mesh.rules`.

Typical use (the model's init is traced once abstractly, then run straight into its shardings):

    mesh = make_mesh(config.mesh)
    rules = logical_rules(config.mesh)
    abstract = jax.eval_shape(model.init, rng, *dummy_inputs)      # tree of nn.LogicallyPartitioned
    shardings = param_shardings(abstract, mesh, rules)               # same tree, unboxed
    params = init_sharded(model.init, shardings, rng, *dummy_inputs)  # unboxed, already sharded
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
Rules = tuple[tuple[str, Any], ...]


def default_logical_rules() -> Rules:
    """Logical axis -> mesh axes for the names the models use (params and activations).

    Names without a rule (and mesh axes already taken by an earlier dim) stay replicated.
    """
    return (
        ("batch", BATCH_AXES),
        ("length", None),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("joined_kv", "tensor"),
        ("vocab", "tensor"),
        ("norm", None),
    )


def default_mesh_config() -> ml_collections.ConfigDict:
    """`config.mesh`: per-slice axis sizes (one may be -1 = the rest), DCN data factor, axis rules."""
    c = ml_collections.ConfigDict()
    c.data = -1
    c.fsdp = 1
    c.tensor = 1
    c.dcn_data = 1  # multi-slice TPU: number of slices; the data axis spans data * dcn_data devices
    c.rules = default_logical_rules()
    return c


def logical_rules(mesh_config: ml_collections.ConfigDict) -> Rules:
    """`config.mesh.rules` as the tuple-of-tuples Flax wants (command-line overrides give lists)."""
    rules = []
    for pair in mesh_config.rules:
        if len(pair) != 2:
            raise ValueError(f"config.mesh.rules entry {pair!r} is not a (logical, mesh axes) pair")
        name, axes = pair
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            if axis is not None and axis not in AXES:
                raise ValueError(f"config.mesh.rules maps {name!r} to unknown mesh axis {axis!r}; "
                                 f"mesh axes are {AXES}")
        rules.append((name, axes))
    return tuple(rules)


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
    """Per-slice (data, fsdp, tensor) sizes with the -1 resolved; ValueError naming the bad key."""
    dcn = mesh_config.dcn_data
    if not isinstance(dcn, int) or dcn < 1 or num_devices % dcn:
        raise ValueError(f"config.mesh.dcn_data={dcn!r} must be a positive int dividing the "
                         f"device count {num_devices}")
    sizes = {axis: mesh_config[axis] for axis in AXES}
    for axis, size in sizes.items():
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"config.mesh.{axis}={size!r} must be a positive int or -1")
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"only one of config.mesh.{{data,fsdp,tensor}} may be -1, got {free}")
    per_slice = num_devices // dcn
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if per_slice % fixed:
            raise ValueError(f"config.mesh.{free[0]}=-1: the other axes ({fixed}) do not divide the "
                             f"{per_slice} devices per slice (device count {num_devices}, "
                             f"config.mesh.dcn_data={dcn})")
        sizes[free[0]] = per_slice // fixed
    if math.prod(sizes.values()) != per_slice:
        raise ValueError(
            f"config.mesh.data * fsdp * tensor * dcn_data = {sizes['data']} * {sizes['fsdp']} * "
            f"{sizes['tensor']} * {dcn} != device count {num_devices}")
    return tuple(sizes[axis] for axis in AXES)


def make_mesh(mesh_config: ml_collections.ConfigDict,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh with Auto axes (Explicit axes break Linen logical partitioning).

    With `dcn_data` > 1 the data axis is split across slices (DCN) and the per-slice sizes across ICI.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_config, len(devices))
    if mesh_config.dcn_data > 1:
        array = mesh_utils.create_hybrid_device_mesh(shape, (mesh_config.dcn_data, 1, 1), devices)
    else:
        array = mesh_utils.create_device_mesh(shape, devices)
    return Mesh(array, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def _divisible_spec(spec: P, shape: Sequence[int], mesh: Mesh, path: str) -> P:
    """Drops the mesh axes of any dim they do not divide (that dim is replicated instead)."""
    dims = list(spec)
    for i, axes in enumerate(dims):
        if axes is None:
            continue
        size = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
        if shape[i] % size:
            logging.info("sharding: %s dim %d (size %d) not divisible by mesh axes %s (%d); replicated",
                         path, i, shape[i], axes, size)
            dims[i] = None
    return P(*dims)


def unbox(tree: Any) -> Any:
    """Strips `nn.Partitioned` boxes without the sharding constraint `nn.unbox` adds under a mesh
    (a constraint would fail on abstract values and on dims the mesh does not divide)."""
    def one(x):
        if isinstance(x, nn.Partitioned):
            return x.value
        return x.unbox() if isinstance(x, nn.meta.AxisMetadata) else x
    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def param_shardings(abstract_boxed: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of `nn.LogicallyPartitioned` (what `jax.eval_shape(model.init)` gives).

    The result has the unboxed tree's structure. Leaves without boxes are replicated; dims whose size
    the assigned mesh axes do not divide fall back to replication (logged at INFO).
    """
    mesh_specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_boxed), rules)
    abstract = unbox(abstract_boxed)

    def one(path, leaf, spec):
        spec = _divisible_spec(spec, leaf.shape, mesh, jax.tree_util.keystr(path))
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract, mesh_specs)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over data and fsdp; the global batch must divide data * fsdp."""
    return NamedSharding(mesh, P(BATCH_AXES))


def init_sharded(init_fn: Callable[..., Any], shardings: Any, *args) -> Any:
    """Runs `init_fn(*args)` under jit straight into `shardings`; returns the unboxed tree.

    Nothing is materialised on one device first, so params larger than one device's memory work.
    Array-valued `args` are traced (bind static ones with functools.partial).
    """
    return jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(*args)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying `shardings`: the target tree for `jax.jit` outputs or orbax restore."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)


def with_logical_rules(fn: Callable, mesh: Mesh, rules: Rules) -> Callable:
    """`fn` traced with the mesh and the logical axis rules in context, so the models'
    `nn.with_logical_constraint`s become sharding constraints (without them they are no-ops and XLA
    may replicate activations, e.g. the ITM pass over the gathered hard negatives on every device)."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return fn(*args, **kwargs)
    return wrapped
