"""Stage1Model end to end on tiny configs: frozen towers get no gradient, every variant overfits a batch."""
import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from xformer_jax.configs import demo
from xformer_jax.configs.tiny import tiny_config
from xformer_jax.data import pipeline
from xformer_jax.models import xformer
from xformer_jax import pretrain
from xformer_jax.train import build, loop

VARIANTS = [("blip2", "after_qformer"), ("concat", "after_qformer"), ("early_xattn", "after_qformer"),
            ("xformer", "after_qformer"), ("xformer", "per_xattn_layer")]


@pytest.fixture(scope="module")
def batch_and_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stage1")
    config = tiny_config(workdir)
    return next(pipeline.make_train_iterator(config)), workdir


@pytest.fixture(scope="module")
def pretrained_towers(batch_and_dir):
    """Random frozen towers carry no signal (a random MAE decoder ignores its input), so the overfit
    test starts from towers given a short pretraining on the synthetic images, as the demo does."""
    _, workdir = batch_and_dir
    config = tiny_config(workdir)
    model_config = build.stage1_config(config.model)
    batches = pipeline.make_train_iterator(config)
    mae_params, mae_history = pretrain.pretrain_mae(model_config.mae, (b["mae_pixel_values"] for b in batches), 200)
    clip_params, clip_history = pretrain.pretrain_clip(model_config.vision, batches, model_config.qformer.vocab_size,
                                                       200)
    assert np.mean(mae_history[-20:]) < 0.5 * np.mean(mae_history[:5])
    assert np.mean(clip_history[-20:]) < np.mean(clip_history[:5])
    return {"mae": mae_params, "vision": clip_params}


def test_frozen_towers_get_no_gradient_and_no_optimizer_state(batch_and_dir):
    local, workdir = batch_and_dir
    trainer = loop.make_trainer(tiny_config(workdir))
    state = trainer.state
    assert set(state.frozen) == set(xformer.FROZEN_COLLECTIONS)
    assert not set(state.params) & set(xformer.FROZEN_COLLECTIONS)
    opt_paths = {"/".join(str(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]}
    assert not any("['vision']" in p or "['mae']" in p for p in opt_paths)

    batch = trainer.global_batch(local)
    grads = jax.jit(jax.grad(lambda frozen: trainer.loss_fn(state.params, frozen, batch, jax.random.key(1))[0]))(
        state.frozen)
    for path, g in jax.tree_util.tree_flatten_with_path(grads["vision"])[0]:
        assert not np.any(np.asarray(g)), path
    for path, g in jax.tree_util.tree_flatten_with_path(grads["mae"]["encoder"])[0]:
        assert not np.any(np.asarray(g)), path
    # The reconstruction loss does flow *through* the frozen decoder into the fusion block.
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["mae"]["decoder"]))


def test_itm_with_shared_image_keys_and_values_equals_gathered_images(batch_and_dir):
    local, workdir = batch_and_dir
    config = tiny_config(workdir)
    trainer = loop.make_trainer(config, load_pretrained=False, devices=jax.devices()[:1])
    params = {**trainer.state.params, **trainer.state.frozen}
    outputs = {}
    for shared in (False, True):
        config.model.itm_shared_image_kv = shared
        model = build.make_model(build.model_config(config))
        outputs[shared] = jax.jit(lambda p, b: model.apply(
            {"params": p}, b["pixel_values"], b["input_ids"], b["attention_mask"], image_ids=b["image_id"],
            mae_pixel_values=b["mae_pixel_values"], mask_rng=jax.random.key(0), itm_rng=jax.random.key(1)))(
                params, local)
    assert abs(float(outputs[True]["itm"]) - float(outputs[False]["itm"])) < 1e-5
    assert abs(float(outputs[True]["itg"]) - float(outputs[False]["itg"])) < 1e-6


@pytest.mark.parametrize("placement", ["after_qformer", "per_xattn_layer"])
def test_mae_stream_starts_as_the_mae_encoder_output(batch_and_dir, placement):
    """At initialisation M' = M exactly (the gate is zero), so the frozen decoder reads what it was trained on
    and the reconstruction loss starts at the MAE's own; without the gate the post-LN block replaces M (by
    little here, where the random encoder's final LayerNorm is still the identity; a pretrained one's is not)."""
    local, workdir = batch_and_dir
    losses = {}
    for gate in (True, False):
        config = tiny_config(workdir, "xformer", placement)
        config.model.fusion.mae_gate = gate
        trainer = loop.make_trainer(config, load_pretrained=False, devices=jax.devices()[:1])
        model, params = trainer.model, {**trainer.state.params, **trainer.state.frozen}

        def streams(m, pixels, mae_pixels):
            images = m.encode_images(pixels, mae_pixels, jax.random.key(0))
            _, _, enriched = m.query_states(images)
            return (images["mae"], enriched, m.reconstruct(enriched, images, mae_pixels)[0],
                    m.reconstruct(images["mae"], images, mae_pixels)[0])
        mae_states, enriched, rec, rec_alone = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=streams))(
            params, local["pixel_values"], local["mae_pixel_values"])
        losses[gate] = (float(rec), float(rec_alone))
        if gate:
            np.testing.assert_array_equal(np.asarray(enriched), np.asarray(mae_states))
        else:
            assert not np.array_equal(np.asarray(enriched), np.asarray(mae_states))
    assert losses[True][0] == losses[True][1]


@pytest.mark.slow
@pytest.mark.parametrize("fusion,placement", VARIANTS, ids=[f"{f}-{p}" for f, p in VARIANTS])
def test_forty_steps_on_one_batch_drive_every_loss_down(batch_and_dir, pretrained_towers, fusion, placement):
    local, workdir = batch_and_dir
    config = tiny_config(workdir, fusion, placement)
    config.total_steps = 40
    config.optim.update(lr=1.5e-3, min_lr=1.5e-3)
    # At width 32 a fresh cross-attention (std 0.02) passes ~0.1% image signal; 128 gives it a chance.
    config.model.qformer.update(hidden_size=128, intermediate_size=256)
    config.model.fusion.update(intermediate_size=256)
    trainer = loop.make_trainer(config)
    batch = trainer.global_batch(local)
    towers = {k: v for k, v in pretrained_towers.items() if k in trainer.state.frozen}
    state, history = trainer.state.replace(frozen=build.merge_pretrained(trainer.state.frozen, towers)), []
    for _ in range(40):
        state, metrics = trainer.step_fn(state, batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    terms = [k for k in history[0] if k.startswith("loss_")]
    assert ("loss_rec" in terms) == (fusion == "xformer")
    for term in terms:
        # The median of the last steps: ITC leaves its plateau (ln batch) late and may still spike there.
        first, last = np.mean([h[term] for h in history[:3]]), np.median([h[term] for h in history[-5:]])
        print(f"{fusion}/{placement} {term}: {first:.4f} -> {last:.4f}")
        # The reconstruction starts at the frozen MAE's own loss (M' = M at init) and falls only as far as
        # the queries add information, slowly while the zero-initialised gate opens.
        assert last < (0.995 if term == "loss_rec" else 0.98) * first, f"{term}: {first:.4f} -> {last:.4f}"


def test_a_tower_with_both_params_file_and_hf_dir_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    config.model.mae.update(params_file="mae.msgpack", hf_dir="mae_hf")
    with pytest.raises(ValueError, match=r"config.model.mae: both params_file=mae.msgpack and hf_dir=mae_hf"):
        build.pretrained_parts(config.model, build.stage1_config(config.model))


def test_demo_fresh_lr_scale_picks_the_params_no_checkpoint_initialises(tmp_path):
    """configs/demo.py's FRESH_PARAMS: the Q-Former's queries, cross-attention, ln_vision, ITC / ITM heads and
    the whole fusion block; none of BERT's (embeddings, self-attention, FFNs, LM head), temp or the towers."""
    layout = loop.model_layout(tiny_config(tmp_path))
    paths = traverse_util.flatten_dict(layout.param_shardings, sep="/")
    picked = {p for p in paths if re.search(demo.FRESH_PARAMS, p)}
    fresh_qformer = ("qformer/query_tokens", "qformer/ln_vision/", "qformer/vision_proj/", "qformer/text_proj/",
                     "qformer/itm_head/")
    expected = {p for p in paths if p.startswith(("dual/", *fresh_qformer)) or "/crossattention/" in p and
                p.startswith("qformer/qformer/layer_")}
    assert picked == expected
    assert any("/crossattention/" in p for p in picked) and any(p.startswith("dual/") for p in picked)
    assert demo.get_config("stage1").optim.lr_scales == ((demo.FRESH_PARAMS, demo.FRESH_LR_SCALE),)
    assert demo.get_config("stage2").optim.lr_scales == ()  # stage 2's Q-Former comes from stage 1
