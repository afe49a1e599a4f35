"""Image-text retrieval with a trained stage-1 run, ranked as LAVIS's `compute_sim_matrix` ranks BLIP-2.

ITC ranks every pair: similarity = max over the queries of <image query embedding, text embedding>
(both L2-normalised; MAE unmasked). ITM then re-scores each query's top `k_test` candidates with the
match logit of the joint pass plus the ITC similarity (`eval.recall.itm_rerank`). The towers'
features of every image are computed once and kept on the devices (LAVIS keeps them on the GPU), so
re-ranking runs only the Q-Former's joint pass, on the pairs each query picked; the query's own image
(keys / values) or text (first layer) is computed once for all its candidates. Texts are cleaned as
BLIP's caption processor does and tokenised to `config.data.max_len`. `rank_captions` ranks a LAVIS caption
file (launch/evaluate.py, the demo), encoding in batches of one shape.
"""
import dataclasses
from typing import Sequence

import jax
import ml_collections
import numpy as np

from xformer_jax import storage
from xformer_jax.data.pipeline import image_transform
from xformer_jax.data.tokenizers import QFormerTokenizer
from xformer_jax.data.transforms import clean_caption
from xformer_jax.eval import recall
from xformer_jax.models import xformer
from xformer_jax.predict import inputs
from xformer_jax.predict.restore import read_stage, restore_run


def _image_side(model: xformer.Stage1Model, pixel_values, mae_pixel_values):
    """Tower features (what ITM reads again) and the ITC query embeddings (B, Q, D)."""
    images = model.encode_images(pixel_values, mae_pixel_values, mask_ratio=model.config.inference_mask_ratio)
    queries, _, _ = model.query_states(images)
    return {"clip": images["clip"], "mae": images.get("mae"), "embeds": model.qformer.image_embeddings(queries)}


def _match_logits(model: xformer.Stage1Model, images: dict, texts: dict, pairs: dict):
    """ITM match logit (BLIP-2's retrieval score) of pairs p = (image images[pairs["images"][image_row[p]]],
    text texts[pairs["texts"][text_row[p]]]).

    `pairs` ("images", "texts": the distinct indices a query's candidates use; "image_row", "text_row":
    each pair's row among them) lets the joint pass project each distinct image's cross-attention keys /
    values and run each distinct text's first layer once: once for an image query's k texts, once for a
    text query's k images.
    """
    mae = None if images["mae"] is None else images["mae"][pairs["images"]]
    logits = model.itm_logits(images["clip"][pairs["images"]], mae, texts["input_ids"][pairs["texts"]],
                              texts["attention_mask"][pairs["texts"]], image_index=pairs["image_row"],
                              text_index=pairs["text_row"])
    return logits[:, 1]


def similarities(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """ITC similarities [n_images, n_texts]: the best query of each image (no temperature)."""
    return np.einsum("iqd,td->iqt", image_embeds, text_embeds).max(axis=1)


def concatenate(parts: Sequence[dict]) -> dict:
    """One dict from the per-batch outputs of encode_images / encode_texts."""
    return {k: None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in parts[0]}


@dataclasses.dataclass
class Retriever:
    config: ml_collections.ConfigDict
    model: xformer.Stage1Model
    params: dict

    @classmethod
    def from_workdir(cls, workdir: str) -> "Retriever":
        """The run in `workdir` (or the checkpoint a step directory names)."""
        config = read_stage(workdir, "stage1", "its Q-Former keeps only its query path (no text embeddings, ITC "
                                               "projections or ITM head, as in LAVIS); retrieval needs the stage-1 "
                                               "run it started from")
        return cls(*restore_run(workdir, config))

    def __post_init__(self):
        data = self.config.data
        self.tokenizer = QFormerTokenizer(data.vocab_path or None, data.max_len)
        self.transform = image_transform(data, train=False)
        self._variables = {"params": self.params}
        self._images = jax.jit(lambda v, px, mpx: self.model.apply(v, px, mpx, method=_image_side))
        self._texts = jax.jit(lambda v, ids, mask: self.model.apply(v, ids, mask,
                                                                    method=xformer.Stage1Model.text_embeddings))
        self._match = jax.jit(lambda v, i, t, pairs: self.model.apply(v, i, t, pairs, method=_match_logits))

    def encode_images(self, images: Sequence) -> dict:
        """{"clip", "mae" (None without MAE), "embeds"} as numpy arrays for PIL images."""
        pixel_values, mae_pixel_values = inputs.pixels(self.transform, images)
        return jax.tree.map(np.asarray, self._images(self._variables, pixel_values, mae_pixel_values))

    def encode_texts(self, texts: Sequence[str]) -> dict:
        """{"input_ids", "attention_mask", "embeds"} for raw captions."""
        tokens = self.tokenizer([clean_caption(t, self.config.data.max_words) for t in texts])
        embeds = self._texts(self._variables, tokens["input_ids"], tokens["attention_mask"])
        return {**tokens, "embeds": np.asarray(embeds)}

    def scores(self, images: dict, texts: dict, k_test: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ITC similarities [n_images, n_texts], ITM-re-ranked scores i2t, t2i) of encoded images / texts
        (concatenations of encode_images / encode_texts outputs)."""
        sims = similarities(images["embeds"], texts["embeds"])
        on_device = jax.device_put({"images": {"clip": images["clip"], "mae": images["mae"]},
                                    "texts": {k: texts[k] for k in ("input_ids", "attention_mask")}})

        def match(image_index: np.ndarray, text_index: np.ndarray) -> np.ndarray:
            (images_used, image_row), (texts_used, text_row) = (
                np.unique(image_index, return_inverse=True), np.unique(text_index, return_inverse=True))
            pairs = {"images": images_used, "image_row": image_row, "texts": texts_used, "text_row": text_row}
            return np.asarray(self._match(self._variables, on_device["images"], on_device["texts"],
                                          {k: v.astype(np.int32) for k, v in pairs.items()}))

        return (sims, *recall.itm_rerank(sims, match, k_test))


@dataclasses.dataclass
class Rankings:
    """Every caption of a caption file against every image: ITC similarities [n_images, n_texts] and the
    ITM-re-ranked scores i2t [n_images, n_texts], t2i [n_texts, n_images] (the similarities without ITM)."""
    texts: list
    text_to_image: np.ndarray  # the image each text describes
    sims: np.ndarray
    scores_i2t: np.ndarray
    scores_t2i: np.ndarray

    def recall(self) -> dict:
        """`eval.recall.recall_at_k` of the scores, with the ITC-only recall under "itc"."""
        return {**recall.recall_at_k(self.scores_i2t, self.scores_t2i, self.text_to_image),
                "itc": recall.retrieval_recall(self.sims, self.text_to_image)}


def _encoded(encode, items: Sequence, batch_size: int) -> dict:
    """encode() of every item, in padded batches of one shape (the padding rows dropped)."""
    parts = [jax.tree.map(lambda x: None if x is None else x[:real], encode(batch))
             for batch, real in inputs.padded_batches(items, batch_size)]
    return concatenate(parts)


def rank_captions(retriever: Retriever, entries: Sequence[dict], image_root: str, batch_size: int,
                  k_test: int = 128) -> Rankings:
    """Rankings of a LAVIS caption file, one entry per image [{"image", "caption": caption or [captions]}];
    k_test=0 ranks by ITC alone (no ITM pass)."""
    texts, text_to_image = [], []
    for index, entry in enumerate(entries):
        captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
        texts += captions
        text_to_image += [index] * len(captions)
    images = _encoded(lambda b: retriever.encode_images(inputs.load_images([storage.join(image_root, e["image"])
                                                                            for e in b])), entries, batch_size)
    encoded = _encoded(retriever.encode_texts, texts, batch_size)
    if k_test:
        sims, scores_i2t, scores_t2i = retriever.scores(images, encoded, k_test)
    else:
        sims = similarities(images["embeds"], encoded["embeds"])
        scores_i2t, scores_t2i = sims, sims.T
    return Rankings(texts, np.asarray(text_to_image), sims, scores_i2t, scores_t2i)
