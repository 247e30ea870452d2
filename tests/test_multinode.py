"""The multi-node recipe on one machine: 2 processes that behave as 2 nodes of 1 device each (NODE_RANK 0 / 1,
MASTER_ADDR / MASTER_PORT, gloo on CPU), launched by the env-variable recipe scripts/multinode_env.sh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_CLASSES, compose_cfg

REPO = Path(__file__).resolve().parent.parent


def test_ddp_config_has_num_nodes():
    cfg = compose_cfg(["trainer=ddp", "trainer.num_nodes=2"])
    assert cfg.trainer.num_nodes == 2 and compose_cfg(["trainer=ddp"]).trainer.num_nodes == 1


@pytest.mark.slow  # flaky: a start-up race between the two local 'nodes' (see README)
def test_two_nodes_one_device_each(tmp_path):
    from mbtasks.data.synthetic.shapes import make_shapes_classification

    root = make_shapes_classification(
        tmp_path / "shapes",
        classes=TINY_CLASSES,
        train_per_class=4,
        val_per_class=2,
        test_per_class=2,
        image_size=32,
        seed=1,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"  # one dir for both "nodes", as on a cluster's shared file system
    # scripts/multinode_env.sh adds trainer=ddp trainer.devices=$GPUS trainer.num_nodes=$NUM_NODES
    # hydra.run.dir=$RUN_DIR
    args = [
        "trainer.accelerator=cpu",
        f"data.root={root}",
        "data.generator=null",
        "data.image_size=32",
        "data.batch_size=4",
        "backbone.width=0.25",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "data.num_workers=0",
        "task.log_images=0",
        "task.top_k=2",
    ]
    procs = []
    for node in (0, 1):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            NODE_RANK=str(node),
            NUM_NODES="2",
            GPUS="1",
            RUN_DIR=str(run_dir),
            PYTHON=sys.executable,
        )
        for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "GROUP_RANK"):
            env.pop(key, None)
        with open(tmp_path / f"node{node}.log", "w") as log:  # a file: a full pipe would block the process
            procs.append(
                subprocess.Popen(
                    ["bash", "scripts/multinode_env.sh", *args],
                    cwd=REPO,
                    env=env,
                    text=True,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + 300
    try:  # a node that fails leaves the other waiting for it: stop both then
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait()
    outputs = [(tmp_path / f"node{node}.log").read_text() for node in (0, 1)]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in outputs)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]  # node 1 ran as the second of 2 ranks
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert epochs == [0]  # written once, by rank 0
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["test/acc_top1"] <= 1
