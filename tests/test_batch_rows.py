"""take_rows: x[index] over a batch-sharded mesh without the global batch on any device (issue 16)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer_jax import partitioning
from xformer_jax.models import batch_rows
from xformer_jax.plan import profile


def _mesh_and_rules(data=2, fsdp=4):
    config = partitioning.default_mesh_config()
    config.update(data=data, fsdp=fsdp)
    return partitioning.make_mesh(config, jax.devices()[:data * fsdp]), partitioning.logical_rules(config)


def _rows_and_index():
    x = jax.random.normal(jax.random.key(0), (16, 3, 5))
    index = jax.random.randint(jax.random.key(1), (48,), 0, 16)  # 3 pairs per row on average, some rows unread
    return x, index


def test_take_rows_is_x_index_sharded_like_the_index():
    mesh, rules = _mesh_and_rules()
    x, index = _rows_and_index()
    take = jax.jit(partitioning.with_logical_rules(batch_rows.take_rows, mesh, rules))
    with jax.set_mesh(mesh):
        out = take(x, index)
        hlo = take.lower(x, index).compile().as_text()
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x[index]))
    assert out.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    assert "collective-permute" in hlo and "all-gather" not in hlo  # the ring, not x gathered everywhere


def test_take_rows_gradient_is_that_of_x_index():
    mesh, rules = _mesh_and_rules()
    x, index = _rows_and_index()
    weights = jax.random.normal(jax.random.key(2), (48, 3, 5))
    grad = jax.grad(lambda x: jnp.sum(batch_rows.take_rows(x, index) * weights))
    with jax.set_mesh(mesh):
        got = jax.jit(partitioning.with_logical_rules(grad, mesh, rules))(x)
    want = jax.grad(lambda x: jnp.sum(x[index] * weights))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)  # sums in another order


def test_take_rows_without_a_sharded_batch_is_plain_indexing():
    x, index = _rows_and_index()
    assert batch_rows.batch_mesh_axes() == ()
    np.testing.assert_array_equal(np.asarray(batch_rows.take_rows(x, index)), np.asarray(x[index]))
    mesh, rules = _mesh_and_rules(data=1, fsdp=1)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        assert batch_rows.batch_mesh_axes() == ()
    mesh, rules = _mesh_and_rules()
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
        assert batch_rows.batch_mesh_axes() == ("data", "fsdp")
        uneven, some = x[:12], index[:8] % 12  # 12 rows do not split over 8 shards
        np.testing.assert_array_equal(np.asarray(batch_rows.take_rows(uneven, some)), np.asarray(uneven[some]))


@pytest.mark.parametrize("shared_image_kv", [False, True])
def test_stage1_step_holds_no_global_batch_of_image_features_or_itm_pairs(tmp_path, shared_image_kv):
    """The compiled stage-1 step (XLA's SPMD partitioner, as on TPU / GPU) over 8 devices: no instruction
    has the global shape of the EVA features or of the ITM pass's per-pair activations. Before take_rows,
    `clip[image_index]` all-gathered the features and the first ITM layer ran on every pair everywhere."""
    from launch import plan
    from xformer_jax.configs import tiny
    config = tiny.tiny_config(tmp_path)
    config.batch_size = 16
    config.mesh.update(data=2, fsdp=4)
    config.model.itm_shared_image_kv = shared_image_kv
    trainer = plan.abstract_trainer(config)
    compiled = trainer.step_fn.lower(trainer.state, trainer.batch).compile(plan.FAST_COMPILE)
    instructions, _ = profile.parse_hlo(compiled.as_text())
    vision = config.model.vision
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    batch, pairs = config.batch_size, 3 * config.batch_size
    # image tokens of the whole batch (EVA features, their keys / values) or activations of every pair
    global_rows = [(name, shape) for name, (shape, _, _) in instructions.items() if len(shape) >= 3 and (
        shape[:2] == [batch, tokens] or shape[0] == pairs)]
    assert not global_rows, global_rows[:5]
