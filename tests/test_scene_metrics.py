"""The demo's measures of what a model sees: caption facts, tower probes and scene descriptions."""
import numpy as np

from xformer_jax.data import synthetic
from xformer_jax.proj.synthetic import attributes, probes

RED_CIRCLES = synthetic.Group("circle", "red", "small", ((0.1, 0.1), (0.2, 0.1), (0.1, 0.2)))  # top left
BLUE_SQUARE = synthetic.Group("square", "blue", "large", ((0.8, 0.15),))  # top right
SCENE = synthetic.Scene((RED_CIRCLES, BLUE_SQUARE), background=50, noise=0.0, noise_seed=0)


def test_caption_phrases_are_parsed_into_count_colour_shape():
    assert attributes.parse("A picture of three small red circles, with a blue square on a dark background") == [
        (3, "red", "circle"), (1, "blue", "square")]
    assert attributes.parse("a gray background") == []


def test_caption_facts_check_colour_shape_and_count_per_group():
    facts, precise = attributes.caption_facts("three red circles and two blue squares", SCENE)
    assert facts == {"colour": [True, True], "shape": [True, True], "count": [True, False]}
    assert precise == [True, False]
    facts, precise = attributes.caption_facts("one green triangle", SCENE)
    assert facts == {"colour": [False, False], "shape": [False, False], "count": [False, False]}
    assert precise == [False]
    scores = attributes.attribute_scores(["three red circles and two blue squares", "one green triangle"],
                                         [SCENE, SCENE])
    expected = {"colour": 50.0, "shape": 50.0, "count": 25.0, "score": 125 / 3, "precision": 100 / 3}
    assert scores.keys() == expected.keys() and all(np.isclose(scores[k], v) for k, v in expected.items())


def test_the_best_constant_caption_is_the_one_that_scores_highest():
    other = synthetic.Scene((synthetic.Group("square", "blue", "small", ((0.7, 0.7),)),), 50, 0.0, 0)
    best = attributes.best_constant_caption(["one green triangle", "a blue square", "three red circles"],
                                            [SCENE, other])
    assert best == "a blue square"


def test_scene_targets_name_cells_counts_and_colours():
    targets = probes.scene_targets(SCENE)
    colours = list(synthetic.PALETTE)
    assert targets["colour"].tolist() == [c in ("red", "blue") for c in colours]
    assert targets["shape"].tolist() == [1, 1, 0]
    assert targets["count"].tolist() == [3, 1, 0, 0]
    assert targets["position"].tolist() == [1 + colours.index("red"), 1 + colours.index("blue"), 0, 0]
    assert targets["count_of_colour"].tolist() == [{"red": 3, "blue": 1}.get(c, probes.NOT_ASKED) for c in colours]


def test_cell_features_average_each_quadrant_and_the_whole_grid():
    tokens = np.arange(16, dtype=np.float32).reshape(1, 16, 1)  # a 4x4 grid, one channel
    features = probes.cell_features(tokens)
    np.testing.assert_allclose(features[0], [2.5, 4.5, 10.5, 12.5, 7.5])


def test_ridge_probe_reads_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(400, 1))
    signal = np.eye(3)[labels[:, 0]] + 0.1 * rng.normal(size=(400, 3))
    noise = rng.normal(size=(400, 3))
    accuracy, majority = probes.ridge_probe(signal[:300], labels[:300], signal[300:], labels[300:])
    assert accuracy > 95 and majority < 50
    accuracy, _ = probes.ridge_probe(noise[:300], labels[:300], noise[300:], labels[300:])
    assert accuracy < 50


def test_ridge_probe_neither_fits_nor_scores_rows_not_asked():
    """Half the rows are not asked: fitted as a class of their own or scored as wrong, they would halve
    the accuracy of a probe that reads the asked rows perfectly."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(400, 1))
    signal = np.eye(3)[labels[:, 0]] + 0.1 * rng.normal(size=(400, 3))
    asked = labels.copy()
    asked[::2] = probes.NOT_ASKED
    accuracy, majority = probes.ridge_probe(signal[:300], asked[:300], signal[300:], asked[300:])
    assert accuracy > 95 and majority < 50


def test_describe_names_every_group_with_its_cell_and_every_clear_relation():
    text = synthetic.describe(SCENE)
    assert text == ("three small red circles at the top left and one large blue square at the top right. "
                    "the red circles are left of the blue square")
    for seed in range(20):  # every pair whose relation is clear is stated once
        scene = synthetic.scene_of(0, synthetic.image_id("train", seed))
        text = synthetic.describe(scene)
        pairs = {frozenset((i, j)) for i, j, _ in synthetic._related_pairs(scene)}
        assert text.count(" of the ") + text.count(" above the ") + text.count(" below the ") == len(pairs)
        assert all(f"{synthetic.NUMBER_WORDS[g.count]} {g.size} {g.color}" in text for g in scene.groups)


def test_scene_of_returns_the_scene_that_drew_the_image():
    example = synthetic.make_example(3, "val", 5, 32)
    assert synthetic.scene_of(3, synthetic.image_id("val", 5)) == example.scene
    assert synthetic.split_index(synthetic.image_id("test", 7)) == ("test", 7)
