"""LLaMA decoder LLM (HF `LlamaForCausalLM`) behind the same interface as `opt.OPTForCausalLM`.

RMSNorm (pre-norm, a final norm), rotary position embeddings (default rope only, `rope_theta`,
transformers' rotate_half layout: the two halves of each head are the cos / sin pair), SwiGLU MLP
(gate / up / down), grouped-query attention (`num_key_value_heads` <= `num_attention_heads`), LM head
untied unless `tie_word_embeddings`. Position ids default to arange after the cache's written slots
(transformers' forward); `xformer_jax.predict.generate` passes the mask-derived ones `generate` uses.

  `__call__(input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None, cache=None)`
      -> {"logits": float32 (batch, length, vocab), "cache": KVCache (only when a cache was given)}
  `embed(input_ids)`, `init_cache(batch, max_len, dtype=None)`, `hidden_size`, `word_embed_proj_dim`
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xformer_jax.models import decoder_cache, layers


def _activation(name: str):
    if name in ("silu", "swish"):
        return jax.nn.silu
    return layers.activation(name)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: Optional[int] = None  # None: num_attention_heads (no grouping)
    head_dim: Optional[int] = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = 1
    eos_token_id: Any = 2
    dtype: Any = jnp.float32
    remat: layers.Remat = False  # or a policy name (layers.REMAT_POLICIES)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        _activation(self.hidden_act)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def word_embed_proj_dim(self) -> int:
        """Width of `inputs_embeds` (LLaMA embeds at the hidden width)."""
        return self.hidden_size


class RMSNorm(nn.Module):
    """x / rms(x) in float32, cast back, times a learned scale (transformers' LlamaRMSNorm)."""
    eps: float

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                           (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (scale * normed.astype(x.dtype)).astype(x.dtype)


def rotary(position_ids, head_dim: int, theta: float, dtype):
    """(cos, sin) of shape (batch or 1, length, head_dim), the frequencies repeated over both halves."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = jnp.asarray(position_ids, jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x, cos, sin):
    """x (batch, length, heads, head_dim); rotate_half = [-x2, x1] on the two halves."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class LlamaAttention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, bias, kv=None, index=None):
        c = self.config
        proj = lambda width, name, axes: layers.dense(width, axes, name, c.dtype, use_bias=c.attention_bias)
        q = proj(c.num_attention_heads * c.head_dim, "q_proj", ("embed", "joined_kv"))(x)
        k = proj(c.num_key_value_heads * c.head_dim, "k_proj", ("embed", "joined_kv"))(x)
        v = proj(c.num_key_value_heads * c.head_dim, "v_proj", ("embed", "joined_kv"))(x)
        q = apply_rotary(layers.split_heads(q, c.num_attention_heads), cos, sin)
        k = apply_rotary(layers.split_heads(k, c.num_key_value_heads), cos, sin)
        v = layers.split_heads(v, c.num_key_value_heads)
        k, v, kv = decoder_cache.write(kv, index, k, v)
        out = decoder_cache.attend(q, k, v, bias, scale=c.head_dim ** -0.5)
        return proj(c.hidden_size, "o_proj", ("joined_kv", "embed"))(out), kv


class LlamaMLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = layers.dense(c.intermediate_size, ("embed", "mlp"), "gate_proj", c.dtype, use_bias=c.mlp_bias)(x)
        up = layers.dense(c.intermediate_size, ("embed", "mlp"), "up_proj", c.dtype, use_bias=c.mlp_bias)(x)
        h = _activation(c.hidden_act)(gate) * up
        return layers.dense(c.hidden_size, ("mlp", "embed"), "down_proj", c.dtype, use_bias=c.mlp_bias)(h)


class LlamaDecoderLayer(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, cos, sin, bias, kv=None, index=None):
        c = self.config
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        h, kv = LlamaAttention(c, name="self_attn")(RMSNorm(c.rms_norm_eps, name="input_layernorm")(x),
                                                    cos, sin, bias, kv, index)
        x = x + h
        x = x + LlamaMLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x))
        return x, kv


class LlamaForCausalLM(decoder_cache.CausalLM):
    config: LlamaConfig

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=jnp.float32,
                                     embedding_init=layers.normal_init(("vocab", "embed")))
        layer_cls = layers.remat_module(LlamaDecoderLayer, c.remat)
        self.layers = [layer_cls(c, name=f"layer_{i}") for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps)
        if not c.tie_word_embeddings:
            self.lm_head = layers.dense(c.vocab_size, ("embed", "vocab"), "lm_head", c.dtype, use_bias=False)

    def __call__(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None,
                 cache: Optional[decoder_cache.KVCache] = None):
        c = self.config
        inputs_embeds, _, keys_mask, bias = self.prepare(input_ids, attention_mask, inputs_embeds, cache)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            start = 0 if cache is None else cache.index
            position_ids = (start + jnp.arange(length))[None]
        cos, sin = rotary(position_ids, c.head_dim, c.rope_theta, c.dtype)
        x = inputs_embeds.astype(c.dtype)
        index = None if cache is None else cache.index
        new_layers = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, cos, sin, bias, decoder_cache.layer_kv(cache, i), index)
            new_layers.append(kv)
        return self.finish(self.norm(x), cache, keys_mask, new_layers)


def _rope_theta(hf: dict) -> float:
    """rope_theta from transformers 5's `rope_parameters` or the older top-level keys; default rope only."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise ValueError(f"rope type {kind!r} is not supported (only the default rotary embedding)")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict, **overrides) -> LlamaConfig:
    """A LlamaConfig from an HF LlamaConfig dict (config.json)."""
    fields = dict(
        vocab_size=hf.get("vocab_size", 32000),
        hidden_size=hf.get("hidden_size", 4096),
        intermediate_size=hf.get("intermediate_size", 11008),
        num_hidden_layers=hf.get("num_hidden_layers", 32),
        num_attention_heads=hf.get("num_attention_heads", 32),
        num_key_value_heads=hf.get("num_key_value_heads"),
        head_dim=hf.get("head_dim"),
        hidden_act=hf.get("hidden_act", "silu"),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(hf),
        attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id", 1),
        eos_token_id=hf.get("eos_token_id", 2),
    )
    fields.update(overrides)
    return LlamaConfig(**fields)
