"""Captioning and question answering with a trained stage-2 model (BLIP-2's prompts and decoding).

`Captioner.from_workdir(dir)` rebuilds the model from the run's saved config.json, restores its newest
checkpoint (or the step directory given) and answers batches of images: captions with the prompt "a photo
of", zero-shot VQA with "Question: {} Short answer:", decoding stopped at the "\\n" token the training
captions end with. `generate_texts` runs it over any number of images in batches of one shape, every prompt
padded to the longest, so that decoding compiles once; `predict.benchmarks` runs it over a benchmark's files.
"""
import dataclasses
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from xformer_jax.data.pipeline import image_transform, make_tokenizer
from xformer_jax.models import stage2
from xformer_jax.predict import generate as generate_lib, inputs
from xformer_jax.predict.restore import read_stage, restore_run

CAPTION_PROMPT = "a photo of"
VQA_PROMPT = "Question: {} Short answer:"


@dataclasses.dataclass
class Captioner:
    config: ml_collections.ConfigDict
    model: stage2.Stage2Model
    params: dict
    num_beams: int = 5
    max_new_tokens: int = 20
    min_new_tokens: int = 1
    length_penalty: float = 1.0  # beam score = log p / length ** length_penalty (LAVIS VQA / GQA: 0)

    @classmethod
    def from_workdir(cls, workdir: str, **decoding) -> "Captioner":
        """The run in `workdir` (or the checkpoint a step directory names) with these decoding settings."""
        config = read_stage(workdir, "stage2", "captions and answers need stage 2")
        return cls(*restore_run(workdir, config), **decoding)

    def __post_init__(self):
        self.tokenizer = make_tokenizer(self.config.data)
        self.transform = image_transform(self.config.data, train=False)
        self._embed = jax.jit(lambda p, px, ids, mask, mae_px: self.model.apply(
            {"params": p}, px, ids, mask, mae_px, method=self.model.prompt_embeddings))

    def pixels(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(CLIP pixels, MAE pixels) NCHW from PIL images, as evaluation preprocesses them."""
        return inputs.pixels(self.transform, images)

    def prompt_width(self, prompts: Sequence[str]) -> int:
        """Tokens of the longest prompt, bos included."""
        return 1 + max(len(self.tokenizer.encode(p)) for p in prompts)

    def prompt_ids(self, prompts: Sequence[str], width: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """[bos] + tokens(prompt), left-padded so every prompt ends where generation starts (to at least
        `width` tokens: batches of one width share one compiled decode)."""
        encoded = [[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts]
        width = max(width, *(len(e) for e in encoded))
        ids = np.full((len(prompts), width), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(prompts), width), np.int32)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens):], mask[row, width - len(tokens):] = tokens, 1
        return ids, mask

    def answer(self, images: Sequence, prompts: Sequence[str], prompt_width: int = 0) -> list[str]:
        """The text generated after each (image, prompt), prompts left-padded to at least `prompt_width`."""
        clip_px, mae_px = self.pixels(images)
        ids, mask = self.prompt_ids(prompts, prompt_width)
        embeds, full_mask = self._embed(self.params, clip_px, ids, mask, mae_px)
        tokens = generate_lib.generate(
            stage2.llm_module(self.model.config.llm), self.params["llm"], embeds, full_mask,
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, min_new_tokens=self.min_new_tokens,
            length_penalty=self.length_penalty,
            eos_token_id=self.tokenizer.eos_id, pad_token_id=self.tokenizer.pad_id)
        return [self._decode(row) for row in np.asarray(tokens)]

    def _decode(self, row: np.ndarray) -> str:
        stops = np.nonzero((row == self.tokenizer.eos_id) | (row == self.tokenizer.pad_id))[0]
        row = row[: stops[0]] if len(stops) else row
        return self.tokenizer.tokenizer.decode(row.tolist()).strip()

    def caption(self, images: Sequence, prompt: str = CAPTION_PROMPT) -> list[str]:
        return [f"{prompt} {text}".strip() for text in self.answer(images, [prompt] * len(images))]

    def vqa(self, images: Sequence, questions: Sequence[str], template: Optional[str] = None) -> list[str]:
        return self.answer(images, [(template or VQA_PROMPT).format(q) for q in questions])


def generate_texts(captioner: Captioner, image_paths: Sequence[str], prompts: Sequence[str],
                   batch_size: int) -> list[str]:
    """The text generated after each (image file, prompt), in batches of `batch_size` (the last padded) with
    every prompt padded to the longest: one shape, so decoding compiles once."""
    if len(image_paths) != len(prompts):
        raise ValueError(f"{len(image_paths)} images but {len(prompts)} prompts")
    if not prompts:
        return []
    width = captioner.prompt_width(prompts)
    texts = []
    for batch, real in inputs.padded_batches(list(zip(image_paths, prompts)), batch_size):
        answers = captioner.answer(inputs.load_images([p for p, _ in batch]), [q for _, q in batch], width)
        texts += answers[:real]
    return texts
