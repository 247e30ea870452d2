"""The checkpoint's eval preprocessing as plain numbers, for graphs that take raw pixels.

Training and validation run the checkpoint's ``data.eval_transforms`` (albumentations, cv2
bilinear without antialiasing, uint8). ``mode=predict`` and the end-to-end exports run the same
geometry as one float bilinear resize (:func:`mbtasks.export.torch_pipeline.resize_pixels` in
predict and TorchScript, ONNX ``Resize`` in the graph), so predict and the exported file compute
the same thing; it differs from cv2's fixed-point (11-bit weights) uint8 result by under one level
(``benchmarks/export_parity.py``). The eval pipelines rebuilt this way:

- ``Resize(height, width)``: stretch to the network size (detection, embedding, synthetic sets);
- ``SmallestMaxSize(max_size)`` then ``CenterCrop(height, width)``: ImageFolder classification.

Anything else is refused with a message naming the transform (export with
``export.end_to_end=false`` and preprocess by hand).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from mbtasks.errors import ConfigError

# cv2.INTER_LINEAR, albumentations' default interpolation
INTER_LINEAR = 1


@dataclass(frozen=True)
class Preprocessing:
    """``pixels (H, W, 3) uint8 RGB -> (3, size, size) float32``, as the eval pipeline does it.

    Attributes:
        size: network input side (square).
        shorter_side: when set, the shorter image side is first resized to this (aspect kept,
            ``round(side * shorter_side / min(H, W))``), then the centre ``size x size`` is cropped;
            when ``None`` the image is stretched to ``size x size``.
        mean / std: ``(pixels / 255 - mean) / std`` per RGB channel.
    """

    size: int
    shorter_side: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def stretch(self) -> bool:
        return self.shorter_side is None

    def describe(self) -> str:
        resize = (
            f"stretched to {self.size}x{self.size}"
            if self.stretch
            else f"shorter side resized to {self.shorter_side}, centre {self.size}x{self.size} crop"
        )
        return (
            f"uint8 RGB, bilinear resize in float (half-pixel centres, no antialiasing, not rounded): "
            f"{resize}; then (pixels / 255 - mean) / std"
        )


def _check_linear(name: str, t: dict) -> None:
    interp = t.get("interpolation", INTER_LINEAR)
    if interp != INTER_LINEAR or t.get("area_for_downscale"):
        raise ConfigError(
            f"export.end_to_end: data.eval_transforms {name} uses interpolation={interp} "
            f"(area_for_downscale={t.get('area_for_downscale')}); only bilinear (1) is rebuilt in the "
            "graph: export with export.end_to_end=false"
        )


def preprocessing_of(train_cfg: DictConfig, size: int, mean, std) -> Preprocessing:
    """The :class:`Preprocessing` of a checkpoint's ``data.eval_transforms``.

    Raises:
        ConfigError: a transform the end-to-end graph does not rebuild (named in the message).
    """
    node = OmegaConf.select(train_cfg, "data.eval_transforms")
    spec = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    transforms = spec.get("transforms", []) if isinstance(spec, dict) else []
    names = [str(t.get("_target_", "?")).rsplit(".", 1)[-1] for t in transforms]
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if names == ["Resize"]:
        _check_linear("Resize", transforms[0])
        h, w = int(transforms[0]["height"]), int(transforms[0]["width"])
        if (h, w) == (size, size):
            return Preprocessing(size, None, mean, std)
    elif names == ["SmallestMaxSize", "CenterCrop"]:
        _check_linear("SmallestMaxSize", transforms[0])
        crop = (int(transforms[1]["height"]), int(transforms[1]["width"]))
        max_size = transforms[0].get("max_size")
        if crop == (size, size) and isinstance(max_size, int) and max_size >= size:
            return Preprocessing(size, max_size, mean, std)
    raise ConfigError(
        f"export.end_to_end: data.eval_transforms {names} (image_size {size}) cannot be rebuilt in the "
        "graph (supported: [Resize] to image_size, or [SmallestMaxSize, CenterCrop]); "
        "export with export.end_to_end=false"
    )
