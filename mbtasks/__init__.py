"""mbtasks: one MobileNet backbone, three vision tasks.

Python API (the CLI runs the same code)::

    import mbtasks

    run = mbtasks.train("classification", ["backbone.width=0.5", "trainer.max_epochs=3"])
    model = mbtasks.load(run.best_checkpoint)          # any task's checkpoint
    results = model.predict("photos/")                 # one typed result per image
    mbtasks.test(run.best_checkpoint).metrics          # {"test/acc_top1": ...}
    pipeline = mbtasks.Pipeline("detector.ckpt", "embedder.ckpt")
    photos = pipeline.identify("photos/", gallery="gallery/")

``load(path)`` -> :class:`~mbtasks.api.Model` (``predict``, ``verify``, ``identify``, ``export``,
``profile``); ``train`` / ``test`` -> :class:`~mbtasks.api.RunResult` (``metrics``, ``run_dir``,
``best_checkpoint``); :class:`~mbtasks.tasks.embedding.identify.Pipeline`: detect, crop, embed, name.
"""

import os

# albumentations checks PyPI for a newer version at import; stay offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# OpenMP threads that spin while waiting make every torch op crawl when the cores are shared
# (other processes, loader workers): a training step measured 8-19 s instead of 0.3-1.4 s on
# 2 busy cores. Sleeping waiters cost nothing on an idle machine. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# The Python API (mbtasks/api.py), imported on first use so `import mbtasks` stays light.
_API = {
    "load": "mbtasks.api",
    "train": "mbtasks.api",
    "test": "mbtasks.api",
    "Model": "mbtasks.api",
    "RunResult": "mbtasks.api",
    "Pipeline": "mbtasks.tasks.embedding.identify",
    "Gallery": "mbtasks.tasks.embedding.predictor",
}
# Modules the README's Python API names after `import mbtasks` (`mbtasks.api.run`,
# `mbtasks.errors.DataError`...), imported on first use as well.
_MODULES = ("api", "errors", "results", "pipeline")
__all__ = [*_API, *_MODULES, "__version__"]


def __getattr__(name: str):
    """``mbtasks.load``, ``mbtasks.train``, ``mbtasks.test``, ``mbtasks.Pipeline``, ``mbtasks.api``...:
    see :mod:`mbtasks.api`."""
    if name in _API or name in _MODULES:
        import importlib

        if name in ("errors", "results"):  # plain classes (results: each task's, re-exported): nothing runs
            return importlib.import_module(f"mbtasks.{name}")
        # API runs log as the CLI does (mbtasks' INFO lines) unless the program configured logging.
        importlib.import_module("mbtasks.api").log_like_the_cli()
        if name in _MODULES:
            return importlib.import_module(f"mbtasks.{name}")
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mbtasks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_MODULES])
