"""scan_layers (one lax.scan over identical layers, or over the Q-Former's periods of layers) and named remat
policies give the unrolled numbers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flax.linen as nn
from flax import traverse_util

from test_qformer import IDS as QF_IDS, MASK as QF_MASK
from xformer_jax.models import layers, mae, opt, qformer, vit

VIT = vit.VisionConfig(kind="eva", hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                       image_size=16, patch_size=8, hidden_act="gelu", feature_layer=-2)
MAE = mae.MAEConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                    decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                    decoder_intermediate_size=32, image_size=16, patch_size=8)
OPT = opt.OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=32)
PIXELS = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
IDS = np.random.default_rng(1).integers(3, 64, size=(2, 7)).astype(np.int32)
MASK = np.array([[1] * 7, [1] * 5 + [0] * 2], np.int32)


def _scanned(config, remat=False):
    return dataclasses.replace(config, scan_layers=True, remat=remat)


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5), a, b)


@pytest.mark.parametrize("remat", [False, "dots_with_no_batch_dims_saveable"])
def test_vit_scan_matches_the_unrolled_tower_and_its_gradients(remat):
    plain = vit.VisionTransformer(VIT)
    params = plain.init(jax.random.key(0), PIXELS)["params"]
    scanned = vit.VisionTransformer(_scanned(VIT, remat))
    # Same param tree: checkpoints, from_hf and export see no difference.
    assert jax.tree.structure(scanned.init(jax.random.key(0), PIXELS)["params"]) == jax.tree.structure(params)
    for method in (None, "features"):
        run = lambda m, p: m.apply({"params": p}, PIXELS, **({} if method else {"output_hidden_states": True}),
                                   method=method)
        _close(run(scanned, params), run(plain, params))
        # The last block's output (not the pooled, normed one, whose gradient is mostly cancellation).
        last = lambda out: out["hidden_states"][-1] if isinstance(out, dict) else out
        loss = lambda m: lambda p: jnp.sum(last(run(m, p)) ** 2)
        _close(jax.grad(loss(scanned))(params), jax.grad(loss(plain))(params))


def test_mae_scan_matches_encoder_and_decoder():
    plain = mae.MAEForPreTraining(MAE)
    params = plain.init(jax.random.key(0), PIXELS, mask_rng=jax.random.key(3))["params"]
    scanned = mae.MAEForPreTraining(_scanned(MAE, True))
    run = lambda m, p: m.apply({"params": p}, PIXELS, mask_rng=jax.random.key(3))
    _close(run(scanned, params), run(plain, params))


def test_opt_scan_matches_and_generation_keeps_the_cache_path():
    plain = opt.OPTForCausalLM(OPT)
    params = plain.init(jax.random.key(0), IDS, MASK)["params"]
    scanned = opt.OPTForCausalLM(_scanned(OPT, True))
    logits = lambda m, p: m.apply({"params": p}, IDS, MASK)["logits"]
    _close(logits(scanned, params), logits(plain, params))
    _close(jax.grad(lambda p: jnp.sum(logits(scanned, p) ** 2))(params),
           jax.grad(lambda p: jnp.sum(logits(plain, p) ** 2))(params))
    cache = scanned.init_cache(2, 12)
    out = scanned.apply({"params": params}, IDS, MASK, cache=cache)
    _close(out["logits"], logits(plain, params))


# Cross-attention in every second layer: 4 layers scan as 2 pairs in every pass (the ITM pass's first layer
# then runs per pair, the last layers of the ITC text, ITM and ITG passes compute every row); 5 layers scan
# 2 pairs and leave the 5th unrolled (with its cut rows).
QFORMER = qformer.QFormerConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=16, encoder_width=24,
                                num_query_tokens=4, embed_dim=16, cross_attention_freq=2)


def qformer_passes(module, params, ids, mask, image, image_mask):
    """The Q-Former passes of the stage-1 step: image queries (ITC, with the cache ITG reads), the text's [CLS]
    (ITC, last layer cut to one row), ITM pairs sharing images and texts (first layer per text, last layer
    cut to the queries) and ITG over the cached query keys / values (last layer cut)."""
    def call(method, *args, **kwargs):
        return module.apply({"params": params}, *args, method=getattr(module, method), **kwargs)

    queries, cache = call("encode_image_queries", image, image_mask, return_cache=True)
    pair_image, pair_text = jnp.array([1, 0, 1, 0]), jnp.array([0, 0, 1, 1])
    return dict(queries=queries, cache=cache, text_cls=call("encode_text", ids, mask, positions=1),
                itm=call("joint_pass", image, ids, mask, image_mask, image_index=pair_image, text_index=pair_text,
                         queries_only=True).last,
                itg=call("decoder_hidden", ids, mask, query_cache=cache, positions=ids.shape[1] - 1))


@pytest.mark.parametrize("num_layers, remats, gradients", [(4, ("nothing_saveable",), True), (5, (False,), False)])
def test_qformer_scan_matches_every_pass_and_its_gradients(num_layers, remats, gradients):
    """The stage-1 step's Q-Former passes, scanned, against unrolled (every pass of tests/test_qformer.py runs
    through the same QFormerEncoder.run): 4 layers with the paper configs' remat, and their gradients; 5
    layers (a last layer outside the pairs) without remat, forward only."""
    config = dataclasses.replace(QFORMER, num_hidden_layers=num_layers)
    plain = qformer.QFormer(config)
    image = np.random.default_rng(2).normal(size=(2, 7, 24)).astype(np.float32)
    inputs = (QF_IDS, QF_MASK, image, np.array([[1] * 7, [1] * 5 + [0] * 2], np.int32))
    params = nn.unbox(plain.init(jax.random.key(0), input_ids=QF_IDS, image_feats=image)["params"])
    run = lambda m: jax.jit(lambda p, *a: qformer_passes(m, p, *a))  # noqa: E731
    loss = lambda m: lambda p, *a: sum(  # noqa: E731
        jnp.sum(jnp.square(out[k])) for out in [qformer_passes(m, p, *a)] for k in ("text_cls", "itm", "itg"))
    grad = lambda m: traverse_util.flatten_dict(jax.jit(jax.grad(loss(m)))(params, *inputs))  # noqa: E731
    want, want_grad = run(plain)(params, *inputs), grad(plain) if gradients else {}
    for remat in remats:
        scanned = qformer.QFormer(_scanned(config, remat))
        assert jax.tree.structure(nn.unbox(scanned.init(jax.random.key(0), input_ids=QF_IDS, image_feats=image)
                                           ["params"])) == jax.tree.structure(params)
        _close(run(scanned)(params, *inputs), want)
        if not gradients:
            continue
        got_grad = grad(scanned)
        # float32 summation order: within 1e-4 of the largest gradient entry (some leaves, e.g. the position
        # embeddings behind a LayerNorm, are pure cancellation, ~1e-5, and differ at that scale under remat)
        scale = max(float(np.abs(g).max()) for g in want_grad.values())
        for key in want_grad:
            np.testing.assert_allclose(got_grad[key], want_grad[key], rtol=0, atol=1e-4 * scale, err_msg=f"{remat} {key}")


def test_qformer_scan_draws_a_dropout_mask_per_layer():
    config = _scanned(dataclasses.replace(QFORMER, hidden_dropout_prob=0.3))
    model = qformer.QFormer(config)
    image = np.random.default_rng(2).normal(size=(2, 7, 24)).astype(np.float32)
    params = model.init(jax.random.key(0), input_ids=QF_IDS, image_feats=image)["params"]
    run = lambda key: model.apply({"params": params}, image, rngs={"dropout": key},  # noqa: E731
                                  method=model.encode_image_queries)
    first, again, other = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    np.testing.assert_array_equal(first, again)
    assert np.abs(np.asarray(first) - np.asarray(other)).max() > 1e-3
    quiet = model.apply({"params": params}, image, method=model.encode_image_queries)  # no rng: no dropout
    assert np.abs(np.asarray(quiet) - np.asarray(first)).max() > 1e-3


def test_remat_policy_names_are_checked():
    assert layers.checkpoint_policy(True) is jax.checkpoint_policies.nothing_saveable
    with pytest.raises(ValueError, match="dots_with_no_batch_dims_saveable"):
        layers.checkpoint_policy("save_everything")
