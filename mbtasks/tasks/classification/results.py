"""Classification's typed results: what :meth:`mbtasks.Model.predict` returns for a classifier."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TopK:
    label: str
    score: float


@dataclass
class Classification:
    """One image's class: ``label`` / ``score`` of the best class and the ``top_k`` list, best first."""

    source: str
    label: str
    score: float
    top_k: list[TopK]

    def to_dict(self) -> dict:
        return {
            "file": self.source,
            "label": self.label,
            "score": round(self.score, 6),
            "top_k": [{"label": t.label, "score": round(t.score, 6)} for t in self.top_k],
        }
