"""``mode=export``'s typed settings: the ``export:`` block of ``conf/config.yaml`` (:class:`ExportSettings`)
and the base of a task's own ``export.*`` keys (:class:`TaskExportOptions`, defaults in
``conf/task/export/<task>.yaml``). Each key's range is declared here once; its default lives in the
config file only.

    settings = build(cfg.export, ExportSettings, options=spec.export_options)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from mbtasks.errors import ConfigError
from mbtasks.settings import Settings, setting

# the file formats an export writes (onnx: verified in onnxruntime; torchscript: with torch.jit.load)
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
# export.quantize besides null ("none": the same as null, as written in older configs)
QUANTIZE = ("none", "int8")


@dataclass(frozen=True, kw_only=True)
class ExportSettings(Settings):
    """The ``export:`` block; ``options`` holds the task's own keys (a :class:`TaskExportOptions`)."""

    section: ClassVar[str] = "export"
    format: str = setting(choices=tuple(FORMATS))
    end_to_end: bool = setting(choices=(True, False))
    output: Any = setting(number=False, optional=True)
    inputs: Any = setting(number=False, optional=True)
    num_inputs: int = setting(integer=True, low=1, example="4")
    # any number: a negative tolerance makes every comparison fail (a test of the refusal path)
    atol: float = setting(example="1e-4")
    rtol: float = setting(example="1e-4")
    e2e_atol: float = setting(low=0, low_in=False, example="5e-3")
    opset: int = setting(integer=True, low=1, example="18")
    quantize: str | None = setting(choices=QUANTIZE, optional=True)
    calibration: Any = setting(number=False, optional=True)
    calibration_images: int = setting(integer=True, low=1, example="256")
    int8_exclude: Any = setting(number=False, optional=True)
    int8_reduce_range: bool = setting(choices=(True, False))
    speed_batch: int = setting(integer=True, low=1, example="32")
    speed_threads: int = setting(integer=True, low=1, example="2")
    options: Any = None

    def __post_init__(self) -> None:
        if self.quantize not in (None, *QUANTIZE):  # the message users know
            raise ConfigError(f"export.quantize={self.quantize!r}: expected null or 'int8'")
        super().__post_init__()
        if self.int8 and self.format != "onnx":
            raise ConfigError(
                f"export.quantize={self.quantize}: needs export.format=onnx (onnxruntime quantization), "
                f"not {self.format}"
            )

    @property
    def int8(self) -> bool:
        """``export.quantize=int8``."""
        return self.quantize == "int8"


def max_drop_setting() -> Any:
    """A task's ``export.int8_max_drop_*`` key: the INT8 metric drop it tolerates, a fraction like every
    metric (0.01 = 1 point); a task's options declare one (:func:`int8_max_drop` finds it)."""
    field = setting(example="0.01")
    return dataclasses.field(metadata={**field.metadata, "max_drop": True})


@dataclass(frozen=True, kw_only=True)
class TaskExportOptions(Settings):
    """Base of a task's own ``export.*`` keys (``TaskSpec.export_options``)."""

    section: ClassVar[str] = "export"

    def __post_init__(self) -> None:
        super().__post_init__()
        for f in dataclasses.fields(self):
            if f.metadata.get("max_drop") and getattr(self, f.name) > 1:
                raise ConfigError(
                    f"export.{f.name}={getattr(self, f.name):g}: the tolerated drop is a fraction of the metric, "
                    f"like every metric mbtasks reports (0.01 = 1 point of top-1); expected <= 1"
                )


def int8_max_drop(options: Settings | None, task: str) -> tuple[str, float]:
    """``(key, value)`` of the ``export.int8_max_drop_*`` key the task's options declare."""
    for f in dataclasses.fields(options) if options is not None else ():
        if f.metadata.get("max_drop"):
            return f.name, float(getattr(options, f.name))
    raise ConfigError(f"export.quantize=int8: task {task} declares no export.int8_max_drop_* key to verify it with")
