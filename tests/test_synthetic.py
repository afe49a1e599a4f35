"""Synthetic shapes dataset: determinism, file formats, and answers / captions / pixels that agree with the scene."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from xformer_jax.data import synthetic as syn

SEED, NUM_TRAIN, NUM_VAL, NUM_TEST, SIZE = 0, 8, 6, 4, 48
COUNTS = {"train": NUM_TRAIN, "val": NUM_VAL, "test": NUM_TEST}
COLORS = "|".join(syn.PALETTE)
SHAPES = "|".join(syn.SHAPES)


def write(out_dir, seed=SEED, num_train=NUM_TRAIN, num_val=NUM_VAL, num_test=NUM_TEST, image_size=SIZE):
    return syn.write_dataset(out_dir, seed, num_train, num_val, num_test, image_size)


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write(tmp_path_factory.mktemp("synthetic"))


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_other_seed_differs(dataset, tmp_path):
    first = files(dataset["root"])
    assert sorted(k for k in first if k.endswith(".png")) == sorted(
        f"images/{s}/{s}_{i:06d}.png" for s, n in COUNTS.items() for i in range(n))
    assert not any(os.path.basename(k).startswith(".tmp-") for k in first)
    assert files(write(tmp_path / "again")["root"]) == first

    other = files(write(tmp_path / "seed1", seed=1)["root"])
    assert other.keys() == first.keys()
    assert other["annotations/caption_train.json"] != first["annotations/caption_train.json"]
    images = [k for k in first if k.endswith(".png")]
    assert sum(other[k] != first[k] for k in images) > 0.8 * len(images)


def test_val_and_test_do_not_depend_on_num_train(dataset, tmp_path):
    first = files(dataset["root"])
    fewer = files(write(tmp_path / "fewer", num_train=3)["root"])
    for name, data in first.items():
        if name.startswith(("images/val", "images/test", "annotations/caption_val", "annotations/caption_test",
                            "annotations/vqa_val", "annotations/vqa_test")):
            assert fewer[name] == data, name
    for i in range(3):
        name = f"images/train/train_{i:06d}.png"
        assert fewer[name] == first[name]
    assert f"images/train/train_{3:06d}.png" not in fewer


def test_rerun_with_same_arguments_is_skipped_and_changed_arguments_rewrite(dataset, tmp_path):
    info_mtime = os.stat(dataset["info"]).st_mtime_ns
    assert write(dataset["root"]) == dataset
    assert os.stat(dataset["info"]).st_mtime_ns == info_mtime

    copy = tmp_path / "copy"
    shutil.copytree(dataset["root"], copy)
    paths = write(copy, num_train=5)
    assert sorted(os.listdir(paths["images_train"])) == [f"train_{i:06d}.png" for i in range(5)]
    assert len(load(paths["caption_train"])) == 5 * 2
    assert load(paths["info"])["num_train"] == 5
    assert files(copy)["annotations/caption_val.json"] == files(dataset["root"])["annotations/caption_val.json"]


# ----------------------------------------------------------------------------- formats and ids


def test_files_have_the_official_structures(dataset):
    root = dataset["root"]
    info = load(dataset["info"])
    assert {k: info[k] for k in ("seed", "num_train", "num_val", "num_test", "image_size", "version")} == {
        "seed": SEED, "num_train": NUM_TRAIN, "num_val": NUM_VAL, "num_test": NUM_TEST, "image_size": SIZE,
        "version": syn.VERSION}
    assert info["palette"] == {k: list(v) for k, v in syn.PALETTE.items()}

    train = load(dataset["caption_train"])
    assert len(train) == 2 * NUM_TRAIN
    for entry in train:
        assert set(entry) == {"image", "caption", "image_id"}
        assert isinstance(entry["caption"], str) and isinstance(entry["image_id"], str)
        assert os.path.isfile(os.path.join(root, entry["image"]))
        with Image.open(os.path.join(root, entry["image"])) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)

    for split in ("val", "test"):
        lavis = load(dataset[f"caption_{split}"])
        assert len(lavis) == COUNTS[split]
        for entry in lavis:
            assert set(entry) == {"image", "caption", "image_id"}
            assert isinstance(entry["caption"], list) and all(isinstance(c, str) for c in entry["caption"])
            assert isinstance(entry["image_id"], str)
        gt = load(dataset[f"caption_{split}_gt"])
        assert set(gt) == {"info", "images", "annotations", "type", "licenses"}
        assert gt["type"] == "captions" and gt["licenses"] == []
        assert all(set(im) == {"id", "file_name"} and isinstance(im["id"], int) for im in gt["images"])
        assert all(set(a) == {"image_id", "id", "caption"} for a in gt["annotations"])

    for split in syn.SPLITS:
        questions = load(dataset[f"vqa_{split}_questions"])
        assert {"questions", "task_type", "data_subtype"} <= set(questions)
        assert all(set(q) == {"image_id", "question", "question_id"} for q in questions["questions"])
        annotations = load(dataset[f"vqa_{split}_annotations"])
        assert "annotations" in annotations
        for a in annotations["annotations"]:
            assert set(a) == {"question_id", "image_id", "question_type", "answer_type",
                              "multiple_choice_answer", "answers"}
            assert a["question_type"] in syn.QUESTION_TYPES
            assert a["answer_type"] == {"count": "number", "exists": "yes/no"}.get(a["question_type"], "other")
            assert a["answers"] == [{"answer": a["multiple_choice_answer"], "answer_confidence": "yes",
                                     "answer_id": i} for i in range(1, 11)]
        for entry in load(dataset[f"vqa_{split}"]):
            assert set(entry) == {"question_id", "question", "answer", "image", "dataset", "question_type"}
            assert entry["dataset"] == "synthetic" and len(entry["answer"]) == 1


def test_ids_are_consistent_across_files(dataset):
    all_image_ids, all_question_ids = set(), set()
    for split in syn.SPLITS:
        image_of = {}  # int image_id -> relative image path, from the caption file
        for entry in load(dataset[f"caption_{split}"]):
            assert image_of.setdefault(int(entry["image_id"]), entry["image"]) == entry["image"]
        assert len(image_of) == COUNTS[split]
        assert not all_image_ids & image_of.keys()  # ids unique across splits
        all_image_ids |= image_of.keys()
        if split != "train":
            gt = load(dataset[f"caption_{split}_gt"])
            assert {im["id"]: im["file_name"] for im in gt["images"]} == image_of
            assert {a["image_id"] for a in gt["annotations"]} == image_of.keys()
            assert len({a["id"] for a in gt["annotations"]}) == len(gt["annotations"]) == 5 * COUNTS[split]
            by_image = {int(e["image_id"]): e["caption"] for e in load(dataset[f"caption_{split}"])}
            for a in gt["annotations"]:
                assert a["caption"] in by_image[a["image_id"]]

        questions = load(dataset[f"vqa_{split}_questions"])["questions"]
        annotations = load(dataset[f"vqa_{split}_annotations"])["annotations"]
        lavis = load(dataset[f"vqa_{split}"])
        assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations] == [
            e["question_id"] for e in lavis]
        assert len({q["question_id"] for q in questions}) == len(questions)
        assert not all_question_ids & {q["question_id"] for q in questions}
        all_question_ids |= {q["question_id"] for q in questions}
        for q, a, e in zip(questions, annotations, lavis):
            assert q["image_id"] == a["image_id"] and q["image_id"] in image_of
            assert image_of[q["image_id"]] == e["image"]
            assert e["question"] == q["question"] and e["answer"] == [a["multiple_choice_answer"]]
            assert e["question_type"] == a["question_type"]


# ----------------------------------------------------------------------------- content agrees with the scene


def groups_matching(scene, color=None, shape=None, size=None):
    return [g for g in scene.groups if (color in (None, g.color)) and (shape in (None, g.shape))
            and (size in (None, g.size))]


def oracle(scene, question):
    """The answer recomputed from the scene by parsing the question (independently of the generator)."""
    if m := re.fullmatch(rf"How many (?:({COLORS}) )?({SHAPES})s (?:are there|are in the image|can you see)\?",
                         question):
        return str(sum(g.count for g in groups_matching(scene, m[1], m[2])))
    if m := re.fullmatch(rf"(?:What|Which) color (is|are) the (?:(small|large) )?({SHAPES})(s?)\?", question):
        found = groups_matching(scene, shape=m[3], size=m[2])
        assert len(found) == 1, question
        assert (m[1] == "is") == (found[0].count == 1) == (m[4] == "")
        return found[0].color
    if m := re.fullmatch(rf"Where (?:is|are) the ({COLORS}) ({SHAPES})s? relative to the ({COLORS}) ({SHAPES})s?\?",
                         question):
        (a,), (b,) = groups_matching(scene, m[1], m[2]), groups_matching(scene, m[3], m[4])
        return side(a, b)
    if m := re.fullmatch(rf"(?:Is there a ({COLORS}) ({SHAPES})|Are there any ({COLORS}) ({SHAPES})s)\?", question):
        return "yes" if groups_matching(scene, m[1] or m[3], m[2] or m[4]) else "no"
    raise AssertionError(f"unexpected question {question!r}")


def side(a, b):
    """The dominant direction from b's objects to a's objects (centroids computed here, not by the generator)."""
    dx, dy = np.mean(a.centers, axis=0) - np.mean(b.centers, axis=0)
    assert max(abs(dx), abs(dy)) >= 2 * min(abs(dx), abs(dy)), "relation asked about an ambiguous pair"
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def examples(split):
    return [syn.make_example(SEED, split, i, SIZE) for i in range(COUNTS[split])]


def test_files_hold_the_examples_and_every_answer_agrees_with_the_scene(dataset):
    for split in syn.SPLITS:
        annotations = iter(load(dataset[f"vqa_{split}_annotations"])["annotations"])
        questions = iter(load(dataset[f"vqa_{split}_questions"])["questions"])
        for i, example in enumerate(examples(split)):
            with Image.open(os.path.join(dataset["root"], f"images/{split}/{split}_{i:06d}.png")) as im:
                np.testing.assert_array_equal(np.asarray(im), example.image)
            for qa in example.qas:
                q, a = next(questions), next(annotations)
                assert (q["question"], a["multiple_choice_answer"], a["question_type"]) == (
                    qa.question, qa.answer, qa.question_type)
                assert oracle(example.scene, qa.question) == qa.answer, qa
        assert next(questions, None) is None


def test_question_types_are_all_present_and_existence_is_balanced(dataset):
    answers = [a for s in syn.SPLITS for a in load(dataset[f"vqa_{s}_annotations"])["annotations"]]
    types = [a["question_type"] for a in answers]
    assert all(types.count(t) >= 3 for t in syn.QUESTION_TYPES), types
    exists = [a["multiple_choice_answer"] for a in answers if a["question_type"] == "exists"]
    assert exists.count("yes") == exists.count("no") == sum(COUNTS.values())
    counts = [int(a["multiple_choice_answer"]) for a in answers if a["question_type"] == "count"]
    assert len(set(counts)) >= 3  # not a constant answer
    assert {a["multiple_choice_answer"] for a in answers if a["question_type"] == "position"} <= {
        "left", "right", "above", "below"}


PHRASE = rf"(a|one|two|three|four|five|six) (?:(small|large) )?({COLORS}) ({SHAPES})(s?)"
RELATION = rf"{PHRASE} (?:to the )?(left of|right of|above|below|under) {PHRASE}"
RELATION_WORDS = {"left of": "left", "right of": "right", "above": "above", "below": "below", "under": "below"}
NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def test_captions_name_every_group_truthfully(dataset):
    lavis = {int(e["image_id"]): e["caption"] for e in load(dataset["caption_val"])}
    for split in syn.SPLITS:
        for i, example in enumerate(examples(split)):
            if split == "val":
                assert lavis[syn.image_id(split, i)] == list(example.captions)
            for text in example.captions:
                mentioned = []
                for m in re.finditer(rf"\b{PHRASE}\b", text):
                    (group,) = groups_matching(example.scene, m[3], m[4], m[2])
                    assert NUMBERS[m[1]] == group.count and (m[5] == "s") == (group.count > 1), text
                    mentioned.append(group)
                assert sorted(map(id, mentioned)) == sorted(map(id, example.scene.groups)), text
                assert set(re.findall(rf"\b(?:{COLORS})\b", text)) == {g.color for g in example.scene.groups}, text
                if m := re.search(RELATION, text):
                    (a,), (b,) = groups_matching(example.scene, m[3], m[4]), groups_matching(example.scene, m[9], m[10])
                    assert side(a, b) == RELATION_WORDS[m[6]], text


def test_render_known_scene_has_exact_colours_sizes_and_background():
    scene = syn.Scene(
        groups=(
            syn.Group("circle", "red", "large", ((0.25, 0.25),)),
            syn.Group("square", "blue", "small", ((0.7, 0.2), (0.85, 0.2))),
            syn.Group("triangle", "yellow", "large", ((0.25, 0.75),)),
        ),
        background=50, noise=0.0, noise_seed=0)
    size = 128
    image = syn.render(scene, size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    for group in scene.groups:
        for x, y in group.centers:
            assert tuple(image[int(y * size), int(x * size)]) == syn.PALETTE[group.color]
    assert tuple(image[int(0.7 * size), int(0.7 * size)]) == (50, 50, 50)
    red = np.all(image == syn.PALETTE["red"], axis=-1)
    r = syn.SIZES["large"] * size
    assert abs(red.sum() - np.pi * r * r) < 0.15 * np.pi * r * r
    ys, xs = np.nonzero(red)
    assert abs(xs.mean() + 0.5 - 0.25 * size) < 1 and abs(ys.mean() + 0.5 - 0.25 * size) < 1
    blue = np.all(image == syn.PALETTE["blue"], axis=-1)
    small = 2 * syn.SIZES["small"] * size
    assert abs(blue.sum() - 2 * small * small) < 0.25 * 2 * small * small

    noisy = syn.render(syn.Scene(scene.groups, 50, 6.0, 123), size)
    np.testing.assert_array_equal(noisy, syn.render(syn.Scene(scene.groups, 50, 6.0, 123), size))
    background = noisy[int(0.7 * size) - 5:int(0.7 * size) + 5, int(0.7 * size) - 5:int(0.7 * size) + 5, 0]
    assert 3 < background.std() < 9 and abs(background.mean() - 50) < 4


def test_object_centres_have_their_palette_colour_in_sampled_scenes():
    size = 128
    for i in range(6):
        example = syn.make_example(SEED, "test", i, size)
        for group in example.scene.groups:
            for x, y in group.centers:
                assert tuple(example.image[int(y * size), int(x * size)]) == syn.PALETTE[group.color]
        # image_size changes only the pixels: the scene and text stay the same
        small = syn.make_example(SEED, "test", i, SIZE)
        assert (small.scene, small.captions, small.qas) == (example.scene, example.captions, example.qas)


def test_sampled_objects_stay_inside_the_image_and_never_overlap():
    rng = np.random.default_rng(7)
    for _ in range(50):
        scene = syn.sample_scene(rng, max_groups=4)
        assert len({(g.color, g.shape) for g in scene.groups}) == len(scene.groups)
        objects = [(x, y, syn.SIZES[g.size]) for g in scene.groups for x, y in g.centers]
        for x, y, r in objects:
            assert r <= x <= 1 - r and r <= y <= 1 - r
        for k, (x1, y1, r1) in enumerate(objects):
            for x2, y2, r2 in objects[k + 1:]:
                assert max(abs(x1 - x2), abs(y1 - y2)) > r1 + r2


# ----------------------------------------------------------------------------- arguments and CLI


@pytest.mark.parametrize("kwargs, message", [
    ({"num_train": -1}, "num_train.*-1"),
    ({"num_val": 2.5}, "num_val.*2.5"),
    ({"num_test": -4}, "num_test.*-4"),
    ({"image_size": 16}, "image_size.*16"),
    ({"seed": -3}, "seed.*-3"),
])
def test_bad_arguments_raise_naming_the_argument(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_bad_scene_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="split.*'dev'"):
        syn.make_example(0, "dev", 0, 32)
    with pytest.raises(ValueError, match="max_groups.*5"):
        syn.sample_scene(np.random.default_rng(0), max_groups=5)
    with pytest.raises(ValueError, match="shape.*'hexagon'"):
        syn.Group("hexagon", "red", "small", ((0.5, 0.5),))
    with pytest.raises(ValueError, match="image_size.*31"):
        syn.render(syn.sample_scene(np.random.default_rng(0)), 31)


def test_cli_writes_and_prints_paths(tmp_path, capsys):
    syn.main([f"--out={tmp_path}", "--seed=3", "--num_train=2", "--num_val=1", "--num_test=1", "--image_size=32"])
    paths = json.loads(capsys.readouterr().out)
    assert paths == syn.dataset_paths(tmp_path)
    assert all(os.path.exists(p) for p in paths.values())
    assert load(paths["info"])["seed"] == 3
    with pytest.raises(SystemExit):
        syn.main([f"--out={tmp_path}", "--image_size=8"])
    assert "image_size" in capsys.readouterr().err
