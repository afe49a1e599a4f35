"""The parts every run of the study shares, pretrained once on the synthetic training split: small towers and a
small OPT mean nothing with random weights.
  towers  MAE masked reconstruction and a CLIP-style contrastive vision tower (`pretrain`);
  llm     a byte-level BPE (`data.bpe`) and causal-LM pretraining of the small OPT on texts
          "DESCRIPTION</s>TARGET": the description is the scene's complete description (`synthetic.describe`),
          the target one of its captions after BLIP-2's "a photo of" prompt, or "Question: Q Short answer: A"
          (the loss is on the target only; each description is encoded once for all its targets). The LLM
          so learns to describe and to answer from whatever precedes its bos. Stage 2
          (captions only, "a photo of " prompt, as BLIP-2) puts the queries where the description stood, so
          zero-shot VQA with the queries as prefix asks the LLM what it learned to do.
Also the study's run lengths (`Budget`, `scaled`).
"""
import copy
import dataclasses
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np

from xformer_jax import factory
from xformer_jax.convert import pretrained
from xformer_jax.data import bpe, config as data_config, pipeline, synthetic
from xformer_jax.data.tokenizers import LLMTokenizer
from xformer_jax.losses import IGNORE_INDEX
from xformer_jax.models import stage2
from xformer_jax.predict.captions import CAPTION_PROMPT, VQA_PROMPT
from xformer_jax.proj.synthetic import cache, pretrain, scenes

@dataclasses.dataclass(frozen=True)
class Budget:
    """Pretraining and decoding settings of a recipe run (sizes and training steps live in the configs)."""
    tower_steps: int = 300  # pretraining steps per tower
    tower_batch_size: int = 32  # larger than the stage-1 batch: contrastive negatives must differ in more than colour
    llm_steps: int = 400  # causal-LM pretraining steps of the small OPT
    llm_batch_size: int = 8  # description rows per step, each with up to 8 of its captions and questions
    llm_question_rounds: int = 2  # more question sets per training scene for the LLM (`llm_texts`)
    llm_lr: float = 2e-3
    num_beams: int = 1  # decoding at evaluation (1 = greedy)
    eval_batch_size: int = 32


def scaled(stage1: ml_collections.ConfigDict, stage2: ml_collections.ConfigDict, budget: Budget,
           scale: float) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict, Budget]:
    """Every training length times `scale` (towers, LLM, stage 1, stage 2, with their warmups and evaluation
    intervals), for a machine faster than the 2-core CPU the default lengths fit: the same recipe, longer."""
    if not scale > 0:
        raise ValueError(f"scale={scale!r} must be > 0")
    if scale == 1:
        return stage1, stage2, budget
    stretch = lambda steps: max(1, round(steps * scale))  # noqa: E731
    configs = []
    for config in (stage1, stage2):
        config = copy.deepcopy(config)
        config.total_steps = stretch(config.total_steps)
        config.optim.warmup_steps = min(stretch(config.optim.warmup_steps), config.total_steps - 1)
        for key in ("checkpoint_every", "eval_every"):
            if config[key]:
                config[key] = stretch(config[key])
        configs.append(config)
    return (*configs, dataclasses.replace(budget, tower_steps=stretch(budget.tower_steps),
                                          llm_steps=stretch(budget.llm_steps)))


def pretrained_towers(config: ml_collections.ConfigDict, directory: str, steps: int, batch_size: int,
                      log: Callable[[str], None] = print) -> dict[str, str]:
    """{"vision", "mae"}: params files of the small towers, pretrained once on the training images."""
    spec = {"vision": config.model.vision.to_dict(), "mae": config.model.mae.to_dict(),
            "data": config.data.synthetic.to_dict(), "crop": data_config.crop_scale(config.data),
            "flip": data_config.flip_enabled(config.data), "steps": steps, "batch_size": batch_size,
            "seed": config.seed}
    paths, spec_name, reusable = cache.keyed_outputs(directory, spec, {"vision": "msgpack", "mae": "msgpack"})
    if reusable:
        return paths
    os.makedirs(directory, exist_ok=True)
    model_config = factory.stage1_config(with_fusion(config.model, "xformer"))
    config = copy.deepcopy(config)
    config.batch_size = config.data.batch_size = batch_size
    batches = pipeline.make_train_iterator(config)
    mae_params, mae_loss = pretrain.pretrain_mae(model_config.mae, (b["mae_pixel_values"] for b in batches), steps)
    clip_params, clip_loss = pretrain.pretrain_clip(model_config.vision, batches, model_config.qformer.vocab_size,
                                                    steps)
    pretrained.save_params(paths["mae"], mae_params)
    pretrained.save_params(paths["vision"], clip_params)
    cache.write_spec(directory, spec, spec_name)
    log(f"  towers: MAE loss {mae_loss[0]:.3f} -> {np.mean(mae_loss[-10:]):.3f}, "
        f"CLIP contrastive {clip_loss[0]:.3f} -> {np.mean(clip_loss[-10:]):.3f}")
    return paths


def with_fusion(model: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
    """A copy of config.model with another fusion kind (an MAE-free variant still pretrains the MAE)."""
    model = copy.deepcopy(model)
    model.fusion.kind = kind
    return model


def llm_texts(paths: dict, seed: int = 0, question_rounds: int = 0) -> list[tuple[str, str]]:
    """(description, target) pairs from the training split: each image's complete description
    (`synthetic.describe`) paired with each of its captions (after the caption prompt) and with each of its
    questions and answers, plus `question_rounds` more sets of questions per training scene drawn by the
    dataset's own generator (`synthetic.questions`; text only, so other pairs and orders of the same
    training scenes cost no images)."""
    entries = scenes.split_images(paths, "train")
    by_image = dict(zip((e["image"] for e in entries), scenes.scenes_of(paths, [e["image_id"] for e in entries])))
    descriptions = {image: synthetic.describe(scene) for image, scene in by_image.items()}
    pairs = [(descriptions[e["image"]], f"{CAPTION_PROMPT} {e['caption']}")
             for e in cache.load_json(paths["caption_train"])]
    questions = [(e["image"], e["question"], e["answer"][0]) for e in cache.load_json(paths["vqa_train"])]
    for round_ in range(question_rounds):
        for n, (image, scene) in enumerate(by_image.items()):
            rng = np.random.default_rng([seed, n, round_, 1])  # four entries: never a dataset example's stream
            questions += [(image, qa.question, qa.answer) for qa in synthetic.questions(scene, rng)]
    pairs += [(descriptions[image], f"{VQA_PROMPT.format(question)} {answer}") for image, question, answer in questions]
    return pairs


def encode_texts(tokenizer: LLMTokenizer, pairs: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
    """(description, target) pairs as rows: description tokens, bos, target tokens, "\\n"; right-padded to
    the longest (a multiple of 8). The labels are the target tokens only: the description is context, as
    the queries will be. (Labelling only the answer after the prompt was tried: the LLM then never learned
    to read the description in 400 steps, colour 16% against 65%; the question's own words, which name the
    scene's groups, teach it to look there.)"""
    rows = [(tokenizer.encode(d) + [tokenizer.bos_id], tokenizer.encode(t + "\n")) for d, t in pairs]
    ids, mask, labels = _padded([c + t for c, t in rows], tokenizer.pad_id)
    for r, (context, _) in enumerate(rows):
        labels[r, :len(context)] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_shared_contexts(tokenizer: LLMTokenizer, pairs: Sequence[tuple[str, str]],
                           targets_per_context: int = 8) -> dict[str, np.ndarray]:
    """The pairs grouped by description, for `pretrain.shared_context_logits`: the same texts and labels
    as `encode_texts` with each description encoded once per `targets_per_context` of its targets (a
    scene has 5-7; a description that several scenes share is repeated). context_ids / context_mask
    (N, Lc); target_ids, target_mask, target_labels (N, targets_per_context, Lt): bos, target tokens,
    "\\n" (a padded row has no tokens and no labels)."""
    grouped: dict[str, list[list[int]]] = {}
    for description, target in pairs:
        grouped.setdefault(description, []).append([tokenizer.bos_id] + tokenizer.encode(target + "\n"))
    contexts = [(description, targets[start:start + targets_per_context])
                for description, targets in grouped.items() for start in range(0, len(targets), targets_per_context)]
    context_ids, context_mask, _ = _padded([tokenizer.encode(d) for d, _ in contexts], tokenizer.pad_id)
    rows = [targets[k] if k < len(targets) else [] for _, targets in contexts for k in range(targets_per_context)]
    ids, mask, labels = _padded(rows, tokenizer.pad_id)
    labels[:, 0] = IGNORE_INDEX  # bos is context, not a target
    shape = (len(contexts), targets_per_context, ids.shape[1])
    return {"context_ids": context_ids, "context_mask": context_mask, "target_ids": ids.reshape(shape),
            "target_mask": mask.reshape(shape), "target_labels": labels.reshape(shape)}


def shared_context_batch(tokens: dict[str, np.ndarray], rows: Sequence[int]) -> dict[str, np.ndarray]:
    """The `pretrain.shared_context_logits` batch of contexts `rows` of `encode_shared_contexts`'s arrays:
    their targets flattened to one row each, with the context row each one continues."""
    per_context = tokens["target_ids"].shape[1]
    batch = {k: v[np.asarray(rows)] for k, v in tokens.items()}
    return {**{k: v.reshape(len(rows) * per_context, -1) for k, v in batch.items() if k.startswith("target")},
            "context_ids": batch["context_ids"], "context_mask": batch["context_mask"],
            "context_of": np.repeat(np.arange(len(rows)), per_context)}


def _padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, mask, labels = ids where mask else IGNORE_INDEX) of token rows, right-padded to the longest
    (a multiple of 8)."""
    width = -(-max(map(len, rows)) // 8) * 8
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
    return ids, mask, np.where(mask > 0, ids, IGNORE_INDEX).astype(np.int32)


def pretrained_llm(config: ml_collections.ConfigDict, paths: dict, directory: str, budget: Budget,
                   log: Callable[[str], None] = print) -> dict[str, str]:
    """{"tokenizer", "llm"}: a BPE trained on the training text and the small OPT (config.model.llm of a
    stage-2 config) pretrained on `llm_texts`, once."""
    spec = {"llm": config.model.llm.to_dict(), "data": config.data.synthetic.to_dict(), "steps": budget.llm_steps,
            "batch_size": budget.llm_batch_size, "lr": budget.llm_lr, "seed": config.seed, "loss": "targets",
            "caption_prompt": CAPTION_PROMPT, "description": "synthetic.describe", "batches": "shared contexts",
            "question_rounds": budget.llm_question_rounds}
    out, spec_name, reusable = cache.keyed_outputs(directory, spec, {"tokenizer": "json", "llm": "msgpack"})
    if reusable:
        return out
    os.makedirs(directory, exist_ok=True)
    pairs = llm_texts(paths, config.seed, budget.llm_question_rounds)
    bpe.train_bpe([text for pair in pairs for text in pair], out["tokenizer"], config.model.llm.vocab_size)
    tokens = encode_shared_contexts(LLMTokenizer(out["tokenizer"]), pairs)
    longest = int(tokens["context_mask"].sum(1).max() + tokens["target_mask"].sum(2).max())
    if longest > config.model.llm.max_position_embeddings:
        raise ValueError(f"the LLM's pretraining texts reach {longest} tokens but "
                         f"config.model.llm.max_position_embeddings={config.model.llm.max_position_embeddings}")
    rng = np.random.default_rng(config.seed)
    context_rows = tokens["context_ids"].shape[0]  # a description with more targets than a row holds spans two
    per_batch = min(budget.llm_batch_size, context_rows)

    def batches():  # epochs of shuffled context rows, each with its targets
        while True:
            order = rng.permutation(context_rows)
            for start in range(0, context_rows - per_batch + 1, per_batch):
                yield shared_context_batch(tokens, order[start:start + per_batch])
    llm = stage2.llm_module(factory.stage2_config(config.model).llm)
    params, history = pretrain.pretrain_llm(llm, batches(), budget.llm_steps, lr=budget.llm_lr, seed=config.seed)
    pretrained.save_params(out["llm"], params)
    cache.write_spec(directory, spec, spec_name)
    log(f"  llm: {len(pairs)} texts, LM loss {history[0]:.3f} -> {np.mean(history[-10:]):.3f}")
    return out


@dataclasses.dataclass
class Parts:
    """What every run of one benchmark shares: the dataset's paths, the towers, the tokenizer and the LLM."""
    paths: dict
    towers: dict
    llm: dict


def prepare_parts(stage1: ml_collections.ConfigDict, stage2_base: ml_collections.ConfigDict, directory: str,
                  budget: Budget, timer: cache.Timer) -> Parts:
    """The dataset (at stage1.data.path), the towers (directory/towers) and the LLM (directory/llm)."""
    with timer("synthetic data"):
        paths = scenes.dataset(stage1)
    with timer("tower pretraining"):
        towers = pretrained_towers(stage1, os.path.join(directory, "towers"), budget.tower_steps,
                                   budget.tower_batch_size, timer.log)
    with timer("LLM pretraining"):
        llm_config = copy.deepcopy(stage2_base)
        llm_config.data.synthetic = copy.deepcopy(stage1.data.synthetic)
        llm = pretrained_llm(llm_config, paths, os.path.join(directory, "llm"), budget, timer.log)
    return Parts(paths, towers, llm)
