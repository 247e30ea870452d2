"""Which parameters train without weight decay (``task.no_decay``), and the optimizer keys checked at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from mbtasks.errors import ConfigError
from mbtasks.settings import Settings, setting

NO_DECAY_KINDS = ("norm", "bias", "depthwise")


@dataclass(frozen=True, kw_only=True)
class OptimizerSettings(Settings):
    """The ``optimizer.*`` keys checked at start-up (``mbtasks.config.validate``); the optimizer itself is
    the config's ``_partial_`` torch class, completed in ``configure_optimizers``."""

    section: ClassVar[str] = "optimizer"
    lr: float | None = setting(low=0, low_in=False, optional=True, example="0.01")


def check_no_decay(kinds) -> tuple[str, ...]:
    """``task.no_decay`` as a tuple; :class:`~mbtasks.errors.ConfigError` for an unknown kind."""
    kinds = tuple(kinds or ())
    unknown = [k for k in kinds if k not in NO_DECAY_KINDS]
    if unknown:
        raise ConfigError(
            f"task.no_decay={list(kinds)}: unknown kinds {unknown}; expected some of {list(NO_DECAY_KINDS)}"
        )
    return kinds


def no_decay_kind(module: nn.Module, name: str) -> str | None:
    """Which of :data:`NO_DECAY_KINDS` ``module``'s own parameter ``name`` is, if any."""
    if isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        return "norm"
    if name == "bias":
        return "bias"
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    return None


def split_no_decay(model: nn.Module, groups: list[dict], kinds: tuple[str, ...] | list[str]) -> list[dict]:
    """Split every optimizer group in two: parameters of ``kinds`` get ``weight_decay=0``.

    MobileNet V1 (Sec. 3.4) trains depthwise filters with little or no weight decay, "since
    there are so few parameters in them"; normalisation weights and biases are commonly
    left undecayed too. A group that ends up empty is dropped.
    """
    kinds = check_no_decay(kinds)
    if not kinds:
        return groups
    exempt = {
        id(p) for m in model.modules() for n, p in m.named_parameters(recurse=False) if no_decay_kind(m, n) in kinds
    }
    out = []
    for group in groups:
        params = list(group["params"])
        rest = {k: v for k, v in group.items() if k != "params"}
        decay = [p for p in params if id(p) not in exempt]
        plain = [p for p in params if id(p) in exempt]
        if decay:
            out.append({**rest, "params": decay})
        if plain:
            out.append({**rest, "params": plain, "weight_decay": 0.0, "name": f"{rest.get('name', 'params')}_no_decay"})
    return out
