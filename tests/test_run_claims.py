"""A run dir belongs to one run at a time (issue 24, item 4), and resume= of a finished run leaves
it as it is (item 3); a run dir without config.yaml resumes from its checkpoint's config."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mbtasks.errors import ConfigError
from mbtasks.modes import rundir
from mbtasks.modes.run import claim_run_dir, dispatch, release_run_dir
from mbtasks.modes.rundir import LOCK, RunDirInUse, lock_run_dir
from mbtasks.resume import STEPS_KEY, finished_run, resume_config
from tests.conftest import compose_cfg, run_mode, train_tiny

REPO = Path(__file__).resolve().parent.parent
TRAIN = OmegaConf.create({"mode": "train", "resume": None})


def cli(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mbtasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- item 4: two runs into one dir ---------------------------------------------------------------------------


def claim_at_once(cfgs, run_dir: Path) -> list:
    """``claim_run_dir`` from one thread per config, released together: the claimed dirs or the errors."""
    barrier = threading.Barrier(len(cfgs))
    results = [None] * len(cfgs)

    def claim(i):
        barrier.wait()
        try:
            results[i] = claim_run_dir(cfgs[i], run_dir)
        except ConfigError as err:
            results[i] = err

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(cfgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_of_two_trainings_started_at_once_into_one_dir_one_gets_it(tmp_path):
    for attempt in range(3):  # a few rounds: the old check let both in whatever the timing
        run_dir = tmp_path / f"run{attempt}"
        results = claim_at_once([TRAIN, TRAIN], run_dir)
        won = [r for r in results if isinstance(r, Path)]
        lost = [r for r in results if isinstance(r, ConfigError)]
        assert won == [run_dir] and len(lost) == 1, results
        assert f"{run_dir} is in use by another run (pid {os.getpid()}" in str(lost[0])
        release_run_dir(run_dir)
        assert not (run_dir / LOCK).exists()


def test_another_mode_beside_a_running_training_writes_into_a_sub_dir(tmp_path, capsys):
    assert claim_run_dir(TRAIN, tmp_path) == tmp_path
    predict = OmegaConf.create({"mode": "predict", "resume": None})
    assert claim_run_dir(predict, tmp_path) == tmp_path / "predict"
    assert f"{tmp_path} holds another run's outputs" in capsys.readouterr().err
    release_run_dir(tmp_path / "predict")
    release_run_dir(tmp_path)
    assert not (tmp_path / LOCK).exists() and not (tmp_path / "predict" / LOCK).exists()


def test_dispatch_releases_the_claim_when_the_run_fails(tmp_path):
    cfg = compose_cfg(["mode=test"])  # no ckpt_path: refused at start-up
    assert claim_run_dir(cfg, tmp_path) == tmp_path
    with pytest.raises(ConfigError, match="ckpt_path"):
        dispatch(cfg, tmp_path)
    assert not (tmp_path / LOCK).exists()
    assert claim_run_dir(TRAIN, tmp_path) == tmp_path
    release_run_dir(tmp_path)


def test_a_lock_file_left_by_a_crashed_run_does_not_block(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 2**22 + 7, "host": "gone", "command": "python -m mbtasks"}))
    assert claim_run_dir(TRAIN, tmp_path) == tmp_path
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    release_run_dir(tmp_path)


def test_without_flock_the_marker_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "fcntl", None)
    first = lock_run_dir(tmp_path, "train")
    with pytest.raises(RunDirInUse, match=rf"in use by another run \(pid {os.getpid()}"):
        lock_run_dir(tmp_path, "train")
    first.release()
    assert not (tmp_path / LOCK).exists()
    (tmp_path / LOCK).write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))
    lock_run_dir(tmp_path, "train").release()
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(RunDirInUse, match=r"another-host.*if it is gone, delete .*\.mbtasks\.lock"):
        lock_run_dir(tmp_path, "train")


HOLD = """
import sys, time
from pathlib import Path
from mbtasks.modes.rundir import lock_run_dir
lock_run_dir(Path(sys.argv[1]), "train")
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_second_process_is_refused_by_name_until_the_first_dies(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunDirInUse, match=rf"{run_dir} is in use by another run \(pid {holder.pid}, host "):
            claim_run_dir(TRAIN, run_dir)
        proc = cli([f"hydra.run.dir={run_dir}", "trainer.max_epochs=1"])
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(error_lines(proc.stderr)) == 1
        assert f"error: {run_dir} is in use by another run (pid {holder.pid}" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (run_dir / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    # killed: the kernel dropped its lock, the file it left is taken over
    assert (run_dir / LOCK).exists()
    assert claim_run_dir(TRAIN, run_dir) == run_dir
    release_run_dir(run_dir)


# --- item 3: resume= of a finished run -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 1-epoch classification run (copy it before changing it)."""
    # pretrained=null: a module fixture runs before the per-test empty weight caches
    _, run_dir, _ = train_tiny(tmp_path_factory, "backbone.pretrained=null")
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    files = [run_dir / "metrics.json", run_dir / "config.yaml", *sorted((run_dir / "checkpoints").iterdir())]
    return {p.name: p.read_bytes() for p in files}


def test_resume_of_a_finished_run_leaves_it_as_it_is(finished, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert any(k.startswith("train/") for k in metrics) and any(k.startswith("val/") for k in metrics)
    assert claim_run_dir(compose_cfg([f"resume={run_dir}"]), run_dir) == run_dir
    result = run_mode([f"resume={run_dir}"], run_dir)
    assert snapshot(run_dir) == before
    assert result == metrics
    assert f"note: {run_dir} is a finished run (1 epoch, " in capsys.readouterr().err
    assert not (run_dir / LOCK).exists()
    # asking for no more than it trained changes nothing either
    run_mode([f"resume={run_dir}", "trainer.max_epochs=1"], run_dir)
    assert snapshot(run_dir) == before
    # a new budget cannot extend a finished run: refused before anything is written
    with pytest.raises(ConfigError, match=r"train\.time=1m: .* is a finished run .*train\.time=null"):
        run_mode([f"resume={run_dir}", "train.time=1m"], run_dir)
    assert snapshot(run_dir) == before


def test_a_finished_run_trains_on_when_asked(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    steps = json.loads((run_dir / "metrics.json").read_text())[STEPS_KEY]
    metrics = run_mode([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir)
    assert metrics[STEPS_KEY] == 2 * steps
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert any(k.startswith("train/") for k in saved) and any(k.startswith("val/") for k in saved)
    assert "test/acc_top1" in saved


def fake_run(run_dir: Path, step: int, epoch: int, metrics: dict | None) -> Path:
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": step, "epoch": epoch}, run_dir / "checkpoints" / "last.ckpt")
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.mark.parametrize(
    "metrics, expected",
    [
        (None, None),  # killed before its test: resumed
        ({"test/acc_top1": 0.5}, "finished"),  # an older run's metrics.json: finished
        ({"test/acc_top1": 0.5, STEPS_KEY: 6}, "finished"),
        ({"test/acc_top1": 0.5, STEPS_KEY: 3}, None),  # extended after it finished, then killed: resumed
    ],
)
def test_what_counts_as_finished(tmp_path, metrics, expected):
    run_dir = fake_run(tmp_path / "run", 6, 1, metrics)
    note = finished_run(compose_cfg([f"resume={run_dir}"]), run_dir, [f"resume={run_dir}"])
    assert (note is None) if expected is None else (f"{run_dir} is a finished run (2 epochs, 6 steps" in note)
    overrides = [f"resume={run_dir}", "trainer.max_epochs=3"]
    assert finished_run(compose_cfg(overrides), run_dir, overrides) is None  # asked for a third epoch
    overrides = [f"resume={run_dir}", "trainer.max_epochs=3", "train.time=5m"]
    if expected:
        with pytest.raises(ConfigError, match=r"trainer\.max_epochs=3: .*trained under train\.time=5m"):
            finished_run(compose_cfg(overrides), run_dir, overrides)


def test_cli_resume_of_a_finished_run_says_so_and_exits_0(finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = snapshot(run_dir)
    proc = cli([f"resume={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"note: {run_dir} is a finished run" in proc.stderr and "trainer.max_epochs=N (N > 1)" in proc.stderr
    assert snapshot(run_dir) == before


# --- resume= of a dir without config.yaml --------------------------------------------------------------------


def test_a_run_dir_without_config_yaml_resumes_with_its_checkpoints_config(finished, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    (run_dir / "config.yaml").unlink()
    overrides = [f"resume={run_dir}"]
    cfg, _ = resume_config(compose_cfg(overrides), run_dir, overrides)
    stored = OmegaConf.load(finished / "config.yaml")
    assert cfg.backbone.width == stored.backbone.width == 0.25 and cfg.data.root == stored.data.root
    assert f"{run_dir} has no config.yaml" in caplog.text


def test_a_dir_with_neither_config_names_the_dir_not_a_task(tmp_path):
    run_dir = fake_run(tmp_path / "run", 6, 1, None)
    torch.save({"mbtasks": {"task": "detection"}, "global_step": 6}, run_dir / "checkpoints" / "last.ckpt")
    overrides = [f"resume={run_dir}"]
    with pytest.raises(ConfigError) as err:
        resume_config(compose_cfg(overrides), run_dir, overrides)
    assert f"{run_dir} has no config.yaml and" in str(err.value) and "task=" not in str(err.value)
