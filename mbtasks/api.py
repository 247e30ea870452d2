"""The Python API: what ``import mbtasks`` offers (``mbtasks.load``, ``train``, ``test``, ``Pipeline``).

The CLI and this module share one code path: :func:`train` / :func:`test` compose the same Hydra
config as ``python -m mbtasks`` and run the same mode functions (:mod:`mbtasks.modes.run`);
``mode=predict`` runs the task's predictor that :func:`load` returns (a :class:`Model` holding
the task's :class:`~mbtasks.inference.Predictor`); :meth:`Model.export` runs ``mode=export``.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig

from mbtasks import checkpoint
from mbtasks.config import compose, with_checkpoint_task
from mbtasks.errors import ConfigError
from mbtasks.inference import Predictor
from mbtasks.modes.run import claim_run_dir, dispatch
from mbtasks.pretraining import named_checkpoint
from mbtasks.profiling import count_mult_adds, count_params, measure_latency_ms
from mbtasks.tasks import load_predictor, spec_for_config
from mbtasks.tasks.loading import check_inference_options

log = logging.getLogger("mbtasks")
# What load() looks for in a folder, in order: a training run dir, or its checkpoints/ folder.
RUN_DIR_CHECKPOINTS = ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt")


class FallbackHandler(logging.StreamHandler):
    """mbtasks' log lines on stderr while nothing else shows them.

    The CLI (Hydra) and a user's ``logging.basicConfig`` give the root logger handlers; then this one
    stays quiet, so no line is printed twice.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def log_like_the_cli() -> None:
    """Show mbtasks' INFO lines (pretrained-load report, time plan, where plots and results are) in API
    runs as the CLI does, when the program has not configured logging itself (idempotent)."""
    if logging.getLogger().handlers or any(isinstance(h, FallbackHandler) for h in log.handlers):
        return
    handler = FallbackHandler()
    handler.setFormatter(logging.Formatter("[%(name)s][%(levelname)s] %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET:  # the root's WARNING would drop INFO records before any handler
        log.setLevel(logging.INFO)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python -m mbtasks <overrides>`` composes (without Hydra's own ``hydra`` node)."""
    return compose(overrides)


def _new_run_dir(task: str) -> Path:
    """``outputs/<task>/<date>/<time>`` like the CLI's; a suffix when that second is taken."""
    now = datetime.datetime.now()
    base = Path("outputs") / task / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S")
    run_dir, n = base, 0
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


@dataclass
class RunResult:
    """What :func:`train` / :func:`test` return: the final ``metrics`` (as in ``metrics.json``) and where."""

    metrics: dict[str, float]
    run_dir: Path

    @property
    def best_checkpoint(self) -> Path | None:
        """``checkpoints/best.ckpt`` of a training run (``None`` for a test run)."""
        path = self.run_dir / "checkpoints" / "best.ckpt"
        return path if path.is_file() else None


def run(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> RunResult:
    """Run any mode as ``python -m mbtasks <overrides>`` would, in ``run_dir``.

    Raises:
        mbtasks.errors.UserError: a config or data mistake (the CLI prints these and exits with 2).
    """
    log_like_the_cli()
    overrides = with_checkpoint_task(overrides)
    cfg = compose_config(overrides)
    task = spec_for_config(cfg).name
    run_dir = Path(run_dir) if run_dir is not None else _new_run_dir(task)
    run_dir = claim_run_dir(cfg, run_dir)
    metrics = dispatch(cfg, run_dir, overrides)
    return RunResult(metrics, run_dir)


def train(task: str = "classification", overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> RunResult:
    """Train (then test the best checkpoint), as ``python -m mbtasks task=<task> <overrides>``.

    Args:
        task: ``classification``, ``detection`` or ``embedding``.
        overrides: Hydra overrides, e.g. ``["backbone.width=0.5", "trainer.max_epochs=3"]``.
        run_dir: where the run writes (default ``outputs/<task>/<date>/<time>``).

    Returns:
        a :class:`RunResult`: ``metrics`` (``test/...``, ``val/...``), ``run_dir``, ``best_checkpoint``.
    """
    return run([f"task={task}", "mode=train", *overrides], run_dir)


def test(ckpt_path: str | Path, overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> RunResult:
    """Re-evaluate a checkpoint on its test split, as ``python -m mbtasks mode=test ckpt_path=...``.

    ``ckpt_path`` as for :func:`load`: a file, a training run's dir or an http(s) URL."""
    ckpt_path = checkpoint_file(ckpt_path)
    task = checkpoint.task_name(checkpoint.read(ckpt_path))
    return run([f"task={task}", "mode=test", f"ckpt_path={ckpt_path}", *overrides], run_dir)


test.__test__ = False  # not a pytest test when imported into a test module


class Model:
    """A loaded checkpoint: its task's predictor (:meth:`predict`; embedding: ``verify`` / ``identify``...)
    plus :meth:`export` and :meth:`profile`. Made by :func:`load`.

    Every attribute of the task's predictor (``predictor``, a :class:`~mbtasks.inference.Predictor`) is
    the model's: read, set (``model.batch_size = 8``) and listed by ``dir``.
    """

    def __init__(self, predictor: Predictor) -> None:
        object.__setattr__(self, "predictor", predictor)

    def __getattr__(self, name: str) -> Any:
        # only reached for names Model lacks
        if name == "predictor":  # not set yet (copy / unpickling): no recursion through __getattr__
            raise AttributeError(name)
        try:
            return getattr(self.predictor, name)
        except AttributeError:
            if name.startswith("_"):
                raise
            offers = sorted(n for n in dir(self) if not n.startswith("_"))
            raise AttributeError(
                f"{name!r}: {self.checkpoint or 'this model'} is a {self.task_name} model, which has "
                f"no {name}; it offers {offers}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.predictor, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.predictor, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *dir(self.predictor)})

    def __repr__(self) -> str:
        return f"mbtasks.Model({self.task_name}, {self.checkpoint})"

    def export(self, fmt: str = "onnx", path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
        """Export the checkpoint with ``mode=export`` (verified against PyTorch before it is kept).

        Args:
            fmt: ``onnx`` or ``torchscript``.
            path: the file to write (default: beside the checkpoint, ``<task>.onnx`` / ``.pt``).
            overrides: more ``export.*`` keys (``export.inputs=DIR``...).

        Returns:
            what ``mode=export`` returns: the ``path``, its ``metadata`` JSON and the verification.
        """
        if self.checkpoint is None:
            raise ValueError("export needs a model loaded from a checkpoint file (mbtasks.load(path))")
        suffix = {"onnx": ".onnx", "torchscript": ".pt"}.get(fmt, "")
        path = Path(path) if path is not None else Path(self.checkpoint).parent / f"{self.task_name}{suffix}"
        result = run(
            [
                "mode=export",
                f"ckpt_path={self.checkpoint}",
                f"export.format={fmt}",
                f"export.output={path}",
                *overrides,
            ],
            path.parent,
        )
        return result.metrics

    def profile(self, batch_size: int = 1, warmup: int = 3, repeats: int = 20) -> dict:
        """Parameters, mult-adds (``torch.utils.flop_counter``) and median latency of the loaded network
        at the checkpoint's input size, as ``mode=profile`` counts them."""
        size = self.image_size
        network = self.task.model
        example = torch.randn(batch_size, 3, size, size, device=self.device)
        return {
            "task": self.task_name,
            "image_size": size,
            "params": count_params(network),
            "mult_adds": count_mult_adds(network, example[:1]),
            "latency_ms": round(measure_latency_ms(network, example, warmup, repeats), 3),
            "batch_size": batch_size,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }


def load(
    path: str | Path,
    device: str | None = None,
    fold_bn: bool = True,
    channels_last: bool = False,
    precision: str = "32",
    batch_size: int = 32,
) -> Model:
    """Load a checkpoint written by ``mode=train`` (any task) for inference.

    Args:
        path: ``.../checkpoints/best.ckpt`` (or ``last.ckpt``); a training run's dir (its ``best.ckpt``,
            else ``last.ckpt``); an http(s) URL (downloaded once into torch.hub's cache); or a
            published classifier's name (``mobilenet_v1_1.0:imagenet``).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA when available).
        fold_bn: fold BatchNorm into the convolutions (same outputs, faster).
        channels_last / precision: the CPU fast path (NHWC, ``"bf16"`` autocast).
        batch_size: images per forward pass in :meth:`Model.predict`.

    Example::

        model = mbtasks.load("outputs/classification/.../checkpoints/best.ckpt")
        result = model.predict("cat.jpg")[0]
        print(result.label, result.score)
    """
    log_like_the_cli()
    check_inference_options(device, batch_size)
    return Model(
        load_predictor(
            checkpoint_file(path),
            device=device,
            fold_bn=fold_bn,
            channels_last=channels_last,
            precision=precision,
            batch_size=batch_size,
        )
    )


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint file :func:`load` reads for ``path`` (see its ``path`` argument).

    Raises:
        ConfigError: a folder without a checkpoint, a URL that cannot be downloaded.
    """
    text = str(path)
    if "://" in text:  # never through Path(): it would fold "https://" into "https:/"
        return download(text)
    folder = Path(path)
    if folder.is_dir():
        for name in RUN_DIR_CHECKPOINTS:
            if (folder / name).is_file():
                log.info("%s: loading %s", folder, folder / name)
                return folder / name
        others = sorted(p.name for p in folder.glob("*.ckpt"))
        raise ConfigError(
            f"{folder}: a folder without {' or '.join(RUN_DIR_CHECKPOINTS[:2])}; give a mode=train "
            f"run's dir or a checkpoint file" + (f" (it holds {others[:5]})" if others else "")
        )
    return named_checkpoint(text)


def download(url: str) -> Path:
    """An http(s) checkpoint URL downloaded once into torch.hub's cache (``<hub dir>/checkpoints/mbtasks``;
    the name carries a hash of the URL, since every run's checkpoint is called ``best.ckpt``)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{url}: only http:// and https:// URLs are downloaded; give a local checkpoint path")
    name = Path(parsed.path).name or "checkpoint.ckpt"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = Path(torch.hub.get_dir()) / "checkpoints" / "mbtasks" / f"{digest}-{name}"
    if target.is_file():
        log.info("%s: the copy downloaded before, %s", url, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # torch writes a temporary file and renames it: no half-downloaded checkpoint under the name
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except (OSError, ValueError) as err:  # URLError / HTTPError are OSErrors
        reason = getattr(err, "reason", None) or err
        raise ConfigError(
            f"{url}: cannot download the checkpoint ({reason}); check the address and the internet "
            f"connection, or download it where there is internet and give the file's path"
        ) from err
    log.info("downloaded %s to %s", url, target)
    return target
