"""scan_layers (one lax.scan over identical layers) and named remat policies give the unrolled numbers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer_jax.models import layers, mae, opt, vit

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


def test_remat_policy_names_are_checked():
    assert layers.checkpoint_policy(True) is jax.checkpoint_policies.nothing_saveable
    with pytest.raises(ValueError, match="dots_with_no_batch_dims_saveable"):
        layers.checkpoint_policy("save_everything")
