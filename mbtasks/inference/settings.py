"""``predict:`` settings: the keys every task's ``mode=predict`` reads (:class:`PredictSettings`), the base
of a task's own ones (:class:`PredictOptions`), and those own keys' defaults read from the config.

Defaults live once, in ``conf/config.yaml`` (``predict:``) and ``conf/task/predict/<task>.yaml`` (pulled
into ``predict:`` by the task's config); the classes declare types and ranges.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import OmegaConf

from mbtasks.errors import ConfigError
from mbtasks.settings import Settings, check_value, setting

PRECISIONS = ("32", "32-true", "bf16", "bf16-mixed")

# the package's config dir (installed: mbtasks/conf; a checkout: conf/); mbtasks.config.CONFIG_DIR is it
_PACKAGED_CONF = Path(__file__).resolve().parents[1] / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parents[2] / "conf"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictOptions(Settings):
    """Base of a task's own ``predict.*`` keys (``TaskSpec.predict_options``)."""

    section: ClassVar[str] = "predict"

    def gives_images(self) -> bool:
        """A key of the task's that is an input of its own (embedding: ``predict.pairs``), so that
        ``predict.input`` may be left out."""
        return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictSettings(Settings):
    """``mode=predict``'s keys (``predict:`` in ``conf/config.yaml``); the task's own are ``options``."""

    section: ClassVar[str] = "predict"

    input: Any = setting(number=False, optional=True)
    # shared by detection (drawn boxes) and embedding's detect-then-embed chain
    score_threshold: float = setting(example="0.3")
    batch_size: int = setting(integer=True, low=1, example="32")
    fold_bn: bool = setting(choices=(True, False))
    channels_last: bool = setting(choices=(True, False))
    precision: str = setting(choices=PRECISIONS)
    options: PredictOptions | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", str(self.precision))  # the config's 32 is an int
        super().__post_init__()
        if not self.input and not (self.options is not None and self.options.gives_images()):
            raise ConfigError(
                "mode=predict needs predict.input=PATH (an image file or a folder of images)"
                " (embedding checkpoints: or predict.pairs=FILE)"
            )

    def loading(self) -> dict[str, Any]:
        """The fast-path arguments of :func:`mbtasks.tasks.load_predictor`."""
        return {
            "fold_bn": self.fold_bn,
            "channels_last": self.channels_last,
            "precision": self.precision,
            "batch_size": self.batch_size,
        }


def check_argument(name: str, value: Any, key: str | None = None) -> None:
    """An argument of the Python API (``mbtasks.load(batch_size=...)``) checked against the declaration of
    the ``predict.<name>`` key, so both have one range; ``key`` names it in the message (default ``name``)."""
    meta = {f.name: f.metadata for f in dataclasses.fields(PredictSettings)}[name]
    check_value(key or name, str(value) if name == "precision" else value, meta)


def predict_defaults() -> dict[str, Any]:
    """The ``predict:`` block of ``conf/config.yaml`` (its defaults, without ``_target_``)."""
    block = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").predict, resolve=True)
    block.pop("_target_", None)  # type: ignore[union-attr]
    return block  # type: ignore[return-value]


def task_predict_defaults(task: str) -> dict[str, Any]:
    """The defaults of a task's own ``predict.*`` keys, ``conf/task/predict/<task>.yaml`` (empty when the
    package's config has no such file)."""
    path = CONF_DIR / "task" / "predict" / f"{task}.yaml"
    if not path.is_file():
        return {}
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def task_options(options: type[PredictOptions] | None, task: str) -> PredictOptions | None:
    """A task's own ``predict.*`` settings at their defaults (:func:`task_predict_defaults`)."""
    if options is None:
        return None
    defaults = task_predict_defaults(task)
    missing = sorted({f.name for f in dataclasses.fields(options) if f.init} - set(defaults))
    if missing:
        raise ConfigError(
            f"predict.{missing[0]} of task {task} has no default ({CONF_DIR / 'task' / 'predict' / task}.yaml): "
            f"give task={task} on the command line"
        )
    return options(**{k: v for k, v in defaults.items() if k in {f.name for f in dataclasses.fields(options)}})
