"""Exported models (ONNX, TorchScript), the generic pieces: the in-graph preprocessing and the end-to-end
wrappers around a task's tail (``preprocessing``, ``onnx_pipeline``, ``torch_pipeline``), the file
formats, INT8 quantization, the typed ``export.*`` settings (``settings``), and the numpy detection
post-processing for network-only exports. A task's network graph and tails live in its package
(``mbtasks/tasks/<name>/export.py``); ``mbtasks.modes.export`` drives them."""
