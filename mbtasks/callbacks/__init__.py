"""Lightning callbacks that config files name (``conf/callbacks``)."""

from mbtasks.callbacks.backbone_freeze import BackboneFreeze
from mbtasks.callbacks.channels_last import ChannelsLast

__all__ = ["BackboneFreeze", "ChannelsLast"]
