"""Typed settings (mbtasks.settings): a block's keys are checked by the class its _target_ names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from omegaconf import OmegaConf

from mbtasks.errors import ConfigError
from mbtasks.settings import Settings, build, setting


@dataclass(frozen=True, kw_only=True)
class Options(Settings):
    section: ClassVar[str] = "demo"
    top_k: int = setting(integer=True, low=1, example="5")


@dataclass(frozen=True, kw_only=True)
class Demo(Settings):
    section: ClassVar[str] = "demo"
    batch: int = setting(integer=True, low=1, example="32")
    share: float = setting(low=0, low_in=False, high=1.0, optional=True)
    fmt: str = setting(choices=("onnx", "torchscript"))
    path: Any = setting(number=False, optional=True)
    options: Any = None


def test_build_reads_target_and_hands_the_rest_to_the_task_options():
    block = OmegaConf.create(
        {"_target_": f"{__name__}.Demo", "batch": 4, "share": None, "fmt": "onnx", "path": "a", "top_k": 3}
    )
    s = build(block, Demo, Options)
    assert (s.batch, s.share, s.fmt, s.path, s.options.top_k) == (4, None, "onnx", "a", 3)
    assert s.to_dict() == {"batch": 4, "share": None, "fmt": "onnx", "path": "a", "options": {"top_k": 3}}
    # configs written before settings were typed have no _target_
    assert build({"batch": 1, "share": 0.5, "fmt": "torchscript", "path": None}, Demo).share == 0.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch": 0}, r"demo.batch=0: expected an integer >= 1 \(e.g. 32\)"),
        ({"batch": 2.5}, r"demo.batch=2.5: expected an integer >= 1"),
        ({"batch": True}, r"demo.batch=True: expected an integer"),
        ({"share": 0}, r"demo.share=0: expected a number > 0 and <= 1.0"),
        ({"share": float("nan")}, r"demo.share=nan: expected a number"),
        ({"fmt": "onxx"}, r"demo.fmt='onxx': expected one of \['onnx', 'torchscript'\]. Did you mean 'onnx'"),
        ({"batch": None}, r"demo.batch=null: expected a value \(e.g. 32\)"),
        ({"top_k": 0}, r"demo.top_k=0: expected an integer >= 1"),
        ({"colour": 1}, r"unknown key \['demo.colour'\]: valid keys under 'demo'"),
        ({"_target_": "builtins.dict"}, r"demo._target_=builtins.dict: expected"),
    ],
)
def test_bad_values_name_the_key(change, message):
    block = {"batch": 4, "share": 0.5, "fmt": "onnx", "path": None, "top_k": 1, **change}
    with pytest.raises(ConfigError, match=message):
        build(block, Demo, Options)


def test_a_missing_key_is_named():
    with pytest.raises(ConfigError, match=r"demo.fmt is not set"):
        build({"batch": 4, "share": 0.5, "path": None}, Demo)
