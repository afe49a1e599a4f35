"""Linear probes of frozen tower features on the synthetic scenes: what do the towers see?

A fusion can only pass on what the frozen towers encode. Each probe fits a ridge-regression classifier
(one-hot targets, closed form, deterministic) on features of the training images and scores it on
held-out images, next to the majority-class baseline of the same targets. Features are the patch
tokens averaged over each cell of the scenes' 2x2 grid (one group lives in one cell) plus the mean over
all patches: what any attention over the tokens can at least read.

Targets per image, from the scene that drew it (`synthetic.Scene`):
  colour    which colours are present (6 binary tasks)
  shape     which shapes are present (3 binary tasks)
  count     how many objects each cell holds (0..6, one task per cell)
  position  the colour of each cell's objects (empty or one of 6, one task per cell)
  count_of_colour  how many objects of each colour the image holds, asked only of the colours present (one
            task per colour; NOT_ASKED elsewhere): what "How many red circles?" needs, where `count`'s empty
            cells make up most of its labels
"""
from __future__ import annotations

import numpy as np

from xformer_jax.data import synthetic

GRID = 2  # the scenes' layout: one group per cell of a 2x2 grid
TASKS = ("colour", "shape", "count", "position", "count_of_colour")
NOT_ASKED = -1  # a label that is neither fitted nor scored


def scene_targets(scene: synthetic.Scene) -> dict[str, np.ndarray]:
    """Integer class labels per task (one column per sub-task) for one scene."""
    colours, shapes = list(synthetic.PALETTE), list(synthetic.SHAPES)
    present_colours = {g.color for g in scene.groups}
    present_shapes = {g.shape for g in scene.groups}
    counts, cell_colour = np.zeros(GRID * GRID, np.int64), np.zeros(GRID * GRID, np.int64)
    for group in scene.groups:
        x, y = group.centroid
        cell = int(y * GRID) * GRID + int(x * GRID)
        counts[cell] = group.count
        cell_colour[cell] = 1 + colours.index(group.color)
    count_of_colour = [sum(g.count for g in scene.groups if g.color == c) if c in present_colours else NOT_ASKED
                       for c in colours]
    return {"colour": np.array([c in present_colours for c in colours], np.int64),
            "shape": np.array([s in present_shapes for s in shapes], np.int64),
            "count": counts, "position": cell_colour, "count_of_colour": np.array(count_of_colour, np.int64)}


def cell_features(patch_tokens: np.ndarray) -> np.ndarray:
    """(B, N, D) patch tokens in row-major order (no CLS) -> (B, (GRID^2 + 1) * D): the mean of each
    grid cell's patches and of all patches."""
    batch, num, width = patch_tokens.shape
    side = int(round(np.sqrt(num)))
    if side * side != num or side % GRID:
        raise ValueError(f"{num} patch tokens do not form a square grid divisible into {GRID}x{GRID} cells")
    grid = patch_tokens.reshape(batch, GRID, side // GRID, GRID, side // GRID, width)
    cells = grid.mean(axis=(2, 4)).reshape(batch, GRID * GRID * width)
    return np.concatenate([cells, patch_tokens.mean(axis=1)], axis=1)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                l2: float = 10.0) -> tuple[float, float]:
    """(probe accuracy, majority accuracy) in percent over every asked (row, sub-task column) of y (integer
    labels; NOT_ASKED rows of a column are neither fitted nor scored). One ridge regression per column onto
    its one-hot classes, the prediction being the argmax."""
    train_x, test_x = _standardise(train_x.astype(np.float64), test_x.astype(np.float64))
    train_x = np.concatenate([train_x, np.ones((len(train_x), 1))], axis=1)
    test_x = np.concatenate([test_x, np.ones((len(test_x), 1))], axis=1)
    regulariser = l2 * np.eye(train_x.shape[1])
    every_row_gram = train_x.T @ train_x + regulariser
    right, majority = [], []
    for column in range(train_y.shape[1]):
        fit_rows, score_rows = train_y[:, column] != NOT_ASKED, test_y[:, column] != NOT_ASKED
        x, labels, truth = train_x[fit_rows], train_y[fit_rows, column], test_y[score_rows, column]
        gram = every_row_gram if fit_rows.all() else x.T @ x + regulariser
        classes = np.unique(labels)
        onehot = (labels[:, None] == classes[None]).astype(np.float64)
        weights = np.linalg.solve(gram, x.T @ onehot)
        right.append(classes[np.argmax(test_x[score_rows] @ weights, axis=1)] == truth)
        majority.append(truth == classes[np.argmax(onehot.sum(0))])
    return 100 * float(np.mean(np.concatenate(right))), 100 * float(np.mean(np.concatenate(majority)))


def probe_all(train_features: np.ndarray, train_scenes, test_features: np.ndarray, test_scenes) -> dict:
    """{task: {"probe": %, "majority": %}} for cell features of train / test images and their scenes."""
    targets = lambda scenes, task: np.stack([scene_targets(s)[task] for s in scenes])  # noqa: E731
    return {task: dict(zip(("probe", "majority"),
                           ridge_probe(train_features, targets(train_scenes, task), test_features,
                                       targets(test_scenes, task))))
            for task in TASKS}
