"""Procedural identities for the embedding task, written as real identity folders.

Each identity is a face-like pattern with a fixed geometry (face shape, eye spacing,
nose, mouth, ears), fixed colours (skin, hair, eyes, lips) and a fixed skin texture,
plus identity-fixed extras (beard, glasses, moles). Every image of an identity draws
a new pose (yaw, pitch, roll), scale, position, expression, lighting (direction,
brightness, colour cast), background, blur, noise and sometimes an occluder, so a
model has to learn the identity rather than the pixels: two images of one identity
differ more, pixel for pixel, than many images of two identities.

Layout (the LFW one): ``root/<identity>/<identity>_<nnnn>.png``, numbered from 1.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mbtasks.data.synthetic.drawing import random_background
from mbtasks.data.synthetic.shapes import is_complete, mark_complete

SKIN_TONES = np.array(
    [(255, 224, 196), (241, 194, 155), (224, 172, 128), (198, 134, 96), (160, 105, 70), (110, 72, 48)], np.float32
)
HAIR_COLOURS = np.array(
    [(20, 15, 10), (60, 40, 25), (110, 75, 40), (190, 150, 90), (150, 60, 25), (170, 170, 170), (235, 225, 190)],
    np.float32,
)
IRIS_COLOURS = np.array([(70, 45, 25), (40, 90, 150), (60, 110, 60), (110, 110, 120), (20, 20, 20)], np.float32)


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[int, int, int]:
    """A colour between two neighbouring palette entries, jittered."""
    i = int(rng.integers(len(palette)))
    j = min(len(palette) - 1, i + 1)
    t = rng.random()
    c = palette[i] * (1 - t) + palette[j] * t + rng.normal(0, jitter, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _vivid(rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour of random hue (dyed hair, paint, lipstick, frames)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.5, 1.0)))
    return int(r * 255), int(g * 255), int(b * 255)


HAIR_STYLES = ("bald", "short", "long", "fringe", "spiky", "curly", "bun")
MARKS = ("none", "stripe", "dot", "star")


def sample_identity(rng: np.random.Generator) -> dict:
    """Draw the fixed traits of one identity (geometry in face units, colours in RGB)."""
    skin = _colour(rng, SKIN_TONES, 10)
    hair = _vivid(rng) if rng.random() < 0.3 else _colour(rng, HAIR_COLOURS, 12)
    lips = (
        _vivid(rng)
        if rng.random() < 0.2
        else tuple(int(np.clip(s * 0.75 + r, 0, 255)) for s, r in zip(skin, (45, 0, 5), strict=True))
    )
    return {
        "skin": skin,
        "hair": hair,
        "iris": _vivid(rng) if rng.random() < 0.2 else _colour(rng, IRIS_COLOURS, 15),
        "lips": lips,
        "face_height": float(rng.uniform(0.3, 0.36)),
        "face_ratio": float(rng.uniform(0.62, 0.9)),
        "chin": float(rng.uniform(0.0, 0.3)),
        "hair_style": str(HAIR_STYLES[rng.integers(len(HAIR_STYLES))]),
        "hairline": float(rng.uniform(-0.8, -0.5)),
        "hair_volume": float(rng.uniform(0.05, 0.3)),
        "eye_sep": float(rng.uniform(0.28, 0.48)),
        "eye_v": float(rng.uniform(-0.22, -0.02)),
        "eye_r": float(rng.uniform(0.08, 0.16)),
        "eye_aspect": float(rng.uniform(0.45, 0.8)),
        "brow_gap": float(rng.uniform(0.08, 0.18)),
        "brow_width": float(rng.uniform(0.025, 0.06)),
        "brow_tilt": float(rng.uniform(-0.25, 0.25)),
        "nose_len": float(rng.uniform(0.15, 0.35)),
        "nose_width": float(rng.uniform(0.08, 0.2)),
        "mouth_v": float(rng.uniform(0.38, 0.6)),
        "mouth_w": float(rng.uniform(0.18, 0.36)),
        "mouth_h": float(rng.uniform(0.03, 0.08)),
        "smile": float(rng.uniform(-0.04, 0.08)),
        "ear": float(rng.uniform(0.12, 0.24)),
        "beard": bool(rng.random() < 0.25),
        "moustache": bool(rng.random() < 0.2),
        "glasses": int(rng.integers(1, 3)) if rng.random() < 0.25 else 0,  # 1 round, 2 square
        "glasses_colour": _vivid(rng) if rng.random() < 0.5 else _colour(rng, HAIR_COLOURS, 30),
        "earrings": _vivid(rng) if rng.random() < 0.2 else None,
        # a birthmark / tattoo / face paint: kind, place (u, v), size, colour
        "mark": str(MARKS[rng.integers(len(MARKS))]) if rng.random() < 0.4 else "none",
        "mark_at": (float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.6)), float(rng.uniform(-0.55, 0.35))),
        "mark_size": float(rng.uniform(0.1, 0.2)),
        "mark_colour": _vivid(rng),
        "moles": [
            (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(-0.3, 0.6)), float(rng.uniform(0.025, 0.05)))
            for _ in range(int(rng.integers(0, 3)))
        ],
        "texture_seed": int(rng.integers(2**31)),
    }


def _skin_texture(seed: int, size: int) -> np.ndarray:
    """A fixed low-frequency multiplicative pattern ``(size, size, 1)`` around 1.0."""
    rng = np.random.default_rng(seed)
    small = rng.normal(0, 1, (6, 6)).astype(np.float32)
    img = Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8))
    field = np.asarray(img.resize((size, size), Image.BICUBIC), np.float32) / 255.0
    return (0.85 + 0.3 * field)[..., None]


class _FaceFrame:
    """Maps face coordinates ``(u, v)`` in [-1, 1] (plus depth) to canvas pixels for a pose."""

    def __init__(self, cx: float, cy: float, a: float, b: float, yaw: float, pitch: float) -> None:
        self.cx, self.cy, self.a, self.b = cx, cy, a, b
        self.cy_, self.sy = math.cos(yaw), math.sin(yaw)
        self.cp, self.sp = math.cos(pitch), math.sin(pitch)

    def __call__(self, u: float, v: float, bump: float = 0.0) -> tuple[float, float]:
        z = math.sqrt(max(0.0, 1.0 - 0.6 * u * u - 0.4 * v * v)) + bump
        return (
            self.cx + self.a * (u * self.cy_ + 0.6 * z * self.sy),
            self.cy + self.b * (v * self.cp - 0.4 * z * self.sp),
        )

    def ellipse(self, u: float, v: float, ru: float, rv: float, bump: float = 0.0) -> tuple[float, ...]:
        x, y = self(u, v, bump)
        rx = ru * self.a * max(0.35, self.cy_ - 0.5 * u * self.sy)
        ry = rv * self.b
        return (x - rx, y - ry, x + rx, y + ry)


def render_face(ident: dict, rng: np.random.Generator, size: int) -> Image.Image:
    """One image ``(size, size)`` RGB of ``ident`` under a random pose, lighting and clutter."""
    s = 2 * size  # draw at twice the size, then downsample (anti-aliasing)
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    b = ident["face_height"] * s
    a = b * ident["face_ratio"]
    cx = cy = s / 2
    yaw, pitch = float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.15, 0.15))
    f = _FaceFrame(cx, cy, a, b, yaw, pitch)
    hair = tuple(int(np.clip(c * rng.uniform(0.9, 1.1), 0, 255)) for c in ident["hair"])
    style = ident["hair_style"]
    # back hair and ears, behind the face
    if style == "long":
        draw.ellipse((cx - a * 1.25, cy - b * (1.1 + ident["hair_volume"]), cx + a * 1.25, cy + b * 0.9), fill=hair)
    for side in (-1, 1):
        ex, ey = f(side * 0.98, -0.05)
        er = ident["ear"] * b
        draw.ellipse((ex - er * 0.55, ey - er, ex + er * 0.55, ey + er), fill=ident["skin"])
    # face: an ellipse with an optionally pointed chin
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        u, v = math.cos(t), math.sin(t)
        if v > 0:
            u *= 1 - ident["chin"] * v * v
        pts.append((cx + a * u, cy + b * v))
    draw.polygon(pts, fill=ident["skin"])
    texture = _skin_texture(ident["texture_seed"], s)
    arr = np.asarray(layer, np.float32)
    arr[..., :3] *= texture
    layer = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")
    draw = ImageDraw.Draw(layer)
    # hair on top of the head
    top, vol = ident["hairline"], ident["hair_volume"]
    if style in ("short", "long", "fringe"):
        draw.chord(
            (
                cx - a * (1.02 + vol / 2),
                cy - b * (1.05 + vol),
                cx + a * (1.02 + vol / 2),
                cy + b * (2 * top + 1.05 + vol),
            ),
            180,
            360,
            fill=hair,
        )
        if style == "fringe":
            x0, y0 = f(-0.75, top + 0.05)
            x1, y1 = f(0.75, top + 0.3)
            draw.rectangle((x0, y0, x1, y1), fill=hair)
    elif style == "spiky":
        for k in range(7):
            u = -0.8 + 1.6 * k / 6
            base_l, base_r, tip = f(u - 0.18, top + 0.15), f(u + 0.18, top + 0.15), f(u * 1.1, top - 0.35 - vol)
            draw.polygon([base_l, tip, base_r], fill=hair)
    elif style == "curly":
        for k in range(9):
            t = math.pi * (1 + k / 8)
            x, y = f(0.95 * math.cos(t), top + 0.1 + 0.45 * math.sin(t) * (0.6 + vol))
            r = b * (0.16 + vol / 3)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=hair)
    elif style == "bun":
        draw.chord((cx - a * 1.02, cy - b * 1.05, cx + a * 1.02, cy + b * (2 * top + 1.05)), 180, 360, fill=hair)
        x, y = f(0, -1.05 - vol)
        r = b * (0.25 + vol / 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=hair)
    if ident["beard"]:
        pts = [
            f(u, v)
            for u, v in ((-0.85, 0.25), (-0.6, 0.85), (0.0, 1.0), (0.6, 0.85), (0.85, 0.25), (0.4, 0.7), (-0.4, 0.7))
        ]
        draw.polygon(pts, fill=hair)
    for mu, mv, mr in ident["moles"]:
        draw.ellipse(f.ellipse(mu, mv, mr, mr * ident["face_ratio"]), fill=(60, 35, 25))
    (mu, mv), ms, mc = ident["mark_at"], ident["mark_size"], ident["mark_colour"]
    if ident["mark"] == "stripe":
        draw.line([f(mu - ms, mv - ms), f(mu + ms, mv + ms)], fill=mc, width=max(1, int(0.07 * b)))
    elif ident["mark"] == "dot":
        draw.ellipse(f.ellipse(mu, mv, ms * 0.6, ms * 0.6 * ident["face_ratio"]), fill=mc)
    elif ident["mark"] == "star":
        pts = [
            f(
                mu + ms * (1 if k % 2 == 0 else 0.4) * math.cos(math.pi * k / 5 - math.pi / 2),
                mv + ms * (1 if k % 2 == 0 else 0.4) * math.sin(math.pi * k / 5 - math.pi / 2),
            )
            for k in range(10)
        ]
        draw.polygon(pts, fill=mc)
    if ident["earrings"] is not None:
        for side in (-1, 1):
            ex, ey = f(side * 0.98, 0.15)
            r = 0.06 * b
            draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=ident["earrings"])
    # eyes, irises, brows
    openness = 0.1 if rng.random() < 0.08 else float(rng.uniform(0.6, 1.0))
    for side in (-1, 1):
        u, v = side * ident["eye_sep"], ident["eye_v"]
        r = ident["eye_r"]
        draw.ellipse(f.ellipse(u, v, r, r * ident["eye_aspect"] * openness * ident["face_ratio"]), fill=(245, 245, 240))
        if openness > 0.2:
            draw.ellipse(f.ellipse(u, v, r * 0.5, r * 0.5 * ident["face_ratio"] * openness), fill=ident["iris"])
            draw.ellipse(f.ellipse(u, v, r * 0.2, r * 0.2 * ident["face_ratio"]), fill=(10, 10, 10))
        bv = v - ident["brow_gap"] - r * ident["eye_aspect"] * ident["face_ratio"]
        tilt = ident["brow_tilt"] * side
        draw.line(
            [f(u - side * r * 1.2, bv + tilt * r), f(u + side * r * 1.3, bv - tilt * r)],
            fill=hair,
            width=max(1, int(ident["brow_width"] * b)),
        )
    if ident["glasses"] and rng.random() < 0.85:
        for side in (-1, 1):
            box = f.ellipse(side * ident["eye_sep"], ident["eye_v"], ident["eye_r"] * 1.9, ident["eye_r"] * 1.4)
            shape = draw.ellipse if ident["glasses"] == 1 else draw.rectangle
            shape(box, outline=ident["glasses_colour"], width=max(1, s // 48))
        draw.line(
            [
                f(-ident["eye_sep"] + ident["eye_r"] * 1.9, ident["eye_v"]),
                f(ident["eye_sep"] - ident["eye_r"] * 1.9, ident["eye_v"]),
            ],
            fill=ident["glasses_colour"],
            width=max(1, s // 64),
        )
    # nose (sticks out of the face: larger depth bump) and mouth
    nv0, nl, nw = ident["eye_v"] + 0.08, ident["nose_len"], ident["nose_width"]
    shade = tuple(int(c * 0.78) for c in ident["skin"])
    draw.polygon([f(0, nv0, 0.1), f(-nw, nv0 + nl, 0.3), f(nw, nv0 + nl, 0.3)], fill=shade)
    smile = ident["smile"] + float(rng.uniform(-0.04, 0.04))
    mv, mw, mh = ident["mouth_v"], ident["mouth_w"], ident["mouth_h"]
    upper = [f(-mw + 2 * mw * t, mv - mh - smile * (1 - (2 * t - 1) ** 2)) for t in np.linspace(0, 1, 9)]
    lower = [
        f(mw - 2 * mw * t, mv + mh * (1 + rng.uniform(0, 1.5)) - smile * (1 - (2 * t - 1) ** 2))
        for t in np.linspace(0, 1, 9)
    ]
    draw.polygon(upper + lower, fill=ident["lips"])
    if ident["moustache"]:
        draw.polygon(
            [f(-mw, mv - mh - 0.02), f(0, mv - mh - 0.12), f(mw, mv - mh - 0.02), f(0, mv - mh - 0.05)], fill=hair
        )
    # light: a linear shading across the face from a random direction
    strength, theta = float(rng.uniform(0.0, 0.5)), float(rng.uniform(0, 2 * math.pi))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    shading = 1 + strength * (((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / (1.2 * b))
    arr = np.asarray(layer, np.float32)
    arr[..., :3] *= np.clip(shading, 0.25, 1.8)[..., None]
    layer = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")
    # pose in the image plane: roll, scale and shift, as one affine map
    roll = math.radians(float(rng.uniform(-12, 12)))
    scale = float(rng.uniform(0.85, 1.12))
    tx, ty = (float(rng.uniform(-0.06, 0.06)) * s for _ in range(2))
    c, sn = math.cos(roll) / scale, math.sin(roll) / scale
    # inverse map: output (x, y) -> input (x', y') around the centre
    ox, oy = cx + tx, cy + ty
    coeffs = (c, sn, cx - c * ox - sn * oy, -sn, c, cy + sn * ox - c * oy)
    layer = layer.transform((s, s), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    # clutter behind the face, toned down towards its mean as in an aligned face crop
    bg = np.asarray(random_background(rng, s, s), np.float32)
    keep = float(rng.uniform(0.3, 0.7))
    bg = bg * keep + bg.mean((0, 1)) * (1 - keep)
    image = Image.fromarray(bg.astype(np.uint8)).convert("RGBA")
    image.alpha_composite(layer)
    image = image.convert("RGB")
    if rng.random() < 0.25:  # an occluder: a hand, a scarf, a bar, a patch of clutter
        draw = ImageDraw.Draw(image)
        w, h = rng.uniform(0.12, 0.35) * s, rng.uniform(0.08, 0.25) * s
        x0, y0 = rng.uniform(0.15, 0.85) * s - w / 2, rng.uniform(0.2, 0.9) * s - h / 2
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    image = image.resize((size, size), Image.BOX)
    # camera: exposure, colour cast, gamma, blur, sensor noise
    arr = np.asarray(image, np.float32) / 255.0
    arr = arr * rng.uniform(0.7, 1.2) * rng.uniform(0.92, 1.08, 3)
    arr = np.clip(arr, 0, 1) ** rng.uniform(0.8, 1.25)
    image = Image.fromarray((arr * 255).astype(np.uint8))
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2)) * size / 64))
    noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(0, 8), (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_synthetic_faces(
    root: str | Path,
    num_identities: int = 400,
    images_per_identity: int = 12,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/<identity>/<identity>_<nnnn>.png`` for procedural identities.

    Args:
        root: output folder (replaced when it holds an incomplete or different set).
        num_identities: number of identities (folders).
        images_per_identity: images per identity (>= 2).
        image_size: image side in pixels.
        seed: the set is a deterministic function of its parameters.

    Returns:
        the root path. Does nothing if a complete set with the same parameters exists.
    """
    root = Path(root)
    params = dict(
        kind="synthetic_faces",
        identities=num_identities,
        per_identity=images_per_identity,
        size=image_size,
        seed=seed,
        version=3,
    )
    if is_complete(root, params):
        return root
    if num_identities < 2 or images_per_identity < 2:
        raise ValueError(
            "data.generator: synthetic faces need >= 2 identities with >= 2 images each, got "
            f"num_identities={num_identities}, images_per_identity={images_per_identity}"
        )
    if root.exists():
        shutil.rmtree(root)
    for i in range(num_identities):
        name = f"id_{i:05d}"
        # one stream per identity: its traits do not depend on how many others exist
        rng = np.random.default_rng([seed, i])
        ident = sample_identity(rng)
        out = root / name
        out.mkdir(parents=True, exist_ok=True)
        for j in range(1, images_per_identity + 1):
            render_face(ident, rng, image_size).save(out / f"{name}_{j:04d}.png")
    mark_complete(root, params)
    return root
