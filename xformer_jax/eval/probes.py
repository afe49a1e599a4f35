"""Linear probes of frozen tower features on the synthetic scenes: what do the towers see?

A fusion can only pass on what the frozen towers encode. Each probe fits a ridge-regression classifier
(one-hot targets, closed form, deterministic) on features of the training images and scores it on
held-out images, next to the majority-class baseline of the same targets. Features are the patch
tokens averaged over each cell of the scenes' 2x2 grid (one group lives in one cell) plus the mean over
all patches: what any attention over the tokens can at least read.

Targets per image, from the scene that drew it (`synthetic.Scene`):
  colour    which colours are present (6 binary tasks)
  shape     which shapes are present (3 binary tasks)
  count     how many objects each cell holds (0..6, one task per cell; an ordinal target, so its probe
            regresses the number and rounds it)
  position  the colour of each cell's objects (empty or one of 6, one task per cell)
"""
from __future__ import annotations

import numpy as np

from xformer_jax.data import synthetic

GRID = 2  # the scenes' layout: one group per cell of a 2x2 grid
TASKS = ("colour", "shape", "count", "position")


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
    return {"colour": np.array([c in present_colours for c in colours], np.int64),
            "shape": np.array([s in present_shapes for s in shapes], np.int64),
            "count": counts, "position": cell_colour}


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
                l2: float = 10.0, ordinal: bool = False) -> tuple[float, float]:
    """(probe accuracy, majority accuracy) in percent over every sub-task column of y (integer labels).
    One ridge regression per column onto its one-hot classes, the prediction being the argmax; or, for
    an ordinal target, onto the label itself, the prediction being the rounded value."""
    train_x, test_x = _standardise(train_x.astype(np.float64), test_x.astype(np.float64))
    train_x = np.concatenate([train_x, np.ones((len(train_x), 1))], axis=1)
    test_x = np.concatenate([test_x, np.ones((len(test_x), 1))], axis=1)
    gram = train_x.T @ train_x + l2 * np.eye(train_x.shape[1])
    right, majority = [], []
    for column in range(train_y.shape[1]):
        classes = np.unique(train_y[:, column])
        onehot = (train_y[:, column, None] == classes[None]).astype(np.float64)
        if ordinal:
            weights = np.linalg.solve(gram, train_x.T @ train_y[:, column].astype(np.float64))
            predicted = np.clip(np.rint(test_x @ weights), classes.min(), classes.max())
        else:
            weights = np.linalg.solve(gram, train_x.T @ onehot)
            predicted = classes[np.argmax(test_x @ weights, axis=1)]
        right.append(predicted == test_y[:, column])
        most = classes[np.argmax(onehot.sum(0))]
        majority.append(test_y[:, column] == most)
    return 100 * float(np.mean(right)), 100 * float(np.mean(majority))


def probe_all(train_features: np.ndarray, train_scenes, test_features: np.ndarray, test_scenes) -> dict:
    """{task: {"probe": %, "majority": %}} for cell features of train / test images and their scenes."""
    targets = lambda scenes, task: np.stack([scene_targets(s)[task] for s in scenes])  # noqa: E731
    return {task: dict(zip(("probe", "majority"),
                           ridge_probe(train_features, targets(train_scenes, task), test_features,
                                       targets(test_scenes, task))))
            for task in TASKS}
