"""What a task tells the modes about itself: the one per-task lookup (:class:`TaskSpec`).

Every task package (``mbtasks/tasks/<name>/``) fills one :class:`TaskSpec` and its LightningModule
carries it as ``spec``; the modes and the config checks reach a task only through it
(:func:`mbtasks.tasks.spec_for_config`, :func:`mbtasks.tasks.spec_of`), never by its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from mbtasks.export.torch_pipeline import EndToEnd, NetworkOnPixels

if TYPE_CHECKING:  # onnx loads only for an ONNX export
    from mbtasks.export.onnx_pipeline import OnnxTail

# mode=check: how many files a report lists per problem before only counting them
CHECK_SHOW = 50


@dataclass
class ExportGraph:
    """A task's export network (normalised ``images (N, 3, S, S)`` in) and what its metadata says about it."""

    module: nn.Module
    output_names: tuple[str, ...]
    details: dict


class TaskExport:
    """What ``mode=export`` needs to know about a task; each task subclasses it.

    The task's own ``export.*`` keys (``TaskSpec.export_options``, e.g. classification's ``top_k``) reach
    the methods as ``options``; the end-to-end tail (the file's post-processing) is the task's:
    :meth:`onnx_tail` and :meth:`torch_tail` / :meth:`torch_end_to_end`.

    Class attributes:
        metric: the metric an INT8 export is verified on (``top1``, ``map_50``...); its tolerated drop is the
            task's ``export.int8_max_drop_*`` option (:func:`mbtasks.export.settings.max_drop_setting`).
        int8_keep_float: op types kept in float by default (measured per task; README "INT8").
        diff_units: the unit of a compared output's difference, when not the output's own (metadata).
        tolerance_units: the unit of a key of :meth:`tolerances`, named in messages.
    """

    metric: ClassVar[str]
    int8_keep_float: ClassVar[tuple[str, ...]] = ()
    diff_units: ClassVar[dict[str, str]] = {}
    tolerance_units: ClassVar[dict[str, str]] = {}

    def graph(self, task) -> ExportGraph:
        """The network written to the file (in eval mode)."""
        raise NotImplementedError

    def post_settings(self, task, graph: ExportGraph, options) -> dict:
        """The end-to-end tail's settings, from the task's ``options`` (its ``export.*`` keys); may update
        ``task`` so that the ``mode=predict`` reference uses the same ones."""
        return {}

    def e2e_details(self, post: dict) -> dict:
        """Metadata of the end-to-end file: ``outputs`` (name -> description) and any extra keys."""
        raise NotImplementedError

    def onnx_tail(self, g: OnnxTail, post: dict) -> None:
        """Append the post-processing to the ONNX graph (nodes after the network's outputs, the outputs it
        declares); by default none: the network's outputs are the file's."""

    def torch_tail(self, post: dict) -> nn.Module | None:
        """The TorchScript post-processing, ``forward(outputs, pixels) -> answers``; None: the network's outputs."""
        return None

    def torch_end_to_end(self, pre: nn.Module, network: nn.Module, post: dict) -> nn.Module:
        """The module scripted into the end-to-end TorchScript file (``pixels`` in)."""
        tail = self.torch_tail(post)
        return NetworkOnPixels(pre, network) if tail is None else EndToEnd(pre, network, tail)

    def tolerances(self, options) -> dict[str, float]:
        """The task's own end-to-end tolerances besides ``export.e2e_atol`` (key -> value), recorded in the
        metadata and named when the check fails."""
        return {}

    def reference(self, task, x: torch.Tensor, image: np.ndarray) -> Any:
        """``mode=predict``'s answer for one image (``x``: its preprocessed ``(1, 3, S, S)`` batch)."""
        return task.predict_step(x)[0].numpy()

    def compare(
        self, task, ref: Any, got: dict[str, np.ndarray], atol: float, options, fail: Callable[[str, str], None]
    ) -> dict[str, float]:
        """The end-to-end file's answers for one image against ``ref`` (``atol``: ``export.e2e_atol``;
        ``options``: the task's own keys); ``fail(what, detail)`` raises.

        Returns: the largest difference per output.
        """
        raise NotImplementedError

    def counted(self, ref: Any) -> dict[str, int]:
        """What a compared reference adds to the verification record (detection: its detections)."""
        return {}

    def evaluate(self, task, datamodule, runner: Callable[[np.ndarray], list[np.ndarray]], batches) -> float:
        """``metric`` of ``runner`` (a network graph) over ``batches`` of the validation split."""
        raise NotImplementedError


def default_profile_info(cfg: DictConfig, num_classes: int) -> dict:
    """Data info for counting the network as the papers do (``num_classes``: ``profile.num_classes``)."""
    n = int(num_classes)
    return {
        "class_names": [f"class_{i}" for i in range(n)],
        "image_size": int(cfg.data.image_size),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
    }


@dataclass(frozen=True)
class TaskSpec:
    """Everything task-specific the modes use.

    Attributes:
        name: ``classification``...: run dirs, checkpoint meta, export file names.
        head: what ``head._target_`` must be (or subclass).
        predictor: the :class:`~mbtasks.inference.Predictor` subclass ``mbtasks.load`` returns and
            ``mode=predict`` runs (images in, typed results out; it writes no files).
        export: the task's :class:`TaskExport`.
        check_data: ``(description, decode, report)`` for ``mode=check``: ``description`` is the data
            module's ``describe()``, ``decode(paths, sizes=None)`` decodes images once and returns the
            readable ones; fills ``report`` (``splits``, ``errors``, ``warnings``...).
        input_multiple: ``data.image_size`` must be a multiple of this.
        boxes: the task's data pipelines carry boxes (``bbox_params`` transforms are allowed).
        profile_info: ``(cfg, num_classes) -> data info`` for ``mode=profile`` (no data set is read;
            ``num_classes``: ``profile.num_classes``).
        predict_options: the task's own ``predict.*`` keys (a :class:`~mbtasks.settings.Settings` class;
            their defaults: ``conf/task/predict/<name>.yaml``); None: it has none.
        write_predictions: ``mode=predict``'s output: ``(predictor, image files, PredictSettings, run_dir)
            -> dict`` writes the run dir's files and returns what the mode returns.
        export_options: the task's own ``export.*`` keys (a :class:`~mbtasks.export.settings.TaskExportOptions`;
            ``conf/task/export/<name>.yaml``).
    """

    name: str
    head: type
    predictor: type
    export: TaskExport
    check_data: Callable[[dict, Callable, dict], None]
    input_multiple: int = 1
    boxes: bool = False
    profile_info: Callable[[DictConfig, int], dict] = field(default=default_profile_info)
    predict_options: type | None = None
    write_predictions: Callable[..., dict] | None = None
    export_options: type | None = None
