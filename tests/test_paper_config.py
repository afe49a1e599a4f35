"""configs/paper.py: what each variant trains for and which defaults it leaves to the checkpoints."""
import math

import pytest

from xformer_jax import factory
from xformer_jax.configs import paper
from xformer_jax.train import run_length


@pytest.mark.parametrize("variant, epochs", [("stage1", 9), ("stage1_blip2", 9), ("stage2_opt2.7b", 1),
                                             ("stage2_opt6.7b", 1)])
def test_each_paper_config_trains_its_own_number_of_epochs_over_the_counted_pairs(variant, epochs, tmp_path):
    config = paper.get_config(variant)
    assert config.epochs == epochs and config.dataset_size is None and config.total_steps is None
    steps = run_length.total_steps(config, paper.NUM_PAIRS)
    assert steps == math.ceil(epochs * paper.NUM_PAIRS / config.batch_size) and steps > config.optim.warmup_steps
    assert run_length.with_total_steps(config, str(tmp_path), paper.NUM_PAIRS)[0].total_steps == steps


def test_stage2_is_one_epoch_not_stage_one_length():
    assert run_length.total_steps(paper.get_config("stage2_opt6.7b"), paper.NUM_PAIRS) == 7292  # the paper's
    assert run_length.total_steps(paper.get_config("stage1"), paper.NUM_PAIRS) == 75000


def test_the_batch_the_epochs_dataset_size_and_total_steps_set_the_length(tmp_path):
    config = paper.get_config("stage2_opt6.7b")
    config.batch_size = 960
    assert run_length.total_steps(config, paper.NUM_PAIRS) == math.ceil(paper.NUM_PAIRS / 960)
    config.epochs = 2
    assert run_length.total_steps(config, paper.NUM_PAIRS) == math.ceil(2 * paper.NUM_PAIRS / 960)
    config.dataset_size = 1000  # the pairs, not counted
    resolved, said = run_length.with_total_steps(config, str(tmp_path), counted=paper.NUM_PAIRS)
    assert resolved.total_steps == math.ceil(2 * 1000 / 960) and "config.dataset_size" in said
    config.total_steps = 10  # an explicit length wins
    assert run_length.total_steps(config, paper.NUM_PAIRS) == 10


def test_a_resumed_run_keeps_the_count_of_its_first_start(tmp_path):
    config = paper.get_config("stage1")
    run_length.record(str(tmp_path), config, 16_800)
    resolved, said = run_length.with_total_steps(config, str(tmp_path), counted=33_600)  # the data grew since
    assert resolved.total_steps == 9 * 10 and "counted at the run's first start" in said
    run_length.record(str(tmp_path), config, 1)  # recorded once
    assert run_length.read(str(tmp_path)) == 16_800


def _checkpoint_dir(path, **config_json):
    import json
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config_json))
    return str(path)


@pytest.mark.parametrize("checkpoint_norm_pix", [False, True])
def test_the_mae_target_follows_the_checkpoint_unless_the_config_sets_it(tmp_path, checkpoint_norm_pix, caplog):
    """facebook/vit-mae-* say norm_pix_loss false (raw-pixel visualize weights); the paper config once forced True."""
    config = paper.get_config("stage1")
    assert config.model.mae.norm_pix_loss is None  # the paper config leaves it to the checkpoint
    config.model.mae.hf_dir = _checkpoint_dir(tmp_path / "mae", model_type="vit_mae", norm_pix_loss=checkpoint_norm_pix)
    with caplog.at_level("INFO"):
        assert factory.model_config(config).mae.norm_pix_loss is checkpoint_norm_pix
    assert f"config.model.mae.norm_pix_loss={checkpoint_norm_pix} (from {config.model.mae.hf_dir}/config.json)" \
        in caplog.text
    config.model.mae.norm_pix_loss = not checkpoint_norm_pix  # an explicit override wins
    assert factory.model_config(config).mae.norm_pix_loss is (not checkpoint_norm_pix)
    config.model.mae.update(hf_dir="", norm_pix_loss=None)
    assert factory.model_config(config).mae.norm_pix_loss is False  # no checkpoint: raw pixels


def test_qformer_dropout_is_lavis_0_1_in_the_paper_configs_and_follows_a_bert_checkpoint_when_unset(tmp_path):
    for variant in ("stage1", "stage2_opt6.7b"):
        q = factory.model_config(paper.get_config(variant)).qformer
        assert (q.hidden_dropout_prob, q.attention_probs_dropout_prob) == (0.1, 0.1)
    config = paper.get_config("stage1")
    config.model.qformer.update(hidden_dropout_prob=None, attention_probs_dropout_prob=0.3,
                                bert_dir=_checkpoint_dir(tmp_path / "bert", model_type="bert",
                                                         hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2))
    q = factory.model_config(config).qformer
    assert (q.hidden_dropout_prob, q.attention_probs_dropout_prob) == (0.2, 0.3)
    config.model.qformer.hidden_dropout_prob = 1.5
    with pytest.raises(ValueError, match="hidden_dropout_prob must be in"):
        factory.model_config(config)


def test_a_runs_config_json_holds_the_values_taken_from_the_checkpoints(tmp_path):
    config = paper.get_config("stage1")
    config.model.mae.hf_dir = _checkpoint_dir(tmp_path / "mae", model_type="vit_mae", norm_pix_loss=True)
    saved = factory.with_checkpoint_fields(config, factory.model_config(config))
    assert saved.model.mae.norm_pix_loss is True and saved.model.qformer.hidden_dropout_prob == 0.1
    saved.model.mae.hf_dir = str(tmp_path / "moved")  # evaluation no longer needs the checkpoint's config.json
    assert factory.model_config(saved).mae.norm_pix_loss is True
    assert config.model.mae.norm_pix_loss is None  # the input config is left as it was
