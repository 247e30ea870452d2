"""mode=check: scan the configured data set before training; print a summary, write ``check.json``.

Each data module's own ``setup`` does the parsing and validation (the same code a training
run uses), then every image of every split is decoded once. Exits with an error (CLI code 2)
when the data cannot train.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from mbtasks.atomic_files import write_json_atomic
from mbtasks.data.image_files import ImageReadError, read_rgb
from mbtasks.errors import DataError
from mbtasks.modes.rundir import write_config
from mbtasks.tasks import spec_for_config
from mbtasks.tasks.spec import CHECK_SHOW

log = logging.getLogger(__name__)

REPORT = "check.json"


def decoder(unreadable: dict[str, str]):
    """``decode(paths, sizes=None)``: decode every file once; returns the readable ones and records the
    rest in ``unreadable`` (and the decoded ``(width, height)`` of each readable one in ``sizes``)."""

    def decode(paths: list[Path], sizes: dict[str, tuple[int, int]] | None = None) -> set[str]:
        ok = set()
        for path in paths:
            key = str(path)
            if key in unreadable:
                continue
            try:
                h, w = read_rgb(path).shape[:2]
                ok.add(key)
                if sizes is not None:
                    sizes[key] = (w, h)
            except ImageReadError as err:
                unreadable[key] = str(err.__cause__ or err)
        return ok

    return decode


def scan(cfg: DictConfig) -> dict[str, Any]:
    """The check report of ``cfg.data`` (no training, no model): the data module's own ``setup`` parses
    and validates, its ``describe()`` says what it found, the task's ``check_data`` reads that."""
    report: dict[str, Any] = {
        "data": str(cfg.data.get("_target_")),
        "root": str(cfg.data.get("root")),
        "splits": {},
        "errors": [],
        "warnings": [],
    }
    unreadable: dict[str, str] = {}
    try:
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
    except DataError as err:
        report["errors"].append(str(err))
        datamodule = None
    if datamodule is not None:
        spec_for_config(cfg).check_data(datamodule.describe(), decoder(unreadable), report)
    if unreadable:
        report["warnings"].append(
            f"{len(unreadable)} unreadable images are skipped in training (first: {next(iter(unreadable))})"
        )
    report["unreadable"] = {"count": len(unreadable), "first": dict(list(unreadable.items())[:CHECK_SHOW])}
    report["ok"] = not report["errors"]
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"data check: {report['root']}")
    columns = sorted({k for s in report["splits"].values() for k, v in s.items() if not isinstance(v, dict)})
    table.add_column("split")
    for col in columns:
        table.add_column(col, justify="right")
    for split, stats in report["splits"].items():
        table.add_row(split, *(str(stats.get(c, "")) for c in columns))
    console = Console(stderr=False)
    console.print(table)
    classes = report["splits"].get("train", {}).get("classes")
    if classes:
        hist = Table(title="training classes")
        hist.add_column("class")
        hist.add_column("count", justify="right")
        for name, n in classes.items():
            hist.add_row(name, str(n))
        console.print(hist)
    for line in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}")
    for line in report["errors"]:
        console.print(f"[red]cannot train:[/red] {line}")


def run(cfg: DictConfig, run_dir: Path, overrides=()) -> dict:
    write_config(run_dir, cfg)
    report = scan(cfg)
    write_json_atomic(run_dir / REPORT, report)
    print_report(report)
    log.info("check report: %s", run_dir / REPORT)
    if not report["ok"]:
        raise DataError(
            f"data check failed ({len(report['errors'])} problems, see {run_dir / REPORT}): {report['errors'][0]}"
        )
    return report
