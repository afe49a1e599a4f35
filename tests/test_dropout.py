"""The Q-Former's BERT dropout: on in the train step (its rng), off at evaluation, read from BERT configs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.data import pipeline
from xformer_jax.models import qformer
from xformer_jax.train import loop


def test_config_from_a_bert_or_qformer_checkpoint_reads_its_dropout():
    bert = qformer.config_from_hf({"model_type": "bert", "hidden_dropout_prob": 0.2,
                                   "attention_probs_dropout_prob": 0.3})
    assert (bert.hidden_dropout_prob, bert.attention_probs_dropout_prob) == (0.2, 0.3)
    blip2 = qformer.config_from_hf({"model_type": "blip_2_qformer"})  # transformers' default: 0.1
    assert (blip2.hidden_dropout_prob, blip2.attention_probs_dropout_prob) == (0.1, 0.1)
    assert qformer.QFormerConfig().hidden_dropout_prob == 0.0  # tiny / parity configs stay deterministic


@pytest.mark.parametrize("which", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
def test_qformer_dropout_acts_only_when_given_a_dropout_rng(which):
    base = qformer.QFormerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=16, encoder_width=8,
                                 num_query_tokens=3, embed_dim=8, dec_token_id=49)
    noisy = qformer.QFormer(qformer.QFormerConfig(**{**base.__dict__, which: 0.5}))
    image = jax.random.normal(jax.random.key(0), (2, 5, 8))
    ids = jnp.array([[1, 5, 6, 7], [1, 8, 9, 0]])
    mask = (ids > 0).astype(jnp.int32)
    params = qformer.QFormer(base).init(jax.random.key(1), ids, mask, image)["params"]
    run = lambda module, rngs=None: module.apply({"params": params}, ids, mask, image, rngs=rngs or {})  # noqa: E731
    plain, off = run(qformer.QFormer(base)), run(noisy)
    on, on_again, other = (run(noisy, {"dropout": jax.random.key(k)}) for k in (2, 2, 3))
    for key in ("last_hidden_state", "query_hidden_state", "itm_logits", "itg_logits"):
        np.testing.assert_array_equal(off[key], plain[key])  # no rng: evaluation, generation, parity
        np.testing.assert_array_equal(on[key], on_again[key])  # the rng decides the masks
        assert not np.allclose(on[key], off[key], atol=1e-4), key
        assert not np.allclose(on[key], other[key], atol=1e-4), key


@pytest.fixture(scope="module")
def batch_and_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dropout")
    return next(pipeline.make_train_iterator(tiny_config(workdir))), workdir


def _losses(config, local):
    trainer = loop.make_trainer(config, load_pretrained=False)
    batch, state, key = trainer.global_batch(local), trainer.state, jax.random.key(7)
    loss = lambda train: float(jax.jit(functools.partial(trainer.loss_fn, train=train))(  # noqa: E731
        state.params, state.frozen, batch, key)[0])
    return loss(True), loss(False)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_the_train_step_loss_uses_dropout_and_evaluation_does_not(batch_and_dir, stage, tmp_path):
    local, workdir = batch_and_dir
    if stage == "stage2":
        from xformer_jax.data import bpe
        tokenizer = bpe.train_bpe(["a photo of a red circle", "Question: Short answer:"] * 4,
                                  str(tmp_path / "tokenizer.json"), 300)
        make = lambda: tiny_stage2_config(workdir, tokenizer)  # noqa: E731
        local = next(pipeline.make_train_iterator(make()))
    else:
        make = lambda: tiny_config(workdir)  # noqa: E731
    deterministic = make()
    assert deterministic.model.qformer.hidden_dropout_prob == 0.0  # the tiny configs keep parity exact
    train0, eval0 = _losses(deterministic, local)
    assert train0 == pytest.approx(eval0, rel=1e-6)

    noisy = make()
    noisy.model.qformer.update(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    train1, eval1 = _losses(noisy, local)
    assert eval1 == pytest.approx(eval0, rel=1e-6)  # same seed, same params: dropout off at evaluation
    assert abs(train1 - eval1) > 1e-4
