"""Frozen vision towers: CLIP ViT (HF `CLIPVisionModel`) and EVA ViT (HF `Blip2VisionModel`).

Both are pre-LN ViTs and differ only in small ways, so one module covers them, switched by
`VisionConfig.kind`:
  clip: conv patch embed without bias, `pre_layrnorm` before the blocks, quick_gelu, separate q/k/v,
        `post_layernorm` applied to the pooled CLS token only.
  eva:  conv patch embed with bias, no pre-LN, gelu, fused qkv, `post_layernorm` on every token
        (HF's Blip2VisionModel; LAVIS calls that norm `ln_vision`).
The Q-Former reads `hidden_states[feature_layer]`; `features()` runs only the blocks it needs.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xformer_jax.models import layers

TOWER_KINDS = ("clip", "eva")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    kind: str = "clip"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    feature_layer: int = -2  # index into hidden_states (input embeddings first): -2 = penultimate block
    dtype: Any = jnp.float32
    remat: layers.Remat = False  # or a policy name (layers.REMAT_POLICIES)
    scan_layers: bool = False  # the blocks as one lax.scan (layers.BlockStack)

    def __post_init__(self):
        if self.kind not in TOWER_KINDS:
            raise ValueError(f"vision kind {self.kind!r} is not one of {TOWER_KINDS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if not -(self.num_hidden_layers + 1) <= self.feature_layer <= self.num_hidden_layers:
            raise ValueError(f"feature_layer {self.feature_layer} is outside hidden_states of a "
                             f"{self.num_hidden_layers}-layer tower")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def feature_depth(self) -> int:
        """How many blocks produce hidden_states[feature_layer]."""
        return self.feature_layer % (self.num_hidden_layers + 1)


class VisionTransformer(nn.Module):
    config: VisionConfig

    def setup(self):
        c = self.config
        self.cls_token = self.param("cls_token", layers.normal_init((None, "embed")), (1, c.hidden_size))
        self.pos_embed = self.param("pos_embed", layers.normal_init((None, "embed")),
                                    (c.num_patches + 1, c.hidden_size))
        if c.kind == "clip":
            self.pre_norm = layers.layer_norm(c.layer_norm_eps, "pre_norm")
        self.patch_embed = layers.PatchEmbed(c.patch_size, c.hidden_size, c.kind == "eva", c.dtype,
                                             name="patch_embed")
        self.blocks = layers.BlockStack(
            c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
            fused_qkv=c.kind == "eva", dtype=c.dtype, remat=c.remat, scan_layers=c.scan_layers, name="blocks")
        self.post_norm = layers.layer_norm(c.layer_norm_eps, "post_norm")

    def _embed(self, pixel_values):
        c = self.config
        if pixel_values.shape[1:] != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(f"pixel_values shape {pixel_values.shape} does not match the tower's "
                             f"(batch, {c.num_channels}, {c.image_size}, {c.image_size}) NCHW layout")
        x = self.patch_embed(pixel_values)
        cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (x.shape[0], 1, c.hidden_size))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed.astype(x.dtype)
        if c.kind == "clip":
            x = self.pre_norm(x).astype(c.dtype)
        return x

    def __call__(self, pixel_values, output_hidden_states: bool = False):
        """HF-compatible forward: last_hidden_state, pooler_output and (optionally) hidden_states."""
        states = self.blocks(self._embed(pixel_values), all_states=output_hidden_states)
        last = states[-1]
        if self.config.kind == "eva":
            last = self.post_norm(last).astype(self.config.dtype)
        out = {"last_hidden_state": last, "pooler_output": self.post_norm(last[:, 0]).astype(self.config.dtype)}
        if output_hidden_states:
            out["hidden_states"] = tuple(states)
        return out

    def features(self, pixel_values):
        """hidden_states[feature_layer], computing no block past it (what the Q-Former reads)."""
        return self.blocks(self._embed(pixel_values), stop_after=self.config.feature_depth, all_states=False)[-1]


def config_from_hf(hf: dict, **overrides) -> VisionConfig:
    """A VisionConfig from an HF CLIPVisionConfig / Blip2VisionConfig dict (config.json)."""
    kind = "eva" if hf.get("model_type", "").startswith("blip") else "clip"
    defaults = {"clip": ("quick_gelu", 1e-5), "eva": ("gelu", 1e-6)}[kind]
    fields = dict(
        kind=kind,
        hidden_size=hf.get("hidden_size", 768),
        num_hidden_layers=hf.get("num_hidden_layers", 12),
        num_attention_heads=hf.get("num_attention_heads", 12),
        intermediate_size=hf.get("intermediate_size", 3072),
        image_size=hf.get("image_size", 224),
        patch_size=hf.get("patch_size", 32 if kind == "clip" else 14),
        num_channels=hf.get("num_channels", 3),
        hidden_act=hf.get("hidden_act", defaults[0]),
        layer_norm_eps=hf.get("layer_norm_eps", defaults[1]),
    )
    if kind == "eva" and not hf.get("qkv_bias", True):
        raise ValueError("Blip2VisionConfig.qkv_bias=False is not supported (EVA always has q/v biases)")
    fields.update(overrides)
    return VisionConfig(**fields)
