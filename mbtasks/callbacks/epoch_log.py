"""``epochs.jsonl``: one line of metrics per finished epoch, kept exact across a crash and resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L

from mbtasks.atomic_files import finite_json

# One line of train/val metrics per finished epoch, exact across crash + resume.
EPOCH_LOG = "epochs.jsonl"

log = logging.getLogger(__name__)


def read_epoch_log(path: str | Path) -> list[dict]:
    """The records of an ``epochs.jsonl`` (a torn last line from a kill is ignored)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class EpochLog(L.Callback):
    """Appends ``{"epoch", "step", "train/...", "val/...", "lr/<group>"}`` to ``path`` after each training epoch.

    ``val/`` keys appear only on epochs where validation ran (``trainer.check_val_every_n_epoch``).

    The number of epochs written is part of the checkpoint, so a resumed run first cuts the
    file back to the epochs its checkpoint has seen: no epoch is lost or written twice.
    On resume it also marks a TensorBoard session start at the resumed step, which makes
    TensorBoard drop the scalars the killed run wrote after its last checkpoint.

    Args:
        path: the ``.jsonl`` file (in the run dir).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.epochs_logged = 0
        self._resumed = False
        # val/ values stay in callback_metrics after an epoch without validation: only record them when it ran
        self._validated = False

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_logged": self.epochs_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs_logged = int(state_dict.get("epochs_logged", 0))
        self._resumed = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self._resumed:
            self.epochs_logged = 0
            self.path.unlink(missing_ok=True)
            return
        kept = [r for r in read_epoch_log(self.path) if r.get("epoch", 0) < self.epochs_logged]
        self.path.write_text("".join(json.dumps(finite_json(r), sort_keys=True, allow_nan=False) + "\n" for r in kept))
        self._mark_tensorboard_restart(trainer)
        log.info("resumed at epoch %d, global step %d", trainer.current_epoch, trainer.global_step)

    @staticmethod
    def _mark_tensorboard_restart(trainer: L.Trainer) -> None:
        """A SessionLog.START event at the resumed step: TensorBoard then discards later steps from older files."""
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                continue
            try:
                from tensorboard.compat.proto.event_pb2 import Event, SessionLog

                writer = logger.experiment._get_file_writer()
                writer.add_event(Event(step=trainer.global_step, session_log=SessionLog(status=SessionLog.START)))
                writer.flush()
            except Exception as err:  # noqa: BLE001 - cosmetic for TensorBoard; the run must go on
                log.warning("could not mark the resume in TensorBoard (%s)", err)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        stages = ("train/", "val/") if self._validated else ("train/",)
        self._validated = False
        record: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(stages):
                record[key] = float(value.item() if hasattr(value, "item") else value)
        for j, group in enumerate(trainer.optimizers[0].param_groups if trainer.optimizers else ()):
            name = str(group.get("name", j))
            if not name.endswith("_no_decay"):  # same LR as its decayed twin
                record[f"lr/{name}"] = float(group["lr"])
        with open(self.path, "a") as f:
            f.write(json.dumps(finite_json(record), sort_keys=True, allow_nan=False) + "\n")
        self.epochs_logged = trainer.current_epoch + 1
