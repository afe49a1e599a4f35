"""Every model dataclass field is a config key at its default, overridable from the command line, and
the start-up check names a key that is unknown or holds the wrong type."""
import dataclasses
import pathlib

import ml_collections
import pytest

from xformer_jax import factory
from xformer_jax.configs import check, common, show
from xformer_jax.factory.sections import llm_defaults
from xformer_jax.models import fusion, llama, mae, opt, qformer, stage2, vit, xformer

REPO = pathlib.Path(__file__).resolve().parents[1]
# section of config.model -> the dataclass it fills; fields that follow a checkpoint default to None
PARTS = {"vision": vit.VisionConfig, "mae": mae.MAEConfig, "qformer": qformer.QFormerConfig,
         "fusion": fusion.FusionConfig, "llm": opt.OPTConfig}
UNSET = {("mae", "norm_pix_loss"), ("qformer", "hidden_dropout_prob"), ("qformer", "attention_probs_dropout_prob")}


def _expected(section: str, field: dataclasses.Field):
    return None if (section, field.name) in UNSET else field.default


def test_the_base_config_holds_every_dataclass_field_at_its_default():
    model = common.base_config().model
    for section, cls in PARTS.items():
        for field in dataclasses.fields(cls):
            if field.name != "dtype":
                assert model[section][field.name] == _expected(section, field), (section, field.name)
    inherited = {f.name for f in dataclasses.fields(xformer.Stage1Config)}
    for field in dataclasses.fields(xformer.Stage1Config):
        if field.name not in PARTS:
            assert model[field.name] == field.default, field.name
    for field in dataclasses.fields(stage2.Stage2Config):
        if field.name not in inherited and field.name != "llm":
            assert model[f"stage2_{field.name}"] == field.default, field.name
    llama_section = llm_defaults("llama")
    assert llama_section.kind == "llama"
    assert all(llama_section[f.name] == f.default for f in dataclasses.fields(llama.LlamaConfig) if f.name != "dtype")


def test_the_printed_config_lists_every_key_and_an_override_reaches_the_model():
    argv = ["show", f"{REPO}/configs/paper.py:stage1", "--config.model.fusion.layer_norm_eps=1e-6"]
    config = show.load(argv)
    lines = show.render(config).splitlines()
    for section, cls in PARTS.items():
        for field in dataclasses.fields(cls):
            if field.name != "dtype":
                assert any(line.startswith(f"model.{section}.{field.name} = ") for line in lines), (section, field)
    assert "model.fusion.layer_norm_eps = 1e-06" in lines and "model.itc_label_smoothing = 0.1" in lines
    assert factory.model_config(config).fusion.layer_norm_eps == 1e-6


@pytest.mark.parametrize("override, message", [
    ("--config.model.fusion.layer_norm_ep=1e-6",
     "--config.model.fusion.layer_norm_ep: config.model.fusion has no key 'layer_norm_ep'; "
     "did you mean config.model.fusion.layer_norm_eps?"),
    ("--config.modle.dtype=float32", "--config.modle.dtype: config has no key 'modle'; did you mean config.model?"),
])
def test_an_unknown_override_fails_naming_the_key(override, message):
    with pytest.raises(SystemExit, match="FATAL Flags parsing error: " + message.replace("?", r"\?")):
        show.load(["show", f"{REPO}/configs/demo.py:stage1", override])


def test_the_check_names_an_unknown_key_and_a_value_of_the_wrong_type():
    config = common.base_config()
    config.model.vision = ml_collections.ConfigDict({"hidden_size": "wide"})  # a whole section replaced
    with pytest.raises(ValueError, match=r"config.model.vision.hidden_size='wide' is a str; "
                                         r"config.model.vision.hidden_size holds a int"):
        check.check(config)
    config = common.base_config()
    config.model.fusion.mae_gates = True
    with pytest.raises(ValueError, match=r"config.model.fusion.mae_gates is not a config key; "
                                         r"did you mean config.model.fusion.mae_gate\?"):
        check.check(config)


def test_the_check_takes_the_llm_keys_of_its_kind():
    config = common.base_config()
    config.model.llm = llm_defaults("llama")
    check.check(config)  # LLaMA's keys, not OPT's
    config.model.llm.ffn_dim = 64
    with pytest.raises(ValueError, match=r"config.model.llm.ffn_dim is not a config key.*\(config.model.llm holds "
                                         r"the fields of LlamaConfig, as config.model.llm.kind='llama'\)"):
        check.check(config)


def test_every_shipped_config_passes_the_check():
    for spec in ("configs/demo.py:stage1", "configs/demo.py:stage2", "configs/paper.py:stage1",
                 "configs/paper.py:stage2_opt6.7b", "configs/vit_l.py:stage2"):
        show.load(["show", f"{REPO}/{spec}"])
