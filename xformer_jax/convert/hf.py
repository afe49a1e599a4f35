"""`from_hf`: dispatch on config.json's architecture, build the Flax module, map the weights."""
import dataclasses
import json
import os
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xformer_jax.convert import mapping, safetensors_io, tables
from xformer_jax.models import mae, vit


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to read one architecture: which config dict, which module, which keys, which table."""
    build: Callable[[dict, dict], nn.Module]  # (hf config, overrides) -> module
    table: mapping.Table
    dummy_inputs: Callable[[nn.Module], dict]
    prefix: str = ""             # stripped from checkpoint keys
    prefix_required: bool = False  # keys without the prefix belong to other components and are skipped
    sub_config: Optional[str] = None  # e.g. "vision_config" of a composite model
    fixups: Callable[[dict], dict] = lambda tensors: tensors


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


_CLIP = dict(build=_clip, table=tables.CLIP_VISION, dummy_inputs=_pixels, prefix="vision_model.")
_EVA = dict(build=_clip, table=tables.EVA_VISION, dummy_inputs=_pixels, prefix="vision_model.",
            fixups=_merge_eva_qv_bias)
_BLIP2_VISION = dict(_EVA, prefix_required=True, sub_config="vision_config")

RECIPES: dict[str, Recipe] = {
    "CLIPVisionModel": Recipe(**_CLIP),
    "CLIPModel": Recipe(**_CLIP, prefix_required=True, sub_config="vision_config"),
    "Blip2VisionModel": Recipe(**_EVA),
    "Blip2ForConditionalGeneration": Recipe(**_BLIP2_VISION),
    "Blip2ForImageTextRetrieval": Recipe(**_BLIP2_VISION),
    "Blip2Model": Recipe(**_BLIP2_VISION),
    "CLIPModel:vision": Recipe(**_CLIP, prefix_required=True, sub_config="vision_config"),
    "Blip2ForConditionalGeneration:vision": Recipe(**_BLIP2_VISION),
    "Blip2ForImageTextRetrieval:vision": Recipe(**_BLIP2_VISION),
    "Blip2Model:vision": Recipe(**_BLIP2_VISION),
    "ViTMAEModel": Recipe(build=lambda c, o: mae.MAEEncoder(_mae_config(c, o)), table=tables.mae_encoder(),
                          dummy_inputs=_masked_pixels, prefix="vit."),
    "ViTMAEForPreTraining": Recipe(
        build=lambda c, o: mae.MAEForPreTraining(_mae_config(c, o)),
        table=[*tables.mae_encoder("vit.", "encoder/"), *tables.MAE_DECODER], dummy_inputs=_masked_pixels),
}
# "Architecture:component" entries pick one part of a composite checkpoint (from_hf(..., component=)).
SUPPORTED_ARCHITECTURES = tuple(name for name in RECIPES if ":" not in name)


def read_config(hf_dir: str) -> dict:
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"checkpoint directory not found: {hf_dir}")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (expected a transformers save_pretrained directory)")
    with open(path) as f:
        try:
            return json.load(f)
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


def _select(tensors: dict, origin: dict, recipe: Recipe) -> tuple[dict, dict]:
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


def from_hf(hf_dir: str, component: Optional[str] = None, **config_overrides) -> tuple[nn.Module, dict]:
    """(module, params) from a transformers save_pretrained directory, reading weights with NumPy.

    `component` picks one part of a composite checkpoint (e.g. "vision" of a BLIP-2 or CLIP model).
    `config_overrides` set fields of the model config that config.json does not carry (e.g. dtype,
    feature_layer, remat, mask_ratio).
    """
    config = read_config(hf_dir)
    config_path = os.path.join(hf_dir, "config.json")
    recipe = recipe_for(architecture(config, config_path), component, config_path)
    module_config = config[recipe.sub_config] if recipe.sub_config else config
    module = recipe.build(module_config, config_overrides)
    tensors, origin = safetensors_io.load_tensors(hf_dir)
    tensors, origin = _select(tensors, origin, recipe)
    target = mapping.flat_shapes(abstract_params(module, recipe.dummy_inputs(module)))
    params = mapping.hf_to_flax(tensors, origin, recipe.table, target)
    return module, params
