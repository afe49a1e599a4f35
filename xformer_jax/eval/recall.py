"""Image-text retrieval recall (R@1/5/10 both ways), with BLIP-2's optional ITM re-ranking.

Follows LAVIS (`compute_sim_matrix` and the retrieval task's metrics), which produced the
BLIP-2 retrieval numbers: ITC similarities rank everything; with ITM, each query's top
`k_test` candidates are re-scored by ITM score + ITC similarity and all others get -100.
"""
from collections.abc import Callable

import numpy as np

_KS = (1, 5, 10)
_UNRANKED_SCORE = -100.0


def itm_rerank(sims: np.ndarray, itm_score: Callable[[np.ndarray, np.ndarray], np.ndarray],
               k_test: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Score matrices (image->text [n_images, n_texts], text->image [n_texts, n_images]).

    `sims` [n_images, n_texts] are ITC similarities. For each query, `itm_score` is called
    once with equal-length index arrays (image_indices, text_indices) of its top `k_test`
    ITC candidates and returns one ITM score per pair (BLIP-2 uses the match logit).
    """
    sims = np.asarray(sims, dtype=np.float64)
    num_images, num_texts = sims.shape
    scores_i2t = np.full((num_images, num_texts), _UNRANKED_SCORE)
    scores_t2i = np.full((num_texts, num_images), _UNRANKED_SCORE)
    for image in range(num_images):
        texts = np.argsort(-sims[image], kind="stable")[:min(k_test, num_texts)]
        itm = _call_itm(itm_score, np.full(len(texts), image), texts)
        scores_i2t[image, texts] = itm + sims[image, texts]
    for text in range(num_texts):
        images = np.argsort(-sims[:, text], kind="stable")[:min(k_test, num_images)]
        itm = _call_itm(itm_score, images, np.full(len(images), text))
        scores_t2i[text, images] = itm + sims[images, text]
    return scores_i2t, scores_t2i


def _call_itm(itm_score, image_indices: np.ndarray, text_indices: np.ndarray) -> np.ndarray:
    """ITM scores of one query's candidates, checked so a wrong callable fails loudly."""
    scores = np.asarray(itm_score(image_indices, text_indices), dtype=np.float64)
    if scores.shape != image_indices.shape:
        raise ValueError(f"itm_score returned shape {scores.shape} for {len(image_indices)} "
                         "pairs; it must return one score per (image, text) pair")
    return scores


def _best_rank(scores: np.ndarray, is_match: np.ndarray) -> np.ndarray:
    """0-based rank of each row's best-scored match; equal scores rank the lower index first."""
    best_column = np.argmax(np.where(is_match, scores, -np.inf), axis=1)
    best = scores[np.arange(len(scores)), best_column][:, None]
    columns = np.arange(scores.shape[1])[None, :]
    ahead = (scores > best) | ((scores == best) & (columns < best_column[:, None]))
    return ahead.sum(axis=1)


def recall_at_k(scores_i2t: np.ndarray, scores_t2i: np.ndarray,
                text_to_image: np.ndarray) -> dict:
    """R@1/5/10 in percent both ways, their means, and r_mean (LAVIS's agg metric).

    i2t (LAVIS "txt_r*"): an image counts when any of its texts ranks in the top k.
    t2i (LAVIS "img_r*"): a text counts when its image ranks in the top k.
    `text_to_image[t]` is the index of the image that text t describes.
    """
    scores_i2t, scores_t2i = np.asarray(scores_i2t), np.asarray(scores_t2i)
    text_to_image = np.asarray(text_to_image)
    num_images, num_texts = scores_i2t.shape
    if scores_t2i.shape != (num_texts, num_images) or text_to_image.shape != (num_texts,):
        raise ValueError(
            f"shapes disagree: scores_i2t {scores_i2t.shape}, scores_t2i {scores_t2i.shape}, "
            f"text_to_image {text_to_image.shape}")
    out_of_range = np.flatnonzero((text_to_image < 0) | (text_to_image >= num_images))
    if len(out_of_range):
        raise ValueError(f"text_to_image points outside the {num_images} images for texts "
                         f"{out_of_range[:10].tolist()}")
    is_match = text_to_image[None, :] == np.arange(num_images)[:, None]
    textless = np.flatnonzero(~is_match.any(axis=1))
    if len(textless):
        raise ValueError(f"images without any text: {textless[:10].tolist()}")
    metrics = {}
    for direction, ranks in (("i2t", _best_rank(scores_i2t, is_match)),
                             ("t2i", _best_rank(scores_t2i, is_match.T))):
        for k in _KS:
            metrics[f"{direction}_r{k}"] = 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
        metrics[f"{direction}_r_mean"] = sum(metrics[f"{direction}_r{k}"] for k in _KS) / len(_KS)
    metrics["r_mean"] = (metrics["i2t_r_mean"] + metrics["t2i_r_mean"]) / 2
    return metrics


def retrieval_recall(sims: np.ndarray, text_to_image: np.ndarray,
                     itm_score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                     k_test: int = 128) -> dict:
    """Recall from ITC similarities [n_images, n_texts]; ITM re-ranks when `itm_score` is given."""
    if itm_score is None:
        sims = np.asarray(sims)
        return recall_at_k(sims, sims.T, text_to_image)
    return recall_at_k(*itm_rerank(sims, itm_score, k_test), text_to_image)
