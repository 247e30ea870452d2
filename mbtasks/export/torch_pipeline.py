"""End-to-end TorchScript: the traced network inside a scripted ``pixels -> answers`` module.

Same inputs, outputs and rules as :mod:`mbtasks.export.onnx_pipeline`, written in torch:
:func:`resize_pixels` (bilinear, half-pixel centres, no antialiasing; also ``mode=predict``'s resize),
the network, then the task's tail (``TaskExport.torch_tail``: an ``nn.Module`` whose
``forward(outputs, pixels)`` turns the network's outputs into the final answers). A task whose file
takes more inputs (detection's thresholds) subclasses :class:`EndToEnd` (``TaskExport.torch_end_to_end``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mbtasks.export.preprocessing import Preprocessing


def _taps(in_size: int, out_size: int, start: int, count: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source rows (or columns) ``i0, i1`` and weight ``w1`` of output pixels ``start .. start + count`` of a
    bilinear resize ``in_size -> out_size`` with half-pixel centres (``F.interpolate(align_corners=False)``,
    ONNX ``Resize`` ``half_pixel``): ``out = in[i0] + (in[i1] - in[i0]) * w1``."""
    dst = torch.arange(start, start + count, dtype=torch.float64)
    src = ((dst + 0.5) * (float(in_size) / float(out_size)) - 0.5).clamp(min=0.0)
    i0 = src.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, (src - i0.double()).float()


def resize_pixels(pixels: Tensor, size: int, shorter_side: int) -> Tensor:
    """``pixels (N, H, W, 3) uint8`` -> ``(N, 3, size, size)`` float32 in 0..255, not rounded.

    ``shorter_side`` 0: stretched to ``size x size``; else the shorter side resized to ``shorter_side``
    (``round(side * shorter_side / min(H, W))``, at least 1) and the centre ``size x size`` kept. Only
    the source rows and columns the output needs are read and cast to float (a 20-megapixel photo costs
    what its ``size`` rows do), so ``mode=predict`` runs this very function on every image; the ONNX
    graph's ``Resize`` computes the same values up to float32 rounding.
    """
    h, w = pixels.shape[1], pixels.shape[2]
    if shorter_side > 0:
        scale = float(shorter_side) / float(min(h, w))
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        top, left = (nh - size) // 2, (nw - size) // 2
    else:
        nh, nw, top, left = size, size, 0, 0
    y0, y1, wy = _taps(h, nh, top, size)
    x0, x1, wx = _taps(w, nw, left, size)
    r0 = pixels.index_select(1, y0).float()
    rows = r0 + (pixels.index_select(1, y1).float() - r0) * wy.view(1, -1, 1, 1)
    c0 = rows.index_select(2, x0)
    out = c0 + (rows.index_select(2, x1) - c0) * wx.view(1, 1, -1, 1)
    return out.permute(0, 3, 1, 2).contiguous()


class Preprocess(nn.Module):
    """``pixels (N, H, W, 3) uint8`` -> normalised ``(N, 3, S, S)`` float32 (:func:`resize_pixels`, then
    ``(x / 255 - mean) / std``): what ``mode=predict`` runs and the TorchScript file holds."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.size = int(pre.size)
        self.shorter_side = int(pre.shorter_side or 0)
        self.register_buffer("mean", torch.tensor(pre.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std).view(1, 3, 1, 1))

    def forward(self, pixels: Tensor) -> Tensor:
        x = resize_pixels(pixels, self.size, self.shorter_side)
        return (x * (1 / 255.0) - self.mean) / self.std


class EndToEnd(nn.Module):
    """``pixels (N, H, W, 3) uint8`` -> the task's answers: preprocessing, network, the task's tail
    (``tail(outputs, pixels)``)."""

    def __init__(self, pre: nn.Module, network: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.pre, self.network, self.tail = pre, network, tail

    def forward(self, pixels: Tensor):
        return self.tail(self.network(self.pre(pixels)), pixels)


class NetworkOnPixels(nn.Module):
    """``pixels (N, H, W, 3) uint8`` -> the network's outputs as they are (a task without a tail)."""

    def __init__(self, pre: nn.Module, network: nn.Module) -> None:
        super().__init__()
        self.pre, self.network = pre, network

    def forward(self, pixels: Tensor):
        return self.network(self.pre(pixels))
