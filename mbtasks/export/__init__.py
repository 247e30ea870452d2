"""Exported networks (ONNX, TorchScript): the graphs per task, the file formats, and the
detection post-processing that ships with them. ``mbtasks.modes.export`` drives them."""
