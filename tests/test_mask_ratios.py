"""MAE masking after stage 1: stage 2 and inference have mask ratios of their own (default 0)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer_jax import factory
from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.train import objective


def _model(config):
    model_config = factory.model_config(config)
    model = factory.make_model(model_config)
    params = jax.jit(factory.init_fn(model, model_config))(jax.random.key(0))
    return model_config, model, params


def _images(config, batch=2):
    rng = np.random.default_rng(0)
    size = config.model.vision.image_size
    pixels = jnp.asarray(rng.normal(size=(batch, 3, size, size)), jnp.float32)
    return pixels, pixels * 0.5


def test_defaults_are_no_masking_after_stage_one(tmp_path):
    model_config = factory.model_config(tiny_stage2_config(tmp_path, ""))
    assert model_config.fusion.mask_ratio == 0.5  # stage 1
    assert model_config.mask_ratio == 0.0 and model_config.inference_mask_ratio == 0.0


def test_stage2_reconstruction_needs_a_stage2_mask_ratio(tmp_path):
    config = tiny_stage2_config(tmp_path, "")
    config.model.stage2_reconstruction_weight = 1.0
    with pytest.raises(ValueError, match="config.model.stage2_mask_ratio > 0"):
        factory.model_config(config)
    config.model.stage2_mask_ratio = 1.0
    with pytest.raises(ValueError, match="config.model.stage2_mask_ratio=1.0 must be in"):
        factory.model_config(config)
    config.model.stage2_mask_ratio = 0.0
    config.model.inference_mask_ratio = -0.1
    with pytest.raises(ValueError, match="config.model.inference_mask_ratio=-0.1"):
        factory.model_config(config)


def test_stage2_prompts_follow_the_inference_ratio_not_the_training_one(tmp_path):
    """Training stage 2 with reconstruction (masked MAE) once forced masking at inference too."""
    config = tiny_stage2_config(tmp_path, "")
    pixels, mae_pixels = _images(config)
    ids, mask = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32)
    _, unmasked, _ = _model(config)
    config.model.update(stage2_reconstruction_weight=1.0, stage2_mask_ratio=0.5)
    trained_config, trained_masked, params = _model(config)  # its params include the MAE decoder's
    prompt = lambda m, p: m.apply({"params": p}, pixels, ids, mask, mae_pixels,  # noqa: E731
                                  method=m.prompt_embeddings)[0]
    reference = prompt(unmasked, params)
    np.testing.assert_allclose(prompt(trained_masked, params), reference, rtol=1e-6, atol=1e-6)
    out = trained_masked.apply({"params": params}, pixels, ids, mask, mae_pixel_values=mae_pixels,
                               mask_rng=jax.random.key(1))
    assert float(out["rec_mask"].mean()) == 0.5
    assert np.isfinite(objective.reconstruction(trained_config.mae, out["rec_pred"], out["rec_mask"], mae_pixels))

    config.model.inference_mask_ratio = 0.5
    _, masked_inference, _ = _model(config)
    assert not np.allclose(prompt(masked_inference, params), reference, atol=1e-4)


def test_stage1_retrieval_and_features_follow_the_inference_ratio(tmp_path):
    config = tiny_config(tmp_path)
    pixels, mae_pixels = _images(config)
    ids, mask = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 5), jnp.int32)
    _, model, params = _model(config)
    features = lambda m: m.apply({"params": params}, pixels, mae_pixels, method=m.features)  # noqa: E731
    retrieval = lambda m: m.apply({"params": params}, pixels, ids, mask, mae_pixels,  # noqa: E731
                                  method=m.retrieval_embeddings)[0]
    unmasked = model.apply({"params": params}, pixels, mae_pixels, mask_ratio=0.0, method=model.features)
    np.testing.assert_allclose(features(model), unmasked, rtol=1e-6, atol=1e-6)

    config.model.inference_mask_ratio = 0.5
    _, masked, _ = _model(config)
    assert not np.allclose(features(masked), unmasked, atol=1e-4)
    assert not np.allclose(retrieval(masked), retrieval(model), atol=1e-4)
