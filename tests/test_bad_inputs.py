"""Bad-input corpus (issues 6 and 12): each bad input gives a clear error naming file / key / value,
or a counted, logged skip; never a bare traceback from a training step, never a silent zero.
The table of cases and their promised behaviour: ``tests/bad_inputs/README.md``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mbtasks.data.image_files import ImageReadError
from mbtasks.errors import ConfigError, DataError, UserError
from tests.bad_inputs import (
    box,
    coco,
    fake_checkpoint,
    image_folder,
    jpeg_bytes,
    png_bytes,
    png_claiming,
    png_text_bomb,
    tiff_bytes,
    voc_pair,
)
from tests.conftest import compose_cfg, run_mode


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
    return {
        "samples": len(samples),
        "skipped": len(ds.skips.skipped),
        "named": str(root / "a" / "bad.jpg") in ds.skips.skipped,
    }


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
        return {} if data["annotations"] == [] else data

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
    return {
        "identities": len(identities),
        "single": sum(len(v) < 2 for v in identities.values()),
        "split": len(train) + len(val) + len(test),
    }


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
    from mbtasks.config import CONFIG_DIR, misspelled_keys

    hints = misspelled_keys(["backbone.widht=0.5"], CONFIG_DIR)
    raise ConfigError(" ".join(hints))


def validate_with(overrides: list[str]) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.config import validate

        validate(compose_cfg(overrides))

    return run


def dispatch_with(overrides: list[str]) -> Callable[[Path], None]:
    """The command line run as the CLI runs it (the mode name is checked by its dispatch)."""

    def run(tmp: Path) -> None:
        run_mode(overrides, tmp / "run")

    return run


def other_width_as_pretrained(tmp: Path) -> None:
    from mbtasks.backbones.mobilenet_v1 import MobileNetV1
    from mbtasks.backbones.pretrained import load_pretrained

    torch.save(MobileNetV1(width=0.25).state_dict(), tmp / "w025.pt")
    load_pretrained(MobileNetV1(width=0.5), str(tmp / "w025.pt"))


def not_a_checkpoint(content: bytes) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.checkpoint import read as read_checkpoint

        (tmp / "last.ckpt").write_bytes(content)
        read_checkpoint(tmp / "last.ckpt")

    return run


def foreign_pickle(tmp: Path) -> None:
    """A checkpoint holding arbitrary pickled objects: weights_only refuses to run its code."""
    from mbtasks.checkpoint import read as read_checkpoint

    torch.save({"mbtasks": {}, "payload": Path("/etc/passwd")}, tmp / "evil.ckpt")
    read_checkpoint(tmp / "evil.ckpt")


# --- issue 12: decoders and pixel formats ------------------------------------------------------------------


def _read(tmp: Path, name: str, content: bytes):
    from mbtasks.data.image_files import read_rgb

    (tmp / name).write_bytes(content)
    return read_rgb(tmp / name)


def decoder_skip(content: bytes, name: str = "bad.png") -> Callable[[Path], dict]:
    """The file is a named, counted skip in a training split (never an exception mid-epoch)."""

    def run(tmp: Path) -> dict:
        from mbtasks.data.imagefolder import ImageFolderDataset, scan_image_folder

        root = image_folder(tmp / "train")
        (root / "a" / name).write_bytes(content)
        samples, _ = scan_image_folder(root)
        ds = ImageFolderDataset(samples, None, (0.5,) * 3, (0.5,) * 3)
        assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))
        return {"skipped": len(ds.skips.skipped), "named": str(root / "a" / name) in ds.skips.skipped}

    return run


def read_values(name: str, content: bytes) -> Callable[[Path], dict]:
    """Decoded grey values of the first row (as 8-bit RGB)."""

    def run(tmp: Path) -> dict:
        image = _read(tmp, name, content)
        assert image.dtype.name == "uint8" and image.shape[2] == 3
        return {"row": image[0, :, 0].tolist()}

    return run


def read_refused(name: str, content: bytes) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        _read(tmp, name, content)

    return run


def check_reports_decoder_failures(tmp: Path) -> dict:
    """mode=check lists a decompression bomb and an unmappable pixel format as unreadable, without a traceback."""
    from mbtasks.modes.check import scan

    for split in ("train", "val"):
        image_folder(tmp / split)
    (tmp / "train" / "a" / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    (tmp / "train" / "b" / "neg.tif").write_bytes(tiff_bytes("I", [[-5, 3], [4, 5]]))
    report = scan(compose_cfg(["data=imagefolder", f"data.root={tmp}", "data.image_size=32"]))
    first = report["unreadable"]["first"]
    return {
        "ok": report["ok"],
        "unreadable": report["unreadable"]["count"],
        "bomb named": "decompression bomb" in first[str(tmp / "train" / "a" / "bomb.png")],
        "mode named": "pixel mode 'I'" in first[str(tmp / "train" / "b" / "neg.tif")],
    }


# --- issue 12: COCO / VOC fields -----------------------------------------------------------------------------


def coco_edit(edit: Callable[[dict], None], counts_only: bool = True) -> Callable[[Path], dict]:
    """``load_coco`` after ``edit`` changed the parsed json of a 2-image file (one box each)."""

    def run(tmp: Path) -> dict:
        from mbtasks.data.coco import coco_categories, load_coco

        ann = coco(tmp, [box(1, [8, 8, 20, 20]), box(2, [30, 30, 10, 10], image_id=2)])
        data = json.loads(ann.read_text())
        edit(data)
        ann.write_text(json.dumps(data))
        _, ids = coco_categories(data, ann)
        records, report = load_coco(ann, tmp / "img", ids)
        return {**report.counts, "boxes": int(sum(r.num_trainable for r in records))}

    return run


def _set(path: str, value) -> Callable[[dict], None]:
    """``_set("images.0.width", "abc")``: assign inside the parsed json."""

    def edit(data: dict) -> None:
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(leaf) if isinstance(node, list) else leaf] = value

    return edit


def coco_deep_nesting(tmp: Path) -> None:
    from mbtasks.data.coco import read_coco_json

    (tmp / "ann.json").write_text("[" * 100_000 + "]" * 100_000)
    read_coco_json(tmp / "ann.json")


def coco_outside_file(name_of: Callable[[Path], str]) -> Callable[[Path], dict]:
    """A file_name leaving the image folder: not read (the file it names exists)."""

    def run(tmp: Path) -> dict:
        (tmp / "secret.png").write_bytes(png_bytes(64))
        return coco_edit(_set("images.1.file_name", name_of(tmp)))(tmp)

    return run


def coco_size_mismatch(tmp: Path) -> dict:
    """The json says 128x128, the file is 64x64: boxes follow the image, the dataset counts it."""
    from mbtasks.data.coco import load_coco
    from mbtasks.data.detection import DetectionDataset

    ann = coco(tmp, [box(1, [16, 16, 40, 40])])
    data = json.loads(ann.read_text())
    data["images"][0].update(width=128, height=128)
    ann.write_text(json.dumps(data))
    records, _ = load_coco(ann, tmp / "img", [1, 2])
    ds = DetectionDataset(records, None, 64, (0.5,) * 3, (0.5,) * 3, train=False)
    _, target = ds[0]
    return {"rescaled": len(ds.rescaled.skipped), "box": target["boxes"][0].tolist()}


def check_reports_size_mismatch(tmp: Path) -> dict:
    from mbtasks.data.synthetic.shapes import make_shapes_detection
    from mbtasks.modes.check import scan

    root = make_shapes_detection(
        tmp / "det",
        classes=["circle", "square"],
        train_images=4,
        val_images=2,
        test_images=2,
        image_size=64,
        empty_fraction=0.0,
        seed=3,
    )
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    data["images"][0].update(width=640, height=640)
    ann.write_text(json.dumps(data))
    report = scan(
        compose_cfg(
            [
                "task=detection",
                "data=coco",
                f"data.root={root}",
                "data.train_ann=annotations/instances_train.json",
                "data.train_images=train",
                "data.val_ann=annotations/instances_val.json",
                "data.val_images=val",
                "data.image_size=64",
            ]
        )
    )
    return {"rescaled": report["rescaled"]["count"], "warned": any("differ in size" in w for w in report["warnings"])}


def voc_read(width="64", height="64", filename=None) -> Callable[[Path], dict]:
    def run(tmp: Path) -> dict:
        from mbtasks.data.voc import load_voc, split_files

        (tmp / "secret.png").write_bytes(png_bytes(64))
        voc_pair(tmp / "train", "a", width, height, filename)
        records, report = load_voc(split_files(tmp, "train"), ["thing"], tmp / "train")
        return {**report.counts, "size": (records[0].width, records[0].height), "file": records[0].path.name}

    return run


# --- issue 12: config, checkpoints, run dirs, pairs ----------------------------------------------------------


def missing_value_is_not_a_misspelling(tmp: Path) -> dict:
    from mbtasks.config import CONFIG_DIR, misspelled_keys

    return {"hints": misspelled_keys(["data=imagefolder", "data.root=/data/x", "data.image_size=64"], CONFIG_DIR)}


def checkpoint_of_task(task: str, overrides: list[str], given: bool = True) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.tasks import check_checkpoint_task

        path = fake_checkpoint(tmp / "run" / "checkpoints" / "last.ckpt", task)
        check_checkpoint_task(compose_cfg(overrides + [f"ckpt_path={path}"]), given)

    return run


def pickle_refusal_new_wording(tmp: Path) -> None:
    """torch's newer text ("unsupported GLOBAL") is recognised by the exception type, not the text."""
    import pickle
    from unittest import mock

    from mbtasks.checkpoint import read as read_checkpoint

    torch.save({"mbtasks": {}, "payload": Path("/etc/passwd")}, tmp / "evil.ckpt")
    error = pickle.UnpicklingError(
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to "
        "`False` will likely succeed... unsupported GLOBAL pathlib.PosixPath"
    )
    with mock.patch("torch.load", side_effect=error):
        read_checkpoint(tmp / "evil.ckpt")


def raw_pickle_with_code(tmp: Path) -> None:
    import pickle

    from mbtasks.checkpoint import read as read_checkpoint

    class RunsCode:
        def __reduce__(self):
            return (print, ("this would run on load",))

    (tmp / "code.ckpt").write_bytes(pickle.dumps({"mbtasks": RunsCode()}, protocol=4))
    read_checkpoint(tmp / "code.ckpt")


def legacy_format_with_objects(tmp: Path) -> None:
    from mbtasks.checkpoint import read as read_checkpoint

    torch.save({"mbtasks": {}, "payload": Path("/etc/passwd")}, tmp / "old.ckpt", _use_new_zipfile_serialization=False)
    read_checkpoint(tmp / "old.ckpt")


def resume_with_pickled_objects(tmp: Path) -> None:
    from mbtasks.tasks import check_checkpoint_task

    last = tmp / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"mbtasks": {}, "payload": Path("/etc/passwd")}, last)
    check_checkpoint_task(compose_cfg([f"resume={tmp / 'run'}", f"ckpt_path={last}"]), False)


def other_mode_into_a_run_dir(mode: str) -> Callable[[Path], dict]:
    def run(tmp: Path) -> dict:
        from omegaconf import OmegaConf

        from mbtasks.modes.run import claim_run_dir

        (tmp / "metrics.json").write_text('{"test/acc_top1": 0.9}')
        (tmp / "config.yaml").write_text("old: config\n")
        used = claim_run_dir(OmegaConf.create({"mode": mode, "resume": None}), tmp)
        return {
            "dir": used.relative_to(tmp).as_posix(),
            "metrics kept": (tmp / "metrics.json").read_text() == '{"test/acc_top1": 0.9}',
        }

    return run


def train_into_a_dir_with_files(tmp: Path) -> None:
    from omegaconf import OmegaConf

    from mbtasks.modes.run import claim_run_dir

    (tmp / "check.json").write_text("{}")
    claim_run_dir(OmegaConf.create({"mode": "train", "resume": None}), tmp)


def pairs_with_spaces(line: str) -> Callable[[Path], dict]:
    def run(tmp: Path) -> dict:
        from mbtasks.tasks.embedding.predictor import read_pair_list

        for name in ("Ann Lee_1.png", "Ann Lee_2.png", "O'Brien_1.png", "O'Brien_2.png"):
            (tmp / name).write_bytes(png_bytes())
        (tmp / "pairs.txt").write_text(line + "\n")
        return {"pairs": [(a.name, b.name) for a, b in read_pair_list(tmp / "pairs.txt")]}

    return run


# --- issue 24 -------------------------------------------------------------------------------------------------


def non_finite_checkpoint(value: float) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks import checkpoint

        path = fake_checkpoint(tmp / "bad.ckpt")
        ckpt = torch.load(path, weights_only=True)
        ckpt["state_dict"] = {"model.head.fc.weight": torch.tensor([1.0, value])}
        torch.save(ckpt, path)
        checkpoint.read(path)

    return run


def non_finite_pretrained(tmp: Path) -> None:
    from mbtasks.backbones.mobilenet_v1 import MobileNetV1
    from mbtasks.backbones.pretrained import load_pretrained

    backbone = MobileNetV1(0.25)
    state = backbone.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    torch.save(state, tmp / "weights.pth")
    load_pretrained(MobileNetV1(0.25), str(tmp / "weights.pth"))


def lfw_pairs(line: str) -> Callable[[Path], dict]:
    def run(tmp: Path) -> dict:
        from mbtasks.data.pairs import read_lfw_pairs

        for n in (1, 2):
            (tmp / "Ann").mkdir(exist_ok=True)
            (tmp / "Ann" / f"Ann_{n:04d}.png").write_bytes(png_bytes())
        (tmp / "pairs.txt").write_text(f"1 1\nAnn 1 2\n{line}\n")
        read_lfw_pairs(tmp / "pairs.txt", tmp, num_folds=1)
        return {}

    return run


def inference_options(device, batch_size) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.tasks.loading import check_inference_options

        check_inference_options(device, batch_size)

    return run


def load_folder_without_checkpoints(tmp: Path) -> None:
    from mbtasks.api import checkpoint_file

    (tmp / "run").mkdir()
    checkpoint_file(tmp / "run")


def export_output(name: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from mbtasks.modes.export import check_output

        (tmp / "run" / "checkpoints").mkdir(parents=True)
        check_output(tmp / "run" / name)

    return run


def train_time_zero(tmp: Path) -> None:
    run_mode([f"data.root={tmp / 'missing'}", "data.generator=null", "train.time=0"], tmp / "run")


def empty_array_image(tmp: Path) -> None:
    import numpy as np

    from mbtasks.inference.inputs import as_sources

    as_sources([np.zeros((0, 0, 3), np.uint8)])[0].read()


def float_array_out_of_range(tmp: Path) -> None:
    import numpy as np

    from mbtasks.inference.inputs import as_sources

    as_sources([np.full((4, 4, 3), -3.0, np.float32)])[0].read()


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
    Case(
        "box of zero size", coco_counts([box(1, [8, 8, 0, 10])]), counts={"boxes: zero or negative size": 1, "boxes": 1}
    ),
    Case(
        "box of negative size",
        coco_counts([box(1, [8, 8, -5, 10])]),
        counts={"boxes: zero or negative size": 1, "boxes": 1},
    ),
    Case(
        "box outside the image",
        coco_counts([box(1, [100, 100, 10, 10])]),
        counts={"boxes: outside the image": 1, "boxes": 1},
    ),
    Case("box partly outside (clipped, kept)", coco_counts([box(1, [50, 50, 30, 30])]), counts={"boxes": 2}),
    Case(
        "unknown category id",
        coco_counts([box(1, [8, 8, 10, 10], category_id=7)]),
        counts={"unknown category ids": 1, "boxes": 1},
    ),
    Case(
        "image listed but missing on disk",
        coco_counts([box(1, [8, 8, 10, 10])], missing_file=True),
        counts={"missing image files": 1, "annotations of missing images": 1, "boxes": 1},
    ),
    Case(
        "no usable box in the training split", coco_no_usable_box, DataError, r"ann\.json: no usable boxes in 2 images"
    ),
    Case("identity folder with one image", one_image_identity, counts={"identities": 7, "single": 1, "split": 7}),
    Case("too few identities", too_few_identities, DataError, r"identities cannot give"),
    Case(
        "pairs file naming a missing file",
        pairs_missing_file,
        DataError,
        r"pairs\.txt:1: image .*Ann_0002\.\* not found",
    ),
    Case("unknown config group value", unknown_group_value, Exception, r"mobilenet_v9.*(?s:.*)mobilenet_v1"),
    Case("misspelled key", misspelled_key, ConfigError, r"unknown key 'backbone.widht'.*Did you mean 'backbone.width'"),
    Case("width <= 0", validate_with(["backbone.width=0"]), ConfigError, r"backbone.width=0: expected a number > 0"),
    Case("negative width", validate_with(["backbone.width=-0.5"]), ConfigError, r"backbone.width=-0.5"),
    Case(
        "image size the backbone cannot take",
        validate_with(["data.image_size=20"]),
        ConfigError,
        r"data.image_size=20: expected an integer >= 32",
    ),
    Case("unknown mode", dispatch_with(["mode=tarin"]), ConfigError, r"mode='tarin'.*Did you mean 'train'"),
    Case("mode=test without ckpt_path", validate_with(["mode=test"]), ConfigError, r"needs ckpt_path"),
    Case(
        "checkpoint of another width as backbone.pretrained",
        other_width_as_pretrained,
        ConfigError,
        r"backbone.pretrained=.*w025\.pt",
    ),
    Case(
        "truncated checkpoint",
        not_a_checkpoint(b"PK\x03\x04 truncated"),
        ConfigError,
        r"last\.ckpt: cannot read checkpoint",
    ),
    Case("checkpoint that is not ours", not_a_checkpoint(b""), ConfigError, r"last\.ckpt"),
    Case("checkpoint with pickled objects", foreign_pickle, ConfigError, r"evil\.ckpt: .*pickled Python objects"),
    # --- issue 12 ---
    Case(
        "header claiming 100000x100000 pixels (PIL's DecompressionBombError)",
        decoder_skip(png_claiming(100_000, 100_000)),
        counts={"skipped": 1, "named": True},
    ),
    Case(
        "header above the pixel limit, below 2x (PIL only warns)",
        read_refused("big.png", png_claiming(10_000, 10_000)),
        ImageReadError,
        r"big\.png: 10000x10000 pixels is above the decoder limit of 89478485",
    ),
    Case(
        "PNG text chunk inflating past MAX_TEXT_CHUNK",
        decoder_skip(png_text_bomb()),
        counts={"skipped": 1, "named": True},
    ),
    Case(
        "PNG text bomb named with PIL's reason",
        read_refused("t.png", png_text_bomb()),
        ImageReadError,
        r"t\.png: cannot decode image \(ValueError: Decompressed data too large",
    ),
    Case(
        "16-bit little-endian greyscale",
        read_values("le.tif", tiff_bytes("I;16", [[0, 25700, 32896, 65535]])),
        counts={"row": [0, 100, 128, 255]},
    ),
    Case(
        "16-bit big-endian greyscale",
        read_values("be.tif", tiff_bytes("I;16B", [[0, 25700, 32896, 65535]])),
        counts={"row": [0, 100, 128, 255]},
    ),
    Case(
        "32-bit integer image holding 8-bit values",
        read_values("i8.tif", tiff_bytes("I", [[0, 100, 200, 255]])),
        counts={"row": [0, 100, 200, 255]},
    ),
    Case(
        "32-bit integer image holding 16-bit values",
        read_values("i16.tif", tiff_bytes("I", [[0, 25700, 65535, 300]])),
        counts={"row": [0, 100, 255, 1]},
    ),
    Case(
        "32-bit integer image with negative values",
        read_refused("neg.tif", tiff_bytes("I", [[-5, 3]])),
        ImageReadError,
        r"neg\.tif: pixel mode 'I' with values -5\.\.3",
    ),
    Case(
        "float image in [0, 1]",
        read_values("f.tif", tiff_bytes("F", [[0.0, 0.5, 0.25, 1.0]])),
        counts={"row": [0, 128, 64, 255]},
    ),
    Case(
        "float image holding NaN",
        read_refused("nan.tif", tiff_bytes("F", [[0.0, float("nan")]])),
        ImageReadError,
        r"nan\.tif: pixel mode 'F' holds NaN or infinite values",
    ),
    Case(
        "mode=check reports decoder failures by name",
        check_reports_decoder_failures,
        counts={"ok": True, "unreadable": 2, "bomb named": True, "mode named": True},
    ),
    Case(
        "COCO duplicate image id",
        coco_edit(_set("images.1.id", 1)),
        DataError,
        r"ann\.json: image id 1 is used twice \(file_name '0\.png' and '1\.png'\)",
    ),
    Case(
        "COCO width that is not a number",
        coco_edit(_set("images.0.width", "abc")),
        counts={"image sizes that are not numbers": 1, "boxes": 2},
    ),
    Case(
        "COCO height NaN",
        coco_edit(_set("images.0.height", float("nan"))),
        counts={"image sizes that are not numbers": 1, "boxes": 2},
    ),
    Case(
        "COCO annotation that is a list",
        coco_edit(_set("annotations.0", [1, 2, 3])),
        counts={"malformed annotations": 1, "boxes": 1},
    ),
    Case(
        "COCO image entry that is a string",
        coco_edit(_set("images.0", "0.png")),
        counts={"malformed image entries": 1, "annotations of unlisted images": 1, "boxes": 1},
    ),
    Case("COCO json nested 100000 deep", coco_deep_nesting, DataError, r"ann\.json: json nested too deeply"),
    Case(
        "COCO file_name with '..'",
        coco_outside_file(lambda tmp: "../secret.png"),
        counts={"file names outside the image folder": 1, "annotations of missing images": 1, "boxes": 1},
    ),
    Case(
        "COCO absolute file_name",
        coco_outside_file(lambda tmp: str(tmp / "secret.png")),
        counts={"file names outside the image folder": 1, "annotations of missing images": 1, "boxes": 1},
    ),
    Case(
        "COCO float category_id",
        coco_edit(_set("annotations.0.category_id", 1.5)),
        counts={"malformed annotations": 1, "boxes": 1},
    ),
    Case(
        "COCO boolean category_id",
        coco_edit(_set("annotations.0.category_id", True)),
        counts={"malformed annotations": 1, "boxes": 1},
    ),
    Case(
        "COCO bbox given as a string",
        coco_edit(_set("annotations.0.bbox", "8820")),
        counts={"malformed annotations": 1, "boxes": 1},
    ),
    Case(
        "COCO area that is not a number (box area used)",
        coco_edit(_set("annotations.0.area", "big")),
        counts={"boxes": 2},
    ),
    Case(
        "COCO duplicate category names",
        coco_edit(_set("categories.1.name", "thing")),
        DataError,
        r"ann\.json: categories 1 and 2 share the name 'thing'",
    ),
    Case(
        "COCO float category id in categories",
        coco_edit(_set("categories.1.id", 2.5)),
        DataError,
        r"ann\.json: category .*2\.5.*integer 'id'",
    ),
    Case(
        "annotated size differs from the image (boxes rescaled, counted)",
        coco_size_mismatch,
        counts={"rescaled": 1, "box": [8.0, 8.0, 28.0, 28.0]},
    ),
    Case("mode=check reports size mismatches", check_reports_size_mismatch, counts={"rescaled": 1, "warned": True}),
    Case(
        "VOC <width>abc",
        voc_read(width="abc"),
        counts={"image sizes that are not numbers": 1, "size": (64, 64), "file": "a.png"},
    ),
    Case(
        "VOC <height>nan",
        voc_read(height="nan"),
        counts={"image sizes that are not numbers": 1, "size": (64, 64), "file": "a.png"},
    ),
    Case(
        "VOC <filename> with '..'",
        voc_read(filename="../secret.png"),
        counts={"file names outside the image folder": 1, "size": (64, 64), "file": "a.png"},
    ),
    Case(
        "data.batch_size=0",
        validate_with(["data.batch_size=0"]),
        ConfigError,
        r"data\.batch_size=0: expected an integer >= 1",
    ),
    Case(
        "data.num_workers=-1",
        validate_with(["data.num_workers=-1"]),
        ConfigError,
        r"data\.num_workers=-1: expected an integer >= 0",
    ),
    Case("optimizer.lr=0", validate_with(["optimizer.lr=0"]), ConfigError, r"optimizer\.lr=0: expected a number > 0"),
    Case(
        "optimizer.lr=nan",
        validate_with(["optimizer.lr=nan"]),
        ConfigError,
        r"optimizer\.lr=nan: expected a number > 0",
    ),
    Case("seed=-1", validate_with(["seed=-1"]), ConfigError, r"seed=-1: expected an integer >= 0 and <= 4294967295"),
    Case("seed given as text", validate_with(["seed=abc"]), ConfigError, r"seed='abc': expected an integer"),
    Case(
        "data.mean of two values",
        validate_with(["data.mean=[0.5,0.5]"]),
        ConfigError,
        r"data\.mean=.*expected three numbers",
    ),
    Case(
        "data.std with a zero",
        validate_with(["data.std=[0.2,0,0.2]"]),
        ConfigError,
        r"data\.std=.*expected three numbers > 0",
    ),
    Case(
        "trainer.max_epochs=0",
        validate_with(["trainer.max_epochs=0"]),
        ConfigError,
        r"trainer\.max_epochs=0: expected an integer >= 1 for mode=train",
    ),
    Case(
        "backbone.width=nan",
        validate_with(["backbone.width=nan"]),
        ConfigError,
        r"backbone\.width=nan: expected a number > 0 and <= 4",
    ),
    Case(
        "backbone.width=inf",
        validate_with(["backbone.width=inf"]),
        ConfigError,
        r"backbone\.width=inf: expected a number",
    ),
    Case(
        "backbone.width=100 (would exhaust memory)",
        validate_with(["backbone.width=100"]),
        ConfigError,
        r"backbone\.width=100: .*<= 4",
    ),
    Case(
        "data.image_size as a float",
        validate_with(["data.image_size=224.0"]),
        ConfigError,
        r"data\.image_size=224\.0: expected an integer",
    ),
    Case("MISSING data.root is not called a misspelling", missing_value_is_not_a_misspelling, counts={"hints": []}),
    Case(
        "data.root left at ??? (MISSING)",
        validate_with(["data=imagefolder"]),
        ConfigError,
        r"data\.root is not set \(\?\?\? in the config\): give data\.root=VALUE",
    ),
    Case(
        "task=detection head=linear",
        validate_with(["task=detection", "head=linear"]),
        ConfigError,
        r"task=detection cannot use head\._target_=mbtasks\.models\.classifier\.ClassifierHead"
        r".*head=ssd or head=ssdlite",
    ),
    Case(
        "classification checkpoint with task=embedding (mode=test)",
        checkpoint_of_task("classification", ["task=embedding", "mode=test"]),
        ConfigError,
        r"last\.ckpt is a classification checkpoint, but task=embedding was given",
    ),
    Case(
        "detection checkpoint as ckpt_path of a classification training run",
        checkpoint_of_task("detection", ["mode=train"], given=False),
        ConfigError,
        r"last\.ckpt is a detection checkpoint, but task=classification",
    ),
    Case(
        "torch's newer refusal wording ('unsupported GLOBAL')",
        pickle_refusal_new_wording,
        ConfigError,
        r"evil\.ckpt: cannot read checkpoint: it holds pickled Python objects \(pathlib\.PosixPath\)",
    ),
    Case(
        "raw pickle that runs code on load",
        raw_pickle_with_code,
        ConfigError,
        r"code\.ckpt: cannot read checkpoint: it holds pickled Python objects \(builtins\.print\)",
    ),
    Case(
        "legacy-format checkpoint with pickled objects",
        legacy_format_with_objects,
        ConfigError,
        r"old\.ckpt: .*pickled Python objects \(pathlib\.PosixPath\)",
    ),
    Case(
        "resume= a run whose last.ckpt holds pickled objects",
        resume_with_pickled_objects,
        ConfigError,
        r"^resume=.*last\.ckpt: cannot read checkpoint: it holds pickled Python objects",
    ),
    Case(
        "mode=test pointed at a training run dir",
        other_mode_into_a_run_dir("test"),
        counts={"dir": "test", "metrics kept": True},
    ),
    Case(
        "mode=predict pointed at a training run dir",
        other_mode_into_a_run_dir("predict"),
        counts={"dir": "predict", "metrics kept": True},
    ),
    Case(
        "mode=train into a dir holding other files",
        train_into_a_dir_with_files,
        ConfigError,
        r"already holds other files \(check\.json\)",
    ),
    Case(
        "pairs file: tab-separated paths with spaces",
        pairs_with_spaces("Ann Lee_1.png\tAnn Lee_2.png"),
        counts={"pairs": [("Ann Lee_1.png", "Ann Lee_2.png")]},
    ),
    Case(
        "pairs file: quoted paths with spaces",
        pairs_with_spaces('"Ann Lee_1.png" "Ann Lee_2.png"'),
        counts={"pairs": [("Ann Lee_1.png", "Ann Lee_2.png")]},
    ),
    Case(
        "pairs file: unquoted paths with spaces",
        pairs_with_spaces("Ann Lee_1.png Ann Lee_2.png"),
        counts={"pairs": [("Ann Lee_1.png", "Ann Lee_2.png")]},
    ),
    Case(
        "pairs file: names with an apostrophe",
        pairs_with_spaces("O'Brien_1.png O'Brien_2.png"),
        counts={"pairs": [("O'Brien_1.png", "O'Brien_2.png")]},
    ),
    Case(
        "checkpoint with a NaN weight",
        non_finite_checkpoint(float("nan")),
        ConfigError,
        r"bad\.ckpt: tensor model\.head\.fc\.weight holds NaN values",
    ),
    Case(
        "checkpoint with an infinite weight",
        non_finite_checkpoint(float("inf")),
        ConfigError,
        r"bad\.ckpt: tensor model\.head\.fc\.weight holds inf values",
    ),
    Case(
        "backbone.pretrained= a state dict holding NaN",
        non_finite_pretrained,
        ConfigError,
        r"backbone\.pretrained=.*weights\.pth: tensor .* holds NaN values",
    ),
    Case(
        "pairs file: image number -1",
        lfw_pairs("Ann 1 -1"),
        DataError,
        r"pairs\.txt:3: image number '-1': expected a whole number >= 0",
    ),
    Case(
        "pairs file: identity '../secret'",
        lfw_pairs("../secret 1 2"),
        DataError,
        r"pairs\.txt:3: identity '\.\./secret' is absolute or climbs out of",
    ),
    Case(
        "mbtasks.load(device='tpu')",
        inference_options("tpu", 1),
        ConfigError,
        r"device='tpu': not a device of this machine; expected one of \['cpu'",
    ),
    Case(
        "mbtasks.load(batch_size=0)",
        inference_options("cpu", 0),
        ConfigError,
        r"batch_size=0: expected an integer >= 1",
    ),
    Case(
        "mbtasks.load(<a folder without checkpoints>)",
        load_folder_without_checkpoints,
        ConfigError,
        r"a folder without checkpoints/best\.ckpt or checkpoints/last\.ckpt",
    ),
    Case("export.output= the run's best.ckpt", export_output("checkpoints/best.ckpt"), ConfigError, r"best\.ckpt"),
    Case("export.output= the run's config.yaml", export_output("config.yaml"), ConfigError, r"config\.yaml"),
    Case(
        "export.output= an existing folder",
        export_output("checkpoints"),
        ConfigError,
        r"export\.output=.*checkpoints is a folder",
    ),
    Case("train.time=0", train_time_zero, ConfigError, r"train\.time=0: "),
    Case("an image array with no pixels", empty_array_image, DataError, r"image_0: the image is empty \(0x0"),
    Case("a float image array with negative values", float_array_out_of_range, DataError, r"image_0"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path):
    if case.error is not None:
        with pytest.raises(case.error, match=case.match):
            case.run(tmp_path)
        return
    assert case.run(tmp_path) == case.counts


def test_corpus_is_big_enough():
    assert len(CASES) >= 29 + 25


def test_table_lists_every_case():
    """``tests/bad_inputs/README.md`` has one row per case, in order."""
    table = (Path(__file__).parent / "bad_inputs" / "README.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(CASES)
    for number, (row, case) in enumerate(zip(rows, CASES, strict=True), 1):
        assert row.startswith(f"| {number} | ") and case.name in row, (row, case.name)


def test_user_errors_are_what_the_cli_prints_as_one_line():
    # The CLI turns UserError into "error: <message>" + exit 2; both data and config errors are UserErrors.
    assert issubclass(DataError, UserError) and issubclass(ConfigError, UserError)


def test_unreadable_files_are_counted_in_metrics_not_silently_dropped(tiny_shapes, tmp_path):
    """A training run with a broken file finishes and says how many it skipped (metrics.json)."""
    from tests.conftest import run_mode

    (tiny_shapes / "train" / "square" / "empty.png").write_bytes(b"")
    metrics = run_mode(
        [
            f"data.root={tiny_shapes}",
            "data.generator=null",
            "data.image_size=32",
            "data.batch_size=8",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
        ],
        tmp_path,
    )
    assert metrics["data/skipped_files"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["data/skipped_files"] == 1


def test_size_mismatches_are_counted_in_training_metrics(tmp_path):
    """An image whose annotated size is wrong is trained on with rescaled boxes, and counted (issue 12)."""
    from mbtasks.data.synthetic.shapes import make_shapes_detection
    from tests.conftest import run_mode

    root = make_shapes_detection(
        tmp_path / "det",
        classes=["circle", "square"],
        train_images=4,
        val_images=2,
        test_images=2,
        image_size=64,
        empty_fraction=0.0,
        seed=3,
    )
    ann = root / "annotations" / "instances_test.json"
    data = json.loads(ann.read_text())
    data["images"][0].update(width=128, height=96)
    ann.write_text(json.dumps(data))
    metrics = run_mode(
        [
            "task=detection",
            f"data.root={root}",
            "data.generator=null",
            "data.image_size=64",
            "data.batch_size=2",
            "backbone.width=0.25",
            "trainer.max_epochs=1",
            "task.log_images=0",
        ],
        tmp_path / "run",
    )
    assert metrics["data/rescaled_annotations"] == 1
