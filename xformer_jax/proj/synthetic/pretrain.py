"""Short tower pretraining on local images, for when no pretrained CLIP / MAE checkpoint is at hand.

Frozen towers with random weights carry no meaning: a random MAE decoder barely reacts to its input
(so X-Former's reconstruction loss cannot move) and a random ViT gives the Q-Former near-identical
features. The demo and the tests therefore give their small towers a quick pretraining with the
project's own modules and losses: masked reconstruction for MAE, and a CLIP-style contrastive
objective for the vision tower against a small text encoder (the caption's bag of tokens).
"""
from typing import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xformer_jax import losses
from xformer_jax.models import layers, mae, vit


def _adamw_loop(loss_fn, params, batches: Iterator, steps: int, lr: float, seed: int):
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps), weight_decay=0.05)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key, history = jax.random.key(seed), []
    for i in range(steps):  # no per-step sync: the next batch is prepared while this step runs
        params, opt_state, loss = step(params, opt_state, next(batches), jax.random.fold_in(key, i))
        history.append(loss)
    return params, [float(loss) for loss in history]


def pretrain_mae(config: mae.MAEConfig, batches: Iterator[np.ndarray], steps: int, lr: float = 1.5e-3,
                 seed: int = 0):
    """Masked-reconstruction pretraining of encoder + decoder on NCHW pixel batches.

    Returns (params, per-step losses).
    """
    model = mae.MAEForPreTraining(config)
    first = next(batches)
    params = nn.unbox(model.init(jax.random.key(seed), first, mask_rng=jax.random.key(seed)))["params"]

    def loss_fn(params, pixels, key):
        return model.apply({"params": params}, pixels, mask_rng=key)["loss"]
    return _adamw_loop(loss_fn, params, _prepend(first, batches), steps, lr, seed)


class BagOfTokens(nn.Module):
    """The smallest text tower that can anchor a contrastive objective: mean token embedding + MLP."""
    vocab_size: int
    width: int

    @nn.compact
    def __call__(self, input_ids, attention_mask):
        emb = nn.Embed(self.vocab_size, self.width, name="embed")(input_ids)
        mask = attention_mask[..., None].astype(emb.dtype)
        pooled = (emb * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
        return nn.Dense(self.width, name="proj")(nn.gelu(nn.Dense(self.width, name="hidden")(pooled)))


class ContrastivePair(nn.Module):
    """Vision tower (its pooled CLS) and a bag-of-tokens text tower, projected to a shared space."""
    vision: vit.VisionConfig
    vocab_size: int
    embed_dim: int = 64

    @nn.compact
    def __call__(self, pixel_values, input_ids, attention_mask):
        tower = vit.VisionTransformer(self.vision, name="tower")
        image = layers.dense(self.embed_dim, ("embed", None), "image_proj")(tower(pixel_values)["pooler_output"])
        text = BagOfTokens(self.vocab_size, self.embed_dim, name="text")(input_ids, attention_mask)
        scale = self.param("log_scale", nn.initializers.constant(np.log(1 / 0.07)), ())
        return image, text, jnp.exp(scale)


def pretrain_clip(config: vit.VisionConfig, batches: Iterator[dict], vocab_size: int, steps: int,
                  lr: float = 1e-3, seed: int = 0):
    """CLIP-style contrastive pretraining of the vision tower on {pixel_values, input_ids,
    attention_mask} batches. Returns (the vision tower's params, per-step losses)."""
    model = ContrastivePair(config, vocab_size)
    first = next(batches)
    params = nn.unbox(model.init(jax.random.key(seed), first["pixel_values"], first["input_ids"],
                                 first["attention_mask"]))["params"]

    def loss_fn(params, batch, key):
        del key
        image, text, scale = model.apply({"params": params}, batch["pixel_values"], batch["input_ids"],
                                         batch["attention_mask"])
        normalize = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
        return losses.itc_loss(normalize(image)[:, None], normalize(text), 1.0 / scale, label_smoothing=0.0,
                               image_ids=batch.get("image_id"))
    params, history = _adamw_loop(loss_fn, params, _prepend(first, batches), steps, lr, seed)
    return params["tower"], history


def _prepend(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def shared_context_logits(llm: nn.Module, params, batch: dict):
    """Logits of every target row of a shared-context batch, each target reading only its own context.

    {context_ids, context_mask}: (C, Lc) right-padded contexts; {target_ids, target_mask}: (T, Lt) targets
    that continue them; context_of: (T,) the context row of each target. The contexts run once into a KV
    cache that each target then continues (positions go on from its context's last real token), so a
    scene description is encoded once for all its questions, exactly as if each target followed it alone.
    """
    contexts = batch["context_ids"]
    cache = llm.init_cache(contexts.shape[0], contexts.shape[1] + batch["target_ids"].shape[1], jnp.float32)
    cache = llm.apply({"params": params}, input_ids=contexts, attention_mask=batch["context_mask"],
                      cache=cache)["cache"]
    return llm.apply({"params": params}, input_ids=batch["target_ids"], attention_mask=batch["target_mask"],
                     cache=cache.gather(batch["context_of"]))["logits"]


def pretrain_llm(llm: nn.Module, batches: Iterator[dict], steps: int, lr: float = 1e-3, seed: int = 0):
    """Causal-LM pretraining of a small decoder (`opt.OPTForCausalLM` / `llama.LlamaForCausalLM`).

    Batches are texts {input_ids, attention_mask[, labels]}, the loss on the tokens `labels` names (-100
    elsewhere; by default every non-pad token after the first), or shared-context batches
    (`shared_context_logits`) with `target_labels`. Returns (params, per-step losses).
    """
    first = next(batches)
    shared = "context_ids" in first
    ids, mask = (first["context_ids"], first["context_mask"]) if shared else (first["input_ids"],
                                                                              first["attention_mask"])
    params = nn.unbox(llm.init(jax.random.key(seed), input_ids=ids, attention_mask=mask))["params"]

    def loss_fn(params, batch, key):
        del key
        if shared:
            return losses.lm_loss(shared_context_logits(llm, params, batch), batch["target_labels"])
        logits = llm.apply({"params": params}, input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"])["logits"]
        labels = batch.get("labels", jnp.where(batch["attention_mask"] > 0, batch["input_ids"], -100))
        return losses.lm_loss(logits, labels)
    return _adamw_loop(loss_fn, params, _prepend(first, batches), steps, lr, seed)
