"""Stage2Model: the stage-1 model's queries Z' -> one Linear -> a frozen decoder LLM (LAVIS `blip2_opt.py`).

inputs_embeds = [llm_proj(Z'); embed(tokens)], attention mask = [ones(Q); text mask]; the forward
returns the LLM's logits over [queries; text], which `xformer_jax.train.objective` scores with HF's
causal-LM loss (labels -100 on the Q query positions; the data pipeline already put -100 on the
prompt, its bos and padding). Stage2Model extends Stage1Model, so its param tree keeps stage 1's names
(vision, mae, qformer, fusion) plus `llm` and `llm_proj`: a stage-1 checkpoint hands over directly.
Only the Q-Former's query path runs (as in LAVIS's blip2_opt), so its text-only parts are not in
this tree. The towers and the LLM are frozen; Q-Former, fusion and llm_proj train. MAE masking has
its own ratios after stage 1: `mask_ratio` while training stage 2, `inference_mask_ratio` for prompts
and generation (both 0 by default: the paper's MAE sees the whole image after stage 1). The
reconstruction loss is off unless `reconstruction_weight` > 0, which needs `mask_ratio` > 0 (the loss
is over masked patches).
"""
import dataclasses
from typing import Optional, Union

import flax.linen as nn
import jax.numpy as jnp

from xformer_jax.models import layers, llama, opt, xformer

LLMConfig = Union[opt.OPTConfig, llama.LlamaConfig]


@dataclasses.dataclass(frozen=True)
class Stage2Config(xformer.Stage1Config):
    llm: Optional[LLMConfig] = None
    reconstruction_weight: float = 0.0
    mask_ratio: float = 0.0  # MAE masking while training stage 2 (config.model.stage2_mask_ratio)

    def __post_init__(self):
        super().__post_init__()
        if self.llm is None:
            raise ValueError("stage 2 needs an LLM (config.model.llm)")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"config.model.stage2_mask_ratio={self.mask_ratio} must be in [0, 1)")
        if self.reconstructs and self.mask_ratio == 0.0:
            raise ValueError(f"config.model.stage2_reconstruction_weight={self.reconstruction_weight} needs "
                             "config.model.stage2_mask_ratio > 0: the reconstruction loss is over masked patches")

    @property
    def reconstructs(self) -> bool:
        """Whether stage 2 trains with the reconstruction loss."""
        return self.reconstruction_weight > 0 and self.fusion.reconstructs

    @property
    def frozen_collections(self) -> tuple:
        return (*super().frozen_collections, "llm")


def llm_module(config: LLMConfig, name: str = "llm") -> nn.Module:
    cls = opt.OPTForCausalLM if isinstance(config, opt.OPTConfig) else llama.LlamaForCausalLM
    return cls(config, name=name)


class Stage2Model(xformer.Stage1Model):
    config: Stage2Config

    def setup(self):
        super().setup()
        c = self.config
        self.llm = llm_module(c.llm)
        width = c.llm.word_embed_proj_dim or c.llm.hidden_size
        self.llm_proj = layers.dense(width, ("embed", "mlp"), "llm_proj", c.qformer.dtype)

    def prefix(self, pixel_values, mae_pixel_values=None, mask_rng=None, training: bool = False):
        """The projected queries (B, Q, LLM width) and, when training with reconstruction, what its loss
        reads ({"rec_pred", "rec_mask"}, else empty).

        MAE masks at `mask_ratio` while training, at `inference_mask_ratio` otherwise."""
        c = self.config
        ratio = c.mask_ratio if training else c.inference_mask_ratio
        images = self.encode_images(pixel_values, mae_pixel_values, mask_rng, mask_ratio=ratio)
        queries, _, mae_out = self.query_states(images)
        rec = {}
        if training and c.reconstructs:
            rec = {"rec_pred": self.reconstruct(mae_out, images), "rec_mask": images["mae_mask"]}
        return self.llm_proj(queries), rec

    def inputs(self, prefix, input_ids, attention_mask):
        embeds = jnp.concatenate([prefix.astype(jnp.float32), self.llm.embed(input_ids).astype(jnp.float32)], axis=1)
        mask = jnp.concatenate([jnp.ones(prefix.shape[:2], jnp.int32), attention_mask.astype(jnp.int32)], axis=1)
        return embeds, mask

    def __call__(self, pixel_values, input_ids, attention_mask, mae_pixel_values=None, mask_rng=None):
        """The stage-2 forward: {"logits": (B, Q + T, V) over [queries; text][, "rec_pred", "rec_mask"]}."""
        prefix, rec = self.prefix(pixel_values, mae_pixel_values, mask_rng, training=True)
        embeds, mask = self.inputs(prefix, input_ids, attention_mask)
        return {"logits": self.llm(inputs_embeds=embeds, attention_mask=mask)["logits"], **rec}

    def prompt_embeddings(self, pixel_values, input_ids, attention_mask, mae_pixel_values=None):
        """(inputs_embeds, attention mask) for generation: [queries; prompt tokens], MAE at the inference ratio."""
        prefix, _ = self.prefix(pixel_values, mae_pixel_values)
        return self.inputs(prefix, input_ids, attention_mask)
