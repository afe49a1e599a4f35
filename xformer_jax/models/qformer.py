"""BLIP-2 Q-Former (BERT layout) in Flax: learnable queries, image cross-attention, text encoder/decoder.

Layout (LAVIS `Qformer.py`, HF `Blip2QFormerModel`):
  * post-LN BERT layers; each layer holds self-attention over [queries; text], a cross-attention to the
    (ln_vision-normalised) image features in layers with `i % cross_attention_freq == 0`, applied to the
    query positions only (keys / values projected from `encoder_width`), and two FFNs: `*_query` for the
    query positions and the BERT one for the text positions.
  * Embeddings: word + position for text (positions start at 0 for the first text token); queries get
    no position embedding; the embedding LayerNorm (`qformer/layernorm`, HF `Blip2QFormerModel.layernorm`,
    BERT `embeddings.LayerNorm`) is applied to [queries; text].
  * Additive attention biases (1 - m) * -10000 (LAVIS). HF uses finfo.min; both give the same
    probabilities whenever a row has at least one visible key (exp(-10000) underflows to 0 in float32);
    they differ only on fully masked rows, which none of the BLIP-2 passes produce.

Three self-attention masks (all built by the helpers below, as 0/1 "may attend" arrays):
  * bidirectional (ITM):      [queries; text], everyone sees every non-pad position;
  * unimodal:                 queries alone (no mask), or text alone with its padding mask (ITC text side);
  * UniLM (ITG):              queries see queries only; text token j sees all queries and text k <= j
                              (non-pad).
The ITG pass is offered two ways that are mathematically the same (`tests/test_qformer.py` checks it):
one joint pass over [queries; text] with the UniLM mask (query rows then reproduce the image pass
exactly, because they see neither text nor anything but queries and the image), or LAVIS's way, a
text-only pass whose self-attention is prefixed with the per-layer query keys / values cached by the
image pass (`encode_image_queries(..., return_cache=True)`), which avoids recomputing the query stream.

Modules:
  QFormerLayer    one layer; reusable by the X-Former fusion (hidden, bias, query_length, memory, ...).
  QFormerEncoder  HF `Blip2QFormerModel`: `layernorm` + `layer_{i}`; its `__call__` takes HF's inputs.
  QFormer         the full stage-1 model: query_tokens, embeddings, qformer (an encoder), ln_vision,
                  vision_proj, text_proj, itm_head, temp, lm_head (BERT `cls.predictions`, decoder tied
                  to the word embeddings as in LAVIS / HF BertLMHeadModel).
Params are float32; `dtype` is the compute dtype; softmax and LayerNorms run in float32.
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer_jax.models import batch_rows, layers

MASK_VALUE = -10000.0  # LAVIS `get_extended_attention_mask`: (1 - m) * -10000
TEMP_INIT = 0.07
# BLIP / ALBEF (LAVIS blip_pretrain, albef_pretrain) clamp temp in place to this range before every
# forward; LAVIS's BLIP-2 Q-Former does not. Kept here: it stops a runaway temp (-> 0 or negative)
# from blowing up the ITC logits, and inside the range it changes nothing.
TEMP_RANGE = (0.001, 0.5)

KVCache = Sequence[tuple[jax.Array, jax.Array]]  # per layer (keys, values), each (batch, len, heads, head_dim)
# fuse(layer_index, query_hidden, carry) -> (query_hidden, carry): run on the query positions after every
# cross-attention layer (X-Former's per-layer dual cross-attention, the early MAE cross-attention).
FuseHook = Callable[[int, jax.Array, Any], tuple[jax.Array, Any]]


class EncoderOutput(NamedTuple):
    last: jax.Array  # (B, L, H)
    states: tuple  # every hidden state, the normalised embeddings first
    cache: tuple  # per-layer self-attention (keys, values)
    carry: Any = None  # what a fuse hook handed on


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    vocab_size: int = 30523  # bert-base-uncased's 30522 + the [DEC] bos token
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    dec_token_id: int = 30522  # the [DEC] id that replaces [CLS] in the ITG decoder input
    cross_attention_freq: int = 2
    encoder_width: int = 1408  # width of the vision features the queries cross-attend to
    text_ffn: bool = True  # HF `use_qformer_text_input`: the text FFN (intermediate / output) exists
    num_query_tokens: int = 32
    embed_dim: int = 256  # vision_proj / text_proj width
    vision_layer_norm_eps: float = 1e-5  # ln_vision (LAVIS uses torch's default LayerNorm eps)
    # The fresh cross-attention's query / key kernels start N(0, this); BERT's initializer_range (0.02)
    # unless set. Its initial attention scores have a standard deviation of about
    # std^2 * sqrt(hidden_size * encoder_width): 0.4 at BLIP-2's widths, 0.1 at the demo's.
    cross_attention_qk_init_std: float = 0.02
    # BERT's dropout (LAVIS trains the Q-Former with bert-base's 0.1 in both stages): on the embeddings,
    # every attention / FFN output before its residual LayerNorm, and the attention probabilities.
    # Active only when apply gets a "dropout" rng (the train step); 0 here, set from config / checkpoint.
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    dtype: Any = jnp.float32
    remat: layers.Remat = False  # or a policy name (layers.REMAT_POLICIES)
    # The layers as one lax.scan over periods of cross_attention_freq layers (one with cross-attention,
    # the rest without): the same params and numbers as the unrolled stack, one compiled period instead
    # of num_hidden_layers layers per pass (QFormerEncoder.run says which layers stay unrolled).
    scan_layers: bool = False

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.cross_attention_freq < 1:
            raise ValueError(f"cross_attention_freq must be >= 1, got {self.cross_attention_freq}")
        for name in ("num_hidden_layers", "num_query_tokens", "encoder_width", "embed_dim", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        layers.activation(self.hidden_act)  # raises on an unknown activation

    def has_cross_attention(self, layer: int) -> bool:
        return layer % self.cross_attention_freq == 0


# ----------------------------------------------------------------------------------------------
# Attention masks: 0/1 float32 "may attend" arrays, broadcastable to (batch, heads, q_len, k_len).
# ----------------------------------------------------------------------------------------------

def attention_bias(allowed) -> jax.Array:
    """(1 - m) * -10000: the additive bias for a 0/1 mask."""
    return (1.0 - jnp.asarray(allowed, jnp.float32)) * MASK_VALUE


def padding_mask(mask) -> jax.Array:
    """(batch, len) 1 = real token -> (batch, 1, 1, len)."""
    return jnp.asarray(mask, jnp.float32)[:, None, None, :]


def bidirectional_mask(text_mask, num_queries: int = 0) -> jax.Array:
    """[queries; text] all see all non-pad positions (ITM); with num_queries=0 the unimodal text mask."""
    text_mask = jnp.asarray(text_mask, jnp.float32)
    keys = jnp.concatenate([jnp.ones((text_mask.shape[0], num_queries), jnp.float32), text_mask], axis=1)
    return padding_mask(keys)


def unilm_mask(text_mask, num_queries: int) -> jax.Array:
    """ITG: queries see queries only; text j sees all queries and non-pad text k <= j. (B, 1, Q+T, Q+T)."""
    text_mask = jnp.asarray(text_mask, jnp.float32)
    q, t = num_queries, text_mask.shape[1]
    query_rows = jnp.concatenate([jnp.ones((q, q)), jnp.zeros((q, t))], axis=1)
    text_rows = jnp.concatenate([jnp.ones((t, q)), jnp.tril(jnp.ones((t, t)))], axis=1)
    pattern = jnp.concatenate([query_rows, text_rows], axis=0)[None, None]
    return pattern * bidirectional_mask(text_mask, num_queries)


def prefix_causal_mask(text_mask, num_prefix: int) -> jax.Array:
    """The text rows of `unilm_mask`: text j sees all `num_prefix` cached positions and non-pad text k <= j."""
    return unilm_mask(text_mask, num_prefix)[:, :, num_prefix:, :]


def l2_normalize(x, eps: float = 1e-12):
    """torch.nn.functional.normalize: x / max(||x||, eps), in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------

class Output(nn.Module):
    """BERT SelfOutput / Output: dense, dropout, then post-LN over (dense + residual). Params dense, layernorm."""
    width: int
    eps: float
    in_axis: str = "joined_kv"
    dtype: Any = jnp.float32
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, residual):
        h = layers.dense(self.width, (self.in_axis, "embed"), "dense", self.dtype)(x)
        h = layers.dropout(self, self.dropout, h)
        return layers.layer_norm(self.eps, "layernorm")(
            h.astype(jnp.float32) + residual.astype(jnp.float32)).astype(self.dtype)


class Intermediate(nn.Module):
    size: int
    act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return layers.activation(self.act)(layers.dense(self.size, ("embed", "mlp"), "dense", self.dtype)(x))


class QFormerAttention(nn.Module):
    """Self- or cross-attention with its output block. Params query, key, value, output/{dense,layernorm}.

    Returns (output, (keys, values)) so that a caller can cache the self-attention keys / values.
    `memory` (cross-attention) supplies keys / values from another width; `memory_index` (batch,) picks
    row memory_index[b] of `memory` for row b of x, so keys / values are projected once per memory row
    (ITM pairs share images). `past_kv` is prepended to this call's keys / values (cached query positions
    for the ITG text pass). `rows` computes the output for the first `rows` positions only (keys / values
    still cover every position), for callers that read no more than those. `probs_dropout` /
    `hidden_dropout`: BERT's dropout on the attention probabilities and on the output block.
    """
    num_heads: int
    eps: float
    dtype: Any = jnp.float32
    probs_dropout: float = 0.0
    hidden_dropout: float = 0.0
    qk_init_std: float = layers.INIT_STD

    @nn.compact
    def __call__(self, x, bias=None, memory=None, past_kv=None, memory_index=None, rows: Optional[int] = None):
        width = x.shape[-1]
        source = x if memory is None else memory.astype(self.dtype)
        proj = lambda name, y: layers.split_heads(  # noqa: E731
            layers.dense(width, ("embed", "joined_kv"), name, self.dtype,
                         init_std=self.qk_init_std if name in ("query", "key") else layers.INIT_STD)(y),
            self.num_heads)
        if rows is not None:
            x = x[:, :rows]
            if bias is not None and bias.shape[2] > 1:
                bias = bias[:, :, :rows]
        q, k, v = proj("query", x), proj("key", source), proj("value", source)
        if memory_index is not None:
            k, v = batch_rows.take_rows(k, memory_index), batch_rows.take_rows(v, memory_index)
        new_kv = (k, v)
        if past_kv is not None:
            k = jnp.concatenate([past_kv[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([past_kv[1].astype(v.dtype), v], axis=1)
        out = layers.attend(q, k, v, bias=bias, probs_dropout=lambda p: layers.dropout(self, self.probs_dropout, p))
        return Output(width, self.eps, "joined_kv", self.dtype, self.hidden_dropout, name="output")(out, x), new_kv


class QFormerLayer(nn.Module):
    """One Q-Former layer over hidden states [queries (query_length); text].

    hidden (B, L, H); bias: additive self-attention bias broadcastable to (B, heads, L, L + cached);
    query_length: how many leading positions are queries (0 = text only: cross-attention skipped,
    text FFN for all); memory (B or B_mem, N, encoder_width): cross-attention keys / values for the
    queries, required when `has_cross_attention` and query_length > 0; memory_bias: additive,
    (B, 1, 1, N); memory_index: (B,) row of `memory` for each row of hidden (None: row b is row b);
    past_kv: cached (keys, values) prepended to the self-attention; rows: output only the first
    `rows` positions (the last layer of a pass whose caller reads no more); row_index (P,): hidden
    (and bias) hold distinct inputs and output row p continues input row row_index[p], so the
    self-attention and the text FFN, which read nothing pair-specific, run once per distinct input and
    only the cross-attention and the query FFN run per pair (the first ITM layer: its input is the
    learned queries and the text, the same for every image a text is paired with).
    Returns (hidden, (keys, values) of this call's self-attention over all positions, per output row).
    """
    config: QFormerConfig
    has_cross_attention: bool

    @nn.compact
    def __call__(self, hidden, bias=None, query_length: int = 0, memory=None, memory_bias=None, past_kv=None,
                 memory_index=None, rows: Optional[int] = None, row_index=None):
        c = self.config
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "embed"))
        attn, kv = self._attention("attention")(hidden, bias, past_kv=past_kv, rows=rows)
        length, num_queries = attn.shape[1], min(query_length, attn.shape[1])
        per_pair = (lambda x: x) if row_index is None else (lambda x: batch_rows.take_rows(x, row_index))  # noqa: E731
        kv = jax.tree.map(per_pair, kv)
        parts = []
        if num_queries > 0:
            queries = per_pair(attn[:, :num_queries])
            if self.has_cross_attention:
                if memory is None:
                    raise ValueError("this Q-Former layer cross-attends: image features (memory) are required "
                                     "when queries are present")
                queries, _ = self._attention("crossattention")(queries, memory_bias, memory=memory,
                                                               memory_index=memory_index)
            parts.append(self._ffn(queries, "_query"))
        if length > num_queries:
            if not c.text_ffn:
                raise ValueError("this Q-Former has no text FFN (text_ffn=False, HF use_qformer_text_input=False): "
                                 "every position must be a query")
            parts.append(per_pair(self._ffn(attn[:, num_queries:], "")))
        out = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        return nn.with_logical_constraint(out, ("batch", "length", "embed")), kv

    def _attention(self, name: str) -> QFormerAttention:
        c = self.config
        qk_init_std = c.cross_attention_qk_init_std if name == "crossattention" else layers.INIT_STD
        return QFormerAttention(c.num_attention_heads, c.layer_norm_eps, c.dtype, c.attention_probs_dropout_prob,
                                c.hidden_dropout_prob, qk_init_std, name=name)

    def _ffn(self, x, suffix: str):
        c = self.config
        h = Intermediate(c.intermediate_size, c.hidden_act, c.dtype, name=f"intermediate{suffix}")(x)
        return Output(c.hidden_size, c.layer_norm_eps, "mlp", c.dtype, c.hidden_dropout_prob,
                      name=f"output{suffix}")(h, x)


class QFormerEncoder(nn.Module):
    """HF `Blip2QFormerModel`: the embedding LayerNorm (`layernorm`) and the layers (`layer_{i}`).

    `__call__` takes HF's input names (already-embedded `query_embeds`, which may be [queries; text]
    with `query_length` queries) and returns last_hidden_state, pooler_output (position 0, as HF) and,
    on request, hidden_states (the normalised embeddings first). `run` is the general entry point
    (any additive bias, cross-attention memory, KV prefix) that QFormer uses.
    """
    config: QFormerConfig

    @nn.compact
    def run(self, embeds, bias=None, query_length: int = 0, memory=None, memory_bias=None,
            past_kv: Optional[KVCache] = None, fuse: Optional[FuseHook] = None, carry=None, memory_index=None,
            last_rows: Optional[int] = None, input_index=None) -> EncoderOutput:
        """All layers; `fuse` (if given) rewrites the query positions after each cross-attention layer.

        `memory_index` (B,): hidden row b cross-attends to memory row memory_index[b] (see QFormerLayer).
        `last_rows`: the last layer computes only the first `last_rows` positions, so `last` and the last
        of `states` have that many (the ITM query outputs, the ITC [CLS], the ITG positions that predict a
        token); the other layers and the cache are unchanged.
        `input_index` (P,): embeds and bias hold distinct inputs and pair p starts from input
        input_index[p]; the first layer's self-attention and text FFN then run once per distinct input
        (QFormerLayer's row_index), everything after per pair. Requires no past_kv.
        """
        c = self.config
        if past_kv is not None and len(past_kv) != c.num_hidden_layers:
            raise ValueError(f"past_kv has {len(past_kv)} layers, the Q-Former {c.num_hidden_layers}")
        if last_rows is not None and not 0 < last_rows <= embeds.shape[1]:
            raise ValueError(f"last_rows {last_rows} must be in [1, {embeds.shape[1]}] (the input length)")
        if last_rows is not None and fuse is not None and last_rows < query_length:
            raise ValueError(f"last_rows {last_rows} would drop queries ({query_length}) that the fuse hook reads")
        if input_index is not None and past_kv is not None:
            raise ValueError("input_index (distinct inputs shared by pairs) cannot be combined with past_kv")
        x = layers.dropout(self, c.hidden_dropout_prob,
                           layers.layer_norm(c.layer_norm_eps, "layernorm")(embeds).astype(c.dtype))
        layer_cls = layers.remat_module(QFormerLayer, c.remat, static_argnums=(3, 8))
        states, cache = [x if input_index is None else batch_rows.take_rows(x, input_index)], []
        scanned = self._scanned_layers(fuse is None)
        i = 0
        while i < c.num_hidden_layers:
            if scanned and i == scanned.start:
                if input_index is not None:  # the scan runs layer 0 per pair too: one body for every layer
                    x = states[0]
                    bias = bias if bias is None or bias.shape[0] == 1 else batch_rows.take_rows(bias, input_index)
                    input_index = None
                x, scan_states, scan_cache = self._scan(scanned, x, bias, query_length, memory, memory_bias,
                                                        past_kv, memory_index)
                if last_rows is not None and scanned.stop == c.num_hidden_layers:  # all rows ran: keep those read
                    x = x[:, :last_rows]
                    scan_states[-1] = x
                states += scan_states
                cache += scan_cache
                i = scanned.stop
                continue
            rows = last_rows if i == c.num_hidden_layers - 1 else None
            row_index = input_index if i == 0 else None
            x, kv = layer_cls(c, c.has_cross_attention(i), name=f"layer_{i}")(
                x, bias, query_length, memory, memory_bias, None if past_kv is None else past_kv[i], memory_index,
                rows, row_index)
            if row_index is not None and bias is not None and bias.shape[0] > 1:
                bias = batch_rows.take_rows(bias, row_index)  # later layers run per pair
            if fuse is not None and query_length > 0 and c.has_cross_attention(i):
                queries, carry = fuse(i, x[:, :query_length], carry)
                x = jnp.concatenate([queries.astype(x.dtype), x[:, query_length:]], axis=1)
            states.append(x)
            cache.append(kv)
            i += 1
        return EncoderOutput(x, tuple(states), tuple(cache), carry)

    def _scanned_layers(self, no_hook: bool) -> range:
        """The layers `run` scans (an empty range: none): the whole periods of cross_attention_freq layers from
        layer 0 (each starts with a cross-attention layer), at least two of them; layers past the last whole
        period stay unrolled, and so does every layer when a fuse hook (per-layer fusion) runs between them.
        Inside the scan every layer is alike: a pass whose first layer's inputs are shared by pairs
        (input_index) runs that layer per pair, and one that reads fewer rows of the last layer (last_rows)
        computes all of them and keeps those: the same values, a little more work, one compiled body."""
        c = self.config
        if not (c.scan_layers and no_hook) or self.is_initializing():
            return range(0)
        period = c.cross_attention_freq
        count = c.num_hidden_layers // period
        return range(0, count * period) if count >= 2 else range(0)

    def _scan(self, scanned: range, x, bias, query_length: int, memory, memory_bias, past_kv, memory_index):
        """Layers `scanned` as one lax.scan over their periods, each period's layers applied in order with
        their own params (stacked from layer_{i}, as layers.scan_blocks stacks a tower's blocks) and, when
        the pass has a "dropout" rng, a dropout key of their own. Returns (x, per-layer states, per-layer
        (keys, values))."""
        c = self.config
        period = c.cross_attention_freq
        starts = list(range(scanned.start, scanned.stop, period))
        params = self.variables["params"]
        templates = [QFormerLayer(c, c.has_cross_attention(j), parent=None) for j in range(period)]
        stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
        xs = {"params": [stack([params[f"layer_{s + j}"] for s in starts]) for j in range(period)]}
        if past_kv is not None:
            xs["past_kv"] = [stack([past_kv[s + j] for s in starts]) for j in range(period)]
        if self.has_rng("dropout"):
            xs["dropout"] = jax.random.split(self.make_rng("dropout"), (len(starts), period))

        def body(carry, step):
            outputs = []
            for j, template in enumerate(templates):
                rngs = {"dropout": step["dropout"][j]} if "dropout" in step else {}
                carry, kv = template.apply({"params": step["params"][j]}, carry, bias, query_length, memory,
                                           memory_bias, step["past_kv"][j] if "past_kv" in step else None,
                                           memory_index, rngs=rngs)
                outputs.append((carry, kv))
            return carry, outputs

        if c.remat:
            body = jax.checkpoint(body, policy=layers.checkpoint_policy(c.remat), prevent_cse=False)
        x, outputs = jax.lax.scan(body, x, xs)
        per_layer = [jax.tree.map(lambda leaf: leaf[n], outputs[j]) for n in range(len(starts)) for j in range(period)]
        return x, [state for state, _ in per_layer], [kv for _, kv in per_layer]

    def __call__(self, query_embeds, query_length: Optional[int] = None, attention_mask=None,
                 encoder_hidden_states=None, encoder_attention_mask=None, output_hidden_states: bool = False):
        query_length = query_embeds.shape[1] if query_length is None else query_length
        bias = None if attention_mask is None else attention_bias(padding_mask(attention_mask))
        memory_bias = None if encoder_attention_mask is None else attention_bias(padding_mask(encoder_attention_mask))
        result = self.run(query_embeds, bias, query_length, encoder_hidden_states, memory_bias)
        out = {"last_hidden_state": result.last, "pooler_output": result.last[:, 0]}
        if output_hidden_states:
            out["hidden_states"] = result.states
        return out


class TextEmbeddings(nn.Module):
    """word_embeddings + position_embeddings (positions 0..T-1); no LayerNorm here (see QFormerEncoder)."""
    config: QFormerConfig

    def setup(self):
        c = self.config
        self.word_embeddings = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=jnp.float32,
                                        embedding_init=layers.normal_init(("vocab", "embed")))
        self.position_embeddings = nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=c.dtype,
                                            param_dtype=jnp.float32, embedding_init=layers.normal_init((None, "embed")))

    def __call__(self, input_ids):
        length = input_ids.shape[1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"text length {length} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        return self.word_embeddings(input_ids) + self.position_embeddings(jnp.arange(length))[None]

    def attend(self, x):
        """x @ word_embeddings.T: the tied LM decoder."""
        return self.word_embeddings.attend(x)


class LMHead(nn.Module):
    """BERT `cls.predictions`: dense, activation, layernorm, then the tied decoder plus `bias`."""
    config: QFormerConfig

    @nn.compact
    def __call__(self, hidden, decoder):
        c = self.config
        h = layers.dense(c.hidden_size, ("embed", None), "dense", c.dtype)(hidden)
        h = layers.layer_norm(c.layer_norm_eps, "layernorm")(layers.activation(c.hidden_act)(h)).astype(c.dtype)
        bias = self.param("bias", layers.zeros_init(("vocab",)), (c.vocab_size,), jnp.float32)
        return decoder(h) + bias.astype(c.dtype)


class QFormer(nn.Module):
    """The stage-1 Q-Former. Image features are the frozen ViT output *before* ln_vision (applied here).

    Param tree: query_tokens (Q, H), embeddings/{word,position}_embeddings, qformer/{layernorm, layer_i},
    ln_vision, vision_proj, text_proj, itm_head, temp (scalar), lm_head/{dense, layernorm, bias}.
    `image_mask` arguments are optional (B, N) 1/0 masks over the image tokens.
    """
    config: QFormerConfig

    def setup(self):
        c = self.config
        self.query_tokens = self.param("query_tokens", layers.normal_init((None, "embed")),
                                       (c.num_query_tokens, c.hidden_size))
        self.embeddings = TextEmbeddings(c)
        self.qformer = QFormerEncoder(c)
        self.ln_vision = layers.layer_norm(c.vision_layer_norm_eps, "ln_vision")
        self.vision_proj = layers.dense(c.embed_dim, ("embed", None), "vision_proj", c.dtype)
        self.text_proj = layers.dense(c.embed_dim, ("embed", None), "text_proj", c.dtype)
        self.itm_head = layers.dense(2, ("embed", None), "itm_head", c.dtype)
        self.temp = self.param("temp", nn.with_logical_partitioning(nn.initializers.constant(TEMP_INIT), ()), ())
        self.lm_head = LMHead(c)

    # -- pieces -----------------------------------------------------------------------------------
    def queries(self, batch: int, query_embeds=None):
        """The learnable query tokens broadcast to (batch, Q, H), or the given query_embeds."""
        if query_embeds is None:
            query_embeds = jnp.broadcast_to(self.query_tokens, (batch, *self.query_tokens.shape))
        return query_embeds.astype(self.config.dtype)

    def normalize_image(self, image_feats):
        """ln_vision over the frozen ViT features (float32 statistics)."""
        if image_feats.shape[-1] != self.config.encoder_width:
            raise ValueError(f"image features have width {image_feats.shape[-1]}, the Q-Former's "
                             f"encoder_width is {self.config.encoder_width}")
        return self.ln_vision(image_feats).astype(self.config.dtype)

    def _memory(self, image_feats, image_mask, image_index=None):
        """ln_vision(image_feats) and the cross-attention bias, the bias gathered per row by image_index."""
        bias = None if image_mask is None else attention_bias(padding_mask(image_mask))
        if bias is not None and image_index is not None:
            bias = batch_rows.take_rows(bias, image_index)
        return self.normalize_image(image_feats), bias

    @staticmethod
    def _text_mask(input_ids, attention_mask):
        return jnp.ones(input_ids.shape, jnp.float32) if attention_mask is None else attention_mask

    # -- the BLIP-2 passes ------------------------------------------------------------------------
    def query_pass(self, image_feats, image_mask=None, query_embeds=None, fuse: Optional[FuseHook] = None,
                   carry=None) -> EncoderOutput:
        """Queries alone, cross-attending to ln_vision(image_feats), with an optional fuse hook."""
        queries = self.queries(image_feats.shape[0], query_embeds)
        memory, memory_bias = self._memory(image_feats, image_mask)
        return self.qformer.run(queries, None, queries.shape[1], memory, memory_bias, fuse=fuse, carry=carry)

    def encode_image_queries(self, image_feats, image_mask=None, query_embeds=None, return_cache: bool = False):
        """Queries alone, cross-attending to ln_vision(image_feats): (B, Q, H) [, per-layer query (k, v)]."""
        result = self.query_pass(image_feats, image_mask, query_embeds)
        return (result.last, result.cache) if return_cache else result.last

    def encode_text(self, input_ids, attention_mask=None, positions: Optional[int] = None):
        """Text alone, bidirectional over non-pad tokens (ITC text side; BertModel's function): (B, T, H).

        `positions`: the last layer computes only the first that many positions (1: the [CLS] that ITC
        reads), so the result is (B, positions, H).
        """
        embeds = self.embeddings(input_ids)
        bias = attention_bias(bidirectional_mask(self._text_mask(input_ids, attention_mask)))
        return self.qformer.run(embeds, bias, 0, last_rows=positions).last

    def joint_pass(self, image_feats, input_ids, attention_mask=None, image_mask=None, query_embeds=None,
                   fuse: Optional[FuseHook] = None, carry=None, image_index=None, text_index=None,
                   queries_only: bool = False) -> EncoderOutput:
        """ITM pass: [queries; text] with the bidirectional mask, queries cross-attend; optional fuse hook.

        `image_index` (P,): pair p shows image image_index[p] of image_feats (and image_mask), whose
        cross-attention keys / values are then projected once per image instead of once per pair.
        `text_index` (P,): pair p shows text text_index[p] of input_ids / attention_mask (and
        query_embeds); the first layer's text-only work then runs once per text (QFormerEncoder.run's
        input_index). Without an index, row p of that input is pair p's.
        `queries_only`: the last layer computes the query positions only (all that ITM reads).
        """
        queries = self.queries(input_ids.shape[0], query_embeds)
        embeds = jnp.concatenate([queries, self.embeddings(input_ids)], axis=1)
        bias = attention_bias(bidirectional_mask(self._text_mask(input_ids, attention_mask), queries.shape[1]))
        memory, memory_bias = self._memory(image_feats, image_mask, image_index)
        return self.qformer.run(embeds, bias, queries.shape[1], memory, memory_bias, fuse=fuse, carry=carry,
                                memory_index=image_index, last_rows=queries.shape[1] if queries_only else None,
                                input_index=text_index)

    def encode_joint(self, image_feats, input_ids, attention_mask=None, image_mask=None, query_embeds=None):
        """ITM pass: (B, Q+T, H)."""
        return self.joint_pass(image_feats, input_ids, attention_mask, image_mask, query_embeds).last

    def encode_unilm(self, image_feats, input_ids, attention_mask=None, image_mask=None, query_embeds=None,
                     positions: Optional[int] = None):
        """ITG pass in one go: [queries; text] with the UniLM mask: (B, Q+T, H), or (B, Q+positions, H).

        The query rows equal `encode_image_queries` (they see no text); text rows are causal.
        """
        queries = self.queries(input_ids.shape[0], query_embeds)
        embeds = jnp.concatenate([queries, self.embeddings(input_ids)], axis=1)
        bias = attention_bias(unilm_mask(self._text_mask(input_ids, attention_mask), queries.shape[1]))
        memory, memory_bias = self._memory(image_feats, image_mask)
        last_rows = None if positions is None else queries.shape[1] + positions
        return self.qformer.run(embeds, bias, queries.shape[1], memory, memory_bias, last_rows=last_rows).last

    def decoder_hidden(self, input_ids, attention_mask=None, image_feats=None, image_mask=None,
                       query_cache: Optional[KVCache] = None, query_embeds=None, positions: Optional[int] = None):
        """The ITG text states (B, T, H) that `decode_text` feeds to the LM head.

        Either `query_cache` (from `encode_image_queries(..., return_cache=True)`, LAVIS's
        past_key_values: a text-only pass prefixed with the cached query keys / values) or `image_feats`
        (one joint UniLM pass); both give the same states. `positions`: only the first that many text
        positions (B, positions, H) (T - 1: the ones that predict a next token).
        """
        mask = self._text_mask(input_ids, attention_mask)
        if query_cache is not None:
            num_queries = query_cache[0][0].shape[1]
            bias = attention_bias(prefix_causal_mask(mask, num_queries))
            return self.qformer.run(self.embeddings(input_ids), bias, 0, past_kv=query_cache,
                                    last_rows=positions).last
        if image_feats is not None:
            hidden = self.encode_unilm(image_feats, input_ids, mask, image_mask, query_embeds, positions)
            return hidden[:, hidden.shape[1] - (input_ids.shape[1] if positions is None else positions):]
        raise ValueError("decoder_hidden / decode_text need either query_cache or image_feats")

    def decode_text(self, input_ids, attention_mask=None, image_feats=None, image_mask=None,
                    query_cache: Optional[KVCache] = None, query_embeds=None):
        """ITG LM logits (B, T, vocab) for decoder input ids ([DEC] first), one per text position.

        The states come from `decoder_hidden` (cached query keys / values or one joint UniLM pass; both
        give the same logits). Logits are not shifted.
        """
        return self.lm_logits(self.decoder_hidden(input_ids, attention_mask, image_feats, image_mask, query_cache,
                                                  query_embeds))

    # -- heads --------------------------------------------------------------------------------------
    def lm_logits(self, hidden):
        return self.lm_head(hidden, self.embeddings.attend)

    def image_embeddings(self, query_hidden):
        """l2norm(vision_proj(Z)) per query: (B, Q, embed_dim), float32."""
        return l2_normalize(self.vision_proj(query_hidden))

    def text_embeddings(self, text_hidden):
        """l2norm(text_proj(CLS)): (B, embed_dim), float32."""
        return l2_normalize(self.text_proj(text_hidden[:, 0]))

    def itm_logits(self, image_feats, input_ids, attention_mask=None, image_mask=None, query_embeds=None):
        """itm_head over the query outputs of the ITM pass, averaged over queries: (B, 2), float32."""
        queries = self.joint_pass(image_feats, input_ids, attention_mask, image_mask, query_embeds,
                                  queries_only=True).last
        return self.itm_head(queries).astype(jnp.float32).mean(axis=1)

    def temperature(self):
        """temp clipped to BLIP's [0.001, 0.5] (TEMP_RANGE). BLIP clamps the parameter itself in place
        before each forward, so its gradient never vanishes at the bounds; the train step does the same
        after each update (`clamp_temperature`), so this clip is a no-op there."""
        return jnp.clip(self.temp, *TEMP_RANGE)

    # -- HF-compatible / init entry point -------------------------------------------------------------
    def __call__(self, input_ids=None, attention_mask=None, image_feats=None, image_mask=None,
                 output_hidden_states: bool = False):
        """Text: BertModel-like outputs of the text-only pass (last_hidden_state, hidden_states, logits =
        the LM head on it, text_embeds). Image: query_hidden_state, image_embeds. Both: itm_logits of the
        given (paired) inputs and itg_logits of `decode_text`. Calling it with both initialises every param.
        """
        out = {}
        if input_ids is not None:
            mask = self._text_mask(input_ids, attention_mask)
            bias = attention_bias(bidirectional_mask(mask))
            last, states, _, _ = self.qformer.run(self.embeddings(input_ids), bias, 0)
            out.update(last_hidden_state=last, logits=self.lm_logits(last), text_embeds=self.text_embeddings(last))
            if output_hidden_states:
                out["hidden_states"] = states
        if image_feats is not None:
            query_hidden = self.encode_image_queries(image_feats, image_mask)
            out.update(query_hidden_state=query_hidden, image_embeds=self.image_embeddings(query_hidden))
        if input_ids is not None and image_feats is not None:
            out["itm_logits"] = self.itm_logits(image_feats, input_ids, attention_mask, image_mask)
            out["itg_logits"] = self.decode_text(input_ids, attention_mask, image_feats, image_mask)
            out["temp"] = self.temperature()
        return out


# ----------------------------------------------------------------------------------------------
# Configs from HF config.json dicts
# ----------------------------------------------------------------------------------------------

def _common(hf: dict) -> dict:
    return dict(
        hidden_size=hf.get("hidden_size", 768),
        num_hidden_layers=hf.get("num_hidden_layers", 12),
        num_attention_heads=hf.get("num_attention_heads", 12),
        intermediate_size=hf.get("intermediate_size", 3072),
        hidden_act=hf.get("hidden_act", "gelu"),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        pad_token_id=hf.get("pad_token_id") or 0,
        hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),  # BertConfig's / Blip2QFormerConfig's default
        attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
    )


def config_from_hf(hf: dict, **overrides) -> QFormerConfig:
    """A QFormerConfig from an HF Blip2QFormerConfig or BertConfig dict (config.json).

    BERT: the vocabulary grows by one row for [DEC] (dec_token_id = BERT's vocab_size), the text FFN
    exists, and the Q-Former-only fields (num_query_tokens, cross_attention_freq, encoder_width,
    embed_dim) keep their BLIP-2 defaults unless overridden.
    """
    model_type = hf.get("model_type", "")
    fields = _common(hf)
    if model_type == "bert":
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BertConfig.position_embedding_type={hf['position_embedding_type']!r} is not "
                             "supported (the Q-Former uses absolute positions)")
        if not hf.get("tie_word_embeddings", True):
            raise ValueError("BertConfig.tie_word_embeddings=False is not supported: the Q-Former's LM "
                             "decoder is tied to the word embeddings")
        vocab = hf.get("vocab_size", 30522)
        fields.update(vocab_size=vocab + 1, dec_token_id=vocab, text_ffn=True)
    elif model_type in ("blip_2_qformer", "blip-2-qformer"):
        vocab = hf.get("vocab_size", 30522)
        fields.update(vocab_size=vocab, dec_token_id=vocab - 1,
                      cross_attention_freq=hf.get("cross_attention_frequency", 2),
                      encoder_width=hf.get("encoder_hidden_size", 1408),
                      text_ffn=bool(hf.get("use_qformer_text_input", False)))
    else:
        raise ValueError(f"cannot build a Q-Former config from model_type {model_type!r} "
                         "(expected 'bert' or 'blip_2_qformer')")
    fields.update(overrides)
    return QFormerConfig(**fields)
