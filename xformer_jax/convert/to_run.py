"""Hugging Face directories -> what a run reads (launch/convert.py; the way back is `convert.to_hf`).

  write_workdir(hf_dir, out)   a transformers BLIP-2 directory (Blip2ForImageTextRetrieval or
                               Blip2ForConditionalGeneration with a decoder LLM) -> a run directory
                               (`rundir`: OUT/config.json + OUT/checkpoints/0): what `config.init_from`,
                               `predict`, launch/evaluate.py and export read
  write_component(hf_dir, out) a component directory (CLIP / EVA vision, ViTMAE, OPT / LLaMA) -> a params
                               file for `config.model.<part>.params_file` and the config keys to set
"""
import dataclasses
import json
import logging
from typing import Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import traverse_util

from xformer_jax import factory, rundir, storage
from xformer_jax.configs import common as configs_common
from xformer_jax.convert import hf, pretrained, stage as stage_lib
from xformer_jax.data.tokenizers import load_llm_tokenizer
from xformer_jax.models import qformer, xformer
from xformer_jax.train import checkpointing, loop

# Whole models: (load_hf component, stage).
WHOLE_MODELS = {"Blip2ForImageTextRetrieval": (None, "stage1"), "Blip2ForConditionalGeneration": ("stage2", "stage2")}
# Components: architecture -> (config.model part, load_hf component).
COMPONENTS = {
    "CLIPVisionModel": ("vision", None), "CLIPModel": ("vision", "vision"), "Blip2VisionModel": ("vision", None),
    "Blip2Model": ("vision", "vision"), "ViTMAEForPreTraining": ("mae", None),
    "OPTForCausalLM": ("llm", None), "LlamaForCausalLM": ("llm", None),
    "BertModel": ("qformer", None), "BertLMHeadModel": ("qformer", None), "BertForMaskedLM": ("qformer", None),
}


@dataclasses.dataclass
class ConvertReport:
    architecture: str
    out: str
    stage: Optional[str] = None
    config_keys: tuple = ()  # --config.KEY=VALUE flags (components)
    notes: tuple = ()

    def __str__(self) -> str:
        lines = [f"{self.architecture} -> {self.out}" + (f" ({self.stage})" if self.stage else "")]
        lines += [f"  note: {n}" for n in self.notes]
        if self.config_keys:
            lines.append("  config keys to set:")
            lines += [f"    {k}" for k in self.config_keys]
        return "\n".join(lines)


def _check_out(out: str, overwrite: bool) -> None:
    checkpoints = storage.join(out, "checkpoints")
    if storage.isdir(checkpoints) and storage.listdir(checkpoints):
        if not overwrite:
            raise FileExistsError(f"{out} already holds checkpoints; choose another --out or pass --overwrite")
        storage.rmtree(checkpoints)


def _set_section(section: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
        section[key] = value


def _tokenizer_settings(hf_dir: str, out: str, config: ml_collections.ConfigDict) -> list[str]:
    """The LLM's tokenizer, in whichever layout HF_DIR ships it (tokenizer.json, vocab.json + merges.txt,
    tokenizer.model), written as OUT/tokenizer.json next to the checkpoint, and config.data pointed at it."""
    try:
        tokenizer = load_llm_tokenizer(hf_dir)
    except FileNotFoundError:
        return [f"{hf_dir} has no tokenizer: set config.data.llm_tokenizer_path before captioning"]
    target = storage.join(out, "tokenizer.json")
    storage.write(target, tokenizer.to_str(pretty=True))
    config.data.llm_tokenizer_path = storage.absolute(target)
    notes = [f"LLM tokenizer written to {target}"]
    settings = storage.join(hf_dir, "tokenizer_config.json")
    if storage.exists(settings):
        tokenizer_config = storage.read_json(settings)
        for key, field in (("bos_token", "llm_bos_token"), ("pad_token", "llm_pad_token")):
            token = tokenizer_config.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str):
                config.data[field] = token
    return notes


def _image_settings(hf_dir: str, config: ml_collections.ConfigDict) -> None:
    path = storage.join(hf_dir, "preprocessor_config.json")
    if storage.exists(path):
        processor = storage.read_json(path)
        if len(processor.get("image_mean") or []) == 3 and len(processor.get("image_std") or []) == 3:
            config.data.clip_mean, config.data.clip_std = tuple(processor["image_mean"]), tuple(processor["image_std"])


def save_initial_checkpoint(config: ml_collections.ConfigDict, params: dict, out: str) -> None:
    """OUT/config.json and OUT/checkpoints/0: the TrainState a run of `config` would start from,
    holding `params` (every param of the model, as NumPy or JAX arrays) and a fresh optimizer state."""
    layout = factory.model_layout(config)
    with jax.set_mesh(layout.mesh), nn.logical_axis_rules(layout.rules):
        boxed = jax.eval_shape(layout.init, jax.random.key(config.seed))
    want = traverse_util.flatten_dict(nn.unbox(boxed), sep="/")
    shardings = traverse_util.flatten_dict(layout.param_shardings, sep="/")
    have = traverse_util.flatten_dict(params, sep="/")
    problems = [f"missing {p} {want[p].shape}" for p in sorted(set(want) - set(have))]
    problems += [f"unexpected {p}" for p in sorted(set(have) - set(want))]
    problems += [f"{p}: {tuple(np.shape(have[p]))} != {tuple(want[p].shape)}" for p in sorted(set(want) & set(have))
                 if tuple(np.shape(have[p])) != tuple(want[p].shape)]
    if problems:
        raise ValueError(f"params do not match the model the config describes ({len(problems)} problems): "
                         + "; ".join(problems[:10]))
    frozen_names = layout.model_config.frozen_collections
    frozen_dtype = factory.dtype_of(config.model.frozen_dtype, "config.model.frozen_dtype")
    placed = {}
    for path, sharding in shardings.items():
        value = np.asarray(have[path], np.float32)
        if path.split("/", 1)[0] in frozen_names:  # as make_trainer stores the frozen towers
            value = value.astype(np.dtype(frozen_dtype))
        placed[path] = jax.device_put(value, sharding)
    params = traverse_util.unflatten_dict(placed, sep="/")
    create, shardings, _, _ = loop.state_and_step(config, layout, params)
    trainable, frozen = xformer.split_params(params, frozen_names)
    state = jax.jit(create, out_shardings=shardings)(trainable, frozen, jax.random.key(config.seed))
    rundir.write_config(config, out)
    checkpoints = checkpointing.Checkpointer(out, config.checkpoint)
    try:
        checkpoints.save(0, state, force=True)
    finally:
        checkpoints.close()


def write_workdir(hf_dir: str, out: str, base_config: Optional[ml_collections.ConfigDict] = None,
                  overwrite: bool = False) -> ConvertReport:
    """A transformers BLIP-2 directory -> a workdir holding config.json and checkpoints/0.

    Blip2ForImageTextRetrieval becomes a stage-1 run (the Q-Former's ITG head and temp, which the
    checkpoint lacks, drawn fresh), Blip2ForConditionalGeneration a stage-2 run. The config is
    xformer_jax/configs/common.py's base config with `model` describing the checkpoint, `data` its image size
    (and, when the directory has them, its tokenizer and image statistics), and a `hf` section
    recording where it came from and its image token id (export writes that id back)."""
    config_path = storage.join(hf_dir, "config.json")
    hf_config = hf.read_config(hf_dir)
    name = hf.architecture(hf_config, config_path)
    if name not in WHOLE_MODELS:
        raise ValueError(f"{config_path}: {name} is not a whole BLIP-2 model (supported: {sorted(WHOLE_MODELS)}); "
                         f"for a component use write_component (launch/convert.py does so)")
    _check_out(out, overwrite)
    component, stage = WHOLE_MODELS[name]
    module, params, load_report = hf.load_hf(hf_dir, component)
    model_config = module.config
    config = base_config if base_config is not None else configs_common.base_config()
    config.stage = stage
    section = stage_lib.model_section(model_config, dtype=config.model.dtype)
    for part in ("vision", "qformer", "fusion", "mae"):
        _set_section(config.model[part], section[part])
    config.model.qformer.bert_dir = ""
    if stage == "stage2":
        config.model.llm = ml_collections.ConfigDict({**section["llm"], "hf_dir": "", "params_file": ""})
        config.model.stage2_reconstruction_weight = section["stage2_reconstruction_weight"]
        config.model.stage2_mask_ratio = section["stage2_mask_ratio"]
    config.model.inference_mask_ratio = section["inference_mask_ratio"]
    config.data.image_size = model_config.vision.image_size
    storage.makedirs(out)
    notes = [f"{p}: drawn fresh (not in the checkpoint)" for p in load_report.fresh]
    if config.optim.warmup_steps >= config.total_steps:  # the base config's defaults do not fit together
        notes.append(f"config.optim.warmup_steps {config.optim.warmup_steps} -> 0 (total_steps {config.total_steps}); "
                     "training from this workdir sets its own schedule (config.init_from)")
        config.optim.warmup_steps = 0
    if stage == "stage2":
        notes += _tokenizer_settings(hf_dir, out, config)
    _image_settings(hf_dir, config)
    config.hf = ml_collections.ConfigDict({"source": storage.absolute(hf_dir), "architecture": name,
                                           "image_token_index": hf_config.get("image_token_index")})
    save_initial_checkpoint(config, params, out)
    logging.info("%s -> %s", hf_dir, out)
    return ConvertReport(name, storage.absolute(out), stage, notes=tuple(notes))


def _config_flags(part: str, fields: dict) -> list[str]:
    return [f"--config.model.{part}.{key}={json.dumps(value) if not isinstance(value, str) else value}"
            for key, value in fields.items() if value is not None]


def write_component(hf_dir: str, out: str) -> ConvertReport:
    """A component directory -> OUT/<part>.msgpack (`pretrained.save_params`) for config.model.<part>.params_file,
    and the config keys whose values must match it. A BERT directory needs no conversion: the
    Q-Former reads it through config.model.qformer.bert_dir."""
    config_path = storage.join(hf_dir, "config.json")
    name = hf.architecture(hf.read_config(hf_dir), config_path)
    if name not in COMPONENTS:
        raise ValueError(f"{config_path}: {name} is not a component (supported: {sorted(COMPONENTS)}); whole "
                         f"BLIP-2 models ({sorted(WHOLE_MODELS)}) become workdirs")
    part, component = COMPONENTS[name]
    if part == "qformer":
        fields = dataclasses.asdict(qformer.config_from_hf(hf.read_config(hf_dir)))
        keys = [f"--config.model.qformer.bert_dir={storage.absolute(hf_dir)}"]
        keys += _config_flags("qformer", {k: fields[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                                 "num_attention_heads", "intermediate_size",
                                                                 "max_position_embeddings", "dec_token_id")})
        return ConvertReport(name, storage.absolute(hf_dir), config_keys=tuple(keys),
                             notes=("BERT is read directly (config.model.qformer.bert_dir); nothing written",))
    module, params, report = hf.load_hf(hf_dir, component)
    fields = {k: v for k, v in dataclasses.asdict(module.config).items() if k not in stage_lib.RUNTIME_FIELDS}
    storage.makedirs(out)
    path = storage.absolute(storage.join(out, f"{part}.msgpack"))
    pretrained.save_params(path, params)
    if part == "llm":
        kind = stage_lib.llm_kind(module.config)
        fields = {"kind": kind, **fields}
        fields["eos_token_id"] = list(fields["eos_token_id"]) if isinstance(fields["eos_token_id"], tuple) \
            else fields["eos_token_id"]
    elif part == "vision":
        fields.pop("feature_layer")  # the run chooses it (BLIP-2: -2 for CLIP / LAVIS EVA, -1 for HF's EVA)
    elif part == "mae":
        fields.pop("mask_ratio")
    keys = [f"--config.model.{part}.params_file={path}", f"--config.model.{part}.hf_dir="]
    keys += _config_flags(part, fields)
    storage.write_json(storage.join(out, f"{part}.json"), {
        "architecture": name, "source": storage.absolute(hf_dir), "params_file": path, "config": fields}, indent=2)
    notes = [f"{p}: drawn fresh" for p in report.fresh]
    return ConvertReport(name, path, config_keys=tuple(keys), notes=tuple(notes))


def convert(hf_dir: str, out: str, base_config: Optional[ml_collections.ConfigDict] = None,
            overwrite: bool = False) -> ConvertReport:
    """write_workdir for whole BLIP-2 models, write_component for the rest."""
    name = hf.architecture(hf.read_config(hf_dir), storage.join(hf_dir, "config.json"))
    if name in WHOLE_MODELS:
        return write_workdir(hf_dir, out, base_config, overwrite)
    return write_component(hf_dir, out)
