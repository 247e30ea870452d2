"""Inference on images: the :class:`Predictor` base every task's predictor extends, and input handling."""

from mbtasks.inference.inputs import Source, as_sources, collect_inputs
from mbtasks.inference.predictor import Predictor

__all__ = ["Predictor", "Source", "as_sources", "collect_inputs"]
