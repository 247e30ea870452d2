"""The typed per-image results of every task, under the one name the README gives them.

Each task owns its result types (``mbtasks/tasks/<name>/results.py``); they are re-exported here,
unchanged, for ``from mbtasks.results import Classification``.
"""

from mbtasks.inference.drawing import PALETTE, draw_boxes
from mbtasks.tasks.classification.results import Classification, TopK
from mbtasks.tasks.detection.results import Detections
from mbtasks.tasks.embedding.results import Embedding, Face, Identity, PhotoIdentities, Verification

__all__ = [
    "PALETTE",
    "Classification",
    "Detections",
    "Embedding",
    "Face",
    "Identity",
    "PhotoIdentities",
    "TopK",
    "Verification",
    "draw_boxes",
]
