"""Issue 24's rough edges of the Python API and of reading checkpoints: names the README uses,
logging in API runs, load() of a run dir / URL, bad devices and batch sizes, NaN weights (refused
wherever a checkpoint or pretrained file is read, never written into JSON), pairs-file messages,
and one predictions.json name for classification and detection."""

from __future__ import annotations

import functools
import http.server
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import mbtasks
from mbtasks.errors import ConfigError, DataError
from tests.conftest import compose_cfg, run_mode, save_checkpoint

REPO = Path(__file__).resolve().parent.parent
INFO = {"class_names": ["a", "b"], "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
CLS = ["backbone.width=0.25", "data.image_size=32"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """``ok.ckpt`` (random 32-px classifier, as mode=train stores it), ``nan.ckpt`` (one NaN weight),
    ``inf.ckpt`` (one infinite BatchNorm variance) and ``x.png``."""
    from mbtasks.tasks import build_task

    folder = tmp_path_factory.mktemp("ckpts")
    cfg = compose_cfg(CLS)
    task = build_task(cfg, INFO, training=False)
    save_checkpoint(task, cfg, folder / "ok.ckpt")
    state = task.state_dict()
    weight = next(k for k in state if k.startswith("model.backbone.") and k.endswith("weight"))
    var = next(k for k in state if k.endswith("running_var"))
    for name, key, value in (("nan", weight, float("nan")), ("inf", var, float("inf"))):
        broken = build_task(cfg, INFO, training=False)
        broken.load_state_dict(state)
        with torch.no_grad():
            broken.state_dict()[key].view(-1)[0] = value
        save_checkpoint(broken, cfg, folder / f"{name}.ckpt")
    (folder / "keys.json").write_text(json.dumps({"nan": weight, "inf": var}))
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "x.png")
    return folder


def python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (what a user's script sees after ``import mbtasks``)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


# ------------------------------------------------------------------ names after `import mbtasks`
def readme_api_names() -> list[str]:
    """Every ``mbtasks.x.y`` the README's "From Python" section and ``mbtasks``' docstring use."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("### From Python", 1)[1].split("\n### ", 1)[0]
    names = re.findall(r"\bmbtasks\.([A-Za-z_][\w.]*)", section + (mbtasks.__doc__ or ""))
    return sorted({n.rstrip(".") for n in names})


def test_every_name_the_readme_uses_resolves_after_import_mbtasks():
    names = readme_api_names()
    assert {"api.run", "errors.DataError", "errors.ConfigError", "load", "Pipeline"} <= set(names)
    code = (
        "import functools, mbtasks\n"
        f"for name in {names!r}:\n"
        "    functools.reduce(getattr, name.split('.'), mbtasks)\n"
        f"print('resolved', {len(names)})"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resolved {len(names)}" in proc.stdout


# ------------------------------------------------------------------ logging in API runs
def test_api_runs_log_mbtasks_info_lines_once(checkpoints, tmp_path):
    """Without logging configured, API runs print mbtasks' INFO lines (as the CLI does); with the
    program's own logging (or Hydra's, under the CLI) they are printed by it, once."""
    run = (
        "from mbtasks import api\n"
        f"api.run(['mode=predict', 'ckpt_path={checkpoints / 'ok.ckpt'}', 'predict.input={checkpoints / 'x.png'}'],"
        " {!r})\n"
    )
    bare = python(run.format(str(tmp_path / "bare")))
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert len(re.findall(r"wrote 1 predictions to", bare.stderr)) == 1, bare.stderr[-2000:]
    configured = python("import logging\nlogging.basicConfig(level=logging.INFO)\n" + run.format(str(tmp_path / "own")))
    assert configured.returncode == 0, configured.stderr[-2000:]
    assert len(re.findall(r"wrote 1 predictions to", configured.stderr)) == 1, configured.stderr[-2000:]


# ------------------------------------------------------------------ load(): run dirs, URLs
def test_load_of_a_run_dir_takes_best_then_last(checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    for name in ("best.ckpt", "last.ckpt"):
        shutil.copy(checkpoints / "ok.ckpt", run_dir / "checkpoints" / name)
    assert Path(mbtasks.load(run_dir, device="cpu").checkpoint) == run_dir / "checkpoints" / "best.ckpt"
    assert Path(mbtasks.load(run_dir / "checkpoints", device="cpu").checkpoint) == run_dir / "checkpoints" / "best.ckpt"
    (run_dir / "checkpoints" / "best.ckpt").unlink()
    assert Path(mbtasks.load(run_dir, device="cpu").checkpoint) == run_dir / "checkpoints" / "last.ckpt"


def test_load_of_a_folder_without_checkpoints_says_what_is_missing(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"a folder without checkpoints/best\.ckpt or checkpoints/last\.ckpt"):
        mbtasks.load(tmp_path)
    # the CLI's ckpt_path=<folder> is told it is a folder, not "file not found"
    with pytest.raises(ConfigError, match=r"ckpt_path=.*: a folder, expected a checkpoint file"):
        run_mode(["mode=predict", f"ckpt_path={tmp_path}", f"predict.input={tmp_path}"], tmp_path / "p")


@pytest.fixture
def served(checkpoints):
    """An HTTP server on the loopback serving the checkpoints folder: ``(base URL, stop)``."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(checkpoints))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.shutdown
    server.shutdown()
    server.server_close()


def test_load_of_a_url_downloads_once_into_torch_hubs_cache(served):
    base, stop = served
    url = f"{base}/ok.ckpt"
    model = mbtasks.load(url, device="cpu")
    cached = Path(model.checkpoint)
    assert cached.parent == Path(torch.hub.get_dir()) / "checkpoints" / "mbtasks" and cached.name.endswith("-ok.ckpt")
    stop()  # offline now: the cached copy is used
    again = mbtasks.load(url, device="cpu")
    assert Path(again.checkpoint) == cached
    assert again.predict(np.zeros((8, 8, 3), np.uint8))[0].label in ("a", "b")


def test_load_of_an_unreachable_url_is_a_clear_error_with_the_url_intact():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/runs/cls/best.ckpt"
    with pytest.raises(ConfigError, match=re.escape(url) + r": cannot download the checkpoint"):
        mbtasks.load(url)
    with pytest.raises(ConfigError, match=r"ftp://host/x\.ckpt: only http:// and https:// URLs"):
        mbtasks.load("ftp://host/x.ckpt")


# ------------------------------------------------------------------ device, batch_size
def test_unknown_device_lists_the_valid_ones(checkpoints):
    with pytest.raises(ConfigError, match=r"device='tpu': not a device of this machine; expected one of \['cpu'"):
        mbtasks.load(checkpoints / "ok.ckpt", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device='cuda': not a device of this machine"):
            mbtasks.load(checkpoints / "ok.ckpt", device="cuda")
    assert str(mbtasks.load(checkpoints / "ok.ckpt", device=torch.device("cpu")).device) == "cpu"


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_batch_size_below_one_is_refused(checkpoints, batch_size):
    with pytest.raises(ConfigError, match=r"batch_size=.*: expected an integer >= 1"):
        mbtasks.load(checkpoints / "ok.ckpt", batch_size=batch_size)


def test_cli_predict_batch_size_zero_is_refused(checkpoints, tmp_path):
    # (already refused at start-up before issue 24; kept beside the API's check)
    with pytest.raises(ConfigError, match=r"predict\.batch_size=0: expected an integer >= 1"):
        run_mode(
            [
                "mode=predict",
                f"ckpt_path={checkpoints / 'ok.ckpt'}",
                f"predict.input={checkpoints / 'x.png'}",
                "predict.batch_size=0",
            ],
            tmp_path,
        )


# ------------------------------------------------------------------ non-finite weights
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_load_refuses_non_finite_weights_naming_the_tensor(checkpoints, kind):
    key = json.loads((checkpoints / "keys.json").read_text())[kind]
    word = "NaN" if kind == "nan" else "inf"
    with pytest.raises(ConfigError, match=rf"{kind}\.ckpt: tensor {re.escape(key)} holds {word} values"):
        mbtasks.load(checkpoints / f"{kind}.ckpt")


@pytest.mark.parametrize("mode", ["test", "predict", "export"])
def test_every_mode_refuses_a_checkpoint_with_nan_weights(checkpoints, tmp_path, mode):
    with pytest.raises(ConfigError, match=r"nan\.ckpt: tensor model\.backbone\.\S+ holds NaN values"):
        run_mode(
            [
                f"mode={mode}",
                f"ckpt_path={checkpoints / 'nan.ckpt'}",
                f"predict.input={checkpoints / 'x.png'}",
                f"data.root={tmp_path / 'data'}",
            ],
            tmp_path / "run",
        )
    assert not list(tmp_path.rglob("*.json"))


def test_resume_and_transfer_refuse_nan_weights(checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoints / "nan.ckpt", run_dir / "checkpoints" / "last.ckpt")
    OmegaConf.save(compose_cfg(CLS), run_dir / "config.yaml")
    with pytest.raises(ConfigError, match=r"^resume=.*last\.ckpt: tensor model\.backbone\.\S+ holds NaN values"):
        run_mode([f"resume={run_dir}"], run_dir)
    # another task's checkpoint as backbone.pretrained (transfer learning)
    from mbtasks.tasks import build_task

    cfg = compose_cfg([*CLS, f"backbone.pretrained={checkpoints / 'nan.ckpt'}"])
    with pytest.raises(ConfigError, match=r"backbone\.pretrained=.*nan\.ckpt: tensor \S+ holds NaN values"):
        build_task(cfg, INFO)


def test_non_finite_pretrained_state_dict_is_named_not_blamed_on_the_lr(tmp_path):
    from hydra.utils import instantiate

    from mbtasks.backbones.pretrained import load_pretrained

    backbone = instantiate(compose_cfg(CLS).backbone)
    state = backbone.state_dict()
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("nan")
    torch.save(state, tmp_path / "weights.pth")
    with pytest.raises(ConfigError) as err:
        load_pretrained(backbone, str(tmp_path / "weights.pth"))
    assert re.search(rf"backbone\.pretrained=.*weights\.pth: tensor {re.escape(key)} holds NaN values", str(err.value))
    assert "optimizer.lr" not in str(err.value)


def test_json_we_write_never_holds_nan(tmp_path):
    from mbtasks.atomic_files import write_json_atomic

    write_json_atomic(
        tmp_path / "m.json",
        {"test/loss": float("nan"), "rows": [{"score": float("inf")}, 1.5], "pair": (float("-inf"), 2)},
    )

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=refuse) == {
        "test/loss": None,
        "rows": [{"score": None}, 1.5],
        "pair": [None, 2],
    }


# ------------------------------------------------------------------ pairs files
def _faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    for name in ("Ann", "Bob"):
        (root / name).mkdir(parents=True)
        for n in (1, 2):
            Image.new("RGB", (8, 8)).save(root / name / f"{name}_{n:04d}.png")
    (tmp_path / "secret").mkdir()
    for n in (1, 2):  # a real identity folder outside the image root
        Image.new("RGB", (8, 8)).save(tmp_path / "secret" / f"secret_{n:04d}.png")
    return root


@pytest.mark.parametrize("number", ["-1", "1.0", "\u00b2"])
def test_pairs_file_image_number_says_what_is_expected(tmp_path, number):
    from mbtasks.data.pairs import read_lfw_pairs

    root = _faces(tmp_path)
    (tmp_path / "pairs.txt").write_text(f"Ann 1 2\nAnn {number} 2\n")
    with pytest.raises(DataError) as err:
        read_lfw_pairs(tmp_path / "pairs.txt", root)
    assert re.search(
        rf"pairs\.txt:2: image number '{re.escape(number)}': expected a whole number >= 0, the n of "
        r"the file Ann/Ann_<nnnn>\.<ext> \(e\.g\. 1 for Ann_0001\.jpg\)",
        str(err.value),
    ), str(err.value)
    assert "not an integer" not in str(err.value)


@pytest.mark.parametrize("name", ["../secret", "/abs/secret"])
def test_pairs_file_identity_outside_the_image_folder_is_refused(tmp_path, name):
    from mbtasks.data.pairs import read_lfw_pairs

    root = _faces(tmp_path)
    (tmp_path / "pairs.txt").write_text(f"Ann 1 2\n{name} 1 2\n")
    with pytest.raises(DataError, match=rf"pairs\.txt:2: identity '{re.escape(name)}' is absolute or climbs out of"):
        read_lfw_pairs(tmp_path / "pairs.txt", root)


# ------------------------------------------------------------------ one predictions.json
def test_detection_predict_writes_predictions_json(tmp_path):
    from mbtasks.tasks import build_task

    cfg = compose_cfg(["task=detection", "backbone.width=0.25"])
    info = {**INFO, "image_size": int(cfg.data.image_size), "category_ids": [1, 2]}
    ckpt = save_checkpoint(build_task(cfg, info, training=False), cfg, tmp_path / "det.ckpt")
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(tmp_path / "x.png")
    out = run_mode(["mode=predict", f"ckpt_path={ckpt}", f"predict.input={tmp_path / 'x.png'}"], tmp_path / "run")
    assert (tmp_path / "run" / "predictions.json").is_file() and not (tmp_path / "run" / "detections.json").exists()
    written = json.loads((tmp_path / "run" / "predictions.json").read_text())
    assert written == out["detections"] and all(math.isfinite(d["score"]) for d in written)
