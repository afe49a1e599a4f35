"""From `config.model` to the model dataclasses, the model and its init.

config.model's keys and the dataclass fields they fill are factory/sections.py's. config.model.dtype is the
compute dtype of the whole model; config.model.frozen_dtype the storage dtype of the frozen towers
(bfloat16 halves their memory).

Training choices a checkpoint's config.json carries (CHECKPOINT_FIELDS: MAE's norm_pix_loss, the
Q-Former's dropout) follow the checkpoint the component is loaded from while the config leaves them
unset (None); a value set in the config overrides the checkpoint; with no checkpoint the dataclass
default applies. Each choice is logged.
"""
import logging
from typing import Any

import jax.numpy as jnp
import ml_collections

from xformer_jax import storage
from xformer_jax.convert.hf import read_config
from xformer_jax.convert.pretrained import checkpoint_dir
from xformer_jax.factory import sections
from xformer_jax.factory.sections import CHECKPOINT_FIELDS, LLM_KINDS, WEIGHT_SOURCES
from xformer_jax.models import fusion, mae, qformer, stage2, vit, xformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def with_part_files(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose unset tokenizer keys name what the parts' own checkpoint directories ship:
    data.vocab_path the Q-Former's vocab.txt in model.qformer.bert_dir ("minilm", the demo's BERT, ships the
    default vocab), and at stage 2
    data.llm_tokenizer_path the LLM's tokenizer in model.llm.hf_dir (a directory AutoTokenizer reads).
    Set keys win. The run's config.json records the result, so evaluation and export read the same files."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        bert_dir = out.model.qformer.get("bert_dir") or ""
        if bert_dir not in ("", "minilm") and not out.data.vocab_path:  # minilm: the default vocab already
            out.data.vocab_path = storage.join(bert_dir, "vocab.txt")
        llm_dir = out.model.llm.get("hf_dir", "") if out.stage == "stage2" else ""
        if llm_dir and not out.data.llm_tokenizer_path:
            out.data.llm_tokenizer_path = llm_dir
    return out


def dtype_of(name: str, key: str):
    if name not in DTYPES:
        raise ValueError(f"{key}={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def checkpoint_field_values(section: ml_collections.ConfigDict, name: str) -> dict:
    """{field: value} for the CHECKPOINT_FIELDS of config.model.<name> that the config leaves unset (None),
    read from the checkpoint's config.json; fields it lacks are left out (the dataclass default applies)."""
    dir_key, fields = CHECKPOINT_FIELDS[name]
    unset = [f for f in fields if section.get(f, None) is None]
    path = checkpoint_dir(section, dir_key) if unset else ""
    if not path:
        return {}
    loaded = read_config(path)
    return {f: loaded[f] for f in unset if f in loaded}


def _log_checkpoint_fields(section: ml_collections.ConfigDict, name: str, resolved, from_checkpoint: dict) -> None:
    dir_key, fields = CHECKPOINT_FIELDS[name]
    for f in fields:
        value = getattr(resolved, f)
        source = (f"from {section.get(dir_key)}/config.json" if f in from_checkpoint
                  else "set in the config" if section.get(f, None) is not None else "default, no checkpoint value")
        logging.info("config.model.%s.%s=%r (%s)", name, f, value, source)


def _fields(cls, section: ml_collections.ConfigDict, name: str, **extra) -> Any:
    """`cls` from config.model.<name>: its set (not None) keys besides the weight sources."""
    sources = WEIGHT_SOURCES.get(name, ())
    values = {k: v for k, v in section.to_dict().items() if k not in sources and v is not None}
    known = {f.name for f in sections.keyed_fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config.model.{name} has unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values, **extra)


STAGES = ("stage1", "stage2")


def _checkpointed_fields(cls, model: ml_collections.ConfigDict, name: str, dtype) -> Any:
    """_fields of a section in CHECKPOINT_FIELDS, its unset fields taken from its checkpoint (logged)."""
    section = model[name]
    from_checkpoint = checkpoint_field_values(section, name)
    resolved = _fields(cls, section, name, dtype=dtype, **from_checkpoint)
    _log_checkpoint_fields(section, name, resolved, from_checkpoint)
    return resolved


def stage1_config(model: ml_collections.ConfigDict, cls=xformer.Stage1Config, **extra) -> xformer.Stage1Config:
    dtype = dtype_of(model.dtype, "config.model.dtype")
    fusion_cfg = _fields(fusion.FusionConfig, model.fusion, "fusion", dtype=dtype)
    return cls(
        vision=_fields(vit.VisionConfig, model.vision, "vision", dtype=dtype),
        qformer=_checkpointed_fields(qformer.QFormerConfig, model, "qformer", dtype),
        fusion=fusion_cfg,
        mae=_checkpointed_fields(mae.MAEConfig, model, "mae", dtype) if fusion_cfg.uses_mae else None,
        **sections.stage1_values(model),
        **extra,
    )


def stage2_config(model: ml_collections.ConfigDict) -> stage2.Stage2Config:
    llm = model.llm.to_dict()
    kind = llm.pop("kind", None)
    if kind not in LLM_KINDS:
        raise ValueError(f"config.model.llm.kind={kind!r} is not one of {sorted(LLM_KINDS)}")
    llm_config = _fields(LLM_KINDS[kind], ml_collections.ConfigDict(llm), "llm",
                         dtype=dtype_of(model.dtype, "config.model.dtype"))
    return stage1_config(model, stage2.Stage2Config, llm=llm_config, **sections.stage2_values(model))


def model_config(config: ml_collections.ConfigDict) -> xformer.Stage1Config:
    if config.stage not in STAGES:
        raise ValueError(f"config.stage={config.stage!r} is not one of {STAGES}")
    return stage1_config(config.model) if config.stage == "stage1" else stage2_config(config.model)


def with_checkpoint_fields(config: ml_collections.ConfigDict, built: xformer.Stage1Config) -> ml_collections.ConfigDict:
    """A copy of `config` whose unset CHECKPOINT_FIELDS hold the values `built` (its model config) uses, so
    that the run's config.json rebuilds the same model without reading the checkpoint directories."""
    out = config.copy_and_resolve_references()
    with out.unlocked():
        for name, (_, fields) in CHECKPOINT_FIELDS.items():
            part = getattr(built, name)
            for f in fields:
                if part is not None and out.model[name].get(f, None) is None:
                    out.model[name][f] = getattr(part, f)
    return out


def make_model(config: xformer.Stage1Config) -> xformer.Stage1Model:
    return stage2.Stage2Model(config) if isinstance(config, stage2.Stage2Config) else xformer.Stage1Model(config)


def dummy_batch(config: xformer.Stage1Config, batch: int = 2) -> dict:
    """Shapes for init / eval_shape (no data needed)."""
    v = config.vision
    out = {"pixel_values": jnp.zeros((batch, v.num_channels, v.image_size, v.image_size), jnp.float32),
           "input_ids": jnp.ones((batch, 8), jnp.int32), "attention_mask": jnp.ones((batch, 8), jnp.int32)}
    if config.mae is not None:
        m = config.mae
        out["mae_pixel_values"] = jnp.zeros((batch, m.num_channels, m.image_size, m.image_size), jnp.float32)
    return out


def init_fn(model: xformer.Stage1Model, config: xformer.Stage1Config):
    """rng -> boxed params of the whole model (towers included), for jax.eval_shape / sharded init."""
    batch = dummy_batch(config)

    def init(rng):
        itm_rng = {} if isinstance(config, stage2.Stage2Config) else {"itm_rng": rng}  # stage 2 runs no ITM
        return model.init(rng, batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                          mae_pixel_values=batch.get("mae_pixel_values"), mask_rng=rng, **itm_rng)["params"]
    return init
