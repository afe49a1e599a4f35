"""A stage-2 run of the study judged against what needs no image: zero-shot VQA and captions scored by the
official scorers from official-format files, against blind answerers, the same questions asked of other images,
the best blind caption and the LLM reading the scene's description in words; linear probes of the towers and of
the queries the LLM reads."""
import collections
import dataclasses
import os
from typing import Callable, Optional

import jax
import ml_collections
import numpy as np

from xformer_jax import factory, rundir
from xformer_jax.convert import pretrained
from xformer_jax.data import pipeline, synthetic
from xformer_jax.data.tokenizers import LLMTokenizer
from xformer_jax.data.transforms import clean_caption
from xformer_jax.eval.score import score
from xformer_jax.models import mae as mae_lib, stage2, vit
from xformer_jax.predict import benchmarks
from xformer_jax.predict.captions import Captioner, VQA_PROMPT
from xformer_jax.proj.synthetic import attributes, cache, parts as parts_lib, probes, scenes

# The demo evaluates both splits; nothing in the recipe is chosen by looking at either, and docs/demo.md reports both.
EVAL_SPLITS = ("val", "test")


SHUFFLE_SEED = 0  # which other image each question is asked of in the shuffled-image baseline


def evaluate(stage2_dir: str, paths: dict, out_dir: str, budget: parts_lib.Budget, split: str = "val") -> dict:
    """Zero-shot VQA (accuracy per question type), the same questions asked of other images
    (`shuffled_images`) and captioning (CIDEr-D, BLEU-4, caption facts) of a stage-2 run on a synthetic
    split, scored by `eval.score` from the official-format files it writes to out_dir: vqa_predictions.json,
    vqa_shuffled_images_predictions.json, caption_predictions.json and scores.json (reused when the run is
    unchanged)."""
    spec = {"run": cache.as_json(rundir.read_config(stage2_dir)), "split": split, "num_beams": budget.num_beams,
            "shuffled_images_seed": SHUFFLE_SEED}
    predictions = ("vqa", "vqa_shuffled_images", "caption")
    if cache.reusable(out_dir, spec, ["scores.json", *(f"{name}_predictions.json" for name in predictions)]):
        return cache.load_json(os.path.join(out_dir, "scores.json"))
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
    scores["attributes"] = caption_attributes(paths, cache.load_json(os.path.join(out_dir, "caption_predictions.json")))
    cache.write_json(os.path.join(out_dir, "scores.json"), scores)
    cache.write_spec(out_dir, spec)
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
    questions = cache.load_json(paths[f"vqa_{split}"])
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for name, answers in (("prior", _most_frequent_answers(cache.load_json(paths["vqa_train"]))),
                          ("best_constant", _most_frequent_answers(questions))):
        path = os.path.join(out_dir, f"{name}_{split}_predictions.json")
        cache.write_json(path, [{"question_id": e["question_id"], "answer": answers[e["question_type"]]}
                                for e in questions])
        results[name] = score("vqav2", path, paths[f"vqa_{split}_annotations"], paths[f"vqa_{split}_questions"])
    return results


def caption_attributes(paths: dict, predictions: list[dict]) -> dict[str, float]:
    """`attributes` scores of generated captions ({"image_id", "caption"}) against their scenes."""
    return attributes.attribute_scores([p["caption"] for p in predictions],
                                       scenes.scenes_of(paths, [p["image_id"] for p in predictions]))


def blind_caption(paths: dict, candidates: int = 200, num_scenes: int = 512) -> str:
    """The caption a blind model would do best to write for every image: among the most frequent training
    captions (cleaned as training cleans them), the one whose attribute score over training scenes is
    highest."""
    entries = cache.load_json(paths["caption_train"])
    counts = collections.Counter(clean_caption(e["caption"]) for e in entries)
    pool = [caption for caption, _ in counts.most_common(candidates)]
    ids = list(dict.fromkeys(e["image_id"] for e in entries))[:num_scenes]
    return attributes.best_constant_caption(pool, scenes.scenes_of(paths, ids))


def llm_reads_descriptions(stage2_base: ml_collections.ConfigDict, parts: parts_lib.Parts, split: str = "val",
                           batch_size: int = 64) -> dict[str, float]:
    """Percent of questions per type whose answer's first token is the pretrained LLM's most likely next
    token after "SCENE DESCRIPTION</s>Question: Q Short answer:": how well the LLM answers when the scene is
    described in words, the ceiling for queries that stand in for the description."""
    tokenizer = LLMTokenizer(parts.llm["tokenizer"])
    questions = cache.load_json(parts.paths[f"vqa_{split}"])
    ids = {e["image"]: e["image_id"] for e in cache.load_json(parts.paths[f"caption_{split}"])}
    described = scenes.scenes_of(parts.paths, [ids[q["image"]] for q in questions])
    tokens = parts_lib.encode_texts(tokenizer, [(synthetic.describe(scene), VQA_PROMPT.format(q["question"]))
                                               for scene, q in zip(described, questions)])
    last = tokens["attention_mask"].sum(1) - 2  # the prompt's last token; the newline follows it
    llm = stage2.llm_module(factory.stage2_config(stage2_base.model).llm)
    params = pretrained.load_params(parts.llm["llm"], "the pretrained LLM")
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


def tower_probes(config: ml_collections.ConfigDict, paths: dict, towers: dict, batch_size: int = 64) -> dict:
    """{"clip" | "mae": {task: {"probe", "majority"}}}: linear probes (`probes`) of the frozen towers'
    patch tokens (CLIP: the layer the Q-Former reads; MAE: the unmasked encoder output), fitted on the
    training images and scored on the validation and test images together."""
    model_config = factory.stage1_config(parts_lib.with_fusion(config.model, "xformer"))
    clip, encoder = vit.VisionTransformer(model_config.vision), mae_lib.MAEEncoder(model_config.mae)
    clip_params = pretrained.load_params(towers["vision"], "the pretrained vision tower")
    mae_params = pretrained.load_params(towers["mae"], "the pretrained MAE")["encoder"]
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
    spec = {"run": cache.as_json(rundir.read_config(stage2_dir)), "batch_size": batch_size, "tasks": list(probes.TASKS)}
    if out_dir and cache.reusable(out_dir, spec, ["prefix_probes.json"]):
        return cache.load_json(os.path.join(out_dir, "prefix_probes.json"))
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
        cache.write_json(os.path.join(out_dir, "prefix_probes.json"), result)
        cache.write_spec(out_dir, spec)
    return result


def _probe_features(paths: dict, transform, features: dict[str, Callable], batch_size: int) -> tuple[dict, dict]:
    """({name: probes.probe_all}, {name: held-out features}) for each features[name] (a batch of pixel views
    -> (B, F) numpy), fitted on the training images and scored on the validation and test images together."""
    def encode(splits):
        entries = [e for split in splits for e in scenes.split_images(paths, split)]
        out = {name: [] for name in features}
        for start in range(0, len(entries), batch_size):
            images = scenes.load_images(entries[start:start + batch_size], paths["root"])
            views = [transform(image, None) for image in images]
            pixels = {k: np.stack([v[k] for v in views]) for k in views[0]}
            for name, fn in features.items():
                out[name].append(fn(pixels))
        return {k: np.concatenate(v) for k, v in out.items()}, scenes.scenes_of(paths, [e["image_id"] for e in entries])

    (train, train_scenes), (held_out, held_out_scenes) = encode(["train"]), encode(EVAL_SPLITS)
    return ({name: probes.probe_all(train[name], train_scenes, held_out[name], held_out_scenes) for name in train},
            held_out)
