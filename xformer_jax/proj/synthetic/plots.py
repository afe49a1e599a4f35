"""The demo's pictures, drawn with matplotlib (imported here only: training never needs it)."""
from typing import Mapping, Optional, Sequence

import numpy as np

Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # name -> (steps, values)
RIGHT, WRONG, PLAIN = "#1a7f37", "#cf222e", "black"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def line_chart(series: Series, path: str, title: str, eval_series: Optional[Series] = None,
               columns: int = 3) -> None:
    """One panel per training series (loss terms differ in scale), x = step; a series of eval_series with
    the same name is drawn in the same panel with markers (held-out data)."""
    plt = _pyplot()
    names = list(series)
    columns = min(columns, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, color="tab:blue", linewidth=1.5, label="train")
        if eval_series and name in eval_series:
            ax.plot(*eval_series[name], "o-", color="tab:orange", markersize=4, linewidth=1, label="held out")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(rows: Sequence[Sequence[np.ndarray]], path: str, labels: Sequence[str] = ()) -> None:
    """Rows of HWC uint8 images, column labels on top."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(rows[0]), figsize=(1.8 * len(rows[0]), 1.8 * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            axes[r, c].imshow(image, interpolation="nearest")
            axes[r, c].axis("off")
            if r == 0 and c < len(labels):
                axes[r, c].set_title(labels[c], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def captioned_images(images: Sequence[np.ndarray], texts: Sequence[Sequence[tuple[str, Optional[bool]]]],
                     path: str, columns: int = 4) -> None:
    """Each image above its lines of text; a line marked True is drawn green with a tick, False red with
    a cross, None plain."""
    plt = _pyplot()
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    height = 2.6 + 0.17 * max(len(lines) for lines in texts)
    fig = plt.figure(figsize=(4.0 * columns, height * rows))
    for i, (image, lines) in enumerate(zip(images, texts)):
        r, c = divmod(i, columns)
        ax = fig.add_axes([c / columns + 0.02 / columns, 1 - (r + 2.3 / height) / rows, 0.55 / columns,
                           2.2 / height / rows])
        ax.imshow(image, interpolation="nearest")
        ax.axis("off")
        for j, (line, right) in enumerate(lines):
            mark = {True: "\u2713 ", False: "\u2717 ", None: ""}[right]
            fig.text(c / columns + 0.01 / columns, 1 - (r + (2.5 + 0.17 * j) / height) / rows, mark + line,
                     fontsize=6.5, color={True: RIGHT, False: WRONG, None: PLAIN}[right], va="top")
    fig.savefig(path, dpi=110)
    plt.close(fig)
