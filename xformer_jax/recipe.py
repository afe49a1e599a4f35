"""The end-to-end recipe on the synthetic benchmark: pretrained parts, stage 1, stage 2, zero-shot evaluation.

launch/demo.py runs it once; benchmarks/mini_paper.py runs it per fusion variant and seed, sharing the
parts. Small towers and a small OPT mean nothing with random weights, so the parts are pretrained first,
on the synthetic training split only:
  towers  MAE masked reconstruction and a CLIP-style contrastive vision tower (`pretrain`);
  llm     a byte-level BPE (`data.bpe`) and causal-LM pretraining of the small OPT on texts
          "DESCRIPTION</s>TARGET": the description is the scene's complete description (`synthetic.describe`),
          the target one of its captions after BLIP-2's "a photo of" prompt, or "Question: Q Short answer: A"
          (the loss is on the target only; each description is encoded once for all its targets). The LLM
          so learns to describe and to answer from whatever precedes its bos. Stage 2
          (captions only, "a photo of " prompt, as BLIP-2) puts the queries where the description stood, so
          zero-shot VQA with the queries as prefix asks the LLM what it learned to do.
Every phase leaves its output in a directory with a spec of what made it; a rerun with the same spec
reuses it (training resumes or restores through `loop.train`).
"""
import collections
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time
from typing import Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from xformer_jax import pretrain, rundir
from xformer_jax.data import bpe, pipeline, synthetic
from xformer_jax.data import config as data_config
from xformer_jax.data.tokenizers import LLMTokenizer
from xformer_jax.data.transforms import clean_caption
from xformer_jax.eval import attributes, probes
from xformer_jax.eval.score import score
from xformer_jax.losses import IGNORE_INDEX
from xformer_jax.models import mae as mae_lib
from xformer_jax.models import stage2, vit
from xformer_jax.predict import benchmarks, inputs
from xformer_jax.predict.captions import CAPTION_PROMPT, VQA_PROMPT, Captioner
from xformer_jax.train import build, loop

SPEC = "spec.json"
# The demo evaluates both splits; nothing in the recipe is chosen by looking at either, and docs/demo.md reports both.
EVAL_SPLITS = ("val", "test")
SHUFFLE_SEED = 0  # which other image each question is asked of in the shuffled-image baseline


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


def dataset(config: ml_collections.ConfigDict) -> dict:
    """Writes (or reuses) the synthetic dataset config.data describes; returns its paths."""
    return synthetic.write_dataset(config.data.path, **config.data.synthetic.to_dict())


def _reusable(directory: str, spec: dict, outputs: Sequence[str], spec_name: str = SPEC) -> bool:
    try:
        with open(os.path.join(directory, spec_name)) as f:
            same = json.load(f) == json.loads(json.dumps(spec))
    except (OSError, ValueError):
        return False
    return same and all(os.path.exists(os.path.join(directory, name)) for name in outputs)


def _digest(spec: dict) -> str:
    """Names outputs after their spec, so that a run trained on other parts never passes for current."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]


def _write_spec(directory: str, spec: dict, spec_name: str = SPEC) -> None:
    tmp = os.path.join(directory, spec_name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=2)
    os.replace(tmp, os.path.join(directory, spec_name))


def _keyed_outputs(directory: str, spec: dict, extensions: dict[str, str]) -> tuple[dict[str, str], str, bool]:
    """Output paths named after the spec's digest, the name of that spec's own spec file (written last, so
    its presence means the outputs are complete) and whether they can be reused. One spec file per digest:
    parts pretrained under other settings (another seed) stay reusable beside these."""
    digest = _digest(spec)
    paths = {name: os.path.join(directory, f"{name}-{digest}.{ext}") for name, ext in extensions.items()}
    spec_name = f"spec-{digest}.json"
    return paths, spec_name, _reusable(directory, spec, list(map(os.path.basename, paths.values())), spec_name)


def pretrained_towers(config: ml_collections.ConfigDict, directory: str, steps: int, batch_size: int,
                      log: Callable[[str], None] = print) -> dict[str, str]:
    """{"vision", "mae"}: params files of the small towers, pretrained once on the training images."""
    spec = {"vision": config.model.vision.to_dict(), "mae": config.model.mae.to_dict(),
            "data": config.data.synthetic.to_dict(), "crop": data_config.crop_scale(config.data),
            "flip": data_config.flip_enabled(config.data), "steps": steps, "batch_size": batch_size,
            "seed": config.seed}
    paths, spec_name, reusable = _keyed_outputs(directory, spec, {"vision": "msgpack", "mae": "msgpack"})
    if reusable:
        return paths
    os.makedirs(directory, exist_ok=True)
    model_config = build.stage1_config(_with_fusion(config.model, "xformer"))
    config = copy.deepcopy(config)
    config.batch_size = config.data.batch_size = batch_size
    batches = pipeline.make_train_iterator(config)
    mae_params, mae_loss = pretrain.pretrain_mae(model_config.mae, (b["mae_pixel_values"] for b in batches), steps)
    clip_params, clip_loss = pretrain.pretrain_clip(model_config.vision, batches, model_config.qformer.vocab_size,
                                                    steps)
    build.save_params(paths["mae"], mae_params)
    build.save_params(paths["vision"], clip_params)
    _write_spec(directory, spec, spec_name)
    log(f"  towers: MAE loss {mae_loss[0]:.3f} -> {np.mean(mae_loss[-10:]):.3f}, "
        f"CLIP contrastive {clip_loss[0]:.3f} -> {np.mean(clip_loss[-10:]):.3f}")
    return paths


def tower_probes(config: ml_collections.ConfigDict, paths: dict, towers: dict, batch_size: int = 64) -> dict:
    """{"clip" | "mae": {task: {"probe", "majority"}}}: linear probes (`eval.probes`) of the frozen towers'
    patch tokens (CLIP: the layer the Q-Former reads; MAE: the unmasked encoder output), fitted on the
    training images and scored on the validation and test images together."""
    model_config = build.stage1_config(_with_fusion(config.model, "xformer"))
    clip, encoder = vit.VisionTransformer(model_config.vision), mae_lib.MAEEncoder(model_config.mae)
    clip_params = build.load_params(towers["vision"], "the pretrained vision tower")
    mae_params = build.load_params(towers["mae"], "the pretrained MAE")["encoder"]
    patch_tokens = {
        "clip": jax.jit(lambda x: clip.apply({"params": clip_params}, x["pixel_values"], method=clip.features)[:, 1:]),
        "mae": jax.jit(lambda x: encoder.apply(
            {"params": mae_params}, x["mae_pixel_values"], mask_ratio=0.0,
            noise=mae_lib.identity_noise(x["mae_pixel_values"].shape[0], model_config.mae.num_patches),
        )["last_hidden_state"][:, 1:]),
    }
    features = {name: lambda pixels, fn=fn: probes.cell_features(np.asarray(fn(pixels)))
                for name, fn in patch_tokens.items()}
    return _probe_features(paths, pipeline.image_transform(config.data, train=False), features, batch_size)[0]


def prefix_probes(stage2_dir: str, paths: dict, out_dir: Optional[str] = None, batch_size: int = 64) -> dict:
    """{"prefix": {task: {"probe", "majority"}}, "query_cosine": float}: the towers' linear probes applied to
    what a stage-2 run's LLM reads, its query prefix after `llm_proj` (Q x LLM width per image, flattened):
    which of what the towers see the queries pass on to the LLM; and the mean cosine similarity between
    two queries of one held-out image (1.0: every query says the same, the LLM reads one token Q times).
    With out_dir, written there as prefix_probes.json and reused while the run is unchanged."""
    spec = {"run": _as_json(rundir.read_config(stage2_dir)), "batch_size": batch_size, "tasks": list(probes.TASKS)}
    if out_dir and _reusable(out_dir, spec, ["prefix_probes.json"]):
        return load_json(os.path.join(out_dir, "prefix_probes.json"))
    captioner = Captioner.from_workdir(stage2_dir, num_beams=1)
    model = captioner.model
    prefix = jax.jit(lambda px, mae_px: model.apply({"params": captioner.params}, px, mae_px, method=model.prefix)[0])
    flat = lambda pixels: np.asarray(prefix(pixels["pixel_values"], pixels["mae_pixel_values"])).reshape(  # noqa: E731
        len(pixels["pixel_values"]), -1)
    results, held_out = _probe_features(paths, captioner.transform, {"prefix": flat}, batch_size)
    queries = held_out["prefix"].reshape(len(held_out["prefix"]), model.config.qformer.num_query_tokens, -1)
    unit = queries / np.linalg.norm(queries, axis=-1, keepdims=True)
    cosines = np.einsum("bqd,bkd->bqk", unit, unit)
    num = queries.shape[1]
    result = {**results, "query_cosine": float(np.mean((cosines.sum((1, 2)) - num) / (num * num - num)))}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        _write_json(os.path.join(out_dir, "prefix_probes.json"), result)
        _write_spec(out_dir, spec)
    return result


def _probe_features(paths: dict, transform, features: dict[str, Callable], batch_size: int) -> tuple[dict, dict]:
    """({name: probes.probe_all}, {name: held-out features}) for each features[name] (a batch of pixel views
    -> (B, F) numpy), fitted on the training images and scored on the validation and test images together."""
    def encode(splits):
        entries = [e for split in splits for e in split_images(paths, split)]
        out = {name: [] for name in features}
        for start in range(0, len(entries), batch_size):
            views = [transform(image, None) for image in load_images(entries[start:start + batch_size], paths["root"])]
            pixels = {k: np.stack([v[k] for v in views]) for k in views[0]}
            for name, fn in features.items():
                out[name].append(fn(pixels))
        return {k: np.concatenate(v) for k, v in out.items()}, scenes_of(paths, [e["image_id"] for e in entries])

    (train, train_scenes), (held_out, held_out_scenes) = encode(["train"]), encode(EVAL_SPLITS)
    return ({name: probes.probe_all(train[name], train_scenes, held_out[name], held_out_scenes) for name in train},
            held_out)


def _with_fusion(model: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
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
    entries = split_images(paths, "train")
    scenes = dict(zip((e["image"] for e in entries), scenes_of(paths, [e["image_id"] for e in entries])))
    descriptions = {image: synthetic.describe(scene) for image, scene in scenes.items()}
    pairs = [(descriptions[e["image"]], f"{CAPTION_PROMPT} {e['caption']}") for e in load_json(paths["caption_train"])]
    questions = [(e["image"], e["question"], e["answer"][0]) for e in load_json(paths["vqa_train"])]
    for round_ in range(question_rounds):
        for n, (image, scene) in enumerate(scenes.items()):
            rng = np.random.default_rng([seed, n, round_, 1])  # four entries: never a dataset example's stream
            questions += [(image, qa.question, qa.answer) for qa in synthetic.questions(scene, rng)]
    pairs += [(descriptions[image], f"{VQA_PROMPT.format(question)} {answer}") for image, question, answer in questions]
    return pairs


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


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
    out, spec_name, reusable = _keyed_outputs(directory, spec, {"tokenizer": "json", "llm": "msgpack"})
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
    llm = stage2.llm_module(build.stage2_config(config.model).llm)
    params, history = pretrain.pretrain_llm(llm, batches(), budget.llm_steps, lr=budget.llm_lr, seed=config.seed)
    build.save_params(out["llm"], params)
    _write_spec(directory, spec, spec_name)
    log(f"  llm: {len(pairs)} texts, LM loss {history[0]:.3f} -> {np.mean(history[-10:]):.3f}")
    return out


def stage1_config(config: ml_collections.ConfigDict, towers: dict) -> ml_collections.ConfigDict:
    """A copy of a stage-1 config reading the pretrained towers, checkpointed at its end."""
    config = copy.deepcopy(config)
    for name, path in towers.items():
        config.model[name].params_file = path
    _checkpoint_at_end(config)
    return config


def stage2_config(config: ml_collections.ConfigDict, stage1: ml_collections.ConfigDict, llm: dict,
                  stage1_dir: str) -> ml_collections.ConfigDict:
    """A stage-2 config with stage 1's model, seed and data, the pretrained LLM, starting from stage1_dir
    (towers and Q-Former come from its checkpoint; config.model's weight sources are cleared so that
    nothing is loaded only to be replaced)."""
    config = copy.deepcopy(config)
    for section in ("vision", "mae", "qformer", "fusion"):
        config.model[section] = copy.deepcopy(stage1.model[section])
    config.model.vision.update(params_file="", hf_dir="")
    config.model.mae.update(params_file="", hf_dir="")
    config.model.qformer.bert_dir = ""
    config.seed = stage1.seed
    config.data.path = stage1.data.path
    config.data.synthetic = copy.deepcopy(stage1.data.synthetic)
    config.model.llm.params_file = llm["llm"]
    config.data.llm_tokenizer_path = llm["tokenizer"]
    config.data.prompt = CAPTION_PROMPT + " "
    config.init_from = stage1_dir
    _checkpoint_at_end(config)
    return config


def _checkpoint_at_end(config: ml_collections.ConfigDict) -> None:
    """One checkpoint, the last step's (what stage 2, evaluation and a rerun read); short runs log and
    warm up proportionally."""
    steps = config.total_steps
    config.checkpoint_every = steps
    config.log_every = min(config.log_every, max(steps // 10, 1))
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(steps // 5, 1))


def split_images(paths: dict, split: str) -> list[dict]:
    """One caption entry per image of a split (its "image" and "image_id"), in file order."""
    return list({e["image_id"]: e for e in load_json(paths[f"caption_{split}"])}.values())


def load_images(entries: Sequence[dict], root: str) -> list:
    """The RGB images of annotation entries ({"image": path relative to root})."""
    return inputs.load_images([os.path.join(root, e["image"]) for e in entries])


def evaluate(stage2_dir: str, paths: dict, out_dir: str, budget: Budget, split: str = "val") -> dict:
    """Zero-shot VQA (accuracy per question type), the same questions asked of other images
    (`shuffled_images`) and captioning (CIDEr-D, BLEU-4, caption facts) of a stage-2 run on a synthetic
    split, scored by `eval.score` from the official-format files it writes to out_dir: vqa_predictions.json,
    vqa_shuffled_images_predictions.json, caption_predictions.json and scores.json (reused when the run is
    unchanged)."""
    spec = {"run": _as_json(rundir.read_config(stage2_dir)), "split": split, "num_beams": budget.num_beams,
            "shuffled_images_seed": SHUFFLE_SEED}
    predictions = ("vqa", "vqa_shuffled_images", "caption")
    if _reusable(out_dir, spec, ["scores.json", *(f"{name}_predictions.json" for name in predictions)]):
        return load_json(os.path.join(out_dir, "scores.json"))
    os.makedirs(out_dir, exist_ok=True)
    captioner = Captioner.from_workdir(stage2_dir, num_beams=budget.num_beams, max_new_tokens=4)
    questions = benchmarks.read_vqa(paths[f"vqa_{split}"], paths["root"])
    answers = dict(annotations=paths[f"vqa_{split}_annotations"], questions_file=paths[f"vqa_{split}_questions"])
    scores = {name: benchmarks.answer_questions(captioner, asked, out_dir, budget.eval_batch_size, task="vqav2",
                                                clean=False, files=(f"{name}_predictions.json", ""), **answers)
              for name, asked in (("vqa", questions), ("vqa_shuffled_images", shuffled_images(questions)))}
    captioner.max_new_tokens = 32
    images, _ = benchmarks.read_captions(paths[f"caption_{split}"], paths["root"])
    scores["caption"] = benchmarks.caption(captioner, images, out_dir, budget.eval_batch_size,
                                           annotations=paths[f"caption_{split}_gt"],
                                           files=("caption_predictions.json", ""))
    scores["attributes"] = caption_attributes(paths, load_json(os.path.join(out_dir, "caption_predictions.json")))
    _write_json(os.path.join(out_dir, "scores.json"), scores)
    _write_spec(out_dir, spec)
    return scores


def shuffled_images(questions: list[benchmarks.Question], seed: int = SHUFFLE_SEED) -> list[benchmarks.Question]:
    """The questions, each asked of another image of the same split: every image's questions move together
    to the next image of a seeded random cycle through the split's images, so no question keeps its own.
    What the model answers then is what it answers without seeing the right image (the shuffled-image
    baseline: a model that looks loses what it read from the image; a blind one loses nothing)."""
    images = list(dict.fromkeys(q.image for q in questions))
    if len(images) < 2:
        raise ValueError(f"shuffling images needs questions about 2 or more images, got {len(images)}")
    cycle = [images[k] for k in np.random.default_rng(seed).permutation(len(images))]
    other = dict(zip(cycle, cycle[1:] + cycle[:1]))
    return [dataclasses.replace(q, image=other[q.image]) for q in questions]


def _most_frequent_answers(entries: list[dict]) -> dict[str, str]:
    counts: dict[str, collections.Counter] = {}
    for entry in entries:
        counts.setdefault(entry["question_type"], collections.Counter())[entry["answer"][0]] += 1
    return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


def blind_baselines(paths: dict, out_dir: str, split: str = "val") -> dict[str, dict]:
    """VQA scores of two answerers that never look at the image: "prior" answers each question type with
    its most frequent training answer; "best_constant" with the answer of each type most frequent on the
    split itself (the best single constant per type there: the bar a model has to clear by looking)."""
    questions = load_json(paths[f"vqa_{split}"])
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for name, answers in (("prior", _most_frequent_answers(load_json(paths["vqa_train"]))),
                          ("best_constant", _most_frequent_answers(questions))):
        path = os.path.join(out_dir, f"{name}_{split}_predictions.json")
        _write_json(path, [{"question_id": e["question_id"], "answer": answers[e["question_type"]]} for e in questions])
        results[name] = score("vqav2", path, paths[f"vqa_{split}_annotations"], paths[f"vqa_{split}_questions"])
    return results


def scenes_of(paths: dict, image_ids) -> list:
    """The synthetic scenes behind a written dataset's images (what generated text is checked against)."""
    seed = load_json(paths["info"])["seed"]
    return [synthetic.scene_of(seed, int(i)) for i in image_ids]


def caption_attributes(paths: dict, predictions: list[dict]) -> dict[str, float]:
    """`eval.attributes` scores of generated captions ({"image_id", "caption"}) against their scenes."""
    return attributes.attribute_scores([p["caption"] for p in predictions],
                                       scenes_of(paths, [p["image_id"] for p in predictions]))


def blind_caption(paths: dict, candidates: int = 200, scenes: int = 512) -> str:
    """The caption a blind model would do best to write for every image: among the most frequent training
    captions (cleaned as training cleans them), the one whose attribute score over training scenes is
    highest."""
    entries = load_json(paths["caption_train"])
    counts = collections.Counter(clean_caption(e["caption"]) for e in entries)
    pool = [caption for caption, _ in counts.most_common(candidates)]
    ids = list(dict.fromkeys(e["image_id"] for e in entries))[:scenes]
    return attributes.best_constant_caption(pool, scenes_of(paths, ids))


def llm_reads_descriptions(stage2_base: ml_collections.ConfigDict, parts: "Parts", split: str = "val",
                           batch_size: int = 64) -> dict[str, float]:
    """Percent of questions per type whose answer's first token is the pretrained LLM's most likely next
    token after "SCENE DESCRIPTION</s>Question: Q Short answer:": how well the LLM answers when the scene is
    described in words, the ceiling for queries that stand in for the description."""
    tokenizer = LLMTokenizer(parts.llm["tokenizer"])
    questions = load_json(parts.paths[f"vqa_{split}"])
    ids = {e["image"]: e["image_id"] for e in load_json(parts.paths[f"caption_{split}"])}
    scenes = scenes_of(parts.paths, [ids[q["image"]] for q in questions])
    tokens = encode_texts(tokenizer, [(synthetic.describe(scene), VQA_PROMPT.format(q["question"]))
                                      for scene, q in zip(scenes, questions)])
    last = tokens["attention_mask"].sum(1) - 2  # the prompt's last token; the newline follows it
    llm = stage2.llm_module(build.stage2_config(stage2_base.model).llm)
    params = build.load_params(parts.llm["llm"], "the pretrained LLM")
    logits = jax.jit(lambda ids, mask: llm.apply({"params": params}, input_ids=ids, attention_mask=mask)["logits"])
    predicted = np.concatenate([
        np.asarray(logits(tokens["input_ids"][i:i + batch_size], tokens["attention_mask"][i:i + batch_size]))
        [np.arange(len(last[i:i + batch_size])), last[i:i + batch_size]].argmax(-1)
        for i in range(0, len(questions), batch_size)])
    right = [int(p == tokenizer.encode(" " + q["answer"][0])[0]) for p, q in zip(predicted, questions)]
    kinds = {q["question_type"] for q in questions}
    return {"all": 100 * float(np.mean(right)),
            **{k: 100 * float(np.mean([r for r, q in zip(right, questions) if q["question_type"] == k]))
               for k in sorted(kinds)}}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


@dataclasses.dataclass
class Parts:
    """What every run of one benchmark shares: the dataset's paths, the towers, the tokenizer and the LLM."""
    paths: dict
    towers: dict
    llm: dict


def prepare_parts(stage1: ml_collections.ConfigDict, stage2_base: ml_collections.ConfigDict, directory: str,
                  budget: Budget, timer: "Timer") -> Parts:
    """The dataset (at stage1.data.path), the towers (directory/towers) and the LLM (directory/llm)."""
    with timer("synthetic data"):
        paths = dataset(stage1)
    with timer("tower pretraining"):
        towers = pretrained_towers(stage1, os.path.join(directory, "towers"), budget.tower_steps,
                                   budget.tower_batch_size, timer.log)
    with timer("LLM pretraining"):
        llm_config = copy.deepcopy(stage2_base)
        llm_config.data.synthetic = copy.deepcopy(stage1.data.synthetic)
        llm = pretrained_llm(llm_config, paths, os.path.join(directory, "llm"), budget, timer.log)
    return Parts(paths, towers, llm)


@dataclasses.dataclass
class Run:
    """One recipe run's outputs."""
    stage1_config: ml_collections.ConfigDict
    stage1_dir: str
    stage2_dir: str
    eval_dir: str  # eval_dir/SPLIT: `evaluate`'s files per evaluated split
    stage1_state: object
    scores: dict  # {split: `evaluate`'s scores}


def run(stage1: ml_collections.ConfigDict, stage2_base: ml_collections.ConfigDict, parts: Parts, run_dir: str,
        budget: Budget, timer: "Timer", splits: Sequence[str] = EVAL_SPLITS) -> Run:
    """Stage 1, stage 2 and the evaluation on `splits` of one model under run_dir (stage1/, stage2/, eval/)."""
    stage1_dir, stage2_dir, eval_dir = (os.path.join(run_dir, name) for name in ("stage1", "stage2", "eval"))
    config1 = stage1_config(stage1, parts.towers)
    config2 = stage2_config(stage2_base, config1, parts.llm, stage1_dir)
    for config, workdir in ((config1, stage1_dir), (config2, stage2_dir)):
        _check_same_run(config, workdir)
    with timer("stage 1"):  # a finished run is restored
        state = _finished(loop.train(config1, stage1_dir, eval_hook=_eval_hook(config1)), config1, stage1_dir)
    with timer("stage 2"):
        _finished(loop.train(config2, stage2_dir, eval_hook=_eval_hook(config2)), config2, stage2_dir)
    with timer("evaluation"):
        scores = {split: evaluate(stage2_dir, parts.paths, os.path.join(eval_dir, split), budget, split)
                  for split in splits}
    return Run(config1, stage1_dir, stage2_dir, eval_dir, state, scores)


def _eval_hook(config: ml_collections.ConfigDict):
    """The held-out losses (`eval/...` in metrics.jsonl) every config.eval_every steps, if set."""
    return loop.eval_losses(config, config.eval_batches) if config.eval_every else None


def _finished(state, config: ml_collections.ConfigDict, workdir: str):
    """loop.train returns normally on SIGTERM (preemption) with a checkpoint: stop there, not go on."""
    if int(state.step) < config.total_steps:
        raise SystemExit(f"{workdir}: stopped at step {int(state.step)} of {config.total_steps} (SIGTERM); "
                         "rerun the same command to continue")
    return state


def _check_same_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """loop.train resumes whatever workdir holds: refuse a workdir that a different config trained."""
    path = os.path.join(workdir, rundir.CONFIG_FILE)
    if os.path.exists(path) and _as_json(rundir.read_config(workdir)) != _as_json(config):
        raise ValueError(f"{path} was written by a different config (other sizes, steps or pretrained parts); "
                         "delete that directory or choose another workdir")


def _as_json(config: ml_collections.ConfigDict):
    """A config as the plain JSON value config.json holds (what two configs are compared by)."""
    return json.loads(config.to_json_best_effort())


class Timer:
    """Wall time per named phase (summed over repeats), logged as each phase ends."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self.log(f"{name}: {elapsed:.0f}s")
