"""Run the model in ``channels_last`` (NHWC) memory format for fit, test and predict.

On CPU, oneDNN's convolutions are fastest on NHWC tensors; a conv whose weight is
channels_last returns channels_last, so converting the module is enough: the first conv
converts the batch and every later layer stays NHWC. Together with ``trainer.precision=bf16-mixed``
this is the fast path measured in ``benchmarks/backbone_speed.py``.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class ChannelsLast(Callback):
    """Convert the LightningModule to ``torch.channels_last`` when a stage starts.

    Args:
        enabled: convert (``callbacks.channels_last.enabled=true``); ``False`` leaves the model as is.
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = bool(enabled)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled:
            pl_module.to(memory_format=torch.channels_last)
