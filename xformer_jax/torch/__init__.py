"""PyTorch modules for exported X-Former / BLIP-2 models (launch/export.py), on transformers' classes.

    from xformer_jax.torch import XFormerProcessor, from_pretrained
    model = from_pretrained("exported_dir")          # XFormerForConditionalGeneration (stage 2)
    processor = XFormerProcessor.from_pretrained("exported_dir")  # the run's image settings and tokenizer
    tokens = model.generate(**processor(images=image, text="a photo of"))

The only part of xformer_jax that imports torch; it needs no JAX. See `modeling` for what each class
computes (it reproduces the JAX inference path: vision feature layer, Q-Former, fusion at its
placement, MAE encoder at inference masking, language projection, LLM).
"""
from xformer_jax.torch.modeling import (XFormerForConditionalGeneration, XFormerForImageTextRetrieval,
                                        XFormerModel, from_pretrained, read_config)
from xformer_jax.torch.processing import XFormerProcessor

__all__ = ["XFormerModel", "XFormerForConditionalGeneration", "XFormerForImageTextRetrieval", "XFormerProcessor",
           "from_pretrained", "read_config"]
