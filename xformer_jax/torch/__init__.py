"""PyTorch modules for exported X-Former / BLIP-2 models (launch/export.py), on transformers' classes.

    from xformer_jax.torch import from_pretrained
    model = from_pretrained("exported_dir")          # XFormerForConditionalGeneration (stage 2)
    tokens = model.generate(pixel_values, input_ids, attention_mask, mae_pixel_values=mae_pixel_values)

The only part of xformer_jax that imports torch; it needs no JAX. See `modeling` for what each class
computes (it reproduces the JAX inference path: vision feature layer, Q-Former, fusion at its
placement, MAE encoder at inference masking, language projection, LLM).
"""
from xformer_jax.torch.modeling import (XFormerForConditionalGeneration, XFormerForImageTextRetrieval,
                                        XFormerModel, from_pretrained, read_config)

__all__ = ["XFormerModel", "XFormerForConditionalGeneration", "XFormerForImageTextRetrieval", "from_pretrained",
           "read_config"]
