"""Parity of the CLIP and EVA towers with transformers' CLIPVisionModel / Blip2VisionModel (fp32)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import hf_models
from xformer_jax.convert import from_hf

TOL = 1e-4  # max abs difference, float32

TOWERS = {
    "clip": hf_models.clip_vision,
    "eva": hf_models.eva_vision,
}
# (image_size, patch_size): the default tiny size and a non-default patch and image size.
SIZES = [(32, 8), (28, 4)]


def pixels(batch, size, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module", params=[(k, s) for k in TOWERS for s in SIZES], ids=lambda p: f"{p[0]}-{p[1][0]}px-p{p[1][1]}")
def tower(request, tmp_path_factory):
    kind, (image_size, patch_size) = request.param
    reference = TOWERS[kind](image_size=image_size, patch_size=patch_size)
    directory = hf_models.save(reference, tmp_path_factory.mktemp(kind))
    module, params = from_hf(directory)
    x = pixels(2, image_size)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(x), output_hidden_states=True)
    got = jax.jit(lambda p, x: module.apply({"params": p}, pixel_values=x, output_hidden_states=True))(params, x)
    return module, params, x, expected, got


def test_every_hidden_state_matches(tower):
    _, _, _, expected, got = tower
    assert len(got["hidden_states"]) == len(expected.hidden_states)
    for i, (g, e) in enumerate(zip(got["hidden_states"], expected.hidden_states)):
        np.testing.assert_allclose(np.asarray(g), e.numpy(), atol=TOL, rtol=0, err_msg=f"hidden_states[{i}]")


def test_last_hidden_state_and_pooler_match(tower):
    _, _, _, expected, got = tower
    np.testing.assert_allclose(np.asarray(got["last_hidden_state"]), expected.last_hidden_state.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got["pooler_output"]), expected.pooler_output.numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("feature_layer", [-2, 1, -1])
def test_features_stop_at_the_configured_layer(tower, feature_layer):
    module, params, x, expected, _ = tower
    module = module.clone(config=dataclasses.replace(module.config, feature_layer=feature_layer))
    feats = module.apply({"params": params}, x, method=module.features)
    np.testing.assert_allclose(np.asarray(feats), expected.hidden_states[feature_layer].numpy(), atol=TOL, rtol=0)


def test_bfloat16_compute_stays_close(tower):
    module, params, x, expected, _ = tower
    bf16 = module.clone(config=dataclasses.replace(module.config, dtype=jnp.bfloat16))
    out = bf16.apply({"params": params}, pixel_values=x)
    assert out["last_hidden_state"].dtype == jnp.bfloat16
    err = np.abs(np.asarray(out["last_hidden_state"], np.float32) - expected.last_hidden_state.numpy()).max()
    assert err < 0.1, err


def test_wrong_pixel_layout_is_rejected(tower):
    module, params, x, _, _ = tower
    with pytest.raises(ValueError, match="NCHW"):
        module.apply({"params": params}, pixel_values=np.transpose(x, (0, 2, 3, 1)))
