"""`from_hf`: dispatch on config.json's architecture, build the Flax module, map the weights."""
import dataclasses
import json
import logging
import re
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from xformer_jax import storage
from xformer_jax.convert import mapping, safetensors_io, stage, tables
from xformer_jax.models import blip2_retrieval, mae, qformer, vit
from xformer_jax.models import llama, opt, stage2


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to read one architecture: which config dict, which module, which keys, which table."""
    build: Callable[[dict, dict], nn.Module]  # (hf config, overrides) -> module
    table: mapping.Table
    dummy_inputs: Callable[[nn.Module], dict]
    prefix: str = ""             # stripped from checkpoint keys
    prefix_required: bool = False  # keys without the prefix belong to other components and are skipped
    # The causal LM's base model: a checkpoint saved from the bare base model (facebook/opt-* ship OPTModel's
    # `decoder.*` keys) gets it prepended, as transformers does on load.
    base_prefix: str = ""
    sub_config: Optional[str] = None  # e.g. "vision_config" of a composite model
    fixups: Callable[[dict], dict] = lambda tensors: tensors
    # Partial checkpoints (BERT -> Q-Former). Empty for every other architecture, which keeps the
    # engine's missing-key check strict there.
    fresh: tuple[str, ...] = ()  # regexes of Flax param paths drawn from `seed` instead of read
    grown_rows: tuple[tuple[str, str], ...] = ()  # (Flax path, HF config key of the checkpoint's row count):
    #                                             leading rows read, the rest drawn fresh
    ignore: tuple[str, ...] = ()  # regexes of checkpoint keys that are known not to be used (reported)
    notes: tuple[str, ...] = ()  # what the fixups derive, for the load report


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_hf` did besides a one-to-one copy: fresh params, grown tables, ignored keys."""
    architecture: str
    fresh: tuple[str, ...] = ()  # Flax paths initialised from the seed
    grown: tuple[tuple[str, int, int], ...] = ()  # (Flax path, rows read, rows in total)
    ignored: tuple[str, ...] = ()  # checkpoint keys left unused
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"{self.architecture}: {len(self.fresh)} param(s) initialised fresh"]
        lines += [f"  fresh: {p}" for p in self.fresh]
        lines += [f"  grown: {p} ({read} rows read, {total - read} fresh)" for p, read, total in self.grown]
        lines += [f"  ignored checkpoint key: {k}" for k in self.ignored]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _pixels(module) -> dict:
    c = module.config
    return {"pixel_values": jnp.zeros((1, c.num_channels, c.image_size, c.image_size), jnp.float32)}


def _masked_pixels(module) -> dict:
    return {**_pixels(module), "mask_rng": jax.random.key(0)}


def _merge_eva_qv_bias(tensors: dict) -> dict:
    """Older BLIP-2 checkpoints store `q_bias` / `v_bias`; the fused qkv bias is [q, 0, v]."""
    out = dict(tensors)
    for name in [k for k in tensors if k.endswith(".self_attn.q_bias")]:
        stem = name[: -len("q_bias")]
        q, v = out.pop(name), out.pop(stem + "v_bias")
        out[stem + "qkv.bias"] = np.concatenate([q, np.zeros_like(q), v])
    return out


def _clip(cfg, overrides):
    return vit.VisionTransformer(vit.config_from_hf(cfg, **overrides))


def _mae_config(cfg, overrides):
    return mae.config_from_hf(cfg, **overrides)


def _qformer_encoder_inputs(module) -> dict:
    """Two positions, one query: touches the query FFN, cross-attention and (if any) the text FFN."""
    c = module.config
    length = 2 if c.text_ffn else 1
    return {"query_embeds": jnp.zeros((1, length, c.hidden_size), jnp.float32), "query_length": 1,
            "encoder_hidden_states": jnp.zeros((1, 1, c.encoder_width), jnp.float32)}


def _qformer_inputs(module) -> dict:
    c = module.config
    return {"input_ids": jnp.zeros((1, 2), jnp.int32), "attention_mask": jnp.ones((1, 2), jnp.int32),
            "image_feats": jnp.zeros((1, 1, c.encoder_width), jnp.float32)}


_BERT_FFN = re.compile(r"(encoder\.layer\.\d+)\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)")


def _bert_to_qformer(tensors: dict) -> dict:
    """BERT -> Q-Former: fold token type 0 into the positions (BertModel adds it to every token, the
    Q-Former has no token types), copy the text FFN into the query FFN (LAVIS's init), and drop an LM
    decoder weight / bias that is only a saved copy of the tied word embeddings / `cls.predictions.bias`."""
    out = dict(tensors)
    token_types = out.pop("embeddings.token_type_embeddings.weight", None)
    if token_types is not None and "embeddings.position_embeddings.weight" in out:
        out["embeddings.position_embeddings.weight"] = out["embeddings.position_embeddings.weight"] + token_types[0]
    for name in list(out):
        m = _BERT_FFN.fullmatch(name)
        if m:
            out.setdefault(f"{m[1]}.{m[2]}_query.{m[3]}.{m[4]}", out[name])
    for copy, original in (("cls.predictions.decoder.weight", "embeddings.word_embeddings.weight"),
                           ("cls.predictions.decoder.bias", "cls.predictions.bias")):
        if copy in out and original in out and np.array_equal(out[copy], out[original]):
            del out[copy]
    return out


def _bert_qformer(cfg, overrides):
    return qformer.QFormer(qformer.config_from_hf(cfg, **overrides))


# Everything BERT lacks: the queries, the image side, the ITC / ITM heads and the temperature.
_QFORMER_FRESH = (r"query_tokens", r"qformer/layer_\d+/crossattention/.*", r"ln_vision/.*", r"vision_proj/.*",
                  r"text_proj/.*", r"itm_head/.*", r"temp")
_BERT = dict(
    build=_bert_qformer, table=tables.BERT_QFORMER, dummy_inputs=_qformer_inputs, prefix="bert.",
    fixups=_bert_to_qformer, ignore=(r"pooler\.", r"embeddings\.position_ids\Z"),
    grown_rows=(("embeddings/word_embeddings/embedding", "vocab_size"), ("lm_head/bias", "vocab_size")),
    notes=("query FFN (intermediate_query / output_query) copied from the text FFN",
           "token_type_embeddings[0] folded into position_embeddings",
           "added vocabulary rows ([DEC]): word embedding ~ N(0, 0.02), LM bias 0"))


def _retrieval_inputs(module) -> dict:
    """Two pairs (init also runs the stage-1 forward, whose hard negatives need two), text long enough
    to survive `strip_image_tokens`."""
    v, q = module.config.vision, module.config.qformer
    return {"pixel_values": jnp.zeros((2, v.num_channels, v.image_size, v.image_size), jnp.float32),
            "input_ids": jnp.zeros((2, q.num_query_tokens + 2), jnp.int32)}


def _blip2_retrieval(cfg, overrides):
    return blip2_retrieval.Blip2ForImageTextRetrieval(blip2_retrieval.config_from_hf(cfg, **overrides),
                                                      strip_image_tokens=cfg.get("image_token_index") is not None)


# Retrieval checkpoints carry neither the Q-Former's LM head (ITG) nor the ITC temperature.
_RETRIEVAL_FRESH = (r"lm_head/.*", r"temp")
_RETRIEVAL_NOTES = ("vision_model.post_layernorm read as the Q-Former's ln_vision (the tower's features are "
                    "its last block, feature_layer=-1)",
                    "lm_head and temp are not in Blip2ForImageTextRetrieval checkpoints: drawn fresh (temp 0.07)")


_CLIP = dict(build=_clip, table=tables.CLIP_VISION, dummy_inputs=_pixels, prefix="vision_model.")
_EVA = dict(build=_clip, table=tables.EVA_VISION, dummy_inputs=_pixels, prefix="vision_model.",
            fixups=_merge_eva_qv_bias)
_BLIP2_VISION = dict(_EVA, prefix_required=True, sub_config="vision_config")


def _token_inputs(module) -> dict:
    return {"input_ids": jnp.zeros((1, 2), jnp.int32)}


def _opt(cfg, overrides):
    return opt.OPTForCausalLM(opt.config_from_hf(cfg, **overrides))


def _llama(cfg, overrides):
    return llama.LlamaForCausalLM(llama.config_from_hf(cfg, **overrides))


def _decoder_llm(cfg, overrides):
    """The language model of a composite checkpoint, by its text config's model_type."""
    builders = {"opt": _opt, "llama": _llama}
    kind = cfg.get("model_type")
    if kind not in builders:
        raise ValueError(f"language model type {kind!r} is not supported; supported: {sorted(builders)}")
    return builders[kind](cfg, overrides)


def _drop_tied_lm_head(tensors: dict) -> dict:
    """A saved `lm_head.weight` equal to the token embedding is the tied head: not read. Any other is
    read as an untied head (a config with tie_word_embeddings=true then reports it as a mismatch)."""
    head = tensors.get("lm_head.weight")
    embedding = tensors.get("model.decoder.embed_tokens.weight", tensors.get("model.embed_tokens.weight"))
    if head is not None and embedding is not None and np.array_equal(head, embedding):
        tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    return tensors


def _stage2_inputs(module) -> dict:
    v = module.config.vision
    ids = jnp.zeros((2, 4), jnp.int32)
    return {"pixel_values": jnp.zeros((2, v.num_channels, v.image_size, v.image_size), jnp.float32),
            "input_ids": ids, "attention_mask": jnp.ones_like(ids)}


_QFORMER_TEXT_FFN = re.compile(r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\.")


def _blip2_generation_fixups(tensors: dict) -> dict:
    """Legacy q/v biases fused; a saved copy of the tied LM head dropped (see `_drop_tied_lm_head`); a
    Q-Former text FFN (use_qformer_text_input) dropped: generation runs the query positions only."""
    prefix = "language_model."
    llm = _drop_tied_lm_head({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    rest = {k: v for k, v in _merge_eva_qv_bias(tensors).items()
            if not k.startswith(prefix) and not _QFORMER_TEXT_FFN.match(k)}
    return {**rest, **{prefix + k: v for k, v in llm.items()}}


RECIPES: dict[str, Recipe] = {
    "CLIPVisionModel": Recipe(**_CLIP),
    "CLIPModel": Recipe(**_CLIP, prefix_required=True, sub_config="vision_config"),
    "Blip2VisionModel": Recipe(**_EVA),
    "Blip2ForConditionalGeneration": Recipe(**_BLIP2_VISION),
    # The whole stage-1 model (Stage1Model's params, transformers' retrieval forward).
    "Blip2ForImageTextRetrieval": Recipe(
        build=_blip2_retrieval, table=tables.BLIP2_RETRIEVAL, dummy_inputs=_retrieval_inputs,
        fixups=_merge_eva_qv_bias, fresh=tuple(f"qformer/{r}" for r in _RETRIEVAL_FRESH), notes=_RETRIEVAL_NOTES),
    # The whole stage-2 model: Stage2Model's params (fusion blip2), transformers' names (tables.stage_model).
    "Blip2ForConditionalGeneration:stage2": Recipe(
        build=lambda c, o: stage2.Stage2Model(stage.stage2_config_from_hf(c, **o)),
        table=tables.stage_model("eva", ("opt", "llama")), dummy_inputs=_stage2_inputs,
        fixups=_blip2_generation_fixups, fresh=(r"qformer/temp",),
        notes=("vision_model.post_layernorm read as the Q-Former's ln_vision (the tower's features are its last "
               "block, feature_layer=-1)", "qformer/temp (stage-1 ITC temperature) is not in the checkpoint: 0.07",
               "a Q-Former text FFN (use_qformer_text_input) is not read: generation runs the queries only")),
    "Blip2Model": Recipe(**_BLIP2_VISION),
    "CLIPModel:vision": Recipe(**_CLIP, prefix_required=True, sub_config="vision_config"),
    "Blip2ForConditionalGeneration:vision": Recipe(**_BLIP2_VISION),
    "Blip2ForImageTextRetrieval:vision": Recipe(**_BLIP2_VISION),
    "Blip2ForImageTextRetrieval:qformer": Recipe(
        build=lambda c, o: qformer.QFormer(blip2_retrieval.config_from_hf(c, **o).qformer),
        table=tables.BLIP2_RETRIEVAL_QFORMER, dummy_inputs=_qformer_inputs, fresh=_RETRIEVAL_FRESH,
        ignore=(r"vision_model\.(?!post_layernorm\.)",), notes=_RETRIEVAL_NOTES),
    "Blip2Model:vision": Recipe(**_BLIP2_VISION),
    "ViTMAEModel": Recipe(build=lambda c, o: mae.MAEEncoder(_mae_config(c, o)), table=tables.mae_encoder(),
                          dummy_inputs=_masked_pixels, prefix="vit."),
    "ViTMAEForPreTraining": Recipe(
        build=lambda c, o: mae.MAEForPreTraining(_mae_config(c, o)),
        table=[*tables.mae_encoder("vit.", "encoder/"), *tables.MAE_DECODER], dummy_inputs=_masked_pixels),
    "Blip2QFormerModel": Recipe(
        build=lambda c, o: qformer.QFormerEncoder(qformer.config_from_hf(c, **o)), table=tables.QFORMER,
        dummy_inputs=_qformer_encoder_inputs),
    # BERT directories give a full Q-Former: BERT's text side, everything else fresh (see load_hf).
    "BertModel": Recipe(**_BERT, fresh=(*_QFORMER_FRESH, r"lm_head/.*")),
    "BertLMHeadModel": Recipe(**_BERT, fresh=_QFORMER_FRESH),
    "BertForMaskedLM": Recipe(**_BERT, fresh=_QFORMER_FRESH),
    # Decoder LLMs (stage 2): the causal LM with its head, and the language model inside BLIP-2.
    "OPTForCausalLM": Recipe(build=_opt, table=tables.OPT_CAUSAL_LM, dummy_inputs=_token_inputs,
                             fixups=_drop_tied_lm_head, base_prefix="model."),
    "LlamaForCausalLM": Recipe(build=_llama, table=tables.LLAMA_CAUSAL_LM, dummy_inputs=_token_inputs,
                               fixups=_drop_tied_lm_head, base_prefix="model."),
    "Blip2ForConditionalGeneration:language": Recipe(
        build=_decoder_llm, table=[*tables.OPT_CAUSAL_LM, *tables.LLAMA_CAUSAL_LM], dummy_inputs=_token_inputs,
        prefix="language_model.", prefix_required=True, sub_config="text_config", fixups=_drop_tied_lm_head),
}
# "Architecture:component" entries pick one part of a composite checkpoint (from_hf(..., component=)).
SUPPORTED_ARCHITECTURES = tuple(name for name in RECIPES if ":" not in name)


def read_config(hf_dir: str) -> dict:
    if not storage.isdir(hf_dir):
        raise FileNotFoundError(f"checkpoint directory not found: {hf_dir}")
    path = storage.join(hf_dir, "config.json")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found (expected a transformers save_pretrained directory)")
    try:
        return storage.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def architecture(config: dict, path: str) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in RECIPES:
            return name
    raise ValueError(f"{path}: architecture {names or config.get('model_type')!r} is not supported; "
                     f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


def recipe_for(name: str, component: Optional[str], path: str) -> Recipe:
    if component is None:
        return RECIPES[name]
    key = f"{name}:{component}"
    if key not in RECIPES:
        known = sorted(k.split(":", 1)[1] for k in RECIPES if k.startswith(name + ":"))
        raise ValueError(f"{path}: {name} has no component {component!r}; available: {known}")
    return RECIPES[key]


def _legacy_name(name: str, recipe: Recipe, bare_base_model: bool) -> str:
    """The name transformers reads a key of an older checkpoint as: LayerNorm gamma / beta (the original
    bert-base-uncased weights) are weight / bias; a bare base model's keys get the base model's prefix."""
    if name.endswith("LayerNorm.gamma"):
        name = name[:-len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
        name = name[:-len("beta")] + "bias"
    if bare_base_model and not name.startswith("lm_head."):
        name = recipe.base_prefix + name
    return name


def _select(tensors: dict, origin: dict, recipe: Recipe) -> tuple[dict, dict]:
    bare = bool(recipe.base_prefix) and not any(k.startswith(recipe.base_prefix) for k in tensors)
    renamed = {_legacy_name(k, recipe, bare): k for k in tensors}
    tensors, origin = {k: tensors[old] for k, old in renamed.items()}, {k: origin[old] for k, old in renamed.items()}
    selected, where = {}, {}
    for name, array in tensors.items():
        if name.startswith(recipe.prefix) and recipe.prefix:
            key = name[len(recipe.prefix):]
        elif recipe.prefix_required:
            continue
        else:
            key = name
        selected[key], where[key] = array, origin[name]
    return recipe.fixups(selected), where


def abstract_params(module: nn.Module, inputs: dict):
    """Param shapes without allocating weights."""
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), **inputs))
    return nn.unbox(variables)["params"]


def _grown_target(target: dict, recipe: Recipe, config: dict, fresh: set, path: str) -> dict:
    grown = {}
    for flax_path, key in recipe.grown_rows:
        if flax_path in target and flax_path not in fresh:
            rows = config.get(key)
            if not isinstance(rows, int) or not 0 < rows <= target[flax_path][0]:
                raise ValueError(f"{path}: {key}={rows!r} does not fit {flax_path!r} {target[flax_path]}")
            grown[flax_path] = rows
    return grown


def module_config(hf_dir: str, component: Optional[str] = None, **config_overrides) -> tuple[Any, dict]:
    """(the model config, this project's dataclass, that `from_hf(hf_dir, component, **config_overrides)` would
    build; the config.json dict it was read from, the component's own for a composite), from config.json
    alone: no weight is read."""
    config = read_config(hf_dir)
    config_path = storage.join(hf_dir, "config.json")
    recipe = recipe_for(architecture(config, config_path), component, config_path)
    source = config[recipe.sub_config] if recipe.sub_config else config
    return recipe.build(source, config_overrides).config, source


def load_hf(hf_dir: str, component: Optional[str] = None, *, seed: int = 0,
            **config_overrides) -> tuple[nn.Module, dict, LoadReport]:
    """`from_hf` plus a LoadReport of what did not come one-to-one from the checkpoint.

    For most architectures every param comes from the checkpoint and every checkpoint key is used
    (anything else raises CheckpointMismatch). BERT directories (BertModel / BertLMHeadModel /
    BertForMaskedLM) yield a full `QFormer` whose text side is BERT's: the recipe's `fresh` params
    (query tokens, cross-attention, ln_vision, projections, ITM head, temp; and the LM head for a plain
    BertModel) are drawn from `jax.random.key(seed)` with the model's own initialisers, the word
    embeddings and LM bias keep BERT's rows and gain fresh ones for [DEC], and the query FFN is a copy
    of the text FFN. The report lists each of these.
    """
    config = read_config(hf_dir)
    config_path = storage.join(hf_dir, "config.json")
    name = architecture(config, config_path)
    recipe = recipe_for(name, component, config_path)
    module_config = config[recipe.sub_config] if recipe.sub_config else config
    module = recipe.build(module_config, config_overrides)
    tensors, origin = safetensors_io.load_tensors(hf_dir)
    tensors, origin = _select(tensors, origin, recipe)
    inputs = recipe.dummy_inputs(module)
    target = mapping.flat_shapes(abstract_params(module, inputs))
    fresh = sorted(p for p in target if any(re.fullmatch(r, p) for r in recipe.fresh))
    grown = _grown_target(target, recipe, module_config, set(fresh), config_path)
    load_target = {p: s for p, s in target.items() if p not in fresh}
    load_target.update({p: (rows, *target[p][1:]) for p, rows in grown.items()})
    params = mapping.hf_to_flax(tensors, origin, recipe.table, load_target, ignore=recipe.ignore)
    if fresh or grown:
        initial = jax.jit(lambda key: module.init(key, **inputs))(jax.random.key(seed))
        initial = traverse_util.flatten_dict(nn.unbox(initial)["params"], sep="/")
        flat = traverse_util.flatten_dict(params, sep="/")
        flat.update({p: np.asarray(initial[p]) for p in fresh})
        for p, rows in grown.items():
            flat[p] = np.concatenate([flat[p], np.asarray(initial[p])[rows:]], axis=0)
        params = traverse_util.unflatten_dict(flat, sep="/")
    report = LoadReport(
        architecture=name if component is None else f"{name}:{component}", fresh=tuple(fresh),
        grown=tuple((p, rows, target[p][0]) for p, rows in grown.items()),
        ignored=tuple(sorted(k for k in tensors if any(re.match(r, k) for r in recipe.ignore))),
        notes=recipe.notes)
    if fresh or grown or report.ignored:
        logging.info("%s", report)
    return module, params, report


def from_hf(hf_dir: str, component: Optional[str] = None, *, seed: int = 0,
            **config_overrides) -> tuple[nn.Module, dict]:
    """(module, params) from a transformers save_pretrained directory, reading weights with NumPy.

    `component` picks one part of a composite checkpoint (e.g. "vision" of a BLIP-2 or CLIP model).
    `config_overrides` set fields of the model config that config.json does not carry (e.g. dtype,
    feature_layer, remat, mask_ratio; for BERT -> Q-Former: num_query_tokens, cross_attention_freq,
    encoder_width, embed_dim). `seed` draws the params a partial checkpoint lacks (BERT -> Q-Former,
    see `load_hf`, which also returns the list of them).
    """
    module, params, _ = load_hf(hf_dir, component, seed=seed, **config_overrides)
    return module, params
