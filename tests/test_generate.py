"""Greedy and beam generation from inputs_embeds return transformers' `generate` tokens (tiny models, fp32).

Prompts look like stage 2's: [4 "query" embeddings; embedded prompt tokens], batch of 2, one row padded
(left or right). Each case first asks transformers for its tokens without eos, then picks an eos that
greedy / beam search produce early, so that finishing (and the padding after it) is exercised.
"""
import jax
import numpy as np
import pytest
import torch

import hf_models
from xformer_jax.convert import from_hf
from xformer_jax.predict.generate import generate, prompt_positions

MAX_NEW = 8
PAD = 1
QUERIES, PROMPT = 4, 5

REFERENCES = {"opt": hf_models.opt_causal_lm, "llama": hf_models.llama_causal_lm}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, build in REFERENCES.items():
        reference = build()
        module, params = from_hf(hf_models.save(reference, tmp_path_factory.mktemp(name)))
        out[name] = reference, module, params
    return out


def prompt(module, params, padding: str, seed: int = 0):
    """inputs_embeds (2, QUERIES + PROMPT, d) and a mask whose row 1 has 2 padded slots on `padding`'s side."""
    rng = np.random.default_rng(seed)
    queries = rng.normal(size=(2, QUERIES, module.word_embed_proj_dim)).astype(np.float32)
    ids = rng.integers(3, 64, size=(2, PROMPT))
    tokens = jax.jit(lambda p, i: module.apply({"params": p}, i, method=module.embed))(params, ids)
    embeds = np.concatenate([queries, np.asarray(tokens)], axis=1)
    mask = np.ones(embeds.shape[:2], np.int64)
    if padding == "left":
        mask[1, :2] = 0
    else:
        mask[1, -2:] = 0
    return embeds, mask


def hf_generate(reference, embeds, mask, **kwargs) -> np.ndarray:
    with torch.no_grad():
        tokens = reference.generate(inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask),
                                    max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=PAD, **kwargs).numpy()
    # transformers crops the trailing columns no sequence needs; ours keep max_new_tokens.
    return np.pad(tokens, ((0, 0), (0, MAX_NEW - tokens.shape[1])), constant_values=PAD)


# (model, padding, settings, step of row 0 whose eos-free token becomes eos (None: no eos), eos in the output)
CASES = {
    "opt-greedy-left": ("opt", "left", dict(num_beams=1), 2, True),
    "opt-greedy-right-min_new": ("opt", "right", dict(num_beams=1, min_new_tokens=4), 1, False),
    "opt-beam3-left": ("opt", "left", dict(num_beams=3, length_penalty=1.0, early_stopping=False), 2, False),
    "opt-beam3-right-early": ("opt", "right", dict(num_beams=3, length_penalty=0.5, early_stopping=True,
                                                   min_new_tokens=2), 3, True),
    "llama-greedy-right": ("llama", "right", dict(num_beams=1), 3, True),
    "llama-beam4-left-never": ("llama", "left", dict(num_beams=4, length_penalty=2.0, early_stopping="never",
                                                     num_return_sequences=2), 2, False),
    "llama-beam2-no-eos": ("llama", "left", dict(num_beams=2), None, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_generate_matches_transformers(models, case):
    name, padding, settings, eos_step, fires = CASES[case]
    reference, module, params = models[name]
    embeds, mask = prompt(module, params, padding)
    eos = None
    if eos_step is not None:
        eos = int(hf_generate(reference, embeds, mask, eos_token_id=None, **settings)[0, eos_step])
    expected = hf_generate(reference, embeds, mask, eos_token_id=eos, **settings)
    got = np.asarray(generate(module, params, embeds, mask, max_new_tokens=MAX_NEW, eos_token_id=eos,
                              pad_token_id=PAD, **settings))
    assert got.shape == (2 * settings.get("num_return_sequences", 1), MAX_NEW)
    np.testing.assert_array_equal(got, expected)
    assert (got == eos).any() == fires  # the tested cases do (not) finish on eos, as listed
    for row in got:
        if eos in row:  # a finished sequence is padded after its eos
            assert (row[int(np.argmax(row == eos)) + 1:] == PAD).all()
    if settings.get("min_new_tokens"):
        assert not (got[:, :settings["min_new_tokens"]] == eos).any()


def test_prompt_positions_follow_transformers():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(prompt_positions(mask)), [[0, 0, 0, 1, 2], [0, 1, 2, 0, 0]])


def test_bad_settings_are_rejected(models):
    _, module, params = models["opt"]
    embeds, mask = prompt(module, params, "left")
    with pytest.raises(ValueError, match="num_return_sequences"):
        generate(module, params, embeds, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="early_stopping"):
        generate(module, params, embeds, mask, num_beams=2, early_stopping="sometimes")
