"""Each stage's objective in one place, read top to bottom (as LAVIS's `Blip2Qformer.forward` or
big_vision's `loss_fn`): the model's forward returns features, logits and reconstructions; here they
become the loss terms (`xformer_jax.losses`) and their weighted sum.

`make_stage1_loss` / `make_stage2_loss` build loss(params, frozen, batch, rng, train=True) ->
(total, metrics); `train.steps.make_train_step` differentiates it.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

from xformer_jax import losses
from xformer_jax.models import mae as mae_lib
from xformer_jax.models import xformer

ITC_GRAD_MODES = ("global", "local")


def loss_weights(loss_config: ml_collections.ConfigDict, terms: tuple) -> dict:
    weights = {k: float(v) for k, v in loss_config.weights.to_dict().items()}
    unknown = sorted(set(weights) - set(terms) - {"rec"})
    if unknown:
        raise ValueError(f"config.loss.weights has unknown terms {unknown}; known: {sorted(terms)}")
    return {k: v for k, v in weights.items() if k in terms}


def dropout_rngs(rng, train: bool) -> dict:
    """The "dropout" rng of a training forward (folded from the step's key, so the masking and ITM keys
    stay those of a run without dropout); none at evaluation, which turns dropout off."""
    return {"dropout": jax.random.fold_in(rng, 2)} if train else {}


def reconstruction(mae_config, pred, mask, mae_pixel_values):
    """The pixel MSE over masked patches (mask 1) of the frozen MAE decoder's patches `pred` (B, N, p*p*3),
    against the MAE's targets (raw or, with norm_pix_loss, per-patch normalised pixels)."""
    return mae_lib.reconstruction_loss(pred, mae_pixel_values, mask, mae_config.patch_size, mae_config.norm_pix_loss)


def _metrics(total, terms: dict) -> dict:
    return {"loss": total, **{f"loss_{k}": v for k, v in terms.items()}}


def make_stage1_loss(model: xformer.Stage1Model, loss_config: ml_collections.ConfigDict, mesh) -> Callable:
    """ITC over the global batch (`config.loss.itc_grad` picks its gradient), ITM on the positive and
    hard-negative pairs, ITG, and (xformer) the reconstruction of masked patches from M'."""
    if loss_config.itc_grad not in ITC_GRAD_MODES:
        raise ValueError(f"config.loss.itc_grad={loss_config.itc_grad!r} is not one of {ITC_GRAD_MODES}")
    c = model.config
    weights = loss_weights(loss_config, ("itc", "itm", "itg", "rec") if c.fusion.reconstructs
                           else ("itc", "itm", "itg"))

    def loss_fn(params, frozen, batch, rng, train: bool = True):
        mask_rng, itm_rng = jax.random.split(rng)
        image_ids = batch.get("image_ids")
        out = model.apply({"params": {**params, **frozen}}, batch["pixel_values"], batch["input_ids"],
                          batch["attention_mask"], mae_pixel_values=batch.get("mae_pixel_values"),
                          mask_rng=mask_rng, itm_rng=itm_rng, image_ids=image_ids, rngs=dropout_rngs(rng, train))
        terms = {
            "itc": losses.itc_loss_sharded(out["image_embeds"], out["text_embeds"], out["temp"], mesh,
                                           mode=loss_config.itc_grad, label_smoothing=c.itc_label_smoothing,
                                           image_ids=image_ids),
            "itm": losses.itm_loss(out["itm_logits"], out["itm_labels"]),
            "itg": losses.itg_loss(out["itg_logits"], out["itg_ids"], batch["attention_mask"],
                                   c.itg_label_smoothing, pad_id=c.qformer.pad_token_id),
        }
        if c.fusion.reconstructs:
            terms["rec"] = reconstruction(c.mae, out["rec_pred"], out["rec_mask"], batch["mae_pixel_values"])
        total, terms = losses.total_loss(terms, weights)
        itm_accuracy = jnp.mean((jnp.argmax(out["itm_logits"], -1) == out["itm_labels"]).astype(jnp.float32))
        return total, {**_metrics(total, terms), "itm_accuracy": itm_accuracy, "temp": out["temp"]}
    return loss_fn


def make_stage2_loss(model) -> Callable:
    """The LLM's prefix LM loss over the text (the query positions predict nothing), plus the
    reconstruction weighted by `model.stage2_reconstruction_weight` when it is set."""
    c = model.config
    weights = {"lm": 1.0, "rec": c.reconstruction_weight}

    def loss_fn(params, frozen, batch, rng, train: bool = True):
        out = model.apply({"params": {**params, **frozen}}, batch["pixel_values"], batch["input_ids"],
                          batch["attention_mask"], mae_pixel_values=batch.get("mae_pixel_values"),
                          mask_rng=rng, rngs=dropout_rngs(rng, train))
        labels = batch["labels"]
        queries = out["logits"].shape[1] - labels.shape[1]
        query_labels = jnp.full((labels.shape[0], queries), losses.IGNORE_INDEX, labels.dtype)
        terms = {"lm": losses.lm_loss(out["logits"], jnp.concatenate([query_labels, labels], axis=1))}
        if c.reconstructs:
            terms["rec"] = reconstruction(c.mae, out["rec_pred"], out["rec_mask"], batch["mae_pixel_values"])
        total, terms = losses.total_loss(terms, {k: v for k, v in weights.items() if k in terms})
        return total, _metrics(total, terms)
    return loss_fn
