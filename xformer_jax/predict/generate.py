"""Greedy and beam-search decoding for the decoder LLMs, from `inputs_embeds`, under `jax.jit`.

What stage 2 feeds: `inputs_embeds` = [projected queries; prompt token embeddings] with its
attention mask (left- or right-padded). The semantics are transformers' `generate` for a
decoder-only model given `inputs_embeds` only (so the result holds the new tokens only):
  * prompt position ids = cumsum(mask) - 1, 0 on padding; the k-th new token sits at
    (last prompt position id) + 1 + k, and the first new token is read from the logits of the last
    prompt slot, whatever its mask (a right-padded prompt behaves as it does in transformers);
  * `min_new_tokens`: the eos tokens are forbidden while fewer new tokens exist;
  * greedy: a row that produced eos is filled with `pad_token_id` afterwards;
  * beam search: transformers' vectorised beam search (`_beam_search`): 2 * num_beams (more with
    several eos ids) candidates per step, finished hypotheses scored log p / length ** length_penalty,
    `early_stopping` True / False / "never" with its stopping heuristics.
Shapes are static: the result is (batch * num_return_sequences, max_new_tokens) int32, filled with
`pad_token_id` after a sequence ends (transformers crops the common trailing padding instead, and
its beam search fills with eos when pad_token_id is 0, a quirk not copied).
The loop is a `lax.while_loop` that stops once every sequence is done; the KV cache holds
prompt + max_new_tokens slots.
"""
import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

NEG = -1.0e9  # transformers' "never pick this" score in beam search


def _eos_tuple(eos) -> tuple:
    if eos is None:
        return ()
    if isinstance(eos, int):
        return (eos,)
    return tuple(int(e) for e in eos)


def prompt_positions(attention_mask):
    """transformers' generate position ids for a prompt: cumsum(mask) - 1, 0 on padding."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.where(mask > 0, jnp.cumsum(mask, axis=1) - 1, 0)


def generate(model, params, inputs_embeds, attention_mask=None, *, max_new_tokens: int = 20, num_beams: int = 1,
             length_penalty: float = 1.0, early_stopping: Union[bool, str] = False, min_new_tokens: int = 0,
             eos_token_id: Union[None, int, Sequence[int]] = "config", pad_token_id: Optional[int] = None,
             num_return_sequences: int = 1):
    """New tokens (batch * num_return_sequences, max_new_tokens) int32 from `inputs_embeds` (batch, length, d).

    `model` is an `opt.OPTForCausalLM` / `llama.LlamaForCausalLM` (or anything with their interface).
    `eos_token_id` defaults to the model config's (pass None for no eos); `pad_token_id` defaults to
    the config's, else the first eos, else 0. `num_beams=1` is greedy decoding. Jitted; the module and
    the decoding settings are static arguments, so each combination compiles once.
    """
    if eos_token_id == "config":
        eos_token_id = model.config.eos_token_id
    eos = _eos_tuple(eos_token_id)
    if pad_token_id is None:
        pad_token_id = model.config.pad_token_id
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, got num_beams={num_beams}, "
                         f"num_return_sequences={num_return_sequences}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    inputs_embeds = jnp.asarray(inputs_embeds)
    if attention_mask is None:
        attention_mask = jnp.ones(inputs_embeds.shape[:2], jnp.int32)
    return _generate(params, inputs_embeds, jnp.asarray(attention_mask, jnp.int32), model=model,
                     max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
                     length_penalty=float(length_penalty), early_stopping=early_stopping,
                     min_new_tokens=int(min_new_tokens), eos=eos, pad=int(pad_token_id),
                     num_return_sequences=int(num_return_sequences))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_beams", "length_penalty",
                                             "early_stopping", "min_new_tokens", "eos", "pad",
                                             "num_return_sequences"))
def _generate(params, inputs_embeds, attention_mask, *, model, max_new_tokens, num_beams, length_penalty,
              early_stopping, min_new_tokens, eos, pad, num_return_sequences):
    batch, length = inputs_embeds.shape[:2]
    positions = prompt_positions(attention_mask)
    cache = model.init_cache(batch, length + max_new_tokens)
    out = model.apply({"params": params}, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                      position_ids=positions, cache=cache)
    next_position = positions[:, -1] + 1  # where the first new token sits

    def step(cache, tokens, t, rows_position):
        """Logits for `tokens` (rows,) fed at step t (0-based count of new tokens before them)."""
        out = model.apply({"params": params}, input_ids=tokens[:, None], position_ids=(rows_position + t)[:, None],
                          cache=cache)
        return out["logits"][:, -1], out["cache"]

    def forbid_eos(scores, t):
        if not eos or min_new_tokens <= 0:
            return scores
        is_eos = jnp.isin(jnp.arange(scores.shape[-1]), jnp.asarray(eos))
        return jnp.where((t < min_new_tokens) & is_eos, -jnp.inf, scores)

    settings = dict(step=step, forbid_eos=forbid_eos, max_new_tokens=max_new_tokens, eos=eos, pad=pad)
    logits = out["logits"][:, -1]
    if num_beams == 1:
        return _greedy(logits, out["cache"], next_position, **settings)
    return _beam_search(logits, out["cache"], next_position, num_beams=num_beams, length_penalty=length_penalty,
                        early_stopping=early_stopping, num_return_sequences=num_return_sequences, **settings)


def _skip_if(done, fn, cache, *args):
    """fn(cache, *args) -> (logits, cache) unless done (then zeros and the cache unchanged)."""
    def skip(cache, *args):
        logits_shape = jax.eval_shape(fn, cache, *args)[0]
        return jnp.zeros(logits_shape.shape, logits_shape.dtype), cache
    return jax.lax.cond(done, skip, fn, cache, *args)


def _greedy(logits, cache, next_position, *, step, forbid_eos, max_new_tokens, eos, pad):
    batch = logits.shape[0]
    eos_ids = jnp.asarray(eos if eos else (-1,))
    state = dict(t=jnp.zeros((), jnp.int32), tokens=jnp.full((batch, max_new_tokens), pad, jnp.int32),
                 unfinished=jnp.ones((batch,), bool), logits=logits, cache=cache, done=jnp.zeros((), bool))

    def body(s):
        t = s["t"]
        token = jnp.argmax(forbid_eos(s["logits"], t), axis=-1).astype(jnp.int32)
        unfinished = s["unfinished"]
        if eos:
            token = jnp.where(unfinished, token, pad)
            unfinished = unfinished & ~jnp.isin(token, eos_ids)
        tokens = s["tokens"].at[:, t].set(token)
        done = ~jnp.any(unfinished) | (t + 1 >= max_new_tokens)
        logits, cache = _skip_if(done, lambda c, tok: step(c, tok, t, next_position), s["cache"], token)
        return dict(t=t + 1, tokens=tokens, unfinished=unfinished, logits=logits, cache=cache, done=done)

    state = jax.lax.while_loop(lambda s: ~s["done"], body, state)
    return state["tokens"]


def _gather_beams(x, index):
    """x (batch, beams, ...) rows picked per batch by index (batch, k)."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _beam_search(logits, cache, next_position, *, step, forbid_eos, max_new_tokens, eos, pad, num_beams,
                 length_penalty, early_stopping, num_return_sequences):
    batch, vocab = logits.shape
    k, steps = num_beams, max_new_tokens
    keep = max(2, 1 + len(eos)) * k  # candidates kept per step
    top_num_beam_mask = jnp.arange(keep) < k
    eos_ids = jnp.asarray(eos if eos else (-1,))
    rows_position = jnp.repeat(next_position, k)
    # The prompt was run once per batch row; every beam starts from it.
    state = dict(
        t=jnp.zeros((), jnp.int32),
        running=jnp.full((batch, k, steps), pad, jnp.int32),
        running_scores=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG).astype(jnp.float32), (batch, 1)),
        sequences=jnp.full((batch, k, steps), pad, jnp.int32),
        scores=jnp.full((batch, k), NEG, jnp.float32),
        finished=jnp.zeros((batch, k), bool),
        improvable=jnp.ones((batch, 1), bool),
        logits=jnp.repeat(logits, k, axis=0), cache=cache.repeat(k), done=jnp.zeros((), bool))

    def body(s):
        t = s["t"]
        log_probs = forbid_eos(jax.nn.log_softmax(s["logits"].astype(jnp.float32), axis=-1), t)
        log_probs = log_probs.reshape(batch, k, vocab) + s["running_scores"][:, :, None]
        top_log_probs, top_index = jax.lax.top_k(log_probs.reshape(batch, k * vocab), keep)
        source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        candidates = _gather_beams(s["running"], source).at[:, :, t].set(token)
        hits = jnp.isin(token, eos_ids) | (t + 1 >= steps)  # eos or max length

        # The best num_beams unfinished candidates keep running.
        running_log_probs = top_log_probs + hits.astype(jnp.float32) * NEG
        _, chosen = jax.lax.top_k(running_log_probs, k)
        running = _gather_beams(candidates, chosen)
        running_scores = _gather_beams(running_log_probs, chosen)
        running_source = _gather_beams(source, chosen)

        # Candidates among the top num_beams that just finished join the finished hypotheses.
        final = top_log_probs / ((t + 1).astype(jnp.float32) ** length_penalty)
        full = jnp.all(s["finished"], axis=-1, keepdims=True) & (early_stopping is True)
        final = final + full.astype(jnp.float32) * NEG
        final = final + (~s["improvable"]).astype(jnp.float32) * NEG
        just_finished = hits & top_num_beam_mask[None]
        final = final + (~just_finished).astype(jnp.float32) * NEG
        merged_scores = jnp.concatenate([s["scores"], final], axis=1)
        _, best = jax.lax.top_k(merged_scores, k)
        sequences = _gather_beams(jnp.concatenate([s["sequences"], candidates], axis=1), best)
        scores = _gather_beams(merged_scores, best)
        finished = _gather_beams(jnp.concatenate([s["finished"], just_finished], axis=1), best)

        # Could a running beam still beat the worst finished one?
        length = steps if (early_stopping == "never" and length_penalty > 0.0) else t + 1
        best_running = running_scores[:, :1] / (jnp.asarray(length, jnp.float32) ** length_penalty)
        worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), NEG)
        improvable = s["improvable"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        done = ~(jnp.any(improvable) & ~(jnp.all(finished) & (early_stopping is True)) & ~jnp.all(hits))
        done = done | (t + 1 >= steps)

        rows = (jnp.arange(batch)[:, None] * k + running_source).reshape(-1)
        fed = running[:, :, t].reshape(-1)
        logits, cache = _skip_if(done, lambda c, tok: step(c.gather(rows), tok, t, rows_position), s["cache"], fed)
        return dict(t=t + 1, running=running, running_scores=running_scores, sequences=sequences, scores=scores,
                    finished=finished, improvable=improvable, logits=logits, cache=cache, done=done)

    state = jax.lax.while_loop(lambda s: ~s["done"], body, state)
    return state["sequences"][:, :num_return_sequences].reshape(batch * num_return_sequences, steps)
