"""Stage1Model end to end on tiny configs: frozen towers get no gradient, every variant overfits a batch."""
import re

import jax
import numpy as np
import pytest
from flax import traverse_util

from xformer_jax import factory
from xformer_jax.configs import demo
from xformer_jax.configs.tiny import tiny_config
from xformer_jax.convert import pretrained
from xformer_jax.data import pipeline
from xformer_jax.models import xformer
from xformer_jax.proj.synthetic import pretrain
from xformer_jax.train import loop, objective

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
    model_config = factory.stage1_config(config.model)
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
    batch, outputs = trainer.global_batch(local), {}
    for shared in (False, True):
        config.model.itm_shared_image_kv = shared
        model = factory.make_model(factory.model_config(config))
        loss_fn = objective.make_stage1_loss(model, config.loss, trainer.mesh)
        outputs[shared] = jax.jit(lambda p, f, b: loss_fn(p, f, b, jax.random.key(1), train=False)[1])(
            trainer.state.params, trainer.state.frozen, batch)
    assert abs(float(outputs[True]["loss_itm"]) - float(outputs[False]["loss_itm"])) < 1e-5
    assert abs(float(outputs[True]["loss_itg"]) - float(outputs[False]["loss_itg"])) < 1e-6


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
            score = lambda stream: objective.reconstruction(  # noqa: E731
                m.config.mae, m.reconstruct(stream, images), images["mae_mask"], mae_pixels)
            return images["mae"], enriched, score(enriched), score(images["mae"])
        mae_states, enriched, rec, rec_alone = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=streams))(
            params, local["pixel_values"], local["mae_pixel_values"])
        losses[gate] = (float(rec), float(rec_alone))
        if gate:
            np.testing.assert_array_equal(np.asarray(enriched), np.asarray(mae_states))
        else:
            assert not np.array_equal(np.asarray(enriched), np.asarray(mae_states))
    assert losses[True][0] == losses[True][1]


def distinct_images(config, size: int) -> dict:
    """The first `size` training pairs that show distinct images (a batch of the iterator may repeat one)."""
    rows, seen = [], set()
    for local in pipeline.make_train_iterator(config):
        for i, image_id in enumerate(local["image_id"].tolist()):
            if image_id not in seen and len(rows) < size:
                seen.add(image_id)
                rows.append({k: v[i] for k, v in local.items() if np.ndim(v) and len(v) == len(local["image_id"])})
        if len(rows) == size:
            return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


def overfit(workdir, towers, fusion, placement, weights: dict, steps: int = 60) -> tuple[list[dict], dict]:
    """(per-step metrics, final params) of `steps` steps on one batch of distinct images, from pretrained towers, at a
    warmed-up lr of 1.2e-3 decayed to a tenth (at 2e-3 ITC could leave its plateau with a spike and fall
    back onto it), with a Q-Former 128 wide (at width 32 a fresh cross-attention, std 0.02, passes ~0.1%
    image signal). One device: the mesh is tested elsewhere, and 8 simulated devices on a few cores cost
    collectives and time here."""
    config = tiny_config(workdir, fusion, placement)
    config.total_steps = steps
    config.optim.update(lr=1.2e-3, min_lr=1.2e-4, warmup_steps=5)
    config.loss.weights.update(weights)
    config.model.qformer.update(hidden_size=128, intermediate_size=256)
    config.model.fusion.update(intermediate_size=256)
    trainer = loop.make_trainer(config, devices=jax.devices()[:1])
    batch = trainer.global_batch(distinct_images(config, config.batch_size))
    towers = {k: v for k, v in towers.items() if k in trainer.state.frozen}
    state, history = trainer.state.replace(frozen=pretrained.merge_pretrained(trainer.state.frozen, towers)), []
    for _ in range(steps):
        state, metrics = trainer.step_fn(state, batch)
        history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
    return history, state.params


def first_and_last(history: list[dict], term: str) -> tuple[float, float]:
    """Mean of the first three steps, median of the last five (a late spike does not decide)."""
    return np.mean([h[term] for h in history[:3]]), np.median([h[term] for h in history[-5:]])


@pytest.mark.slow
@pytest.mark.parametrize("fusion,placement", VARIANTS, ids=[f"{f}-{p}" for f, p in VARIANTS])
def test_sixty_steps_on_one_batch_drive_the_vision_language_losses_down(batch_and_dir, pretrained_towers, fusion,
                                                                         placement):
    """ITC starts on its plateau ln(batch): the fresh cross-attention passes little image signal and Adam
    scales each update by the whole gradient, which ITG's (loss ~10) dominates. At equal weights concat and
    early_xattn stayed on the plateau for 60 steps with some seeds and left it with others (and 40 steps at
    a constant lr left concat on it on one CPU and not on another). With ITC weighted 10x every variant left
    it by about step 30 for every seed tried and ended far below it (0.8-1.3 against 2.08). The
    reconstruction is checked on its own below: here ITC's pull on the shared queries can outweigh it."""
    history, _ = overfit(batch_and_dir[1], pretrained_towers, fusion, placement, {"itc": 10.0})
    assert ("loss_rec" in history[0]) == (fusion == "xformer")
    # ITM on a Q-Former this fresh learns its 1:2 label prior in 60 steps (~ln 2 -> 0.6365, 0.93x), not
    # yet the pairs: checked as that; the demo measures ITM on held-out pairs.
    for term, ratio in (("loss_itc", 0.9), ("loss_itm", 0.96), ("loss_itg", 0.9)):
        first, last = first_and_last(history, term)
        print(f"{fusion}/{placement} {term}: {first:.4f} -> {last:.4f}")
        assert last < ratio * first, f"{term}: {first:.4f} -> {last:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["after_qformer", "per_xattn_layer"])
def test_the_reconstruction_alone_opens_the_mae_gate(batch_and_dir, pretrained_towers, placement):
    """The reconstruction's gradient reaches the dual block through the frozen decoder and opens the
    zero-initialised gate (M' = M + g * block). Whether the loss then falls on one batch is not checked
    here: with this tiny, fresh Q-Former the queries carry little of what the mask hides, and trained on
    the reconstruction alone for 60 steps it went 0.2479 -> 0.2523 (the demo measures it held out)."""
    history, params = overfit(batch_and_dir[1], pretrained_towers, "xformer", placement,
                              {"itc": 0.0, "itm": 0.0, "itg": 0.0, "rec": 1.0})
    gates = [np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
             if "mae_gate" in jax.tree_util.keystr(path)]
    assert gates and all(np.all(g != 0) for g in gates)
    assert all(np.isfinite(h["loss_rec"]) for h in history)


def test_a_tower_with_both_params_file_and_hf_dir_is_refused(tmp_path):
    config = tiny_config(tmp_path)
    config.model.mae.update(params_file="mae.msgpack", hf_dir="mae_hf")
    with pytest.raises(ValueError, match=r"config.model.mae: both params_file=mae.msgpack and hf_dir=mae_hf"):
        pretrained.pretrained_parts(config.model, factory.stage1_config(config.model))


def test_a_bert_qformer_draws_its_fresh_params_from_the_run_seed_and_init(tmp_path):
    """The BERT Q-Former's fresh params (queries, cross-attention) come from the run's seed, not always
    from seed 0, and the cross-attention's query / key kernels from N(0, cross_attention_qk_init_std)."""
    import hf_models
    config = tiny_config(tmp_path)
    q = config.model.qformer
    q.update(vocab_size=100, dec_token_id=99, max_position_embeddings=40, num_hidden_layers=3,
             cross_attention_qk_init_std=0.08)
    q.bert_dir = hf_models.save(hf_models.bert(hidden_size=q.hidden_size, num_hidden_layers=q.num_hidden_layers,
                                               num_attention_heads=q.num_attention_heads,
                                               intermediate_size=q.intermediate_size), tmp_path / "bert")
    model_config = factory.stage1_config(config.model)
    first, again, other = (pretrained.pretrained_parts(config.model, model_config, seed)["qformer"] for seed in (0, 0, 1))
    np.testing.assert_array_equal(first["query_tokens"], again["query_tokens"])
    assert not np.array_equal(first["query_tokens"], other["query_tokens"])
    bert_kernel = lambda p: p["qformer"]["layer_1"]["attention"]["query"]["kernel"]  # noqa: E731
    np.testing.assert_array_equal(bert_kernel(first), bert_kernel(other))
    xattn = first["qformer"]["layer_0"]["crossattention"]
    for name in ("query", "key"):  # 32 x 32 draws: the sample std is within 15% of 0.08
        assert 0.068 < float(np.std(xattn[name]["kernel"])) < 0.092
    assert float(np.std(xattn["value"]["kernel"])) < 0.025  # BERT's 0.02


def test_demo_fresh_lr_scale_picks_the_params_no_checkpoint_initialises(tmp_path):
    """configs/demo.py's FRESH_PARAMS: the Q-Former's queries, cross-attention, ln_vision, ITC / ITM heads and
    the whole fusion block; none of BERT's (embeddings, self-attention, FFNs, LM head), temp or the towers."""
    layout = factory.model_layout(tiny_config(tmp_path))
    paths = traverse_util.flatten_dict(layout.param_shardings, sep="/")
    picked = {p for p in paths if re.search(demo.FRESH_PARAMS, p)}
    fresh_qformer = ("qformer/query_tokens", "qformer/ln_vision/", "qformer/vision_proj/", "qformer/text_proj/",
                     "qformer/itm_head/")
    expected = {p for p in paths if p.startswith(("dual/", *fresh_qformer)) or "/crossattention/" in p and
                p.startswith("qformer/qformer/layer_")}
    assert picked == expected
    assert any("/crossattention/" in p for p in picked) and any(p.startswith("dual/") for p in picked)
    value_path = {p for p in paths if re.search(demo.FRESH_VALUE_PATH, p)}
    assert value_path and value_path < picked  # the cross-attention's value / output params, all fresh
    assert all("/crossattention/value/" in p or "/crossattention/output/" in p for p in value_path)
    assert any("/crossattention/query/" in p for p in picked - value_path)
    assert demo.get_config("stage1").optim.lr_scales == ((demo.FRESH_VALUE_PATH, demo.FRESH_VALUE_LR_SCALE),
                                                         (demo.FRESH_PARAMS, demo.FRESH_LR_SCALE))
    # Stage 2's Q-Former comes from stage 1: only the value path is slowed (the same param paths in stage 2).
    assert demo.get_config("stage2").optim.lr_scales == ((demo.FRESH_VALUE_PATH, demo.STAGE2_VALUE_LR_SCALE),)
