"""The KV cache and causal attention shared by the decoder LLMs (`opt.py`, `llama.py`).

The cache is an explicit pytree passed into and returned from the model's `__call__`, with static
shapes so prefill and every decode step compile once under `jax.jit`:

    keys / values  one (batch, max_len, kv_heads, head_dim) array per layer, preallocated
    mask           (batch, max_len) int32: 1 where a written slot may be attended (the attention_mask
                   of the token stored there), 0 for padding and for slots not written yet
    index          int32 scalar: how many slots are written; the next tokens go to index, index+1, ...

A forward with a cache writes its tokens' keys / values / mask at `index` and attends over all
`max_len` slots; a slot is visible to a query when it is written at or before the query's slot and
its mask is 1, so unwritten slots never contribute. Beam search reorders rows with `gather`.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

CACHE_AXES = ("batch", "length", "heads", "kv")


@struct.dataclass
class KVCache:
    keys: tuple
    values: tuple
    mask: jax.Array
    index: jax.Array

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def max_len(self) -> int:
        return self.mask.shape[1]

    def gather(self, rows) -> "KVCache":
        """The cache of rows `rows` (int array, any length): beam reordering and beam expansion."""
        take = lambda x: jnp.take(x, rows, axis=0)
        return self.replace(keys=tuple(map(take, self.keys)), values=tuple(map(take, self.values)),
                            mask=take(self.mask))

    def repeat(self, n: int) -> "KVCache":
        """Each row repeated n times in place (row r becomes rows r*n .. r*n+n-1)."""
        return self.gather(jnp.repeat(jnp.arange(self.batch), n))


def init_cache(num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int,
               dtype=jnp.float32) -> KVCache:
    shape = (batch, max_len, kv_heads, head_dim)
    return KVCache(keys=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   values=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
                   mask=jnp.zeros((batch, max_len), jnp.int32), index=jnp.zeros((), jnp.int32))


def segment_mask(attention_mask, batch: int, length: int):
    """The (batch, length) int32 mask of the tokens being fed (all ones when None)."""
    if attention_mask is None:
        return jnp.ones((batch, length), jnp.int32)
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != (batch, length):
        raise ValueError(f"attention_mask shape {attention_mask.shape} does not match the ({batch}, {length}) "
                         "tokens being fed (with a cache, pass the mask of the new tokens only)")
    return attention_mask.astype(jnp.int32)


def key_mask_and_bias(mask, cache: Optional[KVCache]):
    """(key mask over the attended slots, additive causal+padding bias (batch, 1, q, slots)).

    Without a cache the attended slots are the fed tokens; with one they are the cache's slots
    after writing `mask` at `cache.index`. Masked entries get float32's minimum, as transformers'
    eager attention does (a query with no visible key then attends uniformly, like there).
    """
    length = mask.shape[1]
    if cache is None:
        keys_mask, start = mask, 0
    else:
        keys_mask = jax.lax.dynamic_update_slice(cache.mask, mask, (0, cache.index))
        start = cache.index
    query_slot = start + jnp.arange(length)
    key_slot = jnp.arange(keys_mask.shape[1])
    visible = (key_slot[None, :] <= query_slot[:, None])[None, None] & (keys_mask[:, None, None, :] > 0)
    bias = jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    return keys_mask, bias


def write(kv, index, key, value):
    """Store one layer's new keys / values at slot `index` of its cache arrays `kv` = (keys, values).

    Returns (keys, values to attend over, the updated `kv`); without a cache (kv None) the new
    keys / values themselves and None.
    """
    if kv is None:
        return key, value, None
    at = (0, index, 0, 0)
    k = jax.lax.dynamic_update_slice(kv[0], key.astype(kv[0].dtype), at)
    v = jax.lax.dynamic_update_slice(kv[1], value.astype(kv[1].dtype), at)
    k = nn.with_logical_constraint(k, CACHE_AXES)
    v = nn.with_logical_constraint(v, CACHE_AXES)
    return k.astype(key.dtype), v.astype(value.dtype), (k, v)


def layer_kv(cache: Optional[KVCache], layer: int):
    return None if cache is None else (cache.keys[layer], cache.values[layer])


def advance(cache: KVCache, keys_mask, new_layers: list, length: int) -> KVCache:
    """The cache after a forward of `length` tokens wrote `new_layers` [(keys, values)] and `keys_mask`."""
    return KVCache(keys=tuple(k for k, _ in new_layers), values=tuple(v for _, v in new_layers),
                   mask=keys_mask, index=cache.index + length)


def attend(query, key, value, bias, scale: float):
    """Grouped-query attention: query (b, q, H, d), key/value (b, s, KV, d) with H a multiple of KV
    (query head h reads kv head h // (H // KV), transformers' repeat_kv order). float32 softmax."""
    b, q, heads, d = query.shape
    kv_heads = key.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} attention heads are not a multiple of {kv_heads} key/value heads")
    query = query.reshape(b, q, kv_heads, heads // kv_heads, d)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", query, key, preferred_element_type=jnp.float32)
    if scale != 1.0:
        scores = scores * scale
    scores = scores + bias[:, :, None]  # (b, 1, 1, q, s)
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, value)
    return out.reshape(b, q, heads * d)


class CausalLM(nn.Module):
    """The interface OPT and LLaMA share: accessors, cache creation, token embedding, input checks
    and the LM head / cache update around each model's own stack. Subclasses set `config` and, in
    setup, `embed_tokens` (and `lm_head` when the head is untied)."""

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def word_embed_proj_dim(self) -> int:
        """Width of `inputs_embeds` (= the token embeddings)."""
        return self.config.word_embed_proj_dim

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        c = self.config
        return init_cache(c.num_hidden_layers, batch, max_len, c.num_key_value_heads, c.head_dim, dtype or c.dtype)

    def embed(self, input_ids):
        return self.embed_tokens(jnp.asarray(input_ids).astype(jnp.int32))

    def prepare(self, input_ids, attention_mask, inputs_embeds, cache: Optional[KVCache]):
        """(inputs_embeds, this segment's mask, keys mask, attention bias) after checking the inputs."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        if inputs_embeds.shape[-1] != self.word_embed_proj_dim:
            raise ValueError(f"inputs_embeds width {inputs_embeds.shape[-1]} is not the model's "
                             f"word_embed_proj_dim {self.word_embed_proj_dim}")
        batch, length = inputs_embeds.shape[:2]
        mask = segment_mask(attention_mask, batch, length)
        keys_mask, bias = key_mask_and_bias(mask, cache)
        return inputs_embeds, mask, keys_mask, bias

    def finish(self, x, cache: Optional[KVCache], keys_mask, new_layers: list) -> dict:
        """float32 logits from the (tied or untied) head, and the advanced cache when one was given."""
        head = self.embed_tokens.attend if self.config.tie_word_embeddings else self.lm_head
        logits = nn.with_logical_constraint(head(x).astype(jnp.float32), ("batch", "length", "vocab"))
        out = {"logits": logits}
        if cache is not None:
            out["cache"] = advance(cache, keys_mask, new_layers, x.shape[1])
        return out
