"""`take_rows(x, index)` = x[index] for rows of a batch sharded over the mesh, with no device holding the
global batch.

The ITM pass pairs each image with a text drawn anywhere in the global batch (`matching.itm_inputs`), so
its inputs are rows of batch-sharded arrays picked by global indices. Written as `x[index]`, XLA's SPMD
partitioner all-gathers x (EVA features 1664 x 257 x 1408 in bf16: 1.15 GiB per chip at the paper's batch)
and may leave the pairs replicated after the gather (the first ITM layer's query FFN ran on all 4992 pairs
on every chip). Here, under a mesh whose logical "batch" axis spans more than one device, each device
keeps its own rows of the result (sharded like `index`) and collects them in one pass around a ring:
at every step it picks the indices that fall in the block it holds, then passes that block on
(`lax.ppermute`). Traffic is the global batch once, as the all-gather; memory is the device's own result
and a block or two of x, never the global batch. The same rows as x[index], bit for bit; the gradient,
when x carries one, is the ring's transpose (the sum over the pairs that read a row, as x[index]'s
scatter-add, in another order).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def batch_mesh_axes() -> tuple:
    """The mesh axes of the logical "batch" axis (config.mesh.rules) in the current mesh, of size > 1."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return ()
    spec = nn.logical_to_mesh_axes(("batch",))[0]
    axes = spec if isinstance(spec, tuple) else (spec,) if spec is not None else ()
    return tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)


def take_rows(x, index):
    """x[index] along axis 0 (index (P,) of global row numbers), sharded over the batch mesh axes.

    Outside a mesh, or where the rows or the indices do not split evenly over the batch shards, it is
    plain x[index].
    """
    axes = batch_mesh_axes()
    shards = math.prod(jax.sharding.get_abstract_mesh().shape[a] for a in axes) if axes else 1
    if shards == 1 or x.shape[0] % shards or index.shape[0] % shards:
        return x[index]
    rows = P(axes)
    return jax.shard_map(lambda block, idx: _ring_take(block, idx, axes, shards), in_specs=(rows, rows),
                         out_specs=rows)(x, jnp.asarray(index, jnp.int32))


def _ring_take(block, index, axes, shards: int):
    """One device's rows of x[index]: `block` is its own rows of x, `index` its own global indices."""
    rows = block.shape[0]
    me = jax.lax.axis_index(axes)
    shift = [(i, (i + 1) % shards) for i in range(shards)]

    def pick(out, block, step):
        """Fill in the indices that fall in `block`, the rows of device (me - step) mod shards: one gather
        from [out; block], so the backward pass keeps an int per row and step (a select would keep its
        predicate broadcast to the rows' full shape at every step)."""
        local = index - ((me - step) % shards) * rows
        hit = (local >= 0) & (local < rows)
        source = jnp.where(hit, out.shape[0] + local, jnp.arange(out.shape[0]))
        return jnp.take(jnp.concatenate([out, block]), source, axis=0)

    def step(carry, k):
        out, block = carry
        block = jax.lax.ppermute(block, axes, shift)
        return (pick(out, block, k), block), None

    out = pick(jnp.zeros((index.shape[0],) + block.shape[1:], block.dtype), block, 0)
    (out, _), _ = jax.lax.scan(step, (out, block), jnp.arange(1, shards))
    return out
