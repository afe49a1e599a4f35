"""Losses against small torch references written here (not our code) from the semantics of LAVIS's
`blip2_qformer.py` / `blip2_opt.py`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import NamedSharding, PartitionSpec as P

from xformer_jax import losses
from xformer_jax.models import matching

TOL = 1e-5
EPS = 0.1


def unit(x, axis=-1):
    return (x / np.linalg.norm(x, axis=axis, keepdims=True)).astype(np.float32)


def itc_inputs(batch=8, queries=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    image = unit(rng.normal(size=(batch, queries, dim)))
    text = unit(rng.normal(size=(batch, dim)))
    # Make the positives a bit closer, so the loss is not at its uniform value.
    text = unit(text + image.mean(axis=1))
    return image, text, np.float32(0.07)


# ------------------------------------------------------------------------ torch references (stage 1)

def torch_sims(image, text, temp):
    """sim_i2t[b, t] = max_q image[b, q] . text[t] / temp; sim_t2i[t, b] likewise."""
    sim_i2t = torch.einsum("bqd,td->btq", image, text).amax(-1) / temp
    sim_t2i = torch.einsum("td,bqd->tbq", text, image).amax(-1) / temp
    return sim_i2t, sim_t2i


def torch_itc(image, text, temp, image_ids=None, row_offset=0, image_all=None, text_all=None):
    """LAVIS ITC for rows [row_offset, row_offset + b) against the (possibly detached) full batch."""
    image_all = image if image_all is None else image_all
    text_all = text if text_all is None else text_all
    sim_i2t, _ = torch_sims(image, text_all, temp)
    _, sim_t2i = torch_sims(image_all, text, temp)
    b = image.shape[0]
    if image_ids is None:
        targets = torch.arange(row_offset, row_offset + b)
        return (F.cross_entropy(sim_i2t, targets, label_smoothing=EPS)
                + F.cross_entropy(sim_t2i, targets, label_smoothing=EPS)) / 2
    ids = torch.as_tensor(image_ids).view(-1, 1)
    pos = torch.eq(ids[row_offset:row_offset + b], ids.t()).float()
    sim_targets = pos / pos.sum(1, keepdim=True)
    sim_targets = (1 - EPS) * sim_targets + EPS * torch.ones_like(sim_targets) / sim_targets.size(1)
    loss_t2i = -torch.sum(F.log_softmax(sim_t2i, dim=1) * sim_targets, dim=1).mean()
    loss_i2t = -torch.sum(F.log_softmax(sim_i2t, dim=1) * sim_targets, dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def torch_itc_grads(image, text, temp, shards=None):
    """(loss, grads) of the full-batch loss, or of LAVIS under DDP with `shards` devices."""
    image, text, temp = (torch.tensor(x, requires_grad=True) for x in (image, text, np.asarray(temp)))
    if shards is None:
        loss = torch_itc(image, text, temp)
    else:
        b = image.shape[0] // shards
        per_device = [torch_itc(image[d * b:(d + 1) * b], text[d * b:(d + 1) * b], temp, row_offset=d * b,
                                image_all=image.detach(), text_all=text.detach()) for d in range(shards)]
        loss = torch.stack(per_device).mean()  # DDP averages the per-device gradients
    loss.backward()
    return loss.item(), [x.grad.numpy() for x in (image, text, temp)]


# -------------------------------------------------------------------------------------- ITC

def test_itc_similarities_match_reference():
    image, text, temp = itc_inputs()
    sim_i2t, sim_t2i = matching.itc_similarities(image, text, temp)
    ref_i2t, ref_t2i = torch_sims(torch.tensor(image), torch.tensor(text), temp)
    np.testing.assert_allclose(sim_i2t, ref_i2t.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(sim_t2i, ref_t2i.numpy(), atol=TOL, rtol=0)


def test_itc_loss_matches_torch_label_smoothing():
    image, text, temp = itc_inputs()
    loss = losses.itc_loss(image, text, temp)
    ref = torch_itc(torch.tensor(image), torch.tensor(text), temp)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref.item(), atol=TOL, rtol=0)


def test_itc_loss_with_image_ids_matches_lavis_targets():
    image, text, temp = itc_inputs()
    ids = np.array([3, 3, 7, 1, 7, 7, 0, 2])
    loss = losses.itc_loss(image, text, temp, image_ids=ids)
    ref = torch_itc(torch.tensor(image), torch.tensor(text), temp, image_ids=ids)
    np.testing.assert_allclose(loss, ref.item(), atol=TOL, rtol=0)
    # Unique ids are the plain diagonal targets.
    np.testing.assert_allclose(losses.itc_loss(image, text, temp, image_ids=np.arange(8) * 5),
                               losses.itc_loss(image, text, temp), atol=1e-6, rtol=0)


def test_itc_bfloat16_inputs_computed_in_float32():
    image, text, temp = itc_inputs()
    image16, text16 = jnp.asarray(image, jnp.bfloat16), jnp.asarray(text, jnp.bfloat16)
    loss = losses.itc_loss(image16, text16, temp)
    ref = torch_itc(torch.tensor(np.asarray(image16.astype(jnp.float32))),
                    torch.tensor(np.asarray(text16.astype(jnp.float32))), temp)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref.item(), atol=TOL, rtol=0)


def make_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


@pytest.fixture(scope="module")
def mesh():
    return make_mesh((8,), ("data",))


def sharded_value_and_grad(mesh, mode, image, text, temp):
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    rows, replicated = NamedSharding(mesh, P(batch_axes)), NamedSharding(mesh, P())
    fn = jax.jit(jax.value_and_grad(
        lambda i, t, tm: losses.itc_loss_sharded(i, t, tm, mesh, batch_axes=("data", "fsdp"), mode=mode),
        argnums=(0, 1, 2)), in_shardings=(rows, rows, replicated))
    loss, grads = fn(image, text, temp)
    return float(loss), [np.asarray(g) for g in grads]


def assert_grads_close(grads, ref):
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, atol=TOL, rtol=1e-4)


@pytest.mark.parametrize("shape,names", [((8,), ("data",)), ((4, 2), ("data", "fsdp"))], ids=["data8", "data4-fsdp2"])
def test_itc_sharded_global_and_local(shape, names):
    mesh = make_mesh(shape, names)
    image, text, temp = itc_inputs(batch=16, seed=1)
    plain_loss, plain_grads = jax.value_and_grad(losses.itc_loss, argnums=(0, 1, 2))(image, text, temp)
    global_loss, global_grads = sharded_value_and_grad(mesh, "global", image, text, temp)
    local_loss, local_grads = sharded_value_and_grad(mesh, "local", image, text, temp)

    # Values: identical whatever the gradient semantics.
    np.testing.assert_allclose(global_loss, plain_loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(local_loss, plain_loss, atol=1e-6, rtol=0)
    # Global: the exact full-batch gradient (also checked against torch autograd).
    assert_grads_close(global_grads, plain_grads)
    torch_loss, torch_grads = torch_itc_grads(image, text, temp)
    np.testing.assert_allclose(plain_loss, torch_loss, atol=TOL, rtol=0)
    assert_grads_close(global_grads, torch_grads)
    # Local: LAVIS under DDP (detached gathers, per-device losses, averaged gradients).
    ddp_loss, ddp_grads = torch_itc_grads(image, text, temp, shards=8)
    np.testing.assert_allclose(local_loss, ddp_loss, atol=TOL, rtol=0)
    assert_grads_close(local_grads, ddp_grads)
    assert not np.allclose(local_grads[0], global_grads[0], atol=1e-3)


def test_itc_sharded_local_with_image_ids(mesh):
    image, text, temp = itc_inputs(batch=16, seed=2)
    ids = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 0, 7, 8, 9, 9, 10])
    ids_sharded = jax.device_put(ids, NamedSharding(mesh, P("data")))
    loss = jax.jit(lambda i, t, d: losses.itc_loss_sharded(i, t, temp, mesh, mode="local", image_ids=d))(
        image, text, ids_sharded)
    ref = torch_itc(torch.tensor(image), torch.tensor(text), temp, image_ids=ids)
    np.testing.assert_allclose(loss, ref.item(), atol=TOL, rtol=0)


def test_itc_sharded_rejects_bad_input(mesh):
    image, text, temp = itc_inputs(batch=12)
    with pytest.raises(ValueError, match="does not split"):
        losses.itc_loss_sharded(image, text, temp, mesh, mode="local")
    with pytest.raises(ValueError, match="itc_grad"):
        losses.itc_loss_sharded(image, text, temp, mesh, mode="all")


# ------------------------------------------------------------------------------ ITM sampling

def draw(keys, sim_i2t, sim_t2i, image_ids=None):
    """Negatives for each key: (neg_text (K, B), neg_image (K, B))."""
    fn = jax.jit(jax.vmap(lambda k: matching.sample_hard_negatives(k, sim_i2t, sim_t2i, image_ids)))
    return tuple(np.asarray(x) for x in fn(keys))


KEYS = jax.random.split(jax.random.key(0), 200)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_hard_negatives_never_positive(dtype, scale):
    rng = np.random.default_rng(0)
    batch = 8
    sim = rng.normal(size=(batch, batch)) * scale
    sim[np.arange(batch), np.arange(batch)] = scale * 10  # LAVIS fp16: softmax puts all mass here
    sim_i2t, sim_t2i = jnp.asarray(sim, dtype), jnp.asarray(sim.T.copy(), dtype)
    neg_text, neg_image = draw(KEYS, sim_i2t, sim_t2i)
    rows = np.arange(batch)
    for neg in (neg_text, neg_image):
        assert neg.dtype.kind == "i" and neg.min() >= 0 and neg.max() < batch
        assert not np.any(neg == rows)


def test_hard_negatives_never_same_image():
    rng = np.random.default_rng(1)
    ids = np.array([0, 0, 1, 2, 2, 2, 3, 4])
    sim = jnp.asarray(rng.normal(size=(8, 8)) * 1e4, jnp.bfloat16)
    neg_text, neg_image = draw(KEYS, sim, sim.T, ids)
    for neg in (neg_text, neg_image):
        assert neg.min() >= 0 and neg.max() < 8
        assert not np.any(ids[neg] == ids[None, :])


def test_hard_negatives_degenerate_all_same_image():
    """Every candidate shows the same image: fall back to a uniform draw among the other pairs."""
    batch = 4
    sim = jnp.full((batch, batch), 3e4, jnp.bfloat16)
    neg_text, neg_image = draw(KEYS, sim, sim, np.zeros(batch, np.int32))
    for neg in (neg_text, neg_image):
        assert neg.min() >= 0 and neg.max() < batch
        assert not np.any(neg == np.arange(batch))
        for row in range(batch):  # every other index is reachable
            assert set(neg[:, row]) == set(range(batch)) - {row}


def test_hard_negatives_follow_softmax():
    rng = np.random.default_rng(2)
    batch = 4
    sim = rng.normal(size=(batch, batch)).astype(np.float32)
    keys = jax.random.split(jax.random.key(1), 4000)
    neg_text, _ = draw(keys, jnp.asarray(sim), jnp.asarray(sim.T.copy()))
    weights = np.exp(sim - sim.max(axis=1, keepdims=True))
    np.fill_diagonal(weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    freq = np.stack([np.bincount(neg_text[:, r], minlength=batch) for r in range(batch)]) / len(keys)
    np.testing.assert_allclose(freq, weights, atol=0.03)
    # A dominant negative is always the one drawn: these are hard negatives.
    hard = np.zeros((batch, batch), np.float32)
    hard[np.arange(batch), (np.arange(batch) + 1) % batch] = 60.0
    neg_text, _ = draw(KEYS[:20], jnp.asarray(hard), jnp.asarray(hard))
    assert np.all(neg_text == (np.arange(batch) + 1) % batch)


def test_itm_layout_by_hand():
    neg_text = np.array([2, 0, 1])   # hard-negative text of image 0, 1, 2
    neg_image = np.array([1, 2, 0])  # hard-negative image of text 0, 1, 2
    image_index, text_index, labels = matching.itm_inputs(neg_text, neg_image)
    # text [pos, pos, neg] vs image [pos, neg, pos]
    np.testing.assert_array_equal(image_index, [0, 1, 2, 1, 2, 0, 0, 1, 2])
    np.testing.assert_array_equal(text_index, [0, 1, 2, 0, 1, 2, 2, 0, 1])
    np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_itm_logits_and_loss():
    rng = np.random.default_rng(3)
    query_logits = rng.normal(size=(9, 5, 2)).astype(np.float32)
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0])
    logits = matching.itm_logits_from_queries(jnp.asarray(query_logits, jnp.bfloat16))
    assert logits.dtype == jnp.float32
    logits = matching.itm_logits_from_queries(query_logits)
    np.testing.assert_allclose(logits, query_logits.mean(axis=1), atol=1e-6, rtol=0)
    ref = F.cross_entropy(torch.tensor(query_logits).mean(1), torch.tensor(labels))
    np.testing.assert_allclose(losses.itm_loss(logits, labels), ref.item(), atol=TOL, rtol=0)


# -------------------------------------------------------------------------------- ITG and LM

def text_batch(seed=4, batch=3, length=7, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 3
    ids = rng.integers(1, vocab, size=(batch, length))
    mask = np.ones((batch, length), np.int32)
    mask[0, 5:] = 0
    mask[1, 2:] = 0
    ids[mask == 0] = 0  # BERT's [PAD]
    return logits, ids, mask


def torch_itg(logits, ids, mask):
    labels = torch.tensor(ids).masked_fill(torch.tensor(mask) == 0, -100)
    logits = torch.tensor(logits)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=-100, label_smoothing=EPS).item()


def test_itg_loss_matches_torch():
    logits, ids, mask = text_batch()
    np.testing.assert_allclose(losses.itg_loss(logits, ids, mask), torch_itg(logits, ids, mask), atol=TOL, rtol=0)
    # pad_id=None relies on the mask alone.
    np.testing.assert_allclose(losses.itg_loss(logits, ids, mask, pad_id=None), torch_itg(logits, ids, mask),
                               atol=TOL, rtol=0)


def test_itg_loss_on_logits_without_the_last_position():
    """The step skips the LM head on the last position (it predicts nothing): same loss; other lengths raise."""
    logits, ids, mask = text_batch()
    np.testing.assert_allclose(losses.itg_loss(logits[:, :-1], ids, mask), losses.itg_loss(logits, ids, mask),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="logits cover"):
        losses.itg_loss(logits[:, :-2], ids, mask)


def test_itg_ignores_pads():
    logits, ids, mask = text_batch()
    changed = logits.copy()
    changed[mask == 0] = np.random.default_rng(5).normal(size=changed[mask == 0].shape) * 100
    np.testing.assert_allclose(losses.itg_loss(changed, ids, mask), losses.itg_loss(logits, ids, mask),
                               atol=1e-6, rtol=0)


def test_lm_loss_matches_hf_causal_lm():
    logits, ids, mask = text_batch(seed=6)
    labels = np.where(mask == 1, ids, -100)
    labels[:, :2] = -100  # e.g. the prompt
    ref = F.cross_entropy(torch.tensor(logits)[:, :-1].reshape(-1, logits.shape[-1]),
                          torch.tensor(labels)[:, 1:].reshape(-1), ignore_index=-100).item()
    np.testing.assert_allclose(losses.lm_loss(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32), labels),
                               losses.lm_loss(jnp.asarray(logits, jnp.bfloat16), labels), atol=1e-6, rtol=0)
    np.testing.assert_allclose(losses.lm_loss(logits, labels), ref, atol=TOL, rtol=0)
    assert float(losses.lm_loss(logits, np.full_like(labels, -100))) == 0.0


# ------------------------------------------------------------------------------------- total

def test_total_loss():
    terms = {"itc": jnp.float32(1.5), "itm": jnp.float32(0.5), "itg": jnp.asarray(2.0, jnp.bfloat16),
             "rec": jnp.float32(0.25)}
    total, out = losses.total_loss(terms, {"rec": 4.0, "itm": 0.0})
    np.testing.assert_allclose(total, 1.5 + 0.0 + 2.0 + 1.0, rtol=1e-6)
    assert set(out) == set(terms) and all(v.dtype == jnp.float32 for v in out.values())
    np.testing.assert_allclose(losses.total_loss(terms)[0], 4.25, rtol=1e-6)
    with pytest.raises(ValueError, match="recon"):
        losses.total_loss(terms, {"recon": 1.0})
