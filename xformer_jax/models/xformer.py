"""Stage1Model: frozen CLIP (or EVA) and MAE towers + the Q-Former + a fusion variant.

Its forward returns what the stage-1 losses read (features, logits, reconstructions); the objective
that turns them into ITC, ITM, ITG and reconstruction terms is `xformer_jax.train.objective`.

Param tree: vision (frozen), mae (frozen, absent for blip2), qformer, and the fusion's own params
(dual / duals_{k} for xformer, mae_xattn_{k} for early_xattn, mae_to_clip for concat). The towers'
outputs pass through stop_gradient; the frozen MAE *decoder* stays differentiable with respect to its
input M', since the reconstruction loss must train the fusion through it.

ITG's context (`itg_context`): "image_pass" (default) reads the per-layer query keys / values of the
image pass (LAVIS's past_key_values). With per-layer placements (early_xattn, xformer per_xattn_layer)
those states already carry MAE information; with the default after_qformer placement Z' then reaches
ITC, ITM and, in stage 2, the LLM, but not ITG, which sends no gradient into the dual block. "fused"
(xformer after_qformer only) runs ITG as one UniLM pass whose query prefix is Z' instead of the learned
queries, so the text decoder attends to the fused queries and ITG trains the dual block too, at the
cost of one more query pass per step. The default stays LAVIS's until the mini-paper comparison
(benchmarks/mini_paper.py, variant xformer_itg_fused) shows the other is better: the paper says only
that Z' is "optimized using VL objectives", which ITC and ITM already do.
"""
import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xformer_jax.models import batch_rows
from xformer_jax.models import fusion as fusion_lib
from xformer_jax.models import mae as mae_lib
from xformer_jax.models import matching
from xformer_jax.models import qformer as qformer_lib
from xformer_jax.models import vit

FROZEN_COLLECTIONS = ("vision", "mae")
ITG_CONTEXTS = ("image_pass", "fused")


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    vision: vit.VisionConfig
    qformer: qformer_lib.QFormerConfig
    fusion: fusion_lib.FusionConfig = fusion_lib.FusionConfig()
    mae: Optional[mae_lib.MAEConfig] = None
    itc_label_smoothing: float = 0.1
    itg_label_smoothing: float = 0.1
    # ITM pairs read each image's cross-attention keys / values projected once (not once per pair): faster
    # on one device, but on a data-sharded mesh it all-gathered every layer's keys / values (paper stage 1,
    # 32 chips: 42 GiB per device with it, 23.6 without, measured before the pairs' rows were picked by
    # batch_rows.take_rows, which gathers no global batch; not measured since), so off by default.
    itm_shared_image_kv: bool = False
    # MAE masking where no loss needs it (retrieval, stage-2 prompts, generation): 0 by default, as the
    # paper's MAE sees the whole image once stage 1 is over (the X-Former paper).
    inference_mask_ratio: float = 0.0
    itg_context: str = "image_pass"  # what ITG's text decoder attends to (module docstring)

    @property
    def frozen_collections(self) -> tuple:
        """Top-level params that never train (and have no optimizer state)."""
        return FROZEN_COLLECTIONS

    def __post_init__(self):
        if self.fusion.uses_mae and self.mae is None:
            raise ValueError(f"fusion.kind={self.fusion.kind!r} needs an MAE tower (config.model.mae)")
        if self.itg_context not in ITG_CONTEXTS:
            raise ValueError(f"config.model.itg_context={self.itg_context!r} is not one of {ITG_CONTEXTS}")
        if self.itg_context == "fused" and (self.fusion.kind, self.fusion.placement) != ("xformer", "after_qformer"):
            raise ValueError("config.model.itg_context='fused' needs fusion.kind='xformer' with placement "
                             f"'after_qformer' (got {self.fusion.kind!r}, {self.fusion.placement!r}): the other "
                             "variants have no fused queries after the Q-Former")
        if not 0.0 <= self.inference_mask_ratio < 1.0:
            raise ValueError(f"config.model.inference_mask_ratio={self.inference_mask_ratio} must be in [0, 1)")
        if self.qformer.encoder_width != self.vision.hidden_size:
            raise ValueError(f"qformer.encoder_width {self.qformer.encoder_width} != vision.hidden_size "
                             f"{self.vision.hidden_size}")


def split_params(params: dict, frozen_collections: tuple = FROZEN_COLLECTIONS) -> tuple[dict, dict]:
    """(trainable, frozen): the towers (and at stage 2 the LLM) are frozen; everything else trains."""
    frozen = {k: v for k, v in params.items() if k in frozen_collections}
    return {k: v for k, v in params.items() if k not in frozen_collections}, frozen


class Stage1Model(nn.Module):
    config: Stage1Config

    def setup(self):
        c = self.config
        self.vision = vit.VisionTransformer(c.vision)
        self.qformer = qformer_lib.QFormer(c.qformer)
        if c.fusion.uses_mae:
            self.mae = mae_lib.MAEForPreTraining(c.mae)
        xattn_layers = [i for i in range(c.qformer.num_hidden_layers) if c.qformer.has_cross_attention(i)]
        self._slot = {layer: k for k, layer in enumerate(xattn_layers)}
        if c.fusion.kind == "xformer" and c.fusion.placement == "after_qformer":
            self.dual = fusion_lib.DualCrossAttention(c.fusion)
        elif c.fusion.kind == "xformer":
            self.duals = [fusion_lib.DualCrossAttention(c.fusion) for _ in xattn_layers]
        elif c.fusion.kind == "early_xattn":
            self.mae_xattn = [fusion_lib.cross_block(c.fusion, c.fusion.query_heads, None) for _ in xattn_layers]
        elif c.fusion.kind == "concat":
            self.mae_to_clip = fusion_lib.MAEToCLIP(c.vision.hidden_size, c.vision.dtype)

    # -- frozen towers ----------------------------------------------------------------------------
    def encode_images(self, pixel_values, mae_pixel_values=None, mask_rng=None, mask_ratio: Optional[float] = None):
        """CLIP features (B, N, W) and, when the variant uses MAE, the masked MAE encoder output."""
        clip = jax.lax.stop_gradient(self.vision.features(pixel_values))
        if not self.config.fusion.uses_mae:
            return {"clip": clip}
        ratio = self.default_mask_ratio() if mask_ratio is None else mask_ratio
        batch, patches = pixel_values.shape[0], self.config.mae.num_patches
        noise = mae_lib.identity_noise(batch, patches) if ratio == 0.0 or mask_rng is None else None
        encoded = self.mae.encode(mae_pixel_values, noise=noise, mask_rng=mask_rng, mask_ratio=ratio)
        return {"clip": clip, "mae": jax.lax.stop_gradient(encoded["last_hidden_state"]),
                "mae_mask": encoded["mask"], "ids_restore": encoded["ids_restore"]}

    def default_mask_ratio(self) -> float:
        return self.config.fusion.mask_ratio if self.config.fusion.reconstructs else 0.0

    # -- fusion -----------------------------------------------------------------------------------
    def _memory(self, clip, mae_states):
        if self.config.fusion.kind == "concat":
            return jnp.concatenate([clip, self.mae_to_clip(mae_states).astype(clip.dtype)], axis=1)
        return clip

    def _fuse_hook(self):
        kind, placement = self.config.fusion.kind, self.config.fusion.placement
        if kind == "early_xattn":
            return lambda layer, q, m: (self.mae_xattn[self._slot[layer]](q, m), m)
        if kind == "xformer" and placement == "per_xattn_layer":
            return lambda layer, q, m: self.duals[self._slot[layer]](q, m)
        return None

    def _finish(self, result: qformer_lib.EncoderOutput, num_queries: int, mae_states):
        """Query outputs after fusion, and M' (the MAE stream the decoder reconstructs from)."""
        queries, mae_out = result.last[:, :num_queries], result.carry
        if self.config.fusion.kind == "xformer" and self.config.fusion.placement == "after_qformer":
            queries, mae_out = self.dual(queries, mae_states)
        return queries, mae_out

    def query_states(self, images: dict):
        """The image pass: (Z' (B, Q, H), per-layer query cache, M' or None)."""
        mae_states = images.get("mae")
        result = self.qformer.query_pass(self._memory(images["clip"], mae_states), fuse=self._fuse_hook(),
                                         carry=mae_states)
        queries, mae_out = self._finish(result, self.config.qformer.num_query_tokens, mae_states)
        return queries, result.cache, mae_out

    def itm_logits(self, clip, mae_states, input_ids, attention_mask, image_index=None, text_index=None):
        """ITM pass over (image, text) pairs: (P, 2) float32, mean over the fused query outputs.

        Without `image_index` row p of clip / mae_states is pair p's image; with it (P,), clip / mae_states
        hold each image once and pair p shows image image_index[p], so the image side of the
        cross-attention is projected once per image rather than once per pair (the 3B ITM pairs of B images).
        Likewise `text_index` (P,) picks pair p's text from input_ids / attention_mask, and the first
        Q-Former layer's text-only work runs once per text.
        """
        mae_pairs = (mae_states if mae_states is None or image_index is None
                     else batch_rows.take_rows(mae_states, image_index))
        result = self.qformer.joint_pass(self._memory(clip, mae_states), input_ids, attention_mask,
                                         fuse=self._fuse_hook(), carry=mae_pairs, image_index=image_index,
                                         text_index=text_index, queries_only=True)
        queries, _ = self._finish(result, self.config.qformer.num_query_tokens, mae_pairs)
        return matching.itm_logits_from_queries(self.qformer.itm_head(queries))

    def reconstruct(self, mae_out, images: dict):
        """The frozen MAE decoder's patches (B, N, p*p*3) read from M' (what the reconstruction loss scores)."""
        return self.mae.decode(mae_out, images["ids_restore"])

    # -- stage 1 ----------------------------------------------------------------------------------
    def __call__(self, pixel_values, input_ids, attention_mask, mae_pixel_values=None, mask_rng=None,
                 itm_rng=None, image_ids=None):
        """The stage-1 forward: what each loss reads, float32 where a loss reads it.

        image_embeds (B, Q, D), text_embeds (B, D), temp: ITC. itm_logits (3B, 2), itm_labels (3B,): ITM on
        the positives and the hard negatives drawn from the ITC similarities. itg_logits (B, T-1, V),
        itg_ids (B, T): ITG, the text with [DEC] in place of [CLS]. rec_pred (B, N, p*p*3), rec_mask (B, N)
        (xformer only): the frozen MAE decoder's patches read from M', and which patches were masked.
        """
        c = self.config
        images = self.encode_images(pixel_values, mae_pixel_values, mask_rng)
        queries, cache, mae_out = self.query_states(images)
        image_embeds = self.qformer.image_embeddings(queries)
        text_embeds = self.text_embeddings(input_ids, attention_mask)
        temp = self.qformer.temperature()
        out = {"image_embeds": image_embeds, "text_embeds": text_embeds, "temp": temp}

        sim_i2t, sim_t2i = matching.itc_similarities(image_embeds, text_embeds, temp)
        key = jax.random.key(0) if itm_rng is None else itm_rng
        neg_text, neg_image = matching.sample_hard_negatives(key, sim_i2t, sim_t2i, image_ids)
        image_index, text_index, out["itm_labels"] = matching.itm_inputs(neg_text, neg_image)
        clip, mae_states, pair_image = images["clip"], images.get("mae"), image_index
        if not c.itm_shared_image_kv:  # each pair gets its image's features (see Stage1Config)
            clip, pair_image = batch_rows.take_rows(clip, image_index), None
            mae_states = None if mae_states is None else batch_rows.take_rows(mae_states, image_index)
        out["itm_logits"] = self.itm_logits(clip, mae_states, input_ids, attention_mask, image_index=pair_image,
                                            text_index=text_index)

        out["itg_ids"] = jnp.asarray(input_ids).at[:, 0].set(c.qformer.dec_token_id)
        hidden = self.itg_hidden(out["itg_ids"], attention_mask, images, queries, cache)
        out["itg_logits"] = self.qformer.lm_logits(hidden)
        if c.fusion.reconstructs:
            out["rec_pred"], out["rec_mask"] = self.reconstruct(mae_out, images), images["mae_mask"]
        return out

    def itg_hidden(self, decoder_ids, attention_mask, images: dict, queries, cache):
        """ITG's text states for the positions that predict a token (the last one predicts nothing), the
        text attending to the image pass's query cache or, with itg_context "fused", to Z' (`queries`)."""
        positions = max(decoder_ids.shape[1] - 1, 1)
        if self.config.itg_context == "fused":
            return self.qformer.decoder_hidden(decoder_ids, attention_mask,
                                               image_feats=self._memory(images["clip"], images.get("mae")),
                                               query_embeds=queries, positions=positions)
        return self.qformer.decoder_hidden(decoder_ids, attention_mask, query_cache=cache, positions=positions)

    def retrieval_embeddings(self, pixel_values, input_ids, attention_mask, mae_pixel_values=None):
        """(image_embeds (B, Q, D), text_embeds (B, D)) for ITC retrieval, MAE at the inference ratio."""
        images = self.encode_images(pixel_values, mae_pixel_values, mask_ratio=self.config.inference_mask_ratio)
        queries, _, _ = self.query_states(images)
        return self.qformer.image_embeddings(queries), self.text_embeddings(input_ids, attention_mask)

    def text_embeddings(self, input_ids, attention_mask):
        """ITC text embeddings (B, D): the text pass up to the [CLS] it reads, text_proj, L2 norm."""
        return self.qformer.text_embeddings(self.qformer.encode_text(input_ids, attention_mask, positions=1))

    def features(self, pixel_values, mae_pixel_values=None, mask_rng=None, mask_ratio: Optional[float] = None):
        """Z' for inference, MAE at `mask_ratio` (default: config.inference_mask_ratio, 0 unless set)."""
        ratio = self.config.inference_mask_ratio if mask_ratio is None else mask_ratio
        images = self.encode_images(pixel_values, mae_pixel_values, mask_rng, ratio)
        return self.query_states(images)[0]

