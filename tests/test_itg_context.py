"""ITG's context: the image pass's query cache (LAVIS, default) or the fused queries Z' (config.model.itg_context)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer_jax import factory, losses
from xformer_jax.configs.tiny import tiny_config
from xformer_jax.proj.synthetic import mini_paper


def _itg_grad_of_dual_block(config):
    model_config = factory.model_config(config)
    model = factory.make_model(model_config)
    params = jax.jit(factory.init_fn(model, model_config))(jax.random.key(0))
    rng = np.random.default_rng(0)
    pixels = jnp.asarray(rng.normal(size=(4, 3, 64, 64)), jnp.float32)
    ids = jnp.asarray(rng.integers(5, 1000, size=(4, 6)), jnp.int32)
    mask = jnp.ones((4, 6), jnp.int32)

    def itg(dual):
        out = model.apply({"params": {**params, "dual": dual}}, pixels, ids, mask, mae_pixel_values=pixels,
                          mask_rng=jax.random.key(1), itm_rng=jax.random.key(2))
        return losses.itg_loss(out["itg_logits"], out["itg_ids"], mask, model_config.itg_label_smoothing,
                               pad_id=model_config.qformer.pad_token_id)
    loss, grads = jax.jit(jax.value_and_grad(itg))(params["dual"])
    return float(loss), max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))


def test_default_itg_reads_the_image_pass_and_sends_nothing_into_the_dual_block(tmp_path):
    config = tiny_config(tmp_path)
    assert config.model.itg_context == "image_pass"
    loss, largest = _itg_grad_of_dual_block(config)
    assert np.isfinite(loss) and largest == 0.0


def test_fused_itg_attends_to_z_prime_and_trains_the_dual_block(tmp_path):
    config = tiny_config(tmp_path)
    config.model.itg_context = "fused"
    loss, largest = _itg_grad_of_dual_block(config)
    assert np.isfinite(loss) and largest > 1e-6


@pytest.mark.parametrize("fusion, placement", [("xformer", "per_xattn_layer"), ("blip2", "after_qformer"),
                                               ("early_xattn", "after_qformer")])
def test_fused_itg_needs_the_after_qformer_dual_block(tmp_path, fusion, placement):
    config = tiny_config(tmp_path, fusion, placement)
    config.model.itg_context = "fused"
    with pytest.raises(ValueError, match="config.model.itg_context='fused' needs"):
        factory.model_config(config)
    config.model.itg_context = "z"
    with pytest.raises(ValueError, match="config.model.itg_context='z' is not one of"):
        factory.model_config(config)


def test_mini_paper_compares_both_itg_contexts(tmp_path):
    base = tiny_config(tmp_path)
    fused = mini_paper.variant_config(base, "xformer_itg_fused", seed=0)
    assert (fused.model.fusion.kind, fused.model.itg_context, fused.loss.weights.rec) == ("xformer", "fused", 1.0)
    assert mini_paper.variant_config(base, "xformer", seed=0).model.itg_context == "image_pass"
