"""Bad-input corpus (issue 6): each bad input gives a clear error naming file / key / value,
or a counted, logged skip; never a bare traceback from a training step, never a silent zero."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mbtasks.errors import ConfigError, DataError, UserError
from tests.bad_inputs import box, coco, image_folder, jpeg_bytes, png_bytes
from tests.conftest import compose_cfg


@dataclass
class Case:
    """``run(tmp)`` either raises ``error`` matching ``match`` or returns a dict of counts equal to ``counts``."""

    name: str
    run: Callable[[Path], dict | None]
    error: type[BaseException] | None = None
    match: str = ""
    counts: dict | None = None


# --- images --------------------------------------------------------------------------------------------------

def _dataset_skips(tmp: Path, bad: bytes) -> dict:
    from mbtasks.data.imagefolder import ImageFolderDataset, scan_image_folder

    root = image_folder(tmp / "train")
    (root / "a" / "bad.jpg").write_bytes(bad)
    samples, _ = scan_image_folder(root)
    ds = ImageFolderDataset(samples, None, (0.5,) * 3, (0.5,) * 3)
    images = [ds[i][0] for i in range(len(ds))]
    assert all(img.shape == (3, 32, 32) for img in images)  # the bad file was replaced by a readable one
    return {"samples": len(samples), "skipped": len(ds.skips.skipped), "named": str(root / "a" / "bad.jpg") in ds.skips.skipped}


def truncated_jpeg(tmp: Path) -> dict:
    return _dataset_skips(tmp, jpeg_bytes()[:60])


def zero_byte_file(tmp: Path) -> dict:
    return _dataset_skips(tmp, b"")


def all_images_unreadable(tmp: Path) -> None:
    from mbtasks.data.imagefolder import ImageFolderDataset

    (tmp / "x.png").write_bytes(b"")
    ImageFolderDataset([(tmp / "x.png", 0)], None, (0.5,) * 3, (0.5,) * 3)[0]


def non_image_file(tmp: Path) -> dict:
    from mbtasks.data.imagefolder import scan_image_folder

    root = image_folder(tmp / "train")
    (root / "a" / "notes.txt").write_text("not an image")
    samples, classes = scan_image_folder(root)
    return {"samples": len(samples), "classes": len(classes)}


def empty_class_folder(tmp: Path) -> None:
    from mbtasks.data.imagefolder import scan_image_folder

    root = image_folder(tmp / "train")
    (root / "empty").mkdir()
    scan_image_folder(root)


# --- COCO ----------------------------------------------------------------------------------------------------

def coco_missing(key: str) -> Callable[[Path], dict]:
    def run(tmp: Path) -> dict:
        from mbtasks.data.coco import read_coco_json

        data = read_coco_json(coco(tmp, drop=key))
        return {}  if data["annotations"] == [] else data
    return run


def coco_invalid_json(tmp: Path) -> None:
    from mbtasks.data.coco import read_coco_json

    (tmp / "ann.json").write_text('{"images": [')
    read_coco_json(tmp / "ann.json")


def coco_counts(annotations: list[dict], missing_file: bool = False) -> Callable[[Path], dict]:
    def run(tmp: Path) -> dict:
        from mbtasks.data.coco import load_coco

        ann = coco(tmp, annotations + [box(100, [30, 30, 10, 10], image_id=2)])
        if missing_file:
            (tmp / "img" / "0.png").unlink()
        records, report = load_coco(ann, tmp / "img", [1, 2])
        return {**report.counts, "boxes": int(sum(r.num_trainable for r in records))}
    return run


def coco_no_usable_box(tmp: Path) -> None:
    from mbtasks.data.coco import load_coco
    from mbtasks.data.detection import require_boxes

    ann = coco(tmp, [box(1, [5, 5, 0, 0])])
    records, report = load_coco(ann, tmp / "img", [1, 2])
    require_boxes(records, ann, report)


# --- identities and pairs ------------------------------------------------------------------------------------

def one_image_identity(tmp: Path) -> dict:
    from mbtasks.data.faces import scan_identities, split_identities

    for i in range(6):
        (tmp / f"id{i}").mkdir()
        for j in range(3):
            (tmp / f"id{i}" / f"{j}.png").write_bytes(png_bytes(color=(i * 40, j * 60, 0)))
    (tmp / "lonely").mkdir()
    (tmp / "lonely" / "0.png").write_bytes(png_bytes())
    identities = scan_identities(tmp)
    train, val, test = split_identities(identities, 2, 2)
    return {"identities": len(identities), "single": sum(len(v) < 2 for v in identities.values()),
            "split": len(train) + len(val) + len(test)}


def too_few_identities(tmp: Path) -> None:
    from mbtasks.data.faces import scan_identities, split_identities

    (tmp / "solo").mkdir()
    (tmp / "solo" / "0.png").write_bytes(png_bytes())
    split_identities(scan_identities(tmp), 1, 1)


def pairs_missing_file(tmp: Path) -> None:
    from mbtasks.data.pairs import read_lfw_pairs

    (tmp / "Ann").mkdir()
    (tmp / "Ann" / "Ann_0001.png").write_bytes(png_bytes())
    (tmp / "pairs.txt").write_text("Ann 1 2\n")
    read_lfw_pairs(tmp / "pairs.txt", tmp, num_folds=1)


# --- config --------------------------------------------------------------------------------------------------

def unknown_group_value(tmp: Path) -> None:
    compose_cfg(["backbone=mobilenet_v9"])


def misspelled_key(tmp: Path) -> None:
    from mbtasks.__main__ import CONFIG_DIR
    from mbtasks.config import misspelled_keys

    hints = misspelled_keys(["backbone.widht=0.5"], CONFIG_DIR)
    raise ConfigError(" ".join(hints))


def validate_with(overrides: list[str]) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.config import validate

        validate(compose_cfg(overrides))
    return run


def other_width_as_pretrained(tmp: Path) -> None:
    from mbtasks.backbones.mobilenet_v1 import MobileNetV1
    from mbtasks.backbones.pretrained import load_pretrained

    torch.save(MobileNetV1(width=0.25).state_dict(), tmp / "w025.pt")
    load_pretrained(MobileNetV1(width=0.5), str(tmp / "w025.pt"))


def not_a_checkpoint(content: bytes) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.tasks import read_checkpoint

        (tmp / "last.ckpt").write_bytes(content)
        read_checkpoint(tmp / "last.ckpt")
    return run


def foreign_pickle(tmp: Path) -> None:
    """A checkpoint holding arbitrary pickled objects: weights_only refuses to run its code."""
    from mbtasks.tasks import read_checkpoint

    torch.save({"mbtasks": {}, "payload": Path("/etc/passwd")}, tmp / "evil.ckpt")
    read_checkpoint(tmp / "evil.ckpt")


CASES = [
    Case("truncated JPEG", truncated_jpeg, counts={"samples": 5, "skipped": 1, "named": True}),
    Case("zero-byte file", zero_byte_file, counts={"samples": 5, "skipped": 1, "named": True}),
    Case("every image unreadable", all_images_unreadable, DataError, r"no readable image.*x\.png"),
    Case("non-image file in an ImageFolder", non_image_file, counts={"samples": 4, "classes": 2}),
    Case("empty class folder", empty_class_folder, DataError, r"empty: class folder holds no image files"),
    Case("COCO json without images", coco_missing("images"), DataError, r"ann\.json: missing or malformed .*images"),
    # allowed for image-info files; a training split without any box stops (next case)
    Case("COCO json without annotations", coco_missing("annotations"), counts={}),
    Case("COCO json not valid json", coco_invalid_json, DataError, r"ann\.json: not valid json"),
    Case("box of zero size", coco_counts([box(1, [8, 8, 0, 10])]), counts={"boxes: zero or negative size": 1, "boxes": 1}),
    Case("box of negative size", coco_counts([box(1, [8, 8, -5, 10])]), counts={"boxes: zero or negative size": 1, "boxes": 1}),
    Case("box outside the image", coco_counts([box(1, [100, 100, 10, 10])]), counts={"boxes: outside the image": 1, "boxes": 1}),
    Case("box partly outside (clipped, kept)", coco_counts([box(1, [50, 50, 30, 30])]), counts={"boxes": 2}),
    Case("unknown category id", coco_counts([box(1, [8, 8, 10, 10], category_id=7)]), counts={"unknown category ids": 1, "boxes": 1}),
    Case("image listed but missing on disk", coco_counts([box(1, [8, 8, 10, 10])], missing_file=True),
         counts={"missing image files": 1, "annotations of missing images": 1, "boxes": 1}),
    Case("no usable box in the training split", coco_no_usable_box, DataError, r"ann\.json: no usable boxes in 2 images"),
    Case("identity folder with one image", one_image_identity, counts={"identities": 7, "single": 1, "split": 7}),
    Case("too few identities", too_few_identities, DataError, r"identities cannot give"),
    Case("pairs file naming a missing file", pairs_missing_file, DataError, r"pairs\.txt:1: image .*Ann_0002\.\* not found"),
    Case("unknown config group value", unknown_group_value, Exception, r"mobilenet_v9.*(?s:.*)mobilenet_v1"),
    Case("misspelled key", misspelled_key, ConfigError, r"unknown key 'backbone.widht'.*Did you mean 'backbone.width'"),
    Case("width <= 0", validate_with(["backbone.width=0"]), ConfigError, r"backbone.width=0: expected a number > 0"),
    Case("negative width", validate_with(["backbone.width=-0.5"]), ConfigError, r"backbone.width=-0.5"),
    Case("image size the backbone cannot take", validate_with(["data.image_size=20"]), ConfigError,
         r"data.image_size=20: expected an integer >= 32"),
    Case("unknown mode", validate_with(["mode=tarin"]), ConfigError, r"mode='tarin'.*Did you mean 'train'"),
    Case("mode=test without ckpt_path", validate_with(["mode=test"]), ConfigError, r"needs ckpt_path"),
    Case("checkpoint of another width as backbone.pretrained", other_width_as_pretrained, ConfigError,
         r"backbone.pretrained=.*w025\.pt"),
    Case("truncated checkpoint", not_a_checkpoint(b"PK\x03\x04 truncated"), ConfigError, r"last\.ckpt: cannot read checkpoint"),
    Case("checkpoint that is not ours", not_a_checkpoint(b""), ConfigError, r"last\.ckpt"),
    Case("checkpoint with pickled objects", foreign_pickle, ConfigError, r"evil\.ckpt: .*pickled Python objects"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path):
    if case.error is not None:
        with pytest.raises(case.error, match=case.match):
            case.run(tmp_path)
        return
    assert case.run(tmp_path) == case.counts


def test_corpus_is_big_enough():
    assert len(CASES) >= 15


def test_user_errors_are_what_the_cli_prints_as_one_line():
    # The CLI turns UserError into "error: <message>" + exit 2; both data and config errors are UserErrors.
    assert issubclass(DataError, UserError) and issubclass(ConfigError, UserError)


def test_unreadable_files_are_counted_in_metrics_not_silently_dropped(tiny_shapes, tmp_path):
    """A training run with a broken file finishes and says how many it skipped (metrics.json)."""
    from tests.conftest import run_mode

    (tiny_shapes / "train" / "square" / "empty.png").write_bytes(b"")
    metrics = run_mode([f"data.root={tiny_shapes}", "data.generator=null", "data.image_size=32", "data.batch_size=8",
                        "backbone.width=0.25", "trainer.max_epochs=1", "task.log_images=0"], tmp_path)
    assert metrics["data/skipped_files"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["data/skipped_files"] == 1
