"""What an exported model reads, from what a user has: images and prompts -> pixel_values, mae_pixel_values,
input_ids, attention_mask, with the settings launch/export.py wrote next to the weights (the tower's and
the MAE's BlipImageProcessor files, the LLM tokenizer), so that nothing is rebuilt by hand."""
import os
from typing import Optional

import transformers

MAE_PROCESSOR_FILE = "mae_preprocessor_config.json"  # written by xformer_jax.convert.to_hf
# The PIL image processor resizes as the run's pipeline does (PIL bicubic); transformers >= 5.20 names it apart
# from the torchvision one.
_IMAGE_PROCESSOR = getattr(transformers, "BlipImageProcessorPil", transformers.BlipImageProcessor)


class XFormerProcessor:
    """processor(images=..., text=...) -> the keyword arguments of the exported model's forward / generate."""

    def __init__(self, image_processor, mae_image_processor=None, tokenizer=None):
        self.image_processor, self.mae_image_processor, self.tokenizer = image_processor, mae_image_processor, tokenizer

    @classmethod
    def from_pretrained(cls, directory: str) -> "XFormerProcessor":
        image_processor = _IMAGE_PROCESSOR.from_json_file(os.path.join(directory, "preprocessor_config.json"))
        mae_path = os.path.join(directory, MAE_PROCESSOR_FILE)
        mae = _IMAGE_PROCESSOR.from_json_file(mae_path) if os.path.exists(mae_path) else None
        tokenizer = None
        if os.path.exists(os.path.join(directory, "tokenizer.json")):  # the export's tokenizer_config names this class
            tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(directory)
        return cls(image_processor, mae, tokenizer)

    def __call__(self, images=None, text: Optional[str | list[str]] = None, return_tensors: str = "pt") -> dict:
        out = {}
        if images is not None:
            out["pixel_values"] = self.image_processor(images, return_tensors=return_tensors)["pixel_values"]
            if self.mae_image_processor is not None:
                mae = self.mae_image_processor(images, return_tensors=return_tensors)
                out["mae_pixel_values"] = mae["pixel_values"]
        if text is not None:
            if self.tokenizer is None:
                raise ValueError("this export has no tokenizer (a stage-1 export, or a run without an LLM tokenizer)")
            out.update(self.tokenizer(text, return_tensors=return_tensors, padding=True))
        return out

    def batch_decode(self, tokens, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(tokens, **kwargs)
