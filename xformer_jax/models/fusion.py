"""How the MAE features M reach the queries: X-Former's dual cross-attention and the paper's baselines.

  blip2        no MAE: the Q-Former reads CLIP only.
  concat       MAE tokens, projected to the CLIP width, are appended to the CLIP tokens as the
               Q-Former's cross-attention memory.
  early_xattn  after every CLIP cross-attention layer the queries also cross-attend to M.
  xformer      the dual cross-attention (the X-Former paper): M' = CrossAttn(M <- Z) + FFN keeps the MAE
               width so the frozen MAE decoder can reconstruct the image from it, then
               Z' = CrossAttn(Z <- M') + FFN. `placement` puts one block after the Q-Former
               (default, ~20M params at ViT-g / MAE-H / BERT-base) or one after every CLIP
               cross-attention layer, M' flowing from block to block.
The blocks are BERT-style (post-LN attention output, then a post-LN FFN), built from the Q-Former's
own attention and FFN modules so that keys / values project from the other stream's width.

M' enters the frozen MAE decoder, which was trained on the MAE encoder's output M. A post-LN block
replaces M by a freshly normalised stream the decoder has never seen (at initialisation it fills every
masked patch with grey), so by default (`mae_gate`) the MAE branch is residual and gated:
M' = M + g * block(M <- Z), with the per-channel gate g initialised to zero. At step 0 M' = M exactly,
the reconstruction loss starts at the frozen MAE's own, and it falls only as far as the queries add
information. The paper writes M' = CrossAttn(M <- Z) + FFN without saying how M' stays readable by the
decoder; `mae_gate=False` is that plain block.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xformer_jax.models import layers
from xformer_jax.models.qformer import Intermediate, Output, QFormerAttention

FUSIONS = ("blip2", "concat", "early_xattn", "xformer")
PLACEMENTS = ("after_qformer", "per_xattn_layer")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    kind: str = "xformer"
    placement: str = "after_qformer"
    mask_ratio: float = 0.5  # MAE masking for the xformer branch during stage 1 (0 at stage 2 / inference)
    query_heads: int = 12  # heads of the blocks at the Q-Former width
    mae_heads: int = 16  # heads of the block at the MAE width (must divide it)
    intermediate_size: int = 3072  # FFN width of every fusion block
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    mae_gate: bool = True  # M' = M + g * block(M <- Z), g zero-initialised (see the module docstring)
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.kind not in FUSIONS:
            raise ValueError(f"fusion.kind {self.kind!r} is not one of {FUSIONS}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"fusion.placement {self.placement!r} is not one of {PLACEMENTS}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"fusion.mask_ratio {self.mask_ratio} must be in [0, 1)")

    @property
    def uses_mae(self) -> bool:
        return self.kind != "blip2"

    @property
    def reconstructs(self) -> bool:
        return self.kind == "xformer"


class CrossBlock(nn.Module):
    """x attends to memory (any width), then an FFN; both post-LN. Output keeps x's width."""
    num_heads: int
    intermediate_size: int
    act: str
    eps: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, memory):
        x, _ = QFormerAttention(self.num_heads, self.eps, self.dtype, name="crossattention")(x, memory=memory)
        h = Intermediate(self.intermediate_size, self.act, self.dtype, name="intermediate")(x)
        return Output(x.shape[-1], self.eps, "mlp", self.dtype, name="output")(h, x)


def cross_block(config: FusionConfig, heads: int, name: str) -> CrossBlock:
    return CrossBlock(heads, config.intermediate_size, config.hidden_act, config.layer_norm_eps, config.dtype,
                      name=name)


class DualCrossAttention(nn.Module):
    """(Z, M) -> (Z', M'): M' = block(M <- Z) at the MAE width, Z' = block(Z <- M') at the query width."""
    config: FusionConfig

    @nn.compact
    def __call__(self, queries, mae_states):
        enriched = cross_block(self.config, self.config.mae_heads, "mae_block")(mae_states, queries)
        if self.config.mae_gate:
            gate = self.param("mae_gate", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                              (mae_states.shape[-1],))
            enriched = mae_states + gate.astype(enriched.dtype) * enriched
        mae_states = enriched
        queries = cross_block(self.config, self.config.query_heads, "query_block")(queries, mae_states)
        return queries, mae_states


class MAEToCLIP(nn.Module):
    """concat: MAE tokens projected to the CLIP width, to sit beside the CLIP tokens."""
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mae_states):
        return layers.dense(self.width, ("mlp", "embed"), "proj", self.dtype)(mae_states)
