"""What every speed benchmark shares: thread setup, median timings, a table, a JSON file.

Rules the scripts follow: references are measured in the same run as ours, interleaved
(ours, reference, ours, reference, ...) so load from other processes hits both alike; each
number is the median of several repetitions; ratios (ours / reference throughput, > 1 means
ours is faster) go into ``benchmarks/results/<name>.json`` with the machine's state.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# As the package does (mbtasks/__init__.py): sleeping OpenMP waiters, set before torch loads, so
# the numbers are those of mbtasks runs. Scripts import this module before torch for that.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from mbtasks.atomic_files import write_text_atomic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller batches (a smoke run)")
    p.add_argument("--threads", type=int, default=2, help="torch / onnxruntime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/<name>.json)")
    return p


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def time_rounds(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, the functions interleaved round by round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def machine() -> dict:
    """The context a number needs: CPU, threads, load, library versions."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import timm
    import torchvision

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if c not in (columns[0],) else "left")
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row))
    Console(width=160).print(table)


def write_results(name: str, payload: dict, out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    write_text_atomic(path, json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2))
    print(f"wrote {path}")
    return path


def build_task(overrides: list[str]):
    """A task built from the real config tree (``python -m mbtasks <overrides>``), random weights.

    Classes come from ``profile.num_classes`` (1000 as the papers count; pass
    ``profile.num_classes=80`` for a COCO-sized detector).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mbtasks.config import CONFIG_DIR
    from mbtasks.tasks import build_task as build
    from mbtasks.tasks import spec_for_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return build(cfg, spec_for_config(cfg).profile_info(cfg, cfg.profile.num_classes), training=False).eval()
