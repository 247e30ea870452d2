"""Typed settings of one config block: how a mode (and a task's own mode options) reads its keys.

A block such as ``export:`` in ``conf/config.yaml`` names its class with ``_target_`` and holds every
default, once, with a comment saying what the key does. The class declares each key's type and range
with :func:`setting` and checks them when built, so a bad value fails at start-up with the key's full
name. Keys the class does not declare belong to the task (``predict.top_k`` is classification's):
:func:`build` hands them to the task's own settings class, kept as ``options``.

    @dataclass(frozen=True, kw_only=True)
    class ProfileSettings(Settings):
        section: ClassVar[str] = "profile"
        batch_size: int = setting(integer=True, low=1, example="1")

    settings = build(cfg.profile, ProfileSettings)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from mbtasks.errors import ConfigError, suggest

S = TypeVar("S", bound="Settings")


def setting(
    *,
    integer: bool = False,
    number: bool = True,
    low: float | None = None,
    low_in: bool = True,
    high: float | None = None,
    high_in: bool = True,
    choices: Sequence[Any] | None = None,
    optional: bool = False,
    example: str = "",
) -> Any:
    """A declared key: a number (``integer`` or not) within ``low``/``high`` (each included unless
    ``low_in`` / ``high_in`` is false), or one of ``choices``
    (``number=False, choices=None``: any value, unchecked). ``optional``: null is allowed. No default:
    defaults live in the config file."""
    if choices is not None:
        number = False
    return dataclasses.field(
        metadata={
            "integer": integer,
            "number": number,
            "low": low,
            "low_in": low_in,
            "high": high,
            "high_in": high_in,
            "choices": None if choices is None else tuple(choices),
            "optional": optional,
            "example": example,
        }
    )


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def check_value(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` naming ``key`` when ``value`` breaks ``meta`` (a :func:`setting`'s)."""
    if value is None:
        if meta.get("optional"):
            return
        raise ConfigError(f"{key}=null: expected a value" + (f" (e.g. {meta['example']})" if meta["example"] else ""))
    choices = meta.get("choices")
    if choices is not None:
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: expected one of {list(choices)}.{suggest(value, choices)}")
        return
    if not meta.get("number"):
        return
    integer, low, low_in, high = meta["integer"], meta["low"], meta["low_in"], meta["high"]
    below = low is not None and (value < low if low_in else value <= low) if _is_number(value, integer) else True
    high_in = meta.get("high_in", True)
    above = high is not None and (value > high if high_in else value >= high) if _is_number(value, integer) else True
    if not _is_number(value, integer) or below or above:
        bounds = " and ".join(
            b
            for b in (
                f"{'>=' if low_in else '>'} {low}" if low is not None else "",
                f"{'<=' if high_in else '<'} {high}" if high is not None else "",
            )
            if b
        )
        what = "an integer" if integer else "a number"
        example = f" (e.g. {meta['example']})" if meta["example"] else ""
        raise ConfigError(f"{key}={value!r}: expected {what}{' ' + bounds if bounds else ''}{example}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of typed settings; ``section`` is the block's key path (``export``), used in messages."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata:
                check_value(f"{self.section}.{f.name}" if self.section else f.name, getattr(self, f.name), f.metadata)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``options`` as a dict too): for records and metadata."""
        return dataclasses.asdict(self)


def _plain(block: Any) -> dict[str, Any]:
    if block is None:
        return {}
    if isinstance(block, DictConfig):
        return OmegaConf.to_container(block, resolve=True)  # type: ignore[return-value]
    return dict(block)


def build(block: Any, default: type[S], options: type[Settings] | None = None, section: str | None = None) -> S:
    """The settings object of ``block`` (a config block or a mapping).

    Args:
        block: its keys; ``_target_`` names the class (absent in configs written before settings were
            typed: ``default``).
        default: the class when ``block`` names none; ``_target_`` must be it or a subclass.
        options: the task's settings class for the keys ``default`` does not declare, passed as
            ``options=`` (the class must declare an ``options`` field); None: such keys are an error.
        section: the block's key path for messages (default: the class's ``section``).
    """
    values = _plain(block)
    target = values.pop("_target_", None)
    cls = default if target is None else get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, default)):
        raise ConfigError(
            f"{section or default.section}._target_={target}: expected {default.__module__}.{default.__name__}"
        )
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    own = {k: v for k, v in values.items() if k in names}
    rest = {k: v for k, v in values.items() if k not in names}
    if options is not None:
        own["options"] = options(
            **{k: rest.pop(k) for k in list(rest) if k in {f.name for f in dataclasses.fields(options)}}
        )
    if rest:
        where = section or cls.section
        raise ConfigError(
            f"unknown key{'s' if len(rest) > 1 else ''} {sorted(f'{where}.{k}' for k in rest)}: "
            f"valid keys under {where!r}: {sorted(names - {'options'})}"
        )
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.name not in own
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        where = section or cls.section
        raise ConfigError(f"{where}.{missing[0]} is not set: give {where}.{missing[0]}=VALUE")
    return cls(**own)
