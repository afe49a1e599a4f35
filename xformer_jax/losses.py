"""Stage-1 and stage-2 losses (REFERENCE.md §3, §5): pure functions of arrays, float32 inside.

Semantics follow LAVIS `Blip2Qformer.forward` and BERT/HF causal-LM heads:

- ITC: max-over-queries similarity / temp over the global batch, cross-entropy with label smoothing
  averaged over both directions. `itc_grad` picks the gradient: "global" (default) is the exact
  gradient of the global-batch loss, which is what `jax.jit` gives for a loss over sharded arrays;
  "local" is LAVIS/DDP's: each device's rows against gathered features that carry no gradient,
  gradients averaged over devices. Loss values are identical; gradients differ.
- ITM: hard negatives sampled from softmax(sim) in float32 with `jax.random.categorical` (the fp16
  `torch.multinomial` NaN failure of LAVIS cannot happen), the 3B pos/neg layout, plain CE.
- ITG / LM: shifted cross-entropy over non-ignored labels; ITG smooths labels by 0.1 as LAVIS's
  BertLMHeadModel does, LM (stage 2) does not, as HF's causal-LM loss.
- Reconstruction: `xformer_jax.models.mae.reconstruction_loss`, re-exported here.
"""
import math
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from xformer_jax.models.mae import reconstruction_loss

__all__ = [
    "itc_similarities", "itc_loss", "itc_loss_sharded", "sample_hard_negatives", "itm_inputs",
    "itm_logits_from_queries", "itm_loss", "itg_loss", "lm_loss", "reconstruction_loss", "total_loss",
]

IGNORE_INDEX = -100  # label value that HF / torch skip in the loss

# Full-precision matmuls: on TPU the default would run float32 through one bf16 pass, and the
# similarities are divided by temp = 0.07, so their rounding error would be magnified 14x.
_HIGHEST = jax.lax.Precision.HIGHEST


def _f32(x):
    return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------------------------------- ITC

def itc_similarities(image_feats, text_feats, temp):
    """(sim_i2t (B_img, B_txt), sim_t2i (B_txt, B_img)): max over queries of the dot product, / temp.

    image_feats (B_img, Q, D) and text_feats (B_txt, D) are expected l2-normalised (the model does
    that); the max over queries is BLIP-2's image-text score.
    """
    sim_q = jnp.einsum("iqd,td->itq", _f32(image_feats), _f32(text_feats), precision=_HIGHEST)
    sim_i2t = sim_q.max(axis=-1) / _f32(temp)
    return sim_i2t, sim_i2t.T


def _soft_ce(logits, row_ids, col_ids, label_smoothing):
    """Mean over rows of -sum(targets * log_softmax(logits)); targets as LAVIS builds them.

    The positives of a row are the columns with the same id, weighted equally; smoothing mixes in
    a uniform 1/C. With unique ids this is exactly torch's `cross_entropy(label_smoothing=eps)`,
    whose loss is (1-eps)*NLL + eps*mean_c(-log p_c).
    """
    pos = (row_ids[:, None] == col_ids[None, :]).astype(jnp.float32)
    targets = (1.0 - label_smoothing) * pos / pos.sum(axis=1, keepdims=True)
    targets = targets + label_smoothing / logits.shape[1]
    return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def _itc_from_sims(sim_i2t, sim_t2i, row_ids, col_ids, label_smoothing):
    return 0.5 * (_soft_ce(sim_i2t, row_ids, col_ids, label_smoothing)
                  + _soft_ce(sim_t2i, row_ids, col_ids, label_smoothing))


def _itc_ids(batch, image_ids):
    """Default targets are the diagonal: unique ids 0..B-1 give exactly that."""
    if image_ids is None:
        return jnp.arange(batch, dtype=jnp.int32)
    image_ids = jnp.asarray(image_ids)
    if image_ids.shape != (batch,):
        raise ValueError(f"image_ids shape {image_ids.shape} != (batch,) = {(batch,)}")
    return image_ids


def _check_pairs(image_feats, text_feats):
    if image_feats.ndim != 3 or text_feats.ndim != 2 or image_feats.shape[0] != text_feats.shape[0]:
        raise ValueError(f"ITC wants image_feats (B, Q, D) and text_feats (B, D) of paired rows; got "
                         f"{image_feats.shape} and {text_feats.shape}")


def itc_loss(image_feats, text_feats, temp, label_smoothing: float = 0.1, image_ids=None):
    """Global-batch ITC: (CE(sim_i2t) + CE(sim_t2i)) / 2 with label smoothing, a float32 scalar.

    Row b's positive is pair b. With `image_ids` (B,), every pair that shows the same image is a
    positive, with equal weight: targets = (1-eps) * same_id / row_count + eps / B, the
    image-id-aware ITC of LAVIS (COCO retrieval fine-tuning) and BLIP (`sim_targets` from idx).
    Without it, duplicate images in a batch are pushed apart as negatives, as in LAVIS pretraining.
    """
    _check_pairs(image_feats, text_feats)
    ids = _itc_ids(image_feats.shape[0], image_ids)
    sim_i2t, sim_t2i = itc_similarities(image_feats, text_feats, temp)
    return _itc_from_sims(sim_i2t, sim_t2i, ids, ids, label_smoothing)


def itc_loss_sharded(image_feats, text_feats, temp, mesh: Mesh, batch_axes: Sequence[str] = ("data", "fsdp"),
                     mode: str = "global", label_smoothing: float = 0.1, image_ids=None):
    """ITC for a batch sharded over `batch_axes` of `mesh`, with the gradient semantics `mode` names.

    "global": `itc_loss` itself; under jit the sharded global-batch loss has the full gradient
    (every feature also receives gradient through the other rows' softmax denominators).
    "local": LAVIS under DDP. Each device scores its own rows against all-gathered features of the
    whole batch, all of which carry no gradient (LAVIS's `concat_all_gather` runs under no_grad),
    so image feats get gradient only through their i2t rows and text feats only through their t2i
    rows; the per-device losses are averaged as DDP averages gradients. The value equals the
    global loss.
    """
    if mode == "global":
        return itc_loss(image_feats, text_feats, temp, label_smoothing, image_ids)
    if mode != "local":
        raise ValueError(f"itc_grad must be 'global' or 'local', got {mode!r}")
    _check_pairs(image_feats, text_feats)
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    if not axes:
        raise ValueError(f"none of batch_axes {tuple(batch_axes)} is a mesh axis {mesh.axis_names}")
    shards = math.prod(mesh.shape[a] for a in axes)
    batch = image_feats.shape[0]
    if batch % shards:
        raise ValueError(f"ITC batch {batch} does not split over {shards} devices of mesh axes {axes}")
    # Ids (default: the row index) travel sharded like the rows, so each device knows the global
    # ids of its rows without computing offsets from the axis index.
    ids = _itc_ids(batch, image_ids)

    def per_device(img, txt, t, row_ids):
        img_all = jax.lax.stop_gradient(jax.lax.all_gather(img, axes, tiled=True))
        txt_all = jax.lax.stop_gradient(jax.lax.all_gather(txt, axes, tiled=True))
        col_ids = jax.lax.all_gather(row_ids, axes, tiled=True)
        sim_i2t, _ = itc_similarities(img, txt_all, t)
        _, sim_t2i = itc_similarities(img_all, txt, t)
        return jax.lax.pmean(_itc_from_sims(sim_i2t, sim_t2i, row_ids, col_ids, label_smoothing), axes)

    rows = P(axes)
    return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, rows, P(), rows), out_specs=P())(
        image_feats, text_feats, _f32(temp), ids)


# ---------------------------------------------------------------------------------------- ITM

def _sample_excluding(key, sim, excluded):
    """One column per row from softmax(sim) restricted to the columns not excluded.

    `categorical` normalises its logits, so the masked float32 sims are log(softmax) up to a
    per-row constant; excluded columns are -inf and can never be drawn. A row with every column
    excluded falls back to a uniform draw over all columns but its own positive (the diagonal).
    """
    sim = _f32(jax.lax.stop_gradient(sim))
    diagonal = jnp.eye(sim.shape[0], dtype=bool)
    has_candidate = jnp.any(~excluded, axis=1, keepdims=True)
    logits = jnp.where(has_candidate,
                       jnp.where(excluded, -jnp.inf, sim),
                       jnp.where(diagonal, -jnp.inf, 0.0))
    return jax.random.categorical(key, logits, axis=-1)


def sample_hard_negatives(key, sim_i2t, sim_t2i, image_ids=None):
    """(neg_text_idx (B,) per image, neg_image_idx (B,) per text), indices into the global batch.

    sim_i2t / sim_t2i are the global (B, B) ITC similarities (no gradient flows). The positive
    (the diagonal) is never drawn; with `image_ids`, no pair showing the same image is drawn
    either. If every other pair of a row shows the same image, that row draws uniformly among the
    other pairs (those are then false negatives, but the ITM batch keeps its shape and stays
    finite). Needs B >= 2.
    """
    batch = sim_i2t.shape[0]
    if sim_i2t.shape != (batch, batch) or sim_t2i.shape != (batch, batch):
        raise ValueError(f"hard negatives want square global similarities; got {sim_i2t.shape}, {sim_t2i.shape}")
    if batch < 2:
        raise ValueError("hard-negative sampling needs a global batch of at least 2")
    excluded = jnp.eye(batch, dtype=bool)
    if image_ids is not None:
        image_ids = jnp.asarray(image_ids)
        excluded = excluded | (image_ids[:, None] == image_ids[None, :])
    key_text, key_image = jax.random.split(key)
    return _sample_excluding(key_text, sim_i2t, excluded), _sample_excluding(key_image, sim_t2i, excluded)


def itm_inputs(neg_text_idx, neg_image_idx):
    """The 3B ITM layout as gather indices: (image_index, text_index, labels), each (3B,).

    Pairs k = (image[image_index[k]], text[text_index[k]]): first B are positives (b, b), next B pair
    each text b with its hard-negative image, last B each image b with its hard-negative text;
    i.e. text [pos, pos, neg] vs image [pos, neg, pos], labels [1]*B + [0]*2B, as LAVIS.
    """
    neg_text_idx = jnp.asarray(neg_text_idx, jnp.int32)
    neg_image_idx = jnp.asarray(neg_image_idx, jnp.int32)
    batch = neg_text_idx.shape[0]
    rows = jnp.arange(batch, dtype=jnp.int32)
    image_index = jnp.concatenate([rows, neg_image_idx, rows])
    text_index = jnp.concatenate([rows, rows, neg_text_idx])
    labels = jnp.concatenate([jnp.ones(batch, jnp.int32), jnp.zeros(2 * batch, jnp.int32)])
    return image_index, text_index, labels


def itm_logits_from_queries(query_logits):
    """(B3, Q, 2) itm_head outputs of the query tokens -> (B3, 2): BLIP-2 averages over queries."""
    return _f32(query_logits).mean(axis=1)


def itm_loss(logits, labels):
    """Plain mean cross-entropy of (N, 2) match logits against 0/1 labels."""
    logp = jax.nn.log_softmax(_f32(logits), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


# -------------------------------------------------------------------------------- ITG and LM

def _token_ce(logits, labels, label_smoothing):
    """Mean over labels != -100 of torch's smoothed CE of logits (N, L, V) against labels (N, L).

    Written as logsumexp - (1-eps) * logit[label] - eps * mean(logits), which equals
    (1-eps) * NLL + eps * mean_c(-log p_c) without materialising the (N, L, V) log-probabilities.
    A batch without any label gives 0 (torch would give NaN), so a step never turns NaN on it.
    """
    logits = _f32(logits)
    valid = labels != IGNORE_INDEX
    picked = jnp.take_along_axis(logits, jnp.where(valid, labels, 0)[..., None].astype(jnp.int32), axis=-1)[..., 0]
    per_token = jax.nn.logsumexp(logits, axis=-1) - (1.0 - label_smoothing) * picked
    if label_smoothing:
        per_token = per_token - label_smoothing * logits.mean(axis=-1)
    valid = valid.astype(jnp.float32)
    return jnp.sum(per_token * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def _shifted_ce(logits, labels, label_smoothing):
    """Token t predicts label t+1. `logits` may stop at position T-2 (the last predicts nothing)."""
    length = labels.shape[1]
    if logits.shape[1] not in (length, length - 1):
        raise ValueError(f"logits cover {logits.shape[1]} positions; the labels have {length}, so expected "
                         f"{length} or {length - 1} (the last position predicts nothing)")
    return _token_ce(logits[:, :length - 1], labels[:, 1:], label_smoothing)


def itg_loss(logits, input_ids, attention_mask, label_smoothing: float = 0.1, pad_id: Optional[int] = 0):
    """Q-Former captioning loss: logits (B, T, V) of the text positions, shifted CE with smoothing.

    Logits (B, T-1, V) of positions 0..T-2 only are accepted too: a caller can skip the LM head on the
    last position, which predicts nothing. Labels are the text ids with pads set to -100: LAVIS masks
    `input_ids == pad_token_id`; we also mask `attention_mask == 0` so a tokenizer whose pad id differs
    cannot leak pads into the loss (pad_id=None uses the mask only). Position 0 (LAVIS's [DEC] in place
    of [CLS]) is never a label after the shift, so the original ids can be passed.
    """
    ignored = attention_mask == 0
    if pad_id is not None:
        ignored = ignored | (input_ids == pad_id)
    return _shifted_ce(logits, jnp.where(ignored, IGNORE_INDEX, input_ids), label_smoothing)


def lm_loss(logits, labels):
    """Stage-2 LLM loss, HF causal-LM style: shift by one, mean over labels != -100, no smoothing."""
    return _shifted_ce(logits, labels, 0.0)


# --------------------------------------------------------------------------------------- total

def total_loss(terms: Mapping[str, jnp.ndarray], weights: Optional[Mapping[str, float]] = None):
    """(sum_k weights.get(k, 1.0) * terms[k], terms as float32): every term comes back for metrics.

    A weight for a term that is not computed raises, so a misspelt config key is not ignored.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"loss weights {unknown} name no computed loss term; terms are {sorted(terms)}")
    terms = {name: _f32(value) for name, value in terms.items()}
    total = sum(weights.get(name, 1.0) * value for name, value in terms.items())
    return total, terms
