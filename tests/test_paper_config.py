"""configs/paper.py: what each variant trains for and which defaults it leaves to the checkpoints."""
import math

import pytest

from configs import paper


@pytest.mark.parametrize("variant, epochs", [("stage1", 9), ("stage1_blip2", 9), ("stage2_opt2.7b", 1),
                                             ("stage2_opt6.7b", 1)])
def test_each_paper_config_trains_its_own_number_of_epochs(variant, epochs):
    config = paper.get_config(variant)
    assert config.epochs == epochs and config.dataset_size == paper.NUM_PAIRS
    assert config.total_steps == math.ceil(epochs * paper.NUM_PAIRS / config.batch_size)
    assert config.total_steps > config.optim.warmup_steps


def test_stage2_is_one_epoch_not_stage_one_length():
    assert paper.get_config("stage2_opt6.7b").total_steps == 7292  # 14M pairs / 1920, the paper's one epoch
    assert paper.get_config("stage1").total_steps == 75000


def test_changing_the_batch_or_the_epochs_keeps_the_run_length_in_epochs():
    config = paper.get_config("stage2_opt6.7b")
    config.batch_size = 960
    assert config.total_steps == math.ceil(paper.NUM_PAIRS / 960)
    config.epochs = 2
    assert config.total_steps == math.ceil(2 * paper.NUM_PAIRS / 960)
    config.total_steps = 10  # an explicit length still wins
    assert config.total_steps == 10
