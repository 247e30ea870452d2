"""The checkpoint format: the one module that writes, reads and upgrades what a checkpoint holds.

A checkpoint is Lightning's dict (``state_dict``, optimizer and loop states, callback states) plus
``ckpt["mbtasks"]``::

    {"format": 2, "task": "detection", "info": {class names, image size, mean, std...},
     "config": the resolved run config}

``format`` is absent in checkpoints written before the wiring redesign (format 1); their stored
config names old targets and keys, which :func:`upgrade_config` maps to today's. The network's
tensors are ``state_dict["model.*"]``; the backbone's are under :data:`BACKBONE_PREFIX`, which is
what transfer learning (``backbone.pretrained=<checkpoint>``) reads through :func:`backbone_state`.
"""

from __future__ import annotations

import copy
import pickle
import pickletools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mbtasks.atomic_files import save_torch_atomic
from mbtasks.errors import ConfigError

KEY = "mbtasks"
FORMAT = 2
BACKBONE_PREFIX = "model.backbone."

# Pickle opcodes that import a global or call one: what weights_only refuses to run.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def stamp(checkpoint: dict[str, Any], **fields: Any) -> None:
    """Write ``fields`` (``task``, ``info``, ``task_args``, ``config``) into ``checkpoint``'s mbtasks section.

    The task writes what it knows, the trainer's :class:`ConfigInCheckpoint` the run config.
    """
    section = checkpoint.setdefault(KEY, {})
    section["format"] = FORMAT
    section.update(fields)


def pickled_objects(path: Path) -> list[str]:
    """Names of the globals (classes, functions) a checkpoint's pickle would import, ``[]`` when none.

    torch's own scan reads its zip format; a legacy or raw pickle is scanned with ``pickletools``.
    Raises ``ValueError`` when the file is not a pickle at all.
    """
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError:  # not torch's zip format
        pass
    names, strings = [], []
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            while f.tell() < size:  # torch's legacy format is several pickles, then raw storages
                for op, arg, _ in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL":
                        names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
                    elif op.name in _CODE_OPCODES and not names:
                        names.append(f"a {op.name} instruction")
                    elif isinstance(arg, str):
                        strings.append(arg)
        except Exception as err:  # noqa: BLE001 - pickletools raises ValueError, EOFError... on non-pickles
            if not names:
                raise ValueError(f"not a pickle ({err})") from err
    try:  # leave out what torch allows (OrderedDict, tensor rebuilds); private, hence the guard
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except (ImportError, AttributeError):
        allowed = set()
    return sorted(set(names) - allowed) or sorted(set(names))


def load_weights_only(path: Path, key: str, expected: str) -> Any:
    """``torch.load(weights_only=True)``; a file holding pickled objects (code) is refused, not run.

    The refusal is recognised by its type (``pickle.UnpicklingError`` from torch's weights-only
    unpickler) and the file is scanned to name the objects, whatever torch's wording.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False: the wrong advice for a file that would run code.
        try:
            objects = pickled_objects(path)
        except (ValueError, OSError):
            objects = []
        if objects:
            shown = ", ".join(objects[:5]) + (", ..." if len(objects) > 5 else "")
            reason = (
                f"it holds pickled Python objects ({shown}), which are not loaded: loading them would run "
                "code (weights_only=True)"
            )
        else:
            reason = "not a torch checkpoint (torch's weights-only reader cannot parse it)"
        raise ConfigError(f"{key}={path}: cannot read checkpoint: {reason}; {expected}") from err
    except Exception as err:  # noqa: BLE001 - any other failure means "damaged / not ours"
        # torch's messages run to paragraphs; the first line says what failed.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"{key}={path}: cannot read checkpoint: {reason or type(err).__name__}; {expected}") from err


def read(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint written by mbtasks (tensors and plain containers only), its config upgraded.

    Args:
        path: the checkpoint.
        key: the config key that named it (``ckpt_path``, ``resume``), for messages.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: damaged, not a checkpoint, holds pickled objects, or not an mbtasks checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"{key}={path}: a folder, expected a checkpoint file (a training run's checkpoints/best.ckpt or last.ckpt)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path}: file not found")
    ckpt = load_weights_only(path, key, "expected a checkpoint written by mbtasks mode=train")
    if not is_ours(ckpt):
        raise ConfigError(f"{key}={path}: not an mbtasks checkpoint (no '{KEY}' section)")
    refuse_non_finite(
        ckpt.get("state_dict") or {},
        f"{key}={path}",
        "the run that wrote it diverged or the file is damaged; use an earlier checkpoint",
    )
    section = ckpt[KEY]
    section["config"] = upgrade_config(section.get("config") or {})
    info = section.setdefault("info", {})
    if "teacher_dim" in info:  # format 1 kept a constructor argument in the data info
        section.setdefault("task_args", {})["teacher_dim"] = info.pop("teacher_dim")
    section["format"] = FORMAT
    return ckpt


def non_finite(state: Mapping[str, Any]) -> dict[str, str]:
    """Floating tensors of ``state`` holding NaN or infinite values: name -> ``"NaN"`` / ``"inf"`` /
    ``"NaN and inf"``, in ``state``'s order."""
    out = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            kinds = [k for k, bad in (("NaN", torch.isnan(value).any()), ("inf", torch.isinf(value).any())) if bad]
            out[name] = " and ".join(kinds)
    return out


def refuse_non_finite(state: Mapping[str, Any], source: str, advice: str) -> None:
    """Raise :class:`ConfigError` when a tensor of ``state`` is NaN or infinite, naming it and ``source``.

    Such weights load without complaint, then every output is NaN (predict would write ``"score": NaN``
    and test a meaningless number), so they are refused when read.
    """
    bad = non_finite(state)
    if bad:
        name, kind = next(iter(bad.items()))
        more = f" ({len(bad)} of its {len(state)} tensors hold non-finite values)" if len(bad) > 1 else ""
        raise ConfigError(f"{source}: tensor {name} holds {kind} values{more}; {advice}")


def is_ours(obj: Any) -> bool:
    return isinstance(obj, Mapping) and KEY in obj and isinstance(obj[KEY], Mapping)


def task_name(ckpt: Mapping[str, Any]) -> str:
    """The task (``classification``, ``detection``...) a checkpoint was trained for."""
    return str(ckpt[KEY].get("task") or "unknown")


def backbone_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An mbtasks checkpoint's backbone tensors, named as ``backbone.state_dict()`` names them."""
    state = ckpt.get("state_dict") or {}
    return {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}


def backbone_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The ``backbone`` section of an mbtasks checkpoint's run config (``{}`` when absent)."""
    return dict((ckpt[KEY].get("config") or {}).get("backbone") or {})


# --------------------------------------------------------------------------------- format 1 -> 2
# Targets that moved: format-1 configs (checkpoints, run dirs' config.yaml) name the old paths.
LEGACY_TARGETS = {
    "mbtasks.heads.classifier.ClassifierHead": "mbtasks.models.classifier.ClassifierHead",
    "mbtasks.heads.embedding.EmbeddingHead": "mbtasks.models.embedding.EmbeddingHead",
    "mbtasks.heads.ssd.SSDHead": "mbtasks.models.detection.ssd_head.SSDHead",
    "mbtasks.heads.anchors.DefaultBoxes": "mbtasks.models.detection.anchors.DefaultBoxes",
    # the synthetic generators moved into mbtasks.data.synthetic (any format)
    "mbtasks.data.synthetic.make_shapes_classification": "mbtasks.data.synthetic.shapes.make_shapes_classification",
    "mbtasks.data.synthetic.make_shapes_detection": "mbtasks.data.synthetic.shapes.make_shapes_detection",
    "mbtasks.data.synthetic_faces.make_synthetic_faces": "mbtasks.data.synthetic.faces.make_synthetic_faces",
    "mbtasks.data.synthetic_face_scenes.make_face_scenes": "mbtasks.data.synthetic.face_scenes.make_face_scenes",
}
# Callbacks whose job moved into the task (fine-tuning, the non-finite-loss guard).
LEGACY_CALLBACKS = ("mbtasks.callbacks.BackboneFreeze", "mbtasks.callbacks.FiniteLoss")
FINETUNE_KEYS = ("freeze", "unfreeze_at_epoch", "lr_mult")
FINETUNE_TARGET = "mbtasks.tasks.finetune.FineTune"


def _retarget(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: (LEGACY_TARGETS.get(v, v) if k == "_target_" else _retarget(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_retarget(v) for v in node]
    return node


def upgrade_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run config in today's shape (format 1 -> 2; a format-2 config comes back unchanged).

    Moves ``backbone.{freeze,unfreeze_at_epoch,lr_mult}`` to ``finetune.*``, ``optimizer.no_decay``
    to ``task.no_decay``, ``task.anchors`` to ``head.anchors``; drops ``head.width`` (the task passes
    the backbone's) and the ``backbone_freeze`` / ``finite_loss`` callbacks; renames moved targets.
    """
    cfg = _retarget(copy.deepcopy(dict(config)))
    backbone, task = cfg.get("backbone"), cfg.get("task")
    if isinstance(backbone, dict) and any(k in backbone for k in FINETUNE_KEYS):
        moved = {k: backbone.pop(k) for k in FINETUNE_KEYS if k in backbone}
        cfg.setdefault("finetune", {"_target_": FINETUNE_TARGET, **moved})
    optimizer = cfg.get("optimizer")
    if isinstance(optimizer, dict) and "no_decay" in optimizer:
        no_decay = optimizer.pop("no_decay")
        if isinstance(task, dict):
            task.setdefault("no_decay", list(no_decay or []))
    head = cfg.get("head")
    if isinstance(task, dict) and "anchors" in task:
        anchors = task.pop("anchors")
        if isinstance(head, dict):
            head.setdefault("anchors", anchors)
    if isinstance(head, dict) and str(head.get("_target_", "")).endswith(".SSDHead"):
        head.pop("width", None)
    callbacks = cfg.get("callbacks")
    if isinstance(callbacks, dict):
        cfg["callbacks"] = {
            k: v for k, v in callbacks.items() if not (isinstance(v, Mapping) and v.get("_target_") in LEGACY_CALLBACKS)
        }
    return cfg


class ConfigInCheckpoint(Callback):
    """Stores the resolved run config in every checkpoint (what ``load_task`` rebuilds the task from)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        stamp(checkpoint, config=self.config)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO writing local paths through :func:`mbtasks.atomic_files.save_torch_atomic`.

    Lightning's own ``TorchCheckpointIO`` writes straight to the final name, so a kill mid-save
    leaves a truncated ``last.ckpt`` that cannot resume. Remote URLs (``s3://``...) keep Lightning's
    writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        save_torch_atomic(checkpoint, path)
        return None
