"""Parity of the MAE module with transformers' ViTMAEForPreTraining / ViTMAEModel (fp32)."""
import dataclasses

import jax
import numpy as np
import pytest
import torch

import hf_models
from xformer_jax.convert import from_hf
from xformer_jax.models import mae

TOL = 1e-4  # max abs difference, float32
RATIOS = [0.0, 0.5, 0.75]
SIZES = [(32, 8), (24, 4)]  # default tiny size, then a non-default image and patch size


def close(got, expected, what):
    np.testing.assert_allclose(np.asarray(got), expected.detach().numpy(), atol=TOL, rtol=0, err_msg=what)


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}px-p{s[1]}")
def pretraining(request, tmp_path_factory):
    image_size, patch_size = request.param
    reference = hf_models.mae_pretraining(image_size=image_size, patch_size=patch_size)
    module, params = from_hf(hf_models.save(reference, tmp_path_factory.mktemp("mae")))
    return reference, module, params


def inputs(reference, seed=0):
    rng = np.random.default_rng(seed)
    c = reference.config
    pixels = rng.normal(size=(2, 3, c.image_size, c.image_size)).astype(np.float32)
    noise = rng.uniform(size=(2, (c.image_size // c.patch_size) ** 2)).astype(np.float32)
    return pixels, noise


def run_reference(reference, pixels, noise, ratio, norm_pix):
    reference.config.mask_ratio = ratio
    reference.config.norm_pix_loss = norm_pix
    with torch.no_grad():
        return reference(pixel_values=torch.from_numpy(pixels), noise=torch.from_numpy(noise),
                         output_hidden_states=True)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("norm_pix", [False, True])
def test_pretraining_matches(pretraining, ratio, norm_pix):
    reference, module, params = pretraining
    pixels, noise = inputs(reference)
    expected = run_reference(reference, pixels, noise, ratio, norm_pix)
    module = module.clone(config=dataclasses.replace(module.config, norm_pix_loss=norm_pix))
    got = jax.jit(lambda p, x, n: module.apply({"params": p}, pixel_values=x, noise=n, mask_ratio=ratio,
                                               output_hidden_states=True))(params, pixels, noise)
    close(got["mask"], expected.mask, "mask")
    close(got["ids_restore"], expected.ids_restore, "ids_restore")
    close(got["logits"], expected.logits, "decoder logits")
    if ratio > 0:
        close(got["loss"], expected.loss, "loss")
    else:  # nothing is masked: transformers divides 0 by 0 (NaN); we report 0
        assert float(got["loss"]) == 0.0 and torch.isnan(expected.loss)
    for i, (g, e) in enumerate(zip(got["hidden_states"], expected.hidden_states, strict=True)):
        close(g, e, f"hidden_states[{i}]")


@pytest.mark.parametrize("ratio", RATIOS)
def test_encoder_matches_vitmae_model(pretraining, ratio, tmp_path):
    reference, _, _ = pretraining
    reference.config.mask_ratio = ratio
    encoder_dir = hf_models.save(reference.vit, tmp_path / "vitmae")
    module, params = from_hf(encoder_dir)
    assert isinstance(module, mae.MAEEncoder)
    pixels, noise = inputs(reference, seed=1)
    with torch.no_grad():
        expected = reference.vit(pixel_values=torch.from_numpy(pixels), noise=torch.from_numpy(noise))
    got = module.apply({"params": params}, pixel_values=pixels, noise=noise, mask_ratio=ratio)
    close(got["last_hidden_state"], expected.last_hidden_state, "last_hidden_state")
    close(got["mask"], expected.mask, "mask")
    close(got["ids_restore"], expected.ids_restore, "ids_restore")


@pytest.mark.parametrize("width", [32, 16])
def test_sincos_table_matches_transformers(width):
    """transformers builds the canonical [h | w] table, then swaps halves to the released MAE layout."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding
    table = build_2d_sinusoidal_position_embedding(height=4, width=4, embed_dim=width, cls_token=True)
    table = torch.cat([table[..., width // 2:], table[..., : width // 2]], dim=-1)
    np.testing.assert_allclose(mae.sincos_position_embedding(width, 4), table.numpy(), atol=1e-6)


def test_patchify_round_trip_and_order(pretraining):
    reference, _, _ = pretraining
    pixels, _ = inputs(reference)
    p = reference.config.patch_size
    patches = mae.patchify(pixels, p)
    close(patches, reference.patchify(torch.from_numpy(pixels)), "patchify")
    np.testing.assert_array_equal(np.asarray(mae.unpatchify(patches, p)), pixels)


def test_key_driven_masking_is_reproducible_and_exact(pretraining):
    _, module, params = pretraining
    c = module.config
    pixels = np.zeros((3, 3, c.image_size, c.image_size), np.float32)
    run = lambda key: module.apply({"params": params}, pixel_values=pixels, mask_rng=key, mask_ratio=0.75)
    a, b, other = run(jax.random.key(7)), run(jax.random.key(7)), run(jax.random.key(8))
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(a["mask"], other["mask"])
    removed = c.num_patches - int(c.num_patches * 0.25)
    np.testing.assert_array_equal(np.asarray(a["mask"]).sum(axis=1), [removed] * 3)


def test_identity_noise_keeps_order_at_ratio_zero(pretraining):
    _, module, params = pretraining
    c = module.config
    noise = mae.identity_noise(2, c.num_patches)
    out = module.apply({"params": params}, pixel_values=np.zeros((2, 3, c.image_size, c.image_size), np.float32),
                       noise=noise, mask_ratio=0.0)
    np.testing.assert_array_equal(np.asarray(out["ids_restore"]), np.tile(np.arange(c.num_patches), (2, 1)))
    assert float(np.asarray(out["mask"]).sum()) == 0.0


def test_masking_without_noise_or_key_is_an_error(pretraining):
    _, module, params = pretraining
    c = module.config
    with pytest.raises(ValueError, match="mask_rng"):
        module.apply({"params": params}, pixel_values=np.zeros((1, 3, c.image_size, c.image_size), np.float32))
