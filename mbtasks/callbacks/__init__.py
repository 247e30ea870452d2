"""Lightning callbacks: those config files name (``conf/callbacks``), and those the trainer or a task adds."""

from mbtasks.callbacks.backbone_freeze import BackboneFreeze
from mbtasks.callbacks.channels_last import ChannelsLast
from mbtasks.callbacks.epoch_log import EpochLog
from mbtasks.callbacks.plots import RunPlots
from mbtasks.callbacks.progress import RunProgressBar
from mbtasks.callbacks.rng_state import RngState
from mbtasks.callbacks.time_budget import TimeBudget
from mbtasks.callbacks.validation_schedule import ValidationSchedule

__all__ = [
    "BackboneFreeze",
    "ChannelsLast",
    "EpochLog",
    "RngState",
    "RunPlots",
    "RunProgressBar",
    "TimeBudget",
    "ValidationSchedule",
]
