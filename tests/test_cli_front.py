"""The command line's front (issue 24, "Rough edges: CLI"): a --help that teaches, fast; our --version;
command-line mistakes Hydra finds (unknown group option, misspelled key, a run dir it cannot make)
as one error: line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import HydraException

import mbtasks
from mbtasks.cli import command_line_error, os_error_behind, run_dir_error
from mbtasks.config import CONFIG_DIR
from mbtasks.modes.run import RUNNERS
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parent.parent


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


SHOW_HELP = (
    "import sys; sys.argv = ['mbtasks', '--help']; from mbtasks.__main__ import main; main(); "
    "print('loaded:', [m for m in ('torch', 'hydra', 'lightning') if m in sys.modules])"
)


def test_help_teaches_modes_tasks_keys_and_where_the_config_is_without_loading_torch():
    proc = subprocess.run([sys.executable, "-c", SHOW_HELP], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.rstrip().endswith("loaded: []")  # printed before torch, Hydra or Lightning load
    assert text.startswith(f"mbtasks {mbtasks.__version__}: one MobileNet backbone")
    for mode in RUNNERS:
        assert f"\n  {mode} " in text
    for task in sorted(p.stem for p in Path(CONFIG_DIR, "task").glob("*.yaml")):
        assert f"\n  {task} " in text
    for key in (
        "data.root=",
        "backbone.width=",
        "backbone.pretrained=",
        "train.time=",
        "trainer.max_epochs=",
        "ckpt_path=",
        "resume=",
        "hydra.run.dir=",
        "--cfg job",
        "examples",
    ):
        assert key in text
    assert len(text.splitlines()) < 70


def test_help_and_version_from_the_command_line():
    help_ = cli(["task=detection", "--help"])
    assert help_.returncode == 0 and "modes (mode=)" in help_.stdout and "Hydra" not in help_.stdout.split("\n")[0]
    version = cli(["--version"])
    assert version.returncode == 0 and version.stdout == f"mbtasks {mbtasks.__version__}\n"


def test_unknown_group_option_is_one_error_line_with_exit_2(tmp_path):
    proc = cli(["task=detect", f"hydra.run.dir={tmp_path}"])
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        "error: task=detect: no such task option; choose one of classification, "
        "detection, embedding. Did you mean 'detection'?"
    ]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


def test_a_file_as_the_run_dir_is_one_error_line_with_exit_2(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("keep me")
    proc = cli([f"hydra.run.dir={file}", "mode=profile"])
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        f"error: hydra.run.dir={file}: cannot create or write the run dir there "
        f"({file} is a file, not a folder); give hydra.run.dir=DIR, a folder that can "
        "be created and written"
    ]
    assert "Traceback" not in proc.stderr and file.read_text() == "keep me"


def composition_error(overrides: list[str]) -> str:
    with pytest.raises(HydraException) as err:
        compose_cfg(overrides)
    return command_line_error(err.value, overrides)


def test_misspelled_keys_get_the_nearest_key():
    message = composition_error(["trainer.max_epoch=3"])
    assert message.startswith("trainer.max_epoch=3: unknown key 'trainer.max_epoch'. Did you mean 'trainer.max_epochs'")
    assert "\n" not in message
    assert "Did you mean 'seed'?" in composition_error(["sed=1"])
    assert "Did you mean 'task'?" in composition_error(["taks=detection"])
    assert composition_error(["backbone=mobilenet_v9"]).startswith(
        "backbone=mobilenet_v9: no such backbone option; choose one of mobilefacenet, mobilenet_v1, mobilenet_v2, timm."
    )
    assert composition_error(["trainer.max_epochs=["]).startswith("trainer.max_epochs=[: cannot parse it: ")


def test_run_dir_errors_name_the_key_given(tmp_path):
    file = tmp_path / "f"
    err = FileExistsError(17, "File exists", str(file))
    assert run_dir_error(err, [f"resume={file}"]).startswith(
        f"resume={file}: cannot use it as the run dir ({file} is a file, not a folder)"
    )
    # an existing dir without write permission: logging wraps the log file's PermissionError in a ValueError
    try:
        try:
            raise PermissionError(13, "Permission denied", "/srv/runs/__main__.log")
        except PermissionError as denied:
            raise ValueError("Unable to configure handler 'file'") from denied
    except ValueError as wrapped:
        assert run_dir_error(os_error_behind(wrapped), ["hydra.run.dir=/srv/runs"]) == (
            "hydra.run.dir=/srv/runs: cannot create or write the run dir there (no permission to write "
            "/srv/runs/__main__.log); give hydra.run.dir=DIR, a folder that can be created and written"
        )
