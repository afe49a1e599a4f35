"""Procedural shapes dataset: the project's built-in, offline stand-in for COCO captions and VQAv2.

A scene holds a few groups of identical shapes ("three small red circles") with controlled shape,
colour, size, count and position, so every caption and answer is known exactly, and the questions
need fine detail (counting, colour, relative position, existence) that X-Former's MAE branch is
meant to help with. `write_dataset` writes it in the real formats (LAVIS caption / VQA JSON, COCO
caption ground truth, VQAv2 questions + annotations, GQA's questions JSON, GVTBench-style counting
questions), so training and evaluation read it like real data. Every example is a pure function of
(seed, split, index). Pure numpy + PIL.

The GQA file files each question under GQA's structural / semantic types (GQA_TYPES): exists ->
verify / obj (GQA's own existence questions), color -> query / attr (GQA's "what color is the ..."),
position -> query / rel (an open question about the relation of two objects). GQA has no counting
questions; a count asks for a property of the named objects, so it is filed as query / attr and
`types.detailed` keeps the synthetic type. Its imageId is the image's file name without ".png".

CLI: python -m xformer_jax.data.synthetic --out=DIR [--seed=0 --num_train=N --num_val=N
--num_test=N --image_size=224] prints the written paths as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

VERSION = 1
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.035, "large": 0.065}  # half-extent, as a fraction of the image side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
SPLITS = ("train", "val", "test")
QUESTION_TYPES = ("count", "color", "position", "exists")
GQA_TYPES = {"count": ("query", "attr"), "color": ("query", "attr"), "position": ("query", "rel"),
             "exists": ("verify", "obj")}  # question type -> GQA (structural, semantic) type, see above
MAX_GROUPS = 4  # one group per cell of a 2x2 grid
MAX_COUNT = 6  # the largest number word
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096

_SLOTS = 3  # each cell is a 3x3 grid of slots, one object per slot: objects never overlap
_GAP = 0.005  # minimum margin between an object and its slot's edge
_SUPERSAMPLE = 4  # shapes are drawn this much larger, then box-filtered: anti-aliased edges
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_IDS_PER_SPLIT = 10_000_000  # image_id = split code * this + index: unique across splits
_CAPTIONS_PER_IMAGE = {"train": 2, "val": 5, "test": 5}  # 5 references, as COCO has
_RELATION_WORDS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
_CELL_NAMES = ("top left", "top right", "bottom left", "bottom right")  # the 2x2 grid, row-major
_CAPTION_TEMPLATES = (
    "{}",
    "a picture of {}",
    "an image showing {}",
    "{} on a {bg} background",
    "a {bg} background with {}",
)


@dataclasses.dataclass(frozen=True)
class Group:
    """Identical objects described together, e.g. "three small red circles"."""

    shape: str
    color: str
    size: str
    centers: tuple[tuple[float, float], ...]  # (x, y) as fractions of the image side, y downwards

    def __post_init__(self):
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("color", self.color, PALETTE)
        _check_choice("size", self.size, SIZES)
        if not 1 <= len(self.centers) <= MAX_COUNT:
            raise ValueError(f"centers must hold 1..{MAX_COUNT} points, got {len(self.centers)}")

    @property
    def count(self) -> int:
        return len(self.centers)

    @property
    def centroid(self) -> tuple[float, float]:
        x, y = np.mean(self.centers, axis=0)
        return float(x), float(y)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Groups with distinct (color, shape), so that "the red circles" names exactly one group."""

    groups: tuple[Group, ...]
    background: int  # grey level of the background
    noise: float  # std of per-pixel grey noise on the background; 0 is a plain background
    noise_seed: int  # makes `render` a pure function of the scene


@dataclasses.dataclass(frozen=True)
class QA:
    question: str
    answer: str
    question_type: str  # one of QUESTION_TYPES
    answer_type: str  # VQAv2's: "number", "yes/no" or "other"


@dataclasses.dataclass(frozen=True)
class Example:
    """Everything one image contributes; the scene is kept so that tests can check text and pixels."""

    scene: Scene
    image: np.ndarray  # uint8 [H, W, 3]
    captions: tuple[str, ...]
    qas: tuple[QA, ...]


# ----------------------------------------------------------------------------- scenes


def sample_scene(rng: np.random.Generator, max_groups: int = 3, max_count: int = MAX_COUNT) -> Scene:
    """Draws 1..max_groups groups of 1..max_count identical objects, one group per grid cell."""
    _check_int("max_groups", max_groups, 1, MAX_GROUPS)
    _check_int("max_count", max_count, 1, MAX_COUNT)
    colors = list(PALETTE)
    num_groups = int(rng.integers(1, max_groups + 1))
    cells = rng.choice(MAX_GROUPS, num_groups, replace=False)
    kinds = rng.choice(len(SHAPES) * len(colors), num_groups, replace=False)  # distinct (shape, color)
    groups = []
    for cell, kind in zip(cells, kinds):
        size = _pick(rng, list(SIZES))
        count = int(rng.integers(1, max_count + 1))
        shape, color = SHAPES[kind // len(colors)], colors[kind % len(colors)]
        groups.append(Group(shape, color, size, _place(rng, int(cell), size, count)))
    plain = rng.random() < 0.5
    return Scene(
        groups=tuple(groups),
        background=int(rng.integers(30, 111)),  # dark to mid grey: every palette colour stands out
        noise=0.0 if plain else float(rng.uniform(3.0, 10.0)),
        noise_seed=int(rng.integers(2**31)),
    )


def _place(rng: np.random.Generator, cell: int, size: str, count: int) -> tuple[tuple[float, float], ...]:
    """Centres of `count` objects in distinct slots of one 2x2-grid cell, jittered within their slot."""
    slot = 0.5 / _SLOTS
    slack = slot / 2 - SIZES[size] - _GAP
    x0, y0 = 0.5 * (cell % 2), 0.5 * (cell // 2)
    centers = []
    for s in sorted(rng.choice(_SLOTS * _SLOTS, count, replace=False)):
        jx, jy = rng.uniform(-slack, slack, 2)
        centers.append((float(x0 + (s % _SLOTS + 0.5) * slot + jx), float(y0 + (s // _SLOTS + 0.5) * slot + jy)))
    return tuple(centers)


def render(scene: Scene, image_size: int) -> np.ndarray:
    """uint8 [image_size, image_size, 3]; object interiors are exactly their palette colour."""
    _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    noise = np.random.default_rng(scene.noise_seed).normal(0.0, scene.noise, (image_size, image_size, 1))
    grey = np.clip(np.rint(scene.background + noise), 0, 255).astype(np.uint8)
    background = Image.fromarray(np.repeat(grey, 3, axis=2)).convert("RGBA")
    big = image_size * _SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for group in scene.groups:
        for x, y in group.centers:
            _draw_shape(draw, group.shape, x * big, y * big, SIZES[group.size] * big, PALETTE[group.color] + (255,))
    layer = layer.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(Image.alpha_composite(background, layer).convert("RGB"))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill: tuple) -> None:
    """Circle / square of half-extent r centred at (x, y), or an upward triangle as wide, its centroid at (x, y)."""
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y + r / 2), (x - r, y + r / 2)], fill=fill)


# ----------------------------------------------------------------------------- language


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A true description naming every group (count, colour, shape, sometimes size), often with a
    relation between two groups when one is clear."""
    order = [int(i) for i in rng.permutation(len(scene.groups))]
    phrases = {i: _caption_phrase(scene.groups[i], rng) for i in order}
    pairs = _related_pairs(scene)
    if pairs and rng.random() < 0.6:
        i, j, rel = _pick(rng, pairs)
        body = f"{phrases[i]} {_pick(rng, _RELATION_WORDS[rel])} {phrases[j]}"
        rest = [phrases[k] for k in order if k not in (i, j)]
        if rest:
            body += ", with " + _join(rest)
    else:
        body = _join([phrases[i] for i in order])
    background = "dark" if scene.background < 70 else "gray"
    return _pick(rng, _CAPTION_TEMPLATES).format(body, bg=background)


def describe(scene: Scene) -> str:
    """The complete description of a scene: every group in grid-cell order with its count, size, colour,
    shape and cell, then the clear relation of every pair of groups. A caption names one relation at
    most, so a reader of captions cannot answer most position questions; this text answers them all."""
    groups = sorted(scene.groups, key=_cell)
    phrases = [f"{NUMBER_WORDS[g.count]} {g.size} {_name(g)} at the {_CELL_NAMES[_cell(g)]}" for g in groups]
    relations = []
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            rel = relation(a, b)
            if rel:
                relations.append(f"the {_name(a)} {'is' if a.count == 1 else 'are'} {_RELATION_WORDS[rel][0]} "
                                 f"the {_name(b)}")
    return ". ".join([_join(phrases), *relations])


def _cell(group: Group) -> int:
    x, y = group.centroid
    return int(y * 2) * 2 + int(x * 2)


def _caption_phrase(group: Group, rng: np.random.Generator) -> str:
    count = _pick(rng, ("a", "one")) if group.count == 1 else NUMBER_WORDS[group.count]
    size = f"{group.size} " if rng.random() < 0.5 else ""
    return f"{count} {size}{group.color} {group.shape}{'s' if group.count > 1 else ''}"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relation(a: Group, b: Group) -> str | None:
    """Where a lies relative to b ("left", "right", "above", "below"), by centroids; None unless one
    axis clearly dominates, so that captions and answers are never ambiguous."""
    (ax, ay), (bx, by) = a.centroid, b.centroid
    dx, dy = ax - bx, ay - by
    if abs(dx) >= 2 * abs(dy) and abs(dx) >= 0.15:
        return "left" if dx < 0 else "right"
    if abs(dy) >= 2 * abs(dx) and abs(dy) >= 0.15:
        return "above" if dy < 0 else "below"
    return None


def _related_pairs(scene: Scene) -> list[tuple[int, int, str]]:
    pairs = []
    for i, a in enumerate(scene.groups):
        for j, b in enumerate(scene.groups):
            rel = relation(a, b) if i != j else None
            if rel:
                pairs.append((i, j, rel))
    return pairs


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """A count question, a colour and a position question when the scene allows them, and two
    existence questions (one "yes", one "no": balanced by construction), in random order."""
    qas = [_count_question(scene, rng)]
    for make in (_color_question, _position_question):
        qa = make(scene, rng)
        if qa is not None:
            qas.append(qa)
    qas += [_exists_question(scene, rng, present=True), _exists_question(scene, rng, present=False)]
    return [qas[int(k)] for k in rng.permutation(len(qas))]


def _count_question(scene: Scene, rng: np.random.Generator) -> QA:
    group = _pick(rng, scene.groups)
    by_shape_only = rng.random() < 0.5
    noun = f"{group.shape}s" if by_shape_only else f"{group.color} {group.shape}s"
    n = sum(g.count for g in scene.groups if g.shape == group.shape and (by_shape_only or g.color == group.color))
    template = _pick(rng, ("How many {} are there?", "How many {} are in the image?", "How many {} can you see?"))
    return QA(template.format(noun), str(n), "count", "number")


def _color_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    """Names a group by shape (plus size if needed) only where that description picks out one group."""
    candidates = []
    for g in scene.groups:
        same_shape = [h for h in scene.groups if h.shape == g.shape]
        if len(same_shape) == 1:
            candidates.append((g, g.shape))
        elif sum(h.size == g.size for h in same_shape) == 1:
            candidates.append((g, f"{g.size} {g.shape}"))
    if not candidates:
        return None
    group, noun = _pick(rng, candidates)
    verb, noun = ("is", noun) if group.count == 1 else ("are", noun + "s")
    template = _pick(rng, ("What color {} the {}?", "Which color {} the {}?"))
    return QA(template.format(verb, noun), group.color, "color", "other")


def _position_question(scene: Scene, rng: np.random.Generator) -> QA | None:
    pairs = _related_pairs(scene)
    if not pairs:
        return None
    i, j, rel = _pick(rng, pairs)
    a, b = scene.groups[i], scene.groups[j]
    verb = "is" if a.count == 1 else "are"
    return QA(f"Where {verb} the {_name(a)} relative to the {_name(b)}?", rel, "position", "other")


def _exists_question(scene: Scene, rng: np.random.Generator, present: bool) -> QA:
    have = sorted({(g.color, g.shape) for g in scene.groups})
    options = have if present else [(c, s) for c in PALETTE for s in SHAPES if (c, s) not in have]
    color, shape = _pick(rng, options)
    template = _pick(rng, ("Is there a {} {}?", "Are there any {} {}s?"))
    return QA(template.format(color, shape), "yes" if present else "no", "exists", "yes/no")


def _name(group: Group) -> str:
    return f"{group.color} {group.shape}{'s' if group.count > 1 else ''}"


def _pick(rng: np.random.Generator, options):
    """rng.choice that keeps Python types (tuples, str) instead of numpy scalars / arrays."""
    return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- dataset files


def make_example(seed: int, split: str, index: int, image_size: int) -> Example:
    """One example, a function of (seed, split, index) only: split sizes never change other examples,
    and image_size changes only the pixels."""
    rng = _example_rng(seed, split, index)
    scene = sample_scene(rng)
    captions = tuple(caption(scene, rng) for _ in range(_CAPTIONS_PER_IMAGE[split]))
    return Example(scene, render(scene, image_size), captions, tuple(questions(scene, rng)))


def scene_of(seed: int, image_id_: int) -> Scene:
    """The scene behind a written image (by its image_id), without rendering it: what evaluation checks
    generated text against."""
    split, index = split_index(image_id_)
    return sample_scene(_example_rng(seed, split, index))


def _example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    _check_int("seed", seed, 0, None)
    _check_choice("split", split, SPLITS)
    _check_int("index", index, 0, _IDS_PER_SPLIT - 1)
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def image_id(split: str, index: int) -> int:
    """The integer id shared by the caption, COCO and VQA files (the LAVIS caption files hold it as a str)."""
    return _SPLIT_CODE[split] * _IDS_PER_SPLIT + index


def split_index(image_id_: int) -> tuple[str, int]:
    """(split, index) of an image_id (the inverse of `image_id`)."""
    code, index = divmod(int(image_id_), _IDS_PER_SPLIT)
    splits = {c: name for name, c in _SPLIT_CODE.items()}
    if code not in splits:
        raise ValueError(f"image_id {image_id_} is not a synthetic image id (split code {code})")
    return splits[code], index


def dataset_paths(out_dir: str | os.PathLike) -> dict[str, str]:
    """Absolute paths of everything `write_dataset` writes (images as one folder per split)."""
    root = os.path.abspath(os.fspath(out_dir))
    ann = os.path.join(root, "annotations")
    paths = {"root": root, "info": os.path.join(root, "dataset_info.json")}
    for split in SPLITS:
        paths[f"images_{split}"] = os.path.join(root, "images", split)
        paths[f"caption_{split}"] = os.path.join(ann, f"caption_{split}.json")
        if split != "train":
            paths[f"caption_{split}_gt"] = os.path.join(ann, f"caption_{split}_gt.json")
        paths[f"vqa_{split}_questions"] = os.path.join(ann, f"vqa_{split}_questions.json")
        paths[f"vqa_{split}_annotations"] = os.path.join(ann, f"vqa_{split}_annotations.json")
        paths[f"vqa_{split}"] = os.path.join(ann, f"vqa_{split}.json")
        paths[f"gqa_{split}_questions"] = os.path.join(ann, f"gqa_{split}_questions.json")
        paths[f"count_{split}"] = os.path.join(ann, f"count_{split}.json")
    return paths


def write_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_train: int = 1000,
    num_val: int = 100,
    num_test: int = 100,
    image_size: int = 224,
) -> dict[str, str]:
    """Writes images and annotation files under out_dir (see `dataset_paths`) and returns their paths.

    Deterministic: the same arguments give byte-identical files. Skips the work when
    dataset_info.json already records the same arguments (it is written last, so it marks a
    complete dataset).
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    _check_int("seed", seed, 0, None)
    for split, num in counts.items():
        _check_int(f"num_{split}", num, 0, _IDS_PER_SPLIT)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    paths = dataset_paths(out_dir)
    params = {"version": VERSION, "seed": seed, **{f"num_{s}": n for s, n in counts.items()}, "image_size": image_size}
    if _is_complete(paths, params):
        return paths
    if os.path.exists(paths["info"]):
        os.remove(paths["info"])  # an interrupted rewrite must not pass for the old, complete dataset
    stats = {split: _write_split(paths, seed, split, counts[split], image_size) for split in SPLITS}
    info = {
        "name": "xformer-jax synthetic shapes",
        **params,
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "shapes": list(SHAPES),
        "sizes": list(SIZES),
        "question_types": list(QUESTION_TYPES),
        "captions_per_image": _CAPTIONS_PER_IMAGE,
        "splits": stats,
    }
    _write_json(paths["info"], info, indent=2)
    return paths


def _is_complete(paths: dict[str, str], params: dict) -> bool:
    try:
        with open(paths["info"], encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return all(info.get(k) == v for k, v in params.items()) and all(os.path.exists(p) for p in paths.values())


def _write_split(paths: dict[str, str], seed: int, split: str, num: int, image_size: int) -> dict:
    """Writes one split's images and annotation files; returns its counts for dataset_info.json."""
    image_dir = paths[f"images_{split}"]
    os.makedirs(image_dir, exist_ok=True)
    _remove_stale_images(image_dir, split, num)
    captions, gt_images, gt_captions, vqa_questions, vqa_annotations, vqa_lavis = [], [], [], [], [], []
    gqa_questions, count_questions = {}, []
    type_counts = {t: 0 for t in QUESTION_TYPES}
    for index in range(num):
        example = make_example(seed, split, index, image_size)
        stem = f"{split}_{index:06d}"
        rel = f"images/{split}/{stem}.png"
        iid = image_id(split, index)
        _write_bytes(os.path.join(paths["root"], rel), _png_bytes(example.image))
        if split == "train":
            captions += [{"image": rel, "caption": c, "image_id": str(iid)} for c in example.captions]
        else:
            captions.append({"image": rel, "caption": list(example.captions), "image_id": str(iid)})
            gt_images.append({"id": iid, "file_name": rel})
            gt_captions += [{"image_id": iid, "id": iid * 10 + k, "caption": c} for k, c in enumerate(example.captions)]
        for k, qa in enumerate(example.qas):
            qid = iid * 10 + k
            type_counts[qa.question_type] += 1
            vqa_questions.append({"image_id": iid, "question": qa.question, "question_id": qid})
            vqa_annotations.append({
                "question_id": qid,
                "image_id": iid,
                "question_type": qa.question_type,
                "answer_type": qa.answer_type,
                "multiple_choice_answer": qa.answer,
                "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": a} for a in range(1, 11)],
            })
            vqa_lavis.append({
                "question_id": qid,
                "question": qa.question,
                "answer": [qa.answer],
                "image": rel,
                "dataset": "synthetic",
                "question_type": qa.question_type,
            })
            structural, semantic = GQA_TYPES[qa.question_type]
            gqa_questions[str(qid)] = {
                "imageId": stem, "question": qa.question, "answer": qa.answer, "isBalanced": True,
                "types": {"structural": structural, "semantic": semantic, "detailed": qa.question_type},
            }
            if qa.question_type == "count":
                count_questions.append({"question_id": qid, "question": qa.question, "image": rel,
                                        "count": int(qa.answer)})
    info = {"description": "xformer-jax synthetic shapes", "version": str(VERSION), "seed": seed, "split": split}
    licence = {"name": "generated", "url": ""}
    _write_json(paths[f"caption_{split}"], captions)
    if split != "train":
        _write_json(paths[f"caption_{split}_gt"], {
            "info": info, "images": gt_images, "annotations": gt_captions, "type": "captions", "licenses": [],
        })
    _write_json(paths[f"vqa_{split}_questions"], {
        "info": info, "task_type": "Open-Ended", "data_type": "synthetic", "data_subtype": split,
        "license": licence, "questions": vqa_questions,
    })
    _write_json(paths[f"vqa_{split}_annotations"], {
        "info": info, "data_type": "synthetic", "data_subtype": split, "license": licence,
        "annotations": vqa_annotations,
    })
    _write_json(paths[f"vqa_{split}"], vqa_lavis)
    _write_json(paths[f"gqa_{split}_questions"], gqa_questions)
    _write_json(paths[f"count_{split}"], count_questions)
    return {"images": num, "captions": num * _CAPTIONS_PER_IMAGE[split], "questions": len(vqa_questions),
            "question_types": type_counts}


def _remove_stale_images(image_dir: str, split: str, num: int) -> None:
    """Drops images an earlier, larger run left behind, so the folder matches the annotations."""
    pattern = re.compile(rf"{split}_(\d{{6}})\.png")
    for name in sorted(os.listdir(image_dir)):
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) >= num:
            os.remove(os.path.join(image_dir, name))


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_json(path: str, obj, indent: int | None = None) -> None:
    _write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


def _write_bytes(path: str, data: bytes) -> None:
    """Temp file + os.replace: readers never see a half-written file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def _check_int(name: str, value, low: int, high: int | None) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")


def _check_choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset and print its paths as JSON.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_train", type=int, default=1000)
    parser.add_argument("--num_val", type=int, default=100)
    parser.add_argument("--num_test", type=int, default=100)
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)
    try:
        paths = write_dataset(args.out, args.seed, args.num_train, args.num_val, args.num_test, args.image_size)
    except ValueError as e:
        parser.error(str(e))
    json.dump(paths, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
