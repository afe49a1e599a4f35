"""How stage 1 scores image-text pairs and which pairs its ITM pass sees (LAVIS `Blip2Qformer.forward`).

The score is BLIP-2's: the best of the Q query embeddings against the text embedding, over temp. The
forward draws each row's hard negative from these scores and runs ITM on the 3B positive / negative
pairs; the ITC loss (`xformer_jax.losses`) reads the same scores.
"""
import jax
import jax.numpy as jnp

# Full-precision matmuls: on TPU the default would run float32 through one bf16 pass, and the
# similarities are divided by temp = 0.07, so their rounding error would be magnified 14x.
_HIGHEST = jax.lax.Precision.HIGHEST


def itc_similarities(image_feats, text_feats, temp):
    """(sim_i2t (B_img, B_txt), sim_t2i (B_txt, B_img)): max over queries of the dot product, / temp.

    image_feats (B_img, Q, D) and text_feats (B_txt, D) are expected l2-normalised (the model does
    that); the max over queries is BLIP-2's image-text score. Float32.
    """
    image_feats, text_feats = jnp.asarray(image_feats, jnp.float32), jnp.asarray(text_feats, jnp.float32)
    sim_q = jnp.einsum("iqd,td->itq", image_feats, text_feats, precision=_HIGHEST)
    sim_i2t = sim_q.max(axis=-1) / jnp.asarray(temp, jnp.float32)
    return sim_i2t, sim_i2t.T


def _sample_excluding(key, sim, excluded):
    """One column per row from softmax(sim) restricted to the columns not excluded.

    `categorical` normalises its logits, so the masked float32 sims are log(softmax) up to a
    per-row constant; excluded columns are -inf and can never be drawn. A row with every column
    excluded falls back to a uniform draw over all columns but its own positive (the diagonal).
    """
    sim = jnp.asarray(jax.lax.stop_gradient(sim), jnp.float32)
    diagonal = jnp.eye(sim.shape[0], dtype=bool)
    has_candidate = jnp.any(~excluded, axis=1, keepdims=True)
    logits = jnp.where(has_candidate,
                       jnp.where(excluded, -jnp.inf, sim),
                       jnp.where(diagonal, -jnp.inf, 0.0))
    return jax.random.categorical(key, logits, axis=-1)


def sample_hard_negatives(key, sim_i2t, sim_t2i, image_ids=None):
    """(neg_text_idx (B,) per image, neg_image_idx (B,) per text), indices into the global batch.

    sim_i2t / sim_t2i are the global (B, B) ITC similarities (no gradient flows). Drawn from
    softmax(sim) in float32 with `jax.random.categorical`, so LAVIS's fp16 `torch.multinomial` NaN
    failure cannot happen. The positive (the diagonal) is never drawn; with `image_ids`, no pair
    showing the same image is drawn either. If every other pair of a row shows the same image, that
    row draws uniformly among the other pairs (those are then false negatives, but the ITM batch
    keeps its shape and stays finite). Needs B >= 2.
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
    """(P, Q, 2) itm_head outputs of the query tokens -> (P, 2) float32: BLIP-2 averages over queries."""
    return jnp.asarray(query_logits, jnp.float32).mean(axis=1)
