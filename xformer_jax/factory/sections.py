"""`config.model` <-> the model dataclasses: which key fills which field, read both ways.

  config.model.vision       VisionConfig   + hf_dir, params_file (where its weights come from)
  config.model.mae          MAEConfig      + hf_dir, params_file
  config.model.qformer      QFormerConfig  + bert_dir
  config.model.fusion       FusionConfig
  config.model.llm          OPTConfig or LlamaConfig, chosen by `kind` + hf_dir, params_file (stage 2)
  config.model.NAME         Stage1Config's other fields (itc_label_smoothing, itg_context, ...)
  config.model.stage2_NAME  Stage2Config's own fields (reconstruction_weight, mask_ratio)

Every field is a key whose default is the dataclass's own (`model_defaults`), so the two cannot drift;
the field's comment in its dataclass documents it. `dtype` is no key: config.model.dtype sets it for
every part. CHECKPOINT_FIELDS default to None (unset): they follow the checkpoint the part is loaded
from (factory/model.py).
"""
import dataclasses
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from xformer_jax.models import fusion, llama, mae, opt, qformer, stage2, vit, xformer

SECTIONS = {"vision": vit.VisionConfig, "mae": mae.MAEConfig, "qformer": qformer.QFormerConfig,
            "fusion": fusion.FusionConfig}
LLM_KINDS = {"opt": opt.OPTConfig, "llama": llama.LlamaConfig}
WEIGHT_SOURCES = {"vision": ("hf_dir", "params_file"), "mae": ("hf_dir", "params_file"), "qformer": ("bert_dir",),
                  "llm": ("hf_dir", "params_file")}
# section -> (the key naming its checkpoint directory, fields that default to that checkpoint's config.json
# value under the same name)
CHECKPOINT_FIELDS = {"mae": ("hf_dir", ("norm_pix_loss",)),
                     "qformer": ("bert_dir", ("hidden_dropout_prob", "attention_probs_dropout_prob"))}
NOT_KEYS = ("dtype",)  # config.model.dtype
STAGE2_PREFIX = "stage2_"


def keyed_fields(cls) -> list[dataclasses.Field]:
    """The fields of a part's dataclass that are config keys."""
    return [f for f in dataclasses.fields(cls) if f.name not in NOT_KEYS]


def stage1_scalars() -> list[str]:
    """Stage1Config's fields that are not a part of their own: config.model.NAME."""
    return [f.name for f in keyed_fields(xformer.Stage1Config) if f.name not in SECTIONS]


def stage2_scalars() -> list[str]:
    """Stage2Config's own fields besides the LLM: config.model.stage2_NAME."""
    inherited = {f.name for f in dataclasses.fields(xformer.Stage1Config)}
    return [f.name for f in keyed_fields(stage2.Stage2Config) if f.name not in inherited and f.name != "llm"]


def _value(cls, field: dataclasses.Field, unset: bool):
    """The field's default as a ConfigDict value whose type is the field's (None defaults typed too)."""
    hint = typing.get_type_hints(cls)[field.name]
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):  # Optional[X] holds X or None; other unions anything
        kind = args[0] if len(args) == 1 else object
    else:
        kind = object if hint is Any else origin or hint  # tuple[int, ...] -> tuple
    factory = field.default_factory
    default = None if unset else factory() if factory is not dataclasses.MISSING else field.default
    if kind is object or default is None:
        return config_dict.FieldReference(default, field_type=kind)
    return kind(default) if kind is float else default


def section_defaults(name: str, cls) -> ml_collections.ConfigDict:
    """config.model.<name>: its weight sources ("" = none) and every keyed field of `cls` at its default."""
    unset = CHECKPOINT_FIELDS.get(name, ("", ()))[1]
    section = ml_collections.ConfigDict({source: "" for source in WEIGHT_SOURCES.get(name, ())})
    for f in keyed_fields(cls):
        section[f.name] = _value(cls, f, f.name in unset)
    return section


def llm_defaults(kind: str = "opt") -> ml_collections.ConfigDict:
    """config.model.llm for an LLM family: `kind` and the fields of its dataclass."""
    if kind not in LLM_KINDS:
        raise ValueError(f"config.model.llm.kind={kind!r} is not one of {sorted(LLM_KINDS)}")
    section = ml_collections.ConfigDict({"kind": kind})
    section.update(section_defaults("llm", LLM_KINDS[kind]))
    return section


def model_defaults() -> ml_collections.ConfigDict:
    """Every key of config.model that a dataclass field backs, at the dataclass's default."""
    model = ml_collections.ConfigDict()
    stage1_fields = {f.name: f for f in dataclasses.fields(xformer.Stage1Config)}
    for name in stage1_scalars():
        model[name] = _value(xformer.Stage1Config, stage1_fields[name], unset=False)
    stage2_fields = {f.name: f for f in dataclasses.fields(stage2.Stage2Config)}
    for name in stage2_scalars():
        model[STAGE2_PREFIX + name] = _value(stage2.Stage2Config, stage2_fields[name], unset=False)
    for name, cls in SECTIONS.items():
        model[name] = section_defaults(name, cls)
    model.llm = llm_defaults()
    return model


def stage1_values(model: ml_collections.ConfigDict) -> dict:
    """Stage1Config's scalar fields that config.model sets (absent or None: the dataclass default)."""
    return {name: model[name] for name in stage1_scalars() if model.get(name, None) is not None}


def stage2_values(model: ml_collections.ConfigDict) -> dict:
    """Stage2Config's own scalar fields that config.model sets, under their stage2_ keys."""
    return {name: model[STAGE2_PREFIX + name] for name in stage2_scalars()
            if model.get(STAGE2_PREFIX + name, None) is not None}
