"""Stage-1 and stage-2 loss terms (LAVIS `blip2_qformer.py`, `blip2_opt.py`): pure functions of arrays,
float32 inside.

Each stage's objective (`xformer_jax.train.objective`) applies them to what the model's forward
returns. Semantics follow LAVIS `Blip2Qformer.forward` and BERT/HF causal-LM heads:

- ITC: max-over-queries similarity / temp over the global batch, cross-entropy with label smoothing
  averaged over both directions. `itc_grad` picks the gradient: "global" (default) is the exact
  gradient of the global-batch loss, which is what `jax.jit` gives for a loss over sharded arrays;
  "local" is LAVIS/DDP's: each device's rows against gathered features that carry no gradient,
  gradients averaged over devices. Loss values are identical; gradients differ.
- ITM: plain CE of the match logits of the 3B positive / hard-negative pairs, which the forward
  draws (`xformer_jax.models.matching`).
- ITG / LM: shifted cross-entropy over non-ignored labels; ITG smooths labels by 0.1 as LAVIS's
  BertLMHeadModel does, LM (stage 2) does not, as HF's causal-LM loss.
- Reconstruction: the MAE's own loss, `xformer_jax.models.mae.reconstruction_loss` (it belongs to the
  port of HF's ViTMAEForPreTraining, which returns it).
"""
import math
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from xformer_jax.data.tokenizers import IGNORE_INDEX  # the label value the data pipeline and the objective write
from xformer_jax.models.matching import itc_similarities

__all__ = ["IGNORE_INDEX", "itc_loss", "itc_loss_sharded", "itm_loss", "itg_loss", "lm_loss", "total_loss"]



def _f32(x):
    return jnp.asarray(x, jnp.float32)


# ---------------------------------------------------------------------------------------- ITC

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
