"""Captioning and question answering with a trained stage-2 model (BLIP-2's prompts and decoding).

`Captioner.from_workdir(dir)` rebuilds the model from the run's saved config.json, restores its newest
checkpoint and answers batches of images: captions with the prompt "a photo of", zero-shot VQA with
"Question: {} Short answer:", decoding stopped at the "\\n" token the training captions end with.
`restore_run` and `eval_transform` rebuild any run (stage 1 too) and its evaluation preprocessing.
"""
import dataclasses
import json
import os
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from xformer_jax import generate as generate_lib
from xformer_jax.data import transforms
from xformer_jax.data.pipeline import make_tokenizer
from xformer_jax.models import stage2
from xformer_jax.train import checkpointing, loop, partitioning

CAPTION_PROMPT = "a photo of"
VQA_PROMPT = "Question: {} Short answer:"


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a directory launch/train.py wrote")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_params(trainer: loop.Trainer, workdir: str) -> dict:
    """Every param (trainable and frozen) of the newest checkpoint in workdir/checkpoints."""
    checkpoints = checkpointing.Checkpointer(workdir, trainer.config.checkpoint)
    try:
        target = partitioning.with_shardings(jax.eval_shape(lambda s: s, trainer.state), trainer.state_shardings)
        state = checkpoints.restore(None, target)
    finally:
        checkpoints.close()
    return {**state.params, **state.frozen}


def restore_run(workdir: str, config: Optional[ml_collections.ConfigDict] = None) -> tuple:
    """(config, model, params) of the run in workdir: the model rebuilt from its config.json (or
    `config`, already read from it) with the params of its newest checkpoint."""
    config = config or load_config(workdir)
    trainer = loop.make_trainer(config, load_pretrained=False)
    return config, trainer.model, restore_params(trainer, workdir)


def eval_transform(data: ml_collections.ConfigDict) -> transforms.ImageTransform:
    """The evaluation preprocessing of a run's config.data: a plain resize, no crop or flip."""
    return transforms.ImageTransform(
        image_size=data.image_size, mae_image_size=data.mae_image_size or data.image_size,
        clip_mean=tuple(data.clip_mean), clip_std=tuple(data.clip_std), mae_mean=tuple(data.mae_mean),
        mae_std=tuple(data.mae_std), train=False, flip=False)


def eval_pixels(transform: transforms.ImageTransform, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(CLIP pixels, MAE pixels) NCHW from PIL images."""
    views = [transform(image.convert("RGB"), None) for image in images]
    return np.stack([v["pixel_values"] for v in views]), np.stack([v["mae_pixel_values"] for v in views])


@dataclasses.dataclass
class Captioner:
    config: ml_collections.ConfigDict
    model: stage2.Stage2Model
    params: dict
    num_beams: int = 5
    max_new_tokens: int = 20
    min_new_tokens: int = 1
    length_penalty: float = 1.0  # beam score = log p / length ** length_penalty (LAVIS VQA / GQA: 0)
    prompt_width: int = 0  # left-pad prompts to at least this many tokens (0: the batch's longest)

    @classmethod
    def from_workdir(cls, workdir: str, **decoding) -> "Captioner":
        config = load_config(workdir)
        if config.stage != "stage2":
            raise ValueError(f"{workdir} holds a {config.stage} run; captions and answers need stage 2")
        return cls(*restore_run(workdir, config), **decoding)

    def __post_init__(self):
        self.tokenizer = make_tokenizer(self.config.data)
        self.transform = eval_transform(self.config.data)
        self._embed = jax.jit(lambda p, px, ids, mask, mae_px: self.model.apply(
            {"params": p}, px, ids, mask, mae_px, method=self.model.prompt_embeddings))

    def pixels(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """(CLIP pixels, MAE pixels) NCHW from PIL images, as evaluation preprocesses them."""
        return eval_pixels(self.transform, images)

    def prompt_ids(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """[bos] + tokens(prompt), left-padded so every prompt ends where generation starts (to at least
        `prompt_width` tokens: batches of one width share one compiled decode)."""
        encoded = [[self.tokenizer.bos_id] + self.tokenizer.encode(p) for p in prompts]
        width = max(self.prompt_width, *(len(e) for e in encoded))
        ids = np.full((len(prompts), width), self.tokenizer.pad_id, np.int32)
        mask = np.zeros((len(prompts), width), np.int32)
        for row, tokens in enumerate(encoded):
            ids[row, width - len(tokens):], mask[row, width - len(tokens):] = tokens, 1
        return ids, mask

    def answer(self, images: Sequence, prompts: Sequence[str]) -> list[str]:
        clip_px, mae_px = self.pixels(images)
        ids, mask = self.prompt_ids(prompts)
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
