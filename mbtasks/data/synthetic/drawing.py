"""Procedural shapes on varied backgrounds: the drawing primitives behind the synthetic
classification and detection data sets (written as real image files by ``synthetic.py``)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "diamond")


def random_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A background of one of four kinds: flat, linear gradient, noise texture, stripes."""
    kind = rng.integers(4)
    base = rng.integers(0, 256, size=3)
    if kind == 0:
        arr = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    elif kind == 1:
        other = rng.integers(0, 256, size=3)
        t = np.linspace(0, 1, width if rng.random() < 0.5 else height, dtype=np.float32)
        ramp = base[None] * (1 - t[:, None]) + other[None] * t[:, None]
        arr = (
            np.broadcast_to(ramp[None], (height, width, 3))
            if ramp.shape[0] == width
            else np.broadcast_to(ramp[:, None], (height, width, 3))
        ).astype(np.float32)
    elif kind == 2:
        noise = rng.normal(0, 40, size=(max(height // 8, 1), max(width // 8, 1), 3))
        small = np.clip(base + noise, 0, 255).astype(np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR), np.float32)
    else:
        other = rng.integers(0, 256, size=3)
        period = int(rng.integers(6, 24))
        yy, xx = np.mgrid[0:height, 0:width]
        mask = (((xx + yy) // period) % 2).astype(np.float32)[..., None]
        arr = base * (1 - mask) + other * mask
    arr = arr + rng.normal(0, 6, size=(height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def contrasting_color(
    rng: np.random.Generator, background: Image.Image, box: tuple[float, ...]
) -> tuple[int, int, int]:
    """A saturated colour far (in RGB distance) from the mean of the background under ``box``."""
    x0, y0, x1, y1 = (int(v) for v in box)
    patch = np.asarray(background.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))), np.float32)
    mean = patch.reshape(-1, 3).mean(0)
    best, best_d = (255, 255, 255), -1.0
    for _ in range(12):
        cand = rng.integers(0, 256, size=3)
        d = float(np.linalg.norm(cand - mean))
        if d > best_d:
            best, best_d = tuple(int(c) for c in cand), d
        if d > 160:
            break
    return best


def _polygon(
    cx: float, cy: float, r: float, n: int, angle: float, inner: float | None = None
) -> list[tuple[float, float]]:
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        rad = r if (inner is None or k % 2 == 0) else r * inner
        a = angle + 2 * math.pi * k / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def draw_shape(
    image: Image.Image,
    kind: str,
    box: tuple[float, float, float, float],
    color: tuple[int, int, int],
    angle: float = 0.0,
) -> tuple[float, float, float, float]:
    """Draw ``kind`` inside ``box`` (x1, y1, x2, y2) and return the tight box of what was drawn."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = min(x1 - x0, y1 - y0) / 2
    if kind == "circle":
        pts = None
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        tight = (cx - r, cy - r, cx + r, cy + r)
    elif kind == "ring":
        pts = None
        w = max(2, int(r * 0.35))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=color, width=w)
        tight = (cx - r, cy - r, cx + r, cy + r)
    elif kind == "square":
        pts = _polygon(cx, cy, r * math.sqrt(2), 4, angle + math.pi / 4)
    elif kind == "diamond":
        pts = [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    elif kind == "triangle":
        pts = _polygon(cx, cy, r, 3, angle - math.pi / 2)
    elif kind == "hexagon":
        pts = _polygon(cx, cy, r, 6, angle)
    elif kind == "star":
        pts = _polygon(cx, cy, r, 5, angle - math.pi / 2, inner=0.45)
    elif kind == "cross":
        t = r * 0.33
        arm = [
            (-t, -r),
            (t, -r),
            (t, -t),
            (r, -t),
            (r, t),
            (t, t),
            (t, r),
            (-t, r),
            (-t, t),
            (-r, t),
            (-r, -t),
            (-t, -t),
        ]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(cx + px * ca - py * sa, cy + px * sa + py * ca) for px, py in arm]
    else:
        raise ValueError(f"unknown shape {kind!r}; expected one of {SHAPES}")
    if pts is not None:
        draw.polygon(pts, fill=color)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        tight = (min(xs), min(ys), max(xs), max(ys))
    w, h = image.size
    return (max(0.0, tight[0]), max(0.0, tight[1]), min(float(w), tight[2]), min(float(h), tight[3]))


def maybe_blur(rng: np.random.Generator, image: Image.Image, p: float = 0.3) -> Image.Image:
    if rng.random() < p:
        return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    return image
