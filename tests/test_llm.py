"""Parity of the decoder LLMs (OPT pre-LN, OPT-350m layout, LLaMA with GQA) with transformers (fp32),
their KV cache against the full forward, and their conversion (sharded checkpoints, BLIP-2's LM)."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T
from flax import traverse_util

import hf_models
from xformer_jax.convert import CheckpointMismatch, from_hf
from xformer_jax.models import llama, opt

TOL = 1e-4  # max abs difference, float32
VOCAB = 64

MODELS = {
    "opt": lambda: hf_models.opt_causal_lm(),
    "opt350m": lambda: hf_models.opt_causal_lm(**hf_models.opt_350m_style()),
    "llama-gqa": lambda: hf_models.llama_causal_lm(),
}

# Row 0 unpadded, row 1 left-padded by 3, row 2 right-padded by 2.
MASK = np.ones((3, 9), np.int64)
MASK[1, :3] = 0
MASK[2, 7:] = 0


def token_ids(batch=3, length=9, seed=0):
    return np.random.default_rng(seed).integers(3, VOCAB, size=(batch, length))


@pytest.fixture(scope="module", params=list(MODELS))
def llm(request, tmp_path_factory):
    reference = MODELS[request.param]()
    directory = hf_models.save(reference, tmp_path_factory.mktemp(request.param))
    module, params = from_hf(directory)
    forward = jax.jit(lambda p, **kw: module.apply({"params": p}, **kw)["logits"])
    return request.param, reference, directory, module, params, forward


def run(module, params, **inputs):
    """module.apply under jax.jit (eager Flax dispatches op by op: slower than compiling)."""
    return jax.jit(lambda p, kw: module.apply({"params": p}, **kw))(params, inputs)


def torch_logits(reference, **inputs):
    with torch.no_grad():
        return reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()


def test_logits_from_input_ids_match_with_left_and_right_padding(llm):
    _, reference, _, _, params, forward = llm
    ids = token_ids()
    expected = torch_logits(reference, input_ids=ids, attention_mask=MASK)
    got = forward(params, input_ids=ids, attention_mask=MASK)
    # Every position, padded ones included (they attend like transformers' eager attention).
    np.testing.assert_allclose(np.asarray(got), expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(forward(params, input_ids=ids)), torch_logits(reference, input_ids=ids),
                               atol=TOL, rtol=0)


def test_logits_from_inputs_embeds_match(llm):
    _, reference, _, module, params, forward = llm
    width = module.word_embed_proj_dim
    embeds = np.random.default_rng(1).normal(size=(3, 9, width)).astype(np.float32)
    expected = torch_logits(reference, inputs_embeds=embeds, attention_mask=MASK)
    np.testing.assert_allclose(np.asarray(forward(params, inputs_embeds=embeds, attention_mask=MASK)), expected,
                               atol=TOL, rtol=0)


def test_embed_is_the_input_embedding(llm):
    _, reference, _, module, params, forward = llm
    ids = token_ids()
    got = jax.jit(lambda p, ids: module.apply({"params": p}, ids, method=module.embed))(params, ids)
    with torch.no_grad():
        expected = reference.get_input_embeddings()(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6, rtol=0)
    assert got.shape[-1] == module.word_embed_proj_dim == reference.get_input_embeddings().weight.shape[1]
    assert module.hidden_size == reference.config.hidden_size
    # Feeding embed(ids) as inputs_embeds is the input_ids forward.
    np.testing.assert_allclose(np.asarray(forward(params, inputs_embeds=got, attention_mask=MASK)),
                               np.asarray(forward(params, input_ids=ids, attention_mask=MASK)), atol=1e-6, rtol=0)


def test_cached_decoding_matches_the_full_forward(llm):
    """Prefill 4 tokens, then feed the rest one at a time: every valid position's logits match."""
    _, _, _, module, params, forward = llm
    ids = token_ids()
    full = np.asarray(forward(params, input_ids=ids, attention_mask=MASK))
    cache = module.init_cache(ids.shape[0], 12)
    step = jax.jit(lambda p, ids, mask, cache: module.apply({"params": p}, input_ids=ids, attention_mask=mask,
                                                           cache=cache))
    got, prefill = [], 4
    out = step(params, ids[:, :prefill], MASK[:, :prefill], cache)
    got.append(out["logits"])
    for i in range(prefill, ids.shape[1]):
        out = step(params, ids[:, i:i + 1], MASK[:, i:i + 1], out["cache"])
        got.append(out["logits"])
    got = np.concatenate([np.asarray(g) for g in got], axis=1)
    valid = MASK.astype(bool)
    np.testing.assert_allclose(got[valid], full[valid], atol=TOL, rtol=0)
    assert int(out["cache"].index) == ids.shape[1]
    np.testing.assert_array_equal(np.asarray(out["cache"].mask[:, :9]), MASK)
    assert not np.asarray(out["cache"].mask[:, 9:]).any()


def test_cache_matches_transformers_incremental_decoding(llm):
    """One decode step after a padded prefill, both sides with their own cache."""
    _, reference, _, module, params, _ = llm
    ids = token_ids()
    with torch.no_grad():
        first = reference(input_ids=torch.from_numpy(ids[:, :8]), attention_mask=torch.from_numpy(MASK[:, :8]),
                          use_cache=True)
        mask = np.concatenate([MASK[:, :8], np.ones((3, 1), np.int64)], axis=1)
        second = reference(input_ids=torch.from_numpy(ids[:, 8:]), attention_mask=torch.from_numpy(mask),
                           cache=first.cache, use_cache=True).logits.numpy()
    out = run(module, params, input_ids=ids[:, :8], attention_mask=MASK[:, :8], cache=module.init_cache(3, 10))
    out = run(module, params, input_ids=ids[:, 8:], cache=out["cache"])
    np.testing.assert_allclose(np.asarray(out["logits"]), second, atol=TOL, rtol=0)


def test_bfloat16_compute_stays_close(llm):
    _, reference, _, module, params, _ = llm
    ids = token_ids()
    bf16 = module.clone(config=dataclasses.replace(module.config, dtype=jnp.bfloat16))
    got = run(bf16, params, input_ids=ids, attention_mask=MASK)["logits"]
    assert got.dtype == jnp.float32  # logits come out in float32 for the loss
    err = np.abs(np.asarray(got) - torch_logits(reference, input_ids=ids, attention_mask=MASK))
    assert err[MASK.astype(bool)].max() < 0.15, err.max()


def test_params_carry_logical_axes(llm):
    name, _, _, module, _, _ = llm
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), input_ids=jnp.zeros((1, 2), jnp.int32)))["params"]
    flat = traverse_util.flatten_dict(boxed, is_leaf=lambda _, x: isinstance(x, nn.LogicallyPartitioned))
    axes = {"/".join(k): v.names for k, v in flat.items()}
    assert axes["embed_tokens/embedding"] == ("vocab", "embed")
    attn = "layer_0/self_attn/q_proj/kernel"
    assert axes[attn] == ("embed", "joined_kv")
    mlp = "layer_0/fc1/kernel" if name.startswith("opt") else "layer_0/mlp/gate_proj/kernel"
    assert axes[mlp] == ("embed", "mlp")
    if name == "llama-gqa":
        assert axes["lm_head/kernel"] == ("embed", "vocab")


def test_sharded_checkpoint_loads_the_same(llm, tmp_path):
    name, reference, _, _, params, _ = llm
    directory = hf_models.save(reference, tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    _, sharded = from_hf(directory)
    jax.tree.map(np.testing.assert_array_equal, sharded, params)


def test_config_from_hf_reads_the_layouts():
    c = opt.config_from_hf(hf_models.opt_config(**hf_models.opt_350m_style()).to_dict())
    assert (c.do_layer_norm_before, c.word_embed_proj_dim, c.has_projections, c.has_final_layer_norm) == \
        (False, 24, True, False)
    c = llama.config_from_hf(hf_models.llama_config().to_dict())
    assert (c.num_key_value_heads, c.head_dim, c.rope_theta, c.tie_word_embeddings) == (2, 8, 500.0, False)
    assert llama.config_from_hf({"rope_theta": 1e6}).rope_theta == 1e6  # pre-5 config.json
    with pytest.raises(ValueError, match="rope type 'linear'"):
        llama.config_from_hf({"rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        llama.LlamaConfig(num_attention_heads=4, num_key_value_heads=3, hidden_size=32)


def test_untied_opt_head_is_read_and_a_tied_config_refuses_a_different_head(tmp_path):
    reference = hf_models.opt_causal_lm(tie_word_embeddings=False)
    directory = hf_models.save(reference, tmp_path / "untied")
    module, params = from_hf(directory)
    assert "lm_head" in params and not module.config.tie_word_embeddings
    ids = token_ids(2, 5)
    np.testing.assert_allclose(np.asarray(run(module, params, input_ids=ids)["logits"]),
                               torch_logits(reference, input_ids=ids), atol=TOL, rtol=0)
    config_path = tmp_path / "untied" / "config.json"
    config_path.write_text(config_path.read_text().replace('"tie_word_embeddings": false',
                                                           '"tie_word_embeddings": true'))
    with pytest.raises(CheckpointMismatch, match="lm_head"):
        from_hf(directory)


def test_blip2_language_model_component(tmp_path):
    config = T.Blip2Config(vision_config=hf_models.tiny_vision_kwargs(num_hidden_layers=1),
                           qformer_config=hf_models.tiny_qformer_kwargs(num_hidden_layers=1, encoder_hidden_size=32),
                           text_config=hf_models.opt_config().to_dict(), num_query_tokens=4,
                           attn_implementation="eager")
    with torch.random.fork_rng():
        torch.manual_seed(8)
        reference = hf_models.randomize(T.Blip2ForConditionalGeneration(config), seed=8)
    directory = hf_models.save(reference, tmp_path / "blip2")
    module, params = from_hf(directory, component="language")
    assert isinstance(module, opt.OPTForCausalLM)
    ids = token_ids(2, 5)
    with torch.no_grad():
        expected = reference.language_model(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(np.asarray(run(module, params, input_ids=ids)["logits"]), expected, atol=TOL, rtol=0)
