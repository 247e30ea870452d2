"""Issue 24: an export never writes over a run's records, cleans what a killed export left, calibrates
INT8 on the training split (spread over the classes, unreadable files counted), reports the INT8
metric as a fraction, and keeps the exporters' INFO chatter out of the log."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mbtasks.modes.export as export
import mbtasks.modes.export_int8 as export_int8
from mbtasks.atomic_files import remove_stale_siblings, run_record
from mbtasks.errors import ConfigError
from mbtasks.export.formats import quiet_exporters
from mbtasks.modes.export import export_settings, export_task
from mbtasks.modes.export_metrics import folder_images, spread
from mbtasks.tasks import load_task
from tests.conftest import is_fraction_of, run_mode


def settings(**values):
    return export_settings("classification", **values)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    """A writable copy of the tiny classification run (config.yaml, metrics.json, epochs.jsonl, checkpoints/)."""
    return Path(shutil.copytree(tiny_run[1], tmp_path / "run"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- item 2: nothing of a run is overwritten -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fmt"),
    [
        ("checkpoints/best.ckpt", "onnx"),
        ("checkpoints/last.ckpt", "torchscript"),
        ("config.yaml", "onnx"),
        ("epochs.jsonl", "onnx"),
        ("checkpoints/not_yet.ckpt", "onnx"),
        ("metrics.onnx", "onnx"),
        (".hydra/model.onnx", "onnx"),
    ],
)
def test_export_never_takes_a_run_records_name(run_copy, tmp_path, target, fmt):
    before = snapshot(run_copy)
    with pytest.raises(
        ConfigError, match="export.output=.*(never takes the name of a run's checkpoint|not an mbtasks export)"
    ):
        run_mode(
            [
                "mode=export",
                f"ckpt_path={run_copy / 'checkpoints' / 'best.ckpt'}",
                f"export.format={fmt}",
                f"export.output={run_copy / target}",
            ],
            tmp_path / "out",
        )
    assert snapshot(run_copy) == before


def test_cli_refuses_to_export_over_the_source_checkpoint(run_copy, tmp_path):
    best = run_copy / "checkpoints" / "best.ckpt"
    before = best.read_bytes()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mbtasks",
            "mode=export",
            f"ckpt_path={best}",
            f"export.output={best}",
            f"hydra.run.dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MBTASKS_DEBUG": ""},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: export.output=" in proc.stderr and "a checkpoint (*.ckpt)" in proc.stderr
    assert best.read_bytes() == before and not best.with_suffix(".json").exists()


def test_export_to_an_existing_folder_is_refused_before_any_work(cls_ckpt, tmp_path, monkeypatch):
    folder = tmp_path / "exports"
    folder.mkdir()
    monkeypatch.setattr(export, "load_task", lambda *a: pytest.fail("the checkpoint was loaded before the refusal"))
    with pytest.raises(ConfigError, match=f"export.output={folder} is a folder"):
        run_mode(["mode=export", f"ckpt_path={cls_ckpt}", f"export.output={folder}"], tmp_path / "out")
    assert not (tmp_path / "exports.json").exists() and list(folder.iterdir()) == []


def test_export_replaces_only_an_earlier_export(cls_ckpt, tmp_path):
    task, train_cfg = load_task(cls_ckpt)
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    with pytest.raises(ConfigError, match="exists and is not an mbtasks export"):
        export_task(task, train_cfg, settings(end_to_end=False), notes)
    assert notes.read_text() == "not a model" and not (tmp_path / "notes.json").exists()
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        export_task(task, train_cfg, settings(end_to_end=False), notes / "model.onnx")
    # an earlier export (either format) is replaced
    export_task(task, train_cfg, settings(format="torchscript", end_to_end=False), tmp_path / "m.pt")
    export_task(task, train_cfg, settings(format="torchscript", end_to_end=False, num_inputs=3), tmp_path / "m.pt")
    assert json.loads((tmp_path / "m.json").read_text())["verification"]["batch_sizes"] == [3, 1]


def test_run_record_rule():
    for path in (
        "r/checkpoints/best.ckpt",
        "any/where/x.CKPT",
        "r/config.yaml",
        "r/metrics.json",
        "r/epochs.jsonl",
        "r/.hydra/config.yaml",
        "r/.hydra/x.onnx",
    ):
        assert run_record(path), path
    for path in ("r/checkpoints/classification.onnx", "r/model.pt", "r/model.json", "r/hydra/x.onnx"):
        assert run_record(path) is None, path


def test_a_killed_exports_temporaries_are_removed_by_the_next(cls_ckpt, tmp_path):
    dead, alive = dead_pid(), os.getppid()
    stale = [
        f".model.tmp-{dead}-network.onnx",
        f".model.tmp-{dead}-int8-prep.onnx",
        f".model.tmp-{dead}-export.onnx",
        f".model.json.tmp-{dead}",
    ]
    kept = [f".model.tmp-{alive}-network.onnx", f".other.tmp-{dead}-network.onnx", ".model.tmp-notapid.onnx"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half a model")
    task, train_cfg = load_task(cls_ckpt)
    export_task(task, train_cfg, settings(end_to_end=False), tmp_path / "model.onnx")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == sorted(kept)
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.json").is_file()


def test_remove_stale_siblings_keeps_live_and_unrelated(tmp_path):
    dead = dead_pid()
    for name in (
        f".a.onnx.tmp-{dead}",
        f".a.tmp-{dead}-x.onnx",
        f".ab.tmp-{dead}-x.onnx",
        f".a.tmp-{os.getpid()}-x.onnx",
    ):
        (tmp_path / name).write_bytes(b"")
    removed = remove_stale_siblings(tmp_path / "a.onnx")
    assert sorted(p.name for p in removed) == sorted([f".a.onnx.tmp-{dead}", f".a.tmp-{dead}-x.onnx"])
    assert remove_stale_siblings(tmp_path / "missing" / "a.onnx") == []


def test_predict_into_a_run_dir_leaves_its_records(run_copy, tiny_run):
    """mode=predict's output dir is hydra.run.dir: a run's dir gets a fresh sub-folder (guard, not a fix)."""
    from mbtasks.api import run

    before = snapshot(run_copy)
    result = run(
        ["mode=predict", f"ckpt_path={run_copy / 'checkpoints' / 'best.ckpt'}", f"predict.input={tiny_run[0] / 'val'}"],
        run_copy,
    )
    assert result.run_dir != run_copy
    assert {k: v for k, v in snapshot(run_copy).items() if not k.startswith(result.run_dir.name + "/")} == before


# --- item 7: INT8 calibration ----------------------------------------------------------------------------------


def int8(cls_ckpt, out: Path, **kw) -> dict:
    task, train_cfg = load_task(cls_ckpt)
    options = dict(end_to_end=False, quantize="int8", calibration_images=3, int8_max_drop_top1=1.0, speed_batch=2)
    export_task(task, train_cfg, settings(**{**options, **kw}), out)
    return json.loads(out.with_suffix(".json").read_text())


def test_int8_calibrates_on_the_training_split_across_classes(cls_ckpt, tiny_run, tmp_path, monkeypatch):
    root = tiny_run[0]
    read: list[Path] = []
    real = export_int8.file_batches

    def spy(files, *args):
        read.extend(Path(f) for f in files)
        return real(files, *args)

    monkeypatch.setattr(export_int8, "file_batches", spy)  # the calibration's reads only
    meta = int8(cls_ckpt, tmp_path / "q.onnx", calibration_images=3)
    calibration_reads = read
    assert [p.relative_to(root).parts[0] for p in calibration_reads] == ["train"] * 3
    assert {p.parent.name for p in calibration_reads} == {"circle", "square", "triangle"}  # one of each class
    calibration = meta["quantization"]["calibration"]
    assert calibration["source"] == "training split" and calibration["root"] == str(root)
    assert calibration["images"] == 3 and calibration["candidates"] == 12
    assert (calibration["classes_sampled"], calibration["classes"]) == (3, 3) and calibration["unreadable"] == 0
    assert meta["quantization"]["calibration_images"] == 3


def test_int8_calibration_folder_leaves_out_validation_images_and_counts_broken_files(
    cls_ckpt, tiny_run, tmp_path, caplog
):
    root = tiny_run[0]
    meta = int8(cls_ckpt, tmp_path / "a.onnx", calibration=str(root), calibration_images=100)
    calibration = meta["quantization"]["calibration"]
    assert calibration["source"] == "export.calibration"
    assert calibration["validation_images_left_out"] == len(list((root / "val").rglob("*.png"))) > 0
    assert calibration["images"] == calibration["candidates"] == len(list(root.rglob("*.png"))) - 6

    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((root / "train" / "circle").iterdir())[:3]:
        shutil.copy(src, photos / src.name)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (photos / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="mbtasks"):
        meta = int8(cls_ckpt, tmp_path / "b.onnx", calibration=str(photos), calibration_images=5)
    calibration = meta["quantization"]["calibration"]
    assert calibration["unreadable"] == 2 and calibration["images"] == 3
    assert set(calibration["unreadable_files"]) == {str(photos / "broken.jpg"), str(photos / "empty.png")}
    assert any("2 unreadable calibration image(s)" in r.getMessage() for r in caplog.records)


def test_int8_missing_calibration_folder_names_its_key(cls_ckpt, tmp_path):
    task, train_cfg = load_task(cls_ckpt)
    with pytest.raises(ConfigError, match=f"export.calibration={tmp_path / 'nope'}: no such file or folder"):
        export_task(task, train_cfg, settings(quantize="int8", calibration=str(tmp_path / "nope")), tmp_path / "q.onnx")
    assert list(tmp_path.iterdir()) == []


def test_spread_covers_classes_before_repeating(tmp_path):
    for c in range(100):
        folder = tmp_path / f"c{c:03d}"
        folder.mkdir()
        for i in range(5):
            (folder / f"{i}.jpg").write_bytes(b"")
    items = folder_images(tmp_path)
    assert len(items) == 500  # the whole tree, no early stop
    order = spread(items)
    assert sorted(order) == sorted(p for p, _ in items)
    assert len({p.parent.name for p in order[:100]}) == 100
    # detection: an image counts for each of its classes
    multi = [(Path("a"), (0, 1)), (Path("b"), (0,)), (Path("c"), (1,)), (Path("d"), (2,))]
    assert len({p for p in spread(multi)[:3]} & {Path("a"), Path("d")}) >= 1 and len(spread(multi)) == 4


# --- output: INT8 numbers as fractions, quiet exporters ----------------------------------------------------------


def test_int8_top1_is_a_fraction_like_every_metric(cls_ckpt, tmp_path):
    record = int8(cls_ckpt, tmp_path / "q.onnx")["verification"]["int8"]
    assert 0 <= record["fp32"] <= 1 and 0 <= record["int8"] <= 1
    assert is_fraction_of(record["fp32"], 6) and is_fraction_of(record["int8"], 6)  # 6 validation images
    assert settings().options.int8_max_drop_top1 == 0.01  # the default
    with pytest.raises(ConfigError, match="export.int8_max_drop_top1=5: the tolerated drop is a fraction"):
        run_mode(
            [
                "mode=export",
                f"ckpt_path={cls_ckpt}",
                "export.quantize=int8",
                "export.int8_max_drop_top1=5",
                f"export.output={tmp_path / 'x.onnx'}",
            ],
            tmp_path / "out",
        )


def test_export_log_has_no_third_party_info_lines(cls_ckpt, tmp_path, caplog):
    task, train_cfg = load_task(cls_ckpt)
    with caplog.at_level(logging.INFO):
        export_task(task, train_cfg, settings(end_to_end=False), tmp_path / "m.onnx")
    names = {r.name.split(".")[0] for r in caplog.records}
    assert not names & {"onnxscript", "onnx_ir", "onnx", "torch"}, names
    assert any(r.name == "mbtasks.modes.export" and "wrote" in r.getMessage() for r in caplog.records)


def test_quiet_exporters_keeps_warnings_and_restores_levels(caplog):
    chatty = logging.getLogger("onnxscript.optimizer")
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    try:
        with caplog.at_level(logging.INFO), quiet_exporters():
            chatty.info("pass applied")
            chatty.warning("a real warning")
            logging.getLogger("mbtasks.x").info("ours")
        assert [r.getMessage() for r in caplog.records] == ["a real warning", "ours"]
        assert logging.getLogger("onnxscript").level == logging.NOTSET
        assert logging.getLogger("onnx_ir").level == logging.ERROR
    finally:
        logging.getLogger("onnx_ir").setLevel(logging.NOTSET)


@pytest.fixture(scope="module")
def cls_ckpt(tiny_run):
    return tiny_run[1] / "checkpoints" / "best.ckpt"
