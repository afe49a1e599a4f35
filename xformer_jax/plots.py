"""Pictures a person would rather look at than read, drawn with PIL only (no plotting dependency)."""
import textwrap
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str, title: str,
               size: tuple[int, int] = (640, 400)) -> None:
    """One panel per series (loss terms differ in scale), x = step."""
    names = list(series)
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    width, height = size
    canvas = Image.new("RGB", (width * cols, height * rows + 30), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 8), title, fill="black")
    for n, name in enumerate(names):
        x0, y0 = (n % cols) * width, 30 + (n // cols) * height
        _panel(draw, (x0 + 50, y0 + 25, x0 + width - 15, y0 + height - 30), series[name], name, COLORS[n % len(COLORS)])
    canvas.save(path)


def _panel(draw, box, xy, name, color):
    left, top, right, bottom = box
    steps, values = np.asarray(xy[0], float), np.asarray(xy[1], float)
    draw.rectangle(box, outline=(180, 180, 180))
    draw.text((left, top - 16), name, fill="black")
    if len(values) == 0:
        return
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    s_lo, s_hi = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    px = left + (steps - s_lo) / (s_hi - s_lo) * (right - left)
    py = bottom - (values - lo) / (hi - lo) * (bottom - top)
    draw.line(list(zip(px.tolist(), py.tolist())), fill=color, width=2)
    draw.text((left - 46, top), f"{hi:.3g}", fill="black")
    draw.text((left - 46, bottom - 10), f"{lo:.3g}", fill="black")
    draw.text((left, bottom + 4), f"step {int(s_lo)}", fill="black")
    draw.text((right - 60, bottom + 4), f"step {int(s_hi)}", fill="black")


def image_grid(rows: Sequence[Sequence[np.ndarray]], path: str, labels: Sequence[str] = (), scale: int = 3) -> None:
    """rows of equally sized HWC uint8 images; optional column labels on top."""
    h, w = rows[0][0].shape[:2]
    top = 16 if labels else 0
    canvas = Image.new("RGB", (len(rows[0]) * w * scale, len(rows) * h * scale + top), "white")
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(labels):
        draw.text((c * w * scale + 4, 2), label, fill="black")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST)
            canvas.paste(tile, (c * w * scale, top + r * h * scale))
    canvas.save(path)


def captioned_images(images: Sequence[np.ndarray], texts: Sequence[str], path: str, scale: int = 3,
                     columns: int = 4, tile_width: int = 300) -> None:
    """Each image with its lines of text underneath (wrapped to the tile), `columns` tiles a row."""
    h, w = images[0].shape[:2]
    line, chars = 13, tile_width // 6  # PIL's default bitmap font is 6 px a character
    lines = [[part for text in t.split("\n") for part in (textwrap.wrap(text, chars) or [""])] for t in texts]
    tile_w, tile_h = max(w * scale, tile_width), h * scale + line * max(len(ls) for ls in lines) + 10
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (tile_w * columns, tile_h * rows), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (img, ls) in enumerate(zip(images, lines)):
        x, y = (i % columns) * tile_w, (i // columns) * tile_h
        canvas.paste(Image.fromarray(img).resize((w * scale, h * scale), Image.NEAREST), (x, y))
        for j, text in enumerate(ls):
            draw.text((x + 2, y + h * scale + 3 + j * line), text, fill="black")
    canvas.save(path)
