"""HF `Blip2ForImageTextRetrieval` as a stage-1 model: the same params as `Stage1Model` (fusion "blip2"),
with transformers' retrieval forward, so a released ITM/ITC checkpoint can be scored, trained or exported
as a stage-1 model.

How HF's retrieval forward maps onto Stage1Model (transformers `models/blip_2/modeling_blip_2.py`):
  * The Q-Former reads `vision_model(...)[0]`: every EVA block, then `post_layernorm` (HF's vision tower
    already lacks the block LAVIS drops). That norm *is* LAVIS's `ln_vision`, so the tower's features are
    the last block (`feature_layer=-1`), `qformer/ln_vision` holds HF's `post_layernorm`, and the tower
    has no norm of its own in this param tree (Stage1Model never runs `vision/post_norm`).
  * Text: word + position embeddings; the Q-Former's `layernorm` normalises [queries; text] (ITM) or
    the text alone (ITC): `QFormer.joint_pass` / `QFormer.encode_text`.
  * ITM (`use_image_text_matching_head=True`): bidirectional [queries; text] pass over paired rows,
    `itm_head` on the query outputs, mean over queries: logits_per_image (B, 2); logits_per_text is its
    transpose (2, B), as HF.
  * ITC: l2norm(vision_projection(Z)) per query against l2norm(text_projection(text CLS)), max over
    queries: logits_per_image (B_img, B_txt), raw cosines with *no* temperature (HF keeps none; the
    stage-1 `temp` param is not in the checkpoint); logits_per_text is the transpose.
  * With `image_token_index` set in the HF config, HF's processor prepends `num_query_tokens` image
    tokens to the text and the model drops them again (`strip_image_tokens`).
The Q-Former's LM head (ITG) and `temp` are not in the checkpoint: `from_hf` draws them fresh.
"""
import dataclasses

import jax.numpy as jnp

from xformer_jax.models import fusion, matching, qformer, vit, xformer


def config_from_hf(hf: dict, **overrides) -> xformer.Stage1Config:
    """A blip2-fusion Stage1Config from an HF Blip2Config dict (config.json).

    Each override goes to every part (VisionConfig, QFormerConfig, FusionConfig, Stage1Config) that has
    a field of that name: `dtype` reaches all of them, `feature_layer` only the tower.
    """
    parts = {"vision": vit.VisionConfig, "qformer": qformer.QFormerConfig, "fusion": fusion.FusionConfig,
             "stage1": xformer.Stage1Config}
    routed = {part: {k: v for k, v in overrides.items() if k in {f.name for f in dataclasses.fields(cls)}}
              for part, cls in parts.items()}
    unknown = set(overrides) - set().union(*routed.values())
    if unknown:
        raise ValueError(f"unknown Blip2ForImageTextRetrieval config override(s) {sorted(unknown)}")
    vision_hf, qformer_hf = hf.get("vision_config", {}), hf.get("qformer_config", {})
    if not qformer_hf.get("use_qformer_text_input", False):
        raise ValueError("Blip2ForImageTextRetrieval needs qformer_config.use_qformer_text_input=True "
                         "(its text passes run the Q-Former's text FFN)")
    vision = vit.config_from_hf(vision_hf, **{"feature_layer": -1, **routed["vision"]})
    q = qformer.config_from_hf(qformer_hf, **{
        "num_query_tokens": hf.get("num_query_tokens", 32), "embed_dim": hf.get("image_text_hidden_size", 256),
        "vision_layer_norm_eps": vision.layer_norm_eps, **routed["qformer"]})
    return xformer.Stage1Config(vision=vision, qformer=q, fusion=fusion.FusionConfig(kind="blip2", **routed["fusion"]),
                                **routed["stage1"])


class Blip2ForImageTextRetrieval(xformer.Stage1Model):
    """Stage1Model (fusion "blip2") whose `__call__` is transformers' retrieval forward.

    `init` also runs the stage-1 forward, so the tree holds every stage-1 param (the LM head and `temp`
    that retrieval never reads); like Stage1Model's, it then needs a batch of at least 2.
    """
    strip_image_tokens: bool = False  # HF config.image_token_index is set: drop the leading query-token ids

    def __call__(self, pixel_values, input_ids, attention_mask=None, use_image_text_matching_head: bool = False):
        """HF outputs: logits_per_image, logits_per_text; in ITC mode also image_embeds (B, Q, D) and
        text_embeds (B_txt, D), l2-normalised. All float32. ITM needs as many texts as images (pairs)."""
        if self.config.fusion.kind != "blip2":
            raise ValueError(f"Blip2ForImageTextRetrieval is the blip2 variant, not {self.config.fusion.kind!r}")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if self.strip_image_tokens:
            num_queries = self.config.qformer.num_query_tokens
            input_ids, attention_mask = input_ids[:, num_queries:], attention_mask[:, num_queries:]
        if self.is_initializing():
            super().__call__(pixel_values, input_ids, attention_mask)
        images = self.encode_images(pixel_values)
        if use_image_text_matching_head:
            logits = self.itm_logits(images["clip"], None, input_ids, attention_mask)
            return {"logits_per_image": logits, "logits_per_text": logits.T}
        image_embeds = self.qformer.image_embeddings(self.query_states(images)[0])
        text_embeds = self.qformer.text_embeddings(self.qformer.encode_text(input_ids, attention_mask))
        per_image, per_text = matching.itc_similarities(image_embeds, text_embeds, 1.0)
        return {"logits_per_image": per_image, "logits_per_text": per_text,
                "image_embeds": image_embeds, "text_embeds": text_embeds}
