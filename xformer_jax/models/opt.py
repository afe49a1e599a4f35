"""OPT decoder LLM (HF `OPTForCausalLM`) with a static-shape KV cache.

As transformers has it: learned positions read at `position_id + 2`, with position ids
`cumsum(attention_mask) * attention_mask - 1` when none are given; causal + padding mask; ReLU FFN;
q/k/v/out projections with bias (`enable_bias`), the query scaled by head_dim**-0.5 after its
projection. Two layouts:
  pre-LN (125m, 1.3b, 2.7b, 6.7b, ...): LayerNorm before attention and FFN, a final LayerNorm;
  post-LN (350m, `do_layer_norm_before=False`): LayerNorm after each residual add, no final LayerNorm,
      and token embeddings of width `word_embed_proj_dim` projected in / out of the hidden width.
The LM head is the token embedding (tied) unless `tie_word_embeddings` is false.

Interface (shared with `llama.LlamaForCausalLM`):
  `__call__(input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None, cache=None)`
      -> {"logits": float32 (batch, length, vocab), "cache": KVCache (only when a cache was given)}
  `embed(input_ids)` -> token embeddings (batch, length, word_embed_proj_dim), what `inputs_embeds` holds
  `init_cache(batch, max_len, dtype=None)` -> an empty `decoder_cache.KVCache` (no params needed)
With a cache, `attention_mask` covers only the tokens being fed; the cache remembers earlier ones.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer_jax.models import decoder_cache, layers

POSITION_OFFSET = 2  # OPT reads its position table at position_id + 2


@dataclasses.dataclass(frozen=True)
class OPTConfig:
    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    num_attention_heads: int = 12
    max_position_embeddings: int = 2048
    word_embed_proj_dim: Optional[int] = None  # None: hidden_size
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False  # transformers' `_remove_final_layer_norm` (pre-4.20 fine-tunes)
    activation_function: str = "relu"
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    layer_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    pad_token_id: Optional[int] = 1
    bos_token_id: Optional[int] = 2
    eos_token_id: Any = 2
    dtype: Any = jnp.float32
    remat: layers.Remat = False  # or a policy name (layers.REMAT_POLICIES)
    scan_layers: bool = False  # training forward (no cache) as one lax.scan over the layers

    def __post_init__(self):
        if self.word_embed_proj_dim is None:
            object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        layers.activation(self.activation_function)  # unknown names raise here
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    @property
    def has_projections(self) -> bool:
        return self.word_embed_proj_dim != self.hidden_size

    @property
    def has_final_layer_norm(self) -> bool:
        return self.do_layer_norm_before and not self.remove_final_layer_norm


def _layer_norm(config: OPTConfig, name: str) -> nn.LayerNorm:
    if config.layer_norm_elementwise_affine:
        return layers.layer_norm(config.layer_norm_eps, name)
    return nn.LayerNorm(epsilon=config.layer_norm_eps, use_bias=False, use_scale=False, dtype=jnp.float32,
                        param_dtype=jnp.float32, name=name)


class OPTAttention(nn.Module):
    config: OPTConfig

    @nn.compact
    def __call__(self, x, bias, kv=None, index=None):
        c = self.config
        proj = lambda name, axes: layers.dense(c.hidden_size, axes, name, c.dtype, use_bias=c.enable_bias)
        q = proj("q_proj", ("embed", "joined_kv"))(x) * c.head_dim ** -0.5  # transformers scales here
        k = proj("k_proj", ("embed", "joined_kv"))(x)
        v = proj("v_proj", ("embed", "joined_kv"))(x)
        q, k, v = (layers.split_heads(t, c.num_attention_heads) for t in (q, k, v))
        k, v, kv = decoder_cache.write(kv, index, k, v)
        out = decoder_cache.attend(q, k, v, bias, scale=1.0)
        return proj("out_proj", ("joined_kv", "embed"))(out), kv


class OPTDecoderLayer(nn.Module):
    config: OPTConfig

    @nn.compact
    def __call__(self, x, bias, kv=None, index=None):
        c = self.config
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        attn_norm = _layer_norm(c, "self_attn_layer_norm")
        ffn_norm = _layer_norm(c, "final_layer_norm")
        h = attn_norm(x).astype(c.dtype) if c.do_layer_norm_before else x
        h, kv = OPTAttention(c, name="self_attn")(h, bias, kv, index)
        x = x + h
        if not c.do_layer_norm_before:
            x = attn_norm(x).astype(c.dtype)
        h = ffn_norm(x).astype(c.dtype) if c.do_layer_norm_before else x
        h = layers.dense(c.ffn_dim, ("embed", "mlp"), "fc1", c.dtype, use_bias=c.enable_bias)(h)
        h = layers.activation(c.activation_function)(h)
        x = x + layers.dense(c.hidden_size, ("mlp", "embed"), "fc2", c.dtype, use_bias=c.enable_bias)(h)
        if not c.do_layer_norm_before:
            x = ffn_norm(x).astype(c.dtype)
        return x, kv


def default_position_ids(mask, keys_mask, cache):
    """transformers' OPT rule: cumsum(mask) * mask - 1 over everything seen, for the fed tokens."""
    positions = jnp.cumsum(keys_mask, axis=1) * keys_mask - 1
    if cache is not None:
        positions = jax.lax.dynamic_slice_in_dim(positions, cache.index, mask.shape[1], axis=1)
    return positions


class OPTForCausalLM(decoder_cache.CausalLM):
    config: OPTConfig

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.word_embed_proj_dim, dtype=c.dtype, param_dtype=jnp.float32,
            embedding_init=layers.normal_init(("vocab", "embed")))
        self.embed_positions = nn.Embed(
            c.max_position_embeddings + POSITION_OFFSET, c.hidden_size, dtype=c.dtype, param_dtype=jnp.float32,
            embedding_init=layers.normal_init((None, "embed")))
        if c.has_projections:
            self.project_in = layers.dense(c.hidden_size, (None, "embed"), "project_in", c.dtype, use_bias=False)
            self.project_out = layers.dense(c.word_embed_proj_dim, ("embed", None), "project_out", c.dtype,
                                            use_bias=False)
        if c.has_final_layer_norm:
            self.final_layer_norm = _layer_norm(c, "final_layer_norm")
        layer_cls = layers.remat_module(OPTDecoderLayer, c.remat)
        self.layers = [layer_cls(c, name=f"layer_{i}") for i in range(c.num_hidden_layers)]
        if not c.tie_word_embeddings:
            self.lm_head = layers.dense(c.vocab_size, ("embed", "vocab"), "lm_head", c.dtype, use_bias=False)

    def __call__(self, input_ids=None, attention_mask=None, inputs_embeds=None, position_ids=None,
                 cache: Optional[decoder_cache.KVCache] = None):
        c = self.config
        inputs_embeds, mask, keys_mask, bias = self.prepare(input_ids, attention_mask, inputs_embeds, cache)
        if position_ids is None:
            position_ids = default_position_ids(mask, keys_mask, cache)
        x = inputs_embeds.astype(c.dtype)
        if c.has_projections:
            x = self.project_in(x)
        x = x + self.embed_positions(jnp.asarray(position_ids).astype(jnp.int32) + POSITION_OFFSET)
        index = None if cache is None else cache.index
        new_layers = []
        if c.scan_layers and cache is None and not self.is_initializing():
            x, _ = layers.scan_blocks(self, [f"layer_{i}" for i in range(c.num_hidden_layers)],
                                      OPTDecoderLayer(c, parent=None), x, bias, remat=c.remat)
        else:
            for i, layer in enumerate(self.layers):
                x, kv = layer(x, bias, decoder_cache.layer_kv(cache, i), index)
                new_layers.append(kv)
        if c.has_final_layer_norm:
            x = self.final_layer_norm(x).astype(c.dtype)
        if c.has_projections:
            x = self.project_out(x)
        return self.finish(x, cache, keys_mask, new_layers)


def config_from_hf(hf: dict, **overrides) -> OPTConfig:
    """An OPTConfig from an HF OPTConfig dict (config.json)."""
    hidden = hf.get("hidden_size", 768)
    fields = dict(
        vocab_size=hf.get("vocab_size", 50272),
        hidden_size=hidden,
        num_hidden_layers=hf.get("num_hidden_layers", 12),
        ffn_dim=hf.get("ffn_dim", 3072),
        num_attention_heads=hf.get("num_attention_heads", 12),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        word_embed_proj_dim=hf.get("word_embed_proj_dim") or hidden,
        do_layer_norm_before=hf.get("do_layer_norm_before", True),
        remove_final_layer_norm=hf.get("_remove_final_layer_norm", False),
        activation_function=hf.get("activation_function", "relu"),
        enable_bias=hf.get("enable_bias", True),
        layer_norm_elementwise_affine=hf.get("layer_norm_elementwise_affine", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        pad_token_id=hf.get("pad_token_id", 1),
        bos_token_id=hf.get("bos_token_id", 2),
        eos_token_id=hf.get("eos_token_id", 2),
    )
    fields.update(overrides)
    return OPTConfig(**fields)
