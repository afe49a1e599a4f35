"""A training run with a bad path, checkpoint, tokenizer or weight source stops before it builds a model or
writes a file, with one error naming the config key that holds the bad value (train/preflight.py)."""
import json
import os

import pytest

from xformer_jax import factory
from xformer_jax.configs.tiny import tiny_config, tiny_stage2_config
from xformer_jax.data import bpe, synthetic
from xformer_jax.train import loop


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny synthetic dataset as LAVIS caption files, a tokenizer, and checkpoint directories that are
    each missing one thing."""
    root = tmp_path_factory.mktemp("preflight")
    config = tiny_config(root)
    paths = synthetic.write_dataset(config.data.path, **config.data.synthetic.to_dict())
    tokenizer = bpe.train_bpe(["a photo of a red circle"] * 10, str(root / "tokenizer.json"), 300)
    for name, contents in {"no_weights": ["config.json"], "no_vocab": ["config.json", "model.safetensors"]}.items():
        os.makedirs(root / name)
        for file in contents:
            (root / name / file).write_text(json.dumps({"architectures": ["BertModel"]}) if file.endswith("json") else "")
    return {"root": root, "paths": paths, "tokenizer": tokenizer}


def json_config(files, **data):
    config = tiny_config(files["root"])
    config.data.update(kind="json", path=files["paths"]["caption_train"], image_root=files["paths"]["root"],
                       eval_path=files["paths"]["caption_val"], **data)
    return config


def bad(files, name):
    """(config, the message) of each mistake."""
    root, missing = files["root"], str(files["root"] / "missing")
    caption = files["paths"]["caption_train"]
    config = json_config(files)
    if name == "annotation file":
        config.data.path = missing
        return config, f"config.data.path: {missing} does not exist"
    if name == "image root":
        config.data.image_root = missing
        return config, f"config.data.image_root: {missing} does not exist"
    if name == "image roots per file":
        config.data.update(path=f"{caption}::{caption}", image_root=f"{root}::{root}::{root}")
        return config, "config.data.image_root=" + repr(f"{root}::{root}::{root}") + " names 3 folders for 2"
    if name == "eval file":
        config.data.eval_path = missing
        return config, f"config.data.eval_path: {missing} does not exist"
    if name == "tower directory":
        config.model.vision.hf_dir = missing
        return config, f"config.model.vision.hf_dir={missing}: checkpoint directory not found"
    if name == "weights of a directory":
        config.model.mae.hf_dir = str(root / "no_weights")
        return config, f"config.model.mae.hf_dir={root / 'no_weights'}: {root / 'no_weights'}: neither model.safetensors"
    if name == "params file":
        config.model.vision.params_file = missing
        return config, f"config.model.vision.params_file={missing}: {missing} does not exist"
    if name == "BERT vocab":
        config.model.qformer.bert_dir = str(root / "no_vocab")
        return config, f"config.model.qformer.bert_dir={root / 'no_vocab'}: "
    if name == "init_from":
        config.init_from = missing
        return config, f"config.init_from={missing}: checkpoint not found"
    if name == "LLM tokenizer":
        config = tiny_stage2_config(files["root"], "")
        config.model.llm.hf_dir = str(root / "no_vocab")
        return config, f"config.model.llm.hf_dir={root / 'no_vocab'}: {root / 'no_vocab'} holds no tokenizer"
    if name == "random towers":
        config.allow_random_init = False
        return config, ("config.model.vision: no weights (hf_dir / params_file empty): the frozen CLIP / EVA tower "
                        "would start from random weights. Set config.model.vision.hf_dir, or "
                        "--config.allow_random_init=True")
    raise KeyError(name)


CASES = ["annotation file", "image root", "image roots per file", "eval file", "tower directory",
         "weights of a directory", "params file", "BERT vocab", "init_from", "LLM tokenizer", "random towers"]


@pytest.mark.parametrize("name", CASES)
def test_a_bad_input_stops_the_run_before_any_model_naming_its_key(files, name, monkeypatch, tmp_path):
    config, message = bad(files, name)
    monkeypatch.setattr(loop, "make_trainer", lambda *a, **k: pytest.fail("a model was built"))
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        loop.train(config, str(workdir))
    assert message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)
    assert not workdir.exists()


def test_a_good_config_passes_and_the_paper_configs_refuse_random_towers(files, tmp_path):
    loop.prepare(json_config(files), str(tmp_path / "run"))  # no error
    from xformer_jax.configs import paper
    with pytest.raises(ValueError, match="config.model.vision: no weights"):
        loop.prepare(paper.get_config("stage1"), str(tmp_path / "run"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """save_pretrained directories of a CLIP vision tower, a ViT-MAE with its decoder, a BERT and an OPT."""
    import hf_models
    root = tmp_path_factory.mktemp("checkpoints")
    return {"vision": hf_models.save(hf_models.clip_vision(), root / "clip"),
            "mae": hf_models.save(hf_models.mae_pretraining(), root / "mae"),
            "qformer": hf_models.save(hf_models.bert(), root / "bert"),
            "llm": hf_models.save(hf_models.opt_causal_lm(), root / "opt")}


def test_the_parts_take_their_architecture_from_their_checkpoints_unless_set_otherwise(checkpoints, caplog):
    from xformer_jax.configs import common
    config = common.base_config()  # every size at its default (EVA ViT-g, MAE ViT-H, BERT-base, OPT-2.7B...)
    config.stage = "stage2"
    config.model.vision.hf_dir, config.model.mae.hf_dir = checkpoints["vision"], checkpoints["mae"]
    config.model.qformer.bert_dir, config.model.llm.hf_dir = checkpoints["qformer"], checkpoints["llm"]
    with caplog.at_level("INFO"):
        sized = factory.with_checkpoint_sizes(config)
    assert (sized.model.vision.kind, sized.model.vision.hidden_size, sized.model.vision.num_hidden_layers) == ("clip", 32, 3)
    assert (sized.model.vision.image_size, sized.model.vision.patch_size) == (32, 8)
    assert (sized.model.mae.hidden_size, sized.model.mae.decoder_hidden_size, sized.model.mae.decoder_num_hidden_layers) \
        == (32, 16, 2)
    assert (sized.model.qformer.hidden_size, sized.model.qformer.num_hidden_layers, sized.model.qformer.vocab_size) \
        == (32, 3, 100)  # BERT's 99 + [DEC]
    assert sized.model.qformer.encoder_width == 32  # follows the tower
    assert (sized.model.llm.hidden_size, sized.model.llm.vocab_size, sized.model.llm.ffn_dim) == (32, 64, 48)
    assert f"config.model.vision.hidden_size=32 (from {checkpoints['vision']}/config.json)" in caplog.text
    built = factory.model_config(sized)  # a consistent model
    assert built.vision.hidden_size == built.qformer.encoder_width == 32
    config.model.vision.num_hidden_layers = 24  # set, and not the checkpoint's
    with pytest.raises(ValueError, match=rf"config.model.vision.num_hidden_layers=24 but config.model.vision.hf_dir="
                                         rf"{checkpoints['vision']} has 3 \(its config.json\)"):
        factory.with_checkpoint_sizes(config)
