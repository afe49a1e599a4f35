"""The model-agnostic training engine on 8 fake CPU devices with a toy Linen model."""
import functools
import json
import os
import signal
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from xformer_jax import partitioning
from xformer_jax.train import checkpointing, metrics, optimizer, preemption, state


def logical(init, axes):
    return nn.with_logical_partitioning(init, axes)


class Toy(nn.Module):
    """Params with logical axes: a divisible kernel, a non-divisible one, a norm, an unboxed leaf."""

    @nn.compact
    def __call__(self, x):
        normal = nn.initializers.normal(0.1)
        h = nn.Dense(16, kernel_init=logical(normal, ("embed", "mlp")),
                     bias_init=logical(nn.initializers.zeros_init(), ("mlp",)))(x)
        h = nn.LayerNorm(scale_init=logical(nn.initializers.ones_init(), ("norm",)),
                         bias_init=logical(nn.initializers.zeros_init(), ("norm",)))(h)
        odd = self.param("odd", logical(normal, ("embed", "vocab")), (6, 3))  # 3 % tensor(2) != 0
        plain = self.param("plain", normal, (4,))  # no box -> replicated
        out = nn.Dense(4, kernel_init=logical(normal, ("mlp", "embed")))(nn.relu(h))
        return out + plain + odd.sum()


def mesh_config(data=-1, fsdp=1, tensor=1, dcn_data=1):
    c = partitioning.default_mesh_config()
    c.update(dict(data=data, fsdp=fsdp, tensor=tensor, dcn_data=dcn_data))
    return c


@functools.lru_cache(maxsize=None)
def mesh_of(data, fsdp, tensor):
    devices = jax.devices()[:data * fsdp * tensor]
    return partitioning.make_mesh(mesh_config(data, fsdp, tensor), devices)


X = jnp.ones((8, 6))
RULES = partitioning.default_logical_rules()


def sharded_toy(mesh):
    abstract = jax.eval_shape(Toy().init, jax.random.key(0), X)
    shardings = partitioning.param_shardings(abstract, mesh, RULES)
    return partitioning.init_sharded(Toy().init, shardings, jax.random.key(0), X), shardings


# ----------------------------------------------------------------------------- partitioning
def test_make_mesh_resolves_minus_one_with_auto_axes():
    mesh = partitioning.make_mesh(mesh_config(data=-1, fsdp=2, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_types == (AxisType.Auto,) * 3
    one = partitioning.make_mesh(mesh_config(), devices=jax.devices()[:1])
    assert one.devices.shape == (1, 1, 1)


@pytest.mark.parametrize("kwargs, key", [
    (dict(data=3), "config.mesh"),
    (dict(data=-1, fsdp=-1), "config.mesh"),
    (dict(data=-1, fsdp=3), "config.mesh.data"),
    (dict(data=0), "config.mesh.data"),
    (dict(dcn_data=3), "config.mesh.dcn_data"),
])
def test_make_mesh_bad_sizes_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as err:
        partitioning.make_mesh(mesh_config(**kwargs))
    if "dcn" in key or kwargs.get("data") == 3:
        assert "8" in str(err.value)


def test_logical_rules_from_config_override():
    c = mesh_config()
    c.rules = [["embed", None], ["batch", ["data", "fsdp"]]]
    assert partitioning.logical_rules(c) == (("embed", None), ("batch", ("data", "fsdp")))
    c.rules = [["embed", "model"]]
    with pytest.raises(ValueError, match="config.mesh.rules"):
        partitioning.logical_rules(c)


def test_param_shardings_follow_rules_and_fall_back_to_replication():
    mesh = mesh_of(2, 2, 2)
    abstract = jax.eval_shape(Toy().init, jax.random.key(0), X)
    specs = jax.tree.map(lambda s: s.spec, partitioning.param_shardings(abstract, mesh, RULES))["params"]
    assert specs["Dense_0"]["kernel"] == P("fsdp", "tensor")
    assert specs["Dense_0"]["bias"] == P("tensor")
    assert specs["Dense_1"]["kernel"] == P("tensor", "fsdp")
    assert specs["LayerNorm_0"]["scale"] == P(None)
    assert specs["odd"] == P("fsdp", None)  # vocab dim of 3 does not divide tensor=2
    assert specs["plain"] == P()


def test_init_sharded_places_params_and_matches_plain_init():
    mesh = mesh_of(2, 2, 2)
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):  # as in the train step: must not matter
        params, shardings = sharded_toy(mesh)
    reference = nn.unbox(Toy().init(jax.random.key(0), X))
    for p, s, r in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), jax.tree.leaves(reference)):
        assert p.sharding == s
        np.testing.assert_allclose(p, r, rtol=1e-6)  # jit vs eager: ulp-level differences
    kernel = params["params"]["Dense_0"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (3, 8)
    assert partitioning.batch_sharding(mesh).spec == P(("data", "fsdp"))


# ----------------------------------------------------------------------------- optimizer
def optim_config(**kwargs):
    c = optimizer.default_optim_config()
    c.update(kwargs)
    return c


def test_lr_schedule_by_hand():
    sched = optimizer.lr_schedule(optim_config(lr=1.0, warmup_lr=0.0, min_lr=0.1, warmup_steps=10), 110)
    # warmup 0 -> 1 over 10 steps, then cosine over 100 steps: halfway (step 60) is (1 + 0.1) / 2.
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 500: 0.1}
    for step, lr in expected.items():
        np.testing.assert_allclose(sched(step), lr, atol=1e-6, err_msg=f"step {step}")
    lavis = optimizer.lr_schedule(optimizer.default_optim_config(), 100_000)
    np.testing.assert_allclose(lavis(0), 1e-6, rtol=1e-5)
    np.testing.assert_allclose(lavis(2500), 1e-6 + (1e-4 - 1e-6) / 2, rtol=1e-5)
    with pytest.raises(ValueError, match=r"config\.optim\.warmup_steps"):
        optimizer.lr_schedule(optim_config(warmup_steps=10), 10)


def test_weight_decay_mask_and_decay_applied_only_there():
    params = {
        "dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
        "ln_vision": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
        "embed": {"embedding": jnp.ones((10, 4))},
        "heads": {"bias": jnp.ones((2, 3))},  # DenseGeneral-style 2-D bias
        "query_tokens": jnp.ones((1, 2, 4)),
        "temp": jnp.ones(()),
    }
    mask = optimizer.weight_decay_mask(params)
    assert mask == {
        "dense": {"kernel": True, "bias": False}, "ln_vision": {"scale": False, "bias": False},
        "embed": {"embedding": True}, "heads": {"bias": False}, "query_tokens": True, "temp": False}
    tx = optimizer.make_optimizer(optim_config(lr=0.1, warmup_lr=0.1, warmup_steps=0, grad_clip=1.0), 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    for decayed, update in zip(jax.tree.leaves(mask), jax.tree.leaves(updates)):
        np.testing.assert_allclose(update, -0.1 * 0.05 if decayed else 0.0, rtol=1e-6)


def test_lr_scales_multiply_the_updates_of_matching_params_only():
    params = {"qformer": {"query_tokens": jnp.ones((2, 4)), "layer_0": {"crossattention": {"kernel": jnp.ones((4, 4))},
                                                                         "attention": {"kernel": jnp.ones((4, 4))}}},
              "dual": {"kernel": jnp.ones((4, 4))}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    plain = optim_config(lr=0.1, warmup_lr=0.1, warmup_steps=0)
    scaled = optim_config(lr=0.1, warmup_lr=0.1, warmup_steps=0,
                          lr_scales=((r"^qformer/query_tokens|/crossattention/", 10.0), (r"^dual/", 3.0)))
    updates = {}
    for name, config in (("plain", plain), ("scaled", scaled)):
        tx = optimizer.make_optimizer(config, 10)
        updates[name], _ = tx.update(grads, tx.init(params), params)
    expected = {"qformer": {"query_tokens": 10.0, "layer_0": {"crossattention": {"kernel": 10.0},
                                                               "attention": {"kernel": 1.0}}},
                "dual": {"kernel": 3.0}}
    jax.tree.map(lambda s, p, factor: np.testing.assert_allclose(s, factor * p, rtol=1e-6),
                 updates["scaled"], updates["plain"], expected)
    with pytest.raises(ValueError, match=r"config\.optim\.lr_scales"):
        optimizer.make_optimizer(optim_config(lr_scales=(("dual", 0.0),)), 10)


def test_accumulate_gradients_equals_full_batch():
    mesh = mesh_of(2, 2, 2)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(16, 6)).astype(np.float32),
             "y": rng.normal(size=(16, 4)).astype(np.float32)}
    batch = jax.device_put(batch, partitioning.batch_sharding(mesh))
    params, _ = sharded_toy(mesh)

    def loss_fn(p, mb, key):
        del key
        err = Toy().apply(p, mb["x"]) - mb["y"]
        loss = jnp.mean(err ** 2)
        return loss, {"mae": jnp.mean(jnp.abs(err))}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    step = jax.jit(optimizer.accumulate_gradients, static_argnums=(0, 3))
    (loss1, m1), g1 = step(grad_fn, params, batch, 1, jax.random.key(0))
    (loss4, m4), g4 = step(grad_fn, params, batch, 4, jax.random.key(0))
    np.testing.assert_allclose(loss4, loss1, atol=1e-6)
    np.testing.assert_allclose(m4["mae"], m1["mae"], atol=1e-6)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match=r"config\.optim\.accum_steps"):
        step(grad_fn, params, batch, 3, jax.random.key(0))


# ----------------------------------------------------------------------------- state + checkpoints
def build_state(mesh, tx):
    params, param_shardings = sharded_toy(mesh)
    frozen = {"tower": jnp.arange(8.0)}
    frozen_shardings = {"tower": NamedSharding(mesh, P("fsdp"))}
    frozen = jax.device_put(frozen, frozen_shardings)
    create = functools.partial(state.TrainState.create, tx=tx)
    abstract = jax.eval_shape(create, params, frozen, jax.random.key(7))
    shardings = state.state_shardings(abstract, param_shardings, frozen_shardings, mesh)
    return jax.jit(create, out_shardings=shardings)(params, frozen, jax.random.key(7)), abstract, shardings


def test_state_shardings_mirror_params_in_opt_state():
    mesh = mesh_of(2, 2, 2)
    tx = optimizer.make_optimizer(optim_config(warmup_steps=1), 10)
    st, _, shardings = build_state(mesh, tx)
    adam = st.opt_state[0]  # ScaleByAdamState inside adamw's chain
    assert adam.mu["params"]["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert adam.count.sharding.spec == P()
    assert st.rng.dtype == jnp.uint32 and st.step.dtype == jnp.int32
    grads = jax.tree.map(jnp.ones_like, st.params)
    new = jax.jit(lambda s, g: s.apply_gradients(g, tx), out_shardings=shardings)(st, grads)
    assert int(new.step) == 1
    assert not np.allclose(new.params["params"]["Dense_0"]["kernel"], st.params["params"]["Dense_0"]["kernel"])
    assert not np.array_equal(jax.random.key_data(st.step_key()), jax.random.key_data(new.step_key()))


def data_iterator():
    return iter(grain.MapDataset.source(list(range(64))).seed(3).shuffle().batch(4).to_iter_dataset())


def ckpt_config(**kwargs):
    c = checkpointing.default_checkpoint_config()
    c.update(kwargs)
    return c


def test_checkpoint_restores_onto_other_meshes_with_data_position(tmp_path):
    tx = optimizer.make_optimizer(optim_config(warmup_steps=1), 10)
    st, abstract, _ = build_state(mesh_of(2, 2, 2), tx)
    it = data_iterator()
    for _ in range(3):
        next(it)
    ckpt = checkpointing.Checkpointer(str(tmp_path), ckpt_config(every_steps=2))
    assert not ckpt.save(3, st, it)  # not a multiple of every_steps
    assert ckpt.save(3, st, it, force=True)
    expected_batches = [next(it) for _ in range(2)]
    ckpt.close()

    os.makedirs(tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-123")  # a crash mid-save
    ckpt = checkpointing.Checkpointer(str(tmp_path), ckpt_config(every_steps=2))
    assert ckpt.latest_step() == 3
    for shape in [(4, 1, 1), (1, 1, 1)]:
        mesh = mesh_of(*shape)
        params_sh = partitioning.param_shardings(
            jax.eval_shape(Toy().init, jax.random.key(0), X), mesh, RULES)
        target_sh = state.state_shardings(abstract, params_sh,
                                          {"tower": partitioning.replicated(mesh)}, mesh)
        fresh_it = data_iterator()
        restored = ckpt.restore(None, partitioning.with_shardings(abstract, target_sh), fresh_it)
        for got, want, sh in zip(jax.tree.leaves(restored), jax.tree.leaves(st), jax.tree.leaves(target_sh)):
            np.testing.assert_array_equal(got, want)
            assert got.sharding == sh
        for want in expected_batches:
            np.testing.assert_array_equal(next(fresh_it), want)
    wider = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape + (1,), x.dtype), abstract)
    with pytest.raises(ValueError, match=r"params/Dense_0/kernel: checkpoint shape \(6, 16\)"):
        ckpt.restore(3, wider)
    extra = abstract.replace(frozen={**abstract.frozen, "new": abstract.frozen["tower"]})
    with pytest.raises(ValueError, match="frozen/new missing from the checkpoint"):
        ckpt.restore(3, extra)
    with pytest.raises(FileNotFoundError, match="step 5"):
        ckpt.restore(5, abstract)
    ckpt.close()


# ----------------------------------------------------------------------------- metrics + preemption
def test_metrics_jsonl_truncate_and_progress(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path), total_steps=10)
    for step in (1, 2, 3):
        writer.write(step, {"loss": jnp.float32(step / 2), "loss_itc": 0.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()  # readable before close (fsync'd)
    assert [json.loads(line) for line in lines][1] == {"step": 2, "loss": 1.0, "loss_itc": 0.25}
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # torn line from a crash
    writer.truncate_after(2)
    writer.write(3, {"loss": 9.0})
    writer.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert os.listdir(tmp_path / "tb")
    line = writer.progress_line(2, {"loss": 1.0}, 512.0)
    assert line.startswith("step 2/10") and "loss 1.0000" in line and "512.0 ex/s" in line


def test_preemption_guard_catches_sigterm():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.PreemptionGuard() as guard:
        assert not guard.requested and not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the Python-level handler runs at the main thread's next check
            if guard.requested:
                break
            time.sleep(0.01)
        assert guard.requested and guard.should_stop(1)
    assert signal.getsignal(signal.SIGTERM) is before


def test_multi_host_preemption_polls_only_every_n_steps(monkeypatch):
    """The all-gather that agrees on a stop waits for the device, so processes run it every
    poll_every-th step only; in between the flag waits (and a bad interval is refused by name)."""
    gathered = []
    monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.multihost_utils, "process_allgather",
                        lambda flag: gathered.append(bool(flag)) or np.array([bool(flag), False]))
    with preemption.PreemptionGuard(poll_every=5) as guard:
        guard._handle(signal.SIGTERM, None)
        assert [guard.should_stop(step) for step in range(1, 6)] == [False] * 4 + [True]
    assert gathered == [True]
    with pytest.raises(ValueError, match="preemption_poll_every=0"):
        preemption.PreemptionGuard(poll_every=0)
