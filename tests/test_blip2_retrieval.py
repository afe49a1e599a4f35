"""Blip2ForImageTextRetrieval: parity with transformers (ITM and ITC, fp32) and the stage-1 param tree."""
import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

import hf_models
from xformer_jax import factory
from xformer_jax.convert import CheckpointMismatch, from_hf, load_hf, mapping
from xformer_jax.models import blip2_retrieval, qformer, xformer

TOL = 1e-4  # max abs difference, float32
rng = np.random.default_rng(0)
PIXELS = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
TEXT_IDS = np.array([[1, 17, 45, 9, 88, 2], [1, 61, 5, 2, 0, 0], [1, 33, 2, 0, 0, 0]], np.int64)
TEXT_MASK = (TEXT_IDS != 0).astype(np.int64)
IMAGE_TOKEN = 98
# What a retrieval checkpoint lacks: the Q-Former's LM head (ITG) and the ITC temperature.
FRESH = {"qformer/temp", "qformer/lm_head/bias", "qformer/lm_head/dense/bias", "qformer/lm_head/dense/kernel",
         "qformer/lm_head/layernorm/bias", "qformer/lm_head/layernorm/scale"}


def max_diff(got, expected) -> float:
    return float(np.abs(np.asarray(got, np.float32) - np.asarray(expected, np.float32)).max())


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    """(HF model, directory, module, params, report, jitted apply(params, pixels, ids, mask, itm))."""
    reference = hf_models.blip2_retrieval()
    directory = hf_models.save(reference, tmp_path_factory.mktemp("blip2_retrieval"))
    module, params, report = load_hf(directory)
    apply = jax.jit(lambda p, x, i, m, itm: module.apply({"params": p}, x, i, m, use_image_text_matching_head=itm),
                    static_argnums=4)
    return reference, directory, module, params, report, apply


def hf_forward(reference, pixels, ids, mask, itm: bool):
    with torch.no_grad():
        return reference(pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(ids),
                         attention_mask=torch.from_numpy(mask), use_image_text_matching_head=itm)


def check_parity(module_apply, reference, pixels, ids, mask, itm: bool, label: str):
    expected = hf_forward(reference, pixels, ids, mask, itm)
    got = module_apply(pixels, ids, mask, itm)
    names = ["logits_per_image", "logits_per_text"] + ([] if itm else ["image_embeds", "text_embeds"])
    for name in names:
        assert got[name].shape == tuple(getattr(expected, name).shape), name
        err = max_diff(got[name], getattr(expected, name).numpy())
        print(f"Blip2ForImageTextRetrieval {label} {name}: max abs diff {err:.2e}")
        assert err < TOL, name


def test_itc_similarities_match(retrieval):
    """Two images against three padded texts: raw max-over-queries cosines (B_img, B_txt), no temperature."""
    reference, _, _, params, _, apply = retrieval
    check_parity(lambda *a: apply(params, *a), reference, PIXELS[:2], TEXT_IDS, TEXT_MASK, False, "ITC")


def test_itm_logits_match(retrieval):
    reference, _, _, params, _, apply = retrieval
    check_parity(lambda *a: apply(params, *a), reference, PIXELS, TEXT_IDS, TEXT_MASK, True, "ITM")


def test_config_report_and_ln_vision(retrieval):
    reference, _, module, params, report, _ = retrieval
    c = module.config
    assert isinstance(module, blip2_retrieval.Blip2ForImageTextRetrieval) and not module.strip_image_tokens
    assert (c.fusion.kind, c.vision.kind, c.vision.feature_layer, c.qformer.vision_layer_norm_eps) == (
        "blip2", "eva", -1, 1e-6)
    assert (c.qformer.num_query_tokens, c.qformer.embed_dim, c.qformer.encoder_width, c.qformer.text_ffn) == (
        4, 16, 32, True)
    assert set(report.fresh) == FRESH
    assert report.ignored == ()
    assert "post_norm" not in params["vision"]  # HF's post_layernorm is the Q-Former's ln_vision
    np.testing.assert_array_equal(params["qformer"]["ln_vision"]["scale"],
                                  reference.vision_model.post_layernorm.weight.detach().numpy())


def test_params_drive_the_stage1_model(retrieval):
    """The loaded tree is Stage1Model's (blip2 fusion) and trains through its forward, whose ITC
    embeddings are the retrieval model's."""
    _, _, module, params, _, apply = retrieval
    model = xformer.Stage1Model(module.config)
    expected = jax.eval_shape(factory.init_fn(model, module.config), jax.random.key(0))
    assert mapping.flat_shapes(params) == mapping.flat_shapes(nn.unbox(expected))
    out = jax.jit(lambda p, x, i, m: model.apply({"params": p}, x, i, m, itm_rng=jax.random.key(1)))(
        params, PIXELS[:2], TEXT_IDS[:2], TEXT_MASK[:2])
    for name in ("itm_logits", "itg_logits"):
        assert np.all(np.isfinite(np.asarray(out[name]))), name
    retrieved = apply(params, PIXELS[:2], TEXT_IDS, TEXT_MASK, False)
    assert max_diff(out["image_embeds"], retrieved["image_embeds"]) < 1e-6
    assert max_diff(out["text_embeds"], retrieved["text_embeds"][:2]) < 1e-6


def test_qformer_component_is_the_models_qformer(retrieval):
    _, directory, _, params, _, _ = retrieval
    module, q_params, report = load_hf(directory, component="qformer")
    assert isinstance(module, qformer.QFormer) and module.config.encoder_width == 32
    assert set(report.fresh) == {p.removeprefix("qformer/") for p in FRESH}
    jax.tree.map(np.testing.assert_array_equal,
                 {k: v for k, v in q_params.items() if k not in ("lm_head", "temp")},
                 {k: v for k, v in params["qformer"].items() if k not in ("lm_head", "temp")})
    assert report.ignored and all(k.startswith("vision_model.") and "post_layernorm" not in k for k in report.ignored)


def edited_copy(directory, tmp_path, config_edit=None, tensor_edit=None) -> str:
    shutil.copytree(directory, tmp_path / "copy")
    config_path, weights_path = tmp_path / "copy" / "config.json", str(tmp_path / "copy" / "model.safetensors")
    if config_edit:
        config = json.loads(config_path.read_text())
        config_edit(config)
        config_path.write_text(json.dumps(config))
    if tensor_edit:
        tensors = load_file(weights_path)
        tensor_edit(tensors)
        save_file(tensors, weights_path)
    return str(tmp_path / "copy")


def test_image_token_prefix_is_stripped_as_transformers_does(retrieval, tmp_path):
    """With config.image_token_index set, HF's processor prepends one image token per query; the model drops them."""
    reference, directory, _, params, _, _ = retrieval
    module, _ = from_hf(edited_copy(directory, tmp_path, lambda c: c.update(image_token_index=IMAGE_TOKEN)))
    assert module.strip_image_tokens
    ids = np.concatenate([np.full((3, 4), IMAGE_TOKEN), TEXT_IDS], axis=1)
    mask = np.concatenate([np.ones((3, 4), np.int64), TEXT_MASK], axis=1)
    apply = jax.jit(lambda x, i, m, itm: module.apply({"params": params}, x, i, m, use_image_text_matching_head=itm),
                    static_argnums=3)
    reference.config.image_token_index = IMAGE_TOKEN
    try:
        for itm in (False, True):
            check_parity(apply, reference, PIXELS, ids, mask, itm, "image-token prefix")
    finally:
        reference.config.image_token_index = None


def test_checkpoint_stays_strict(retrieval, tmp_path):
    _, directory, _, _, _, _ = retrieval
    copy = edited_copy(directory, tmp_path, tensor_edit=lambda t: t.pop("vision_model.post_layernorm.weight"))
    with pytest.raises(CheckpointMismatch, match=r"qformer/ln_vision/scale"):
        from_hf(copy)


def test_text_ffn_is_required(retrieval, tmp_path):
    _, directory, _, _, _, _ = retrieval
    copy = edited_copy(directory, tmp_path, lambda c: c["qformer_config"].update(use_qformer_text_input=False))
    with pytest.raises(ValueError, match="use_qformer_text_input"):
        from_hf(copy)
