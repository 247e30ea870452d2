"""Exported models (ONNX, TorchScript): the network graphs per task, the end-to-end wrappers
(uint8 pixels -> answers: ``preprocessing``, ``onnx_pipeline``, ``torch_pipeline``), the file
formats, and the numpy detection post-processing for network-only exports.
``mbtasks.modes.export`` drives them."""
