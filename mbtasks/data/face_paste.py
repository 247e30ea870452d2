"""Face-detection training scenes composed on the fly: real face photos pasted into real photos.

Real face boxes in numbers are rare offline; face *photos* (identity sets such as ORL or Yale) and
ordinary photos are not. Each scene is a random crop of a background photo, ``scene_size`` px
square, with ``faces_per_scene`` face photos pasted at random places and sizes (copy-paste
augmentation, Dwibedi et al. 2017, "Cut, Paste and Learn", arXiv:1708.01642). The targets are the
pasted faces' boxes. The scenes can be mixed with real annotated photos (a dlib imglab xml), and the
splits are:

- train: ``scenes_per_epoch`` new scenes every epoch, plus ``real_repeat`` passes over the real
  training photos (``data.real``; none when ``null``);
- val: a held-out ``val_fraction`` of the real training photos (``val=real``), or ``val_scenes``
  scenes from a fixed seed (``val=pasted``, the default without real photos);
- test: the real ``test_xml`` (dlib's ``testing.xml``), or ``test_scenes`` scenes from another seed.

The face box. A face photo is a head and shoulders, not the box a face annotation draws:
``face_box`` is the annotated face's place in the photo, as fractions ``x0 y0 x1 y1`` of its width
and height, and the pasted box is that part of the pasted photo. The default fits ORL
(92x112, face centred): dlib's face boxes (``dlib_faces/training.xml``) are square, from the
eyebrows to the chin and about ear to ear; in those boxes the eyes sit ~0.3 of the side below the
top edge, the mouth ~0.73 and the eye centres ~0.4 of the side apart. In ORL photos the eyes are
at ~0.45 of the height and ~0.32 of the width apart, the mouth at ~0.72: that puts the same box at
``x 0.11-0.89, y 0.25-0.89`` (side 72 px of 92x112, square). Other face sets need their own
``face_box`` (Yale's faces are not centred the same way in every photo).

A pasted photo is blended in through a feathered ellipse (``feather``: the blur, a fraction of the
photo's side; 0 pastes the hard rectangle). A grey face photo gets a skin tint (real faces are
coloured; a grey face in a colour scene would be a shortcut the detector learns instead of faces),
and every face moves its brightness part of the way (``color_match``) toward the background it
lands on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mbtasks.data.detection import (
    DetectionDataModule,
    DetectionDataset,
    ImageRecord,
    require_boxes,
    split_off,
)
from mbtasks.data.dlib_xml import load_imglab
from mbtasks.data.image_files import ImageReadError, is_image_file, read_rgb
from mbtasks.data.synthetic.shapes import overlaps_too_much
from mbtasks.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mbtasks.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# measured on ORL against dlib's face boxes (module docstring)
ORL_FACE_BOX = (0.11, 0.25, 0.89, 0.89)
# skin tints for grey faces: (g, b) multipliers of the red channel, light to dark
_SKIN_GB = ((0.86, 0.74), (0.80, 0.66), (0.74, 0.58), (0.68, 0.52), (0.62, 0.48))


@dataclass(frozen=True)
class PasteSettings:
    """How a scene is composed.

    Attributes:
        scene_size: ``(min, max)`` side of the square scene in px (before the train transforms resize it).
        faces_per_scene: ``(min, max)`` faces pasted, both included.
        face_size: ``(min, max)`` width of a face box in scene px, drawn log-uniformly.
        face_box: the face's box in a face photo, fractions ``(x0, y0, x1, y1)`` of its width / height.
        max_cover: a pasted photo may hide at most this share of an earlier one (and vice versa).
        feather: blur of the ellipse mask's edge, a fraction of the photo's shorter side; 0: hard rectangle.
        color_match: how far (0-1) a face's mean brightness moves toward the background under it.
    """

    scene_size: tuple[int, int] = (320, 512)
    faces_per_scene: tuple[int, int] = (1, 6)
    face_size: tuple[float, float] = (16.0, 160.0)
    face_box: tuple[float, float, float, float] = ORL_FACE_BOX
    max_cover: float = 0.2
    feather: float = 0.06
    color_match: float = 0.5

    def check(self) -> PasteSettings:
        """Raises :class:`ConfigError` naming the ``data.*`` key whose value cannot work."""
        lo, hi = self.scene_size
        if not 32 <= lo <= hi:
            raise ConfigError(f"data.scene_size={list(self.scene_size)}: expected [min, max] with 32 <= min <= max")
        if not 0 <= self.faces_per_scene[0] <= self.faces_per_scene[1]:
            raise ConfigError(
                f"data.faces_per_scene={list(self.faces_per_scene)}: expected [min, max], 0 <= min <= max"
            )
        if not 4 <= self.face_size[0] <= self.face_size[1] <= lo:
            raise ConfigError(
                f"data.face_size={list(self.face_size)}: expected [min, max] px with 4 <= min <= max <= "
                f"the smallest scene side ({lo})"
            )
        x0, y0, x1, y1 = self.face_box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ConfigError(
                f"data.face_box={list(self.face_box)}: expected fractions x0 y0 x1 y1 of the face photo, "
                "0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
            )
        if not 0 < self.max_cover <= 1 or not 0 <= self.feather <= 0.5 or not 0 <= self.color_match <= 1:
            raise ConfigError(
                f"data.max_cover={self.max_cover} (0-1], data.feather={self.feather} [0-0.5], "
                f"data.color_match={self.color_match} [0-1]: a value is out of its range"
            )
        return self


def find_images(folders: str | Sequence[str], key: str) -> list[Path]:
    """Every image file under ``folders`` (recursive, sorted).

    Raises:
        DataError: a folder is missing or holds no image (names ``key``).
    """
    folders = [folders] if isinstance(folders, str | Path) else list(folders or [])
    if not folders:
        raise ConfigError(f"{key} is not set: give a folder (or a list of folders) of photos")
    out: list[Path] = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise DataError(f"{key}={folder}: not a folder")
        found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not found:
            raise DataError(f"{key}={folder}: no image files in it or below it")
        out.extend(found)
    return out


def _ellipse_mask(width: int, height: int, feather: float) -> np.ndarray:
    """``(H, W)`` float32 alpha: an ellipse filling the rectangle, its edge blurred over ``feather`` x side."""
    if feather <= 0:
        return np.ones((height, width), np.float32)
    mask = np.zeros((height, width), np.float32)
    cv2.ellipse(mask, (width // 2, height // 2), (max(1, width // 2 - 1), max(1, height // 2 - 1)), 0, 0, 360, 1.0, -1)
    sigma = max(0.5, feather * min(width, height))
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _tint(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grey ``(H, W, 3)`` face with a random skin colour (float32)."""
    g, b = _SKIN_GB[int(rng.integers(len(_SKIN_GB)))]
    gains = np.array([1.0, g * rng.uniform(0.95, 1.05), b * rng.uniform(0.9, 1.1)], np.float32)
    return face.astype(np.float32) * gains / gains.mean()


def background_crop(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (50-100% of the shorter side) of ``image``, resized to ``side``, maybe mirrored."""
    h, w = image.shape[:2]
    crop = int(round(min(h, w) * rng.uniform(0.5, 1.0)))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    out = cv2.resize(image[y : y + crop, x : x + crop], (side, side), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def paste_face(
    scene: np.ndarray,
    face: np.ndarray,
    box_width: float,
    at: tuple[float, float],
    settings: PasteSettings,
    rng: np.random.Generator,
) -> tuple[tuple[float, float, float, float], tuple[int, int, int, int]]:
    """Paste ``face`` (an ``(h, w, 3)`` face photo) into ``scene`` in place, its face box ``box_width`` px
    wide with its top-left corner at ``at``.

    Returns:
        the face box ``x1y1x2y2`` and the pasted photo's rectangle ``x1y1x2y2`` (clipped to the scene).
    """
    fx0, fy0, fx1, fy1 = settings.face_box
    h, w = face.shape[:2]
    scale = box_width / ((fx1 - fx0) * w)
    pw, ph = max(2, int(round(w * scale))), max(2, int(round(h * scale)))
    photo = cv2.resize(face, (pw, ph), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    # the photo's own rounding decides the box: the box is exactly the face_box part of the pasted pixels
    bx0, by0 = at
    ox, oy = int(round(bx0 - fx0 * pw)), int(round(by0 - fy0 * ph))
    box = (ox + fx0 * pw, oy + fy0 * ph, ox + fx1 * pw, oy + fy1 * ph)
    grey = bool(np.all(photo[..., 0] == photo[..., 1]) and np.all(photo[..., 1] == photo[..., 2]))
    photo = _tint(photo, rng) if grey else photo.astype(np.float32)
    alpha = _ellipse_mask(pw, ph, settings.feather)
    sh, sw = scene.shape[:2]
    x0, y0, x1, y1 = max(0, ox), max(0, oy), min(sw, ox + pw), min(sh, oy + ph)
    part = photo[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    a = alpha[y0 - oy : y1 - oy, x0 - ox : x1 - ox, None]
    under = scene[y0:y1, x0:x1].astype(np.float32)
    if settings.color_match > 0:
        weight = float(a.sum()) + 1e-6
        face_mean = float((part.mean(axis=2, keepdims=True) * a).sum()) / weight
        bg_mean = float(under.mean())
        target = face_mean + settings.color_match * rng.uniform(0.5, 1.0) * (bg_mean - face_mean)
        part = part * float(np.clip(target / max(face_mean, 1.0), 0.5, 1.6))
    scene[y0:y1, x0:x1] = np.clip(a * part + (1 - a) * under, 0, 255).astype(np.uint8)
    return box, (x0, y0, x1, y1)


def compose_scene(
    rng: np.random.Generator,
    faces: Sequence[Path],
    backgrounds: Sequence[Path],
    settings: PasteSettings,
    read: Callable[[Path], np.ndarray] = read_rgb,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: a background crop with face photos pasted in.

    Args:
        rng: all randomness comes from it (same state, same scene).
        faces / backgrounds: image files to draw from.
        read: ``path -> (H, W, 3) uint8`` (raises :class:`ImageReadError` for a bad file).

    Returns:
        the ``(S, S, 3)`` uint8 scene and its face boxes ``(M, 4)`` float32 ``x1y1x2y2`` scene pixels.
    """
    side = int(rng.integers(settings.scene_size[0], settings.scene_size[1] + 1))
    scene = background_crop(read(backgrounds[int(rng.integers(len(backgrounds)))]), side, rng)
    lo, hi = np.log(settings.face_size[0]), np.log(min(settings.face_size[1], side * 0.9))
    boxes, placed = [], []
    fx0, fy0, fx1, fy1 = settings.face_box
    for _ in range(int(rng.integers(settings.faces_per_scene[0], settings.faces_per_scene[1] + 1))):
        face = read(faces[int(rng.integers(len(faces)))])
        if rng.random() < 0.5:
            face = np.ascontiguousarray(face[:, ::-1])
        h, w = face.shape[:2]
        for _attempt in range(10):
            bw = float(np.exp(rng.uniform(lo, hi)))
            bh = bw * (fy1 - fy0) * h / ((fx1 - fx0) * w)
            if bh > side:
                continue
            at = (float(rng.uniform(0, side - bw)), float(rng.uniform(0, side - bh)))
            # the photo's rectangle: may not hide much of an earlier one (its face would be unseen)
            pw, ph = bw / (fx1 - fx0), bh / (fy1 - fy0)
            rect = (at[0] - fx0 * pw, at[1] - fy0 * ph, at[0] - fx0 * pw + pw, at[1] - fy0 * ph + ph)
            if not overlaps_too_much(rect, placed, settings.max_cover):
                break
        else:
            continue
        box, _ = paste_face(scene, face, bw, at, settings, rng)
        boxes.append(np.clip(box, 0, side))
        placed.append(rect)
    return scene, np.asarray(boxes, np.float32).reshape(-1, 4)


class FacePasteDataset(DetectionDataset):
    """Composed scenes first (``scenes`` of them), then ``real_repeat`` passes over the real ``records``.

    Args:
        records: real annotated photos (may be empty).
        scenes: composed scenes per epoch.
        faces / backgrounds / settings: see :func:`compose_scene`.
        seed: scene ``i`` is drawn from ``[seed, i]`` when ``fixed`` (val / test: the same scenes every
            time), else from ``[seed, i, a draw of numpy's global RNG]`` (train: new scenes every epoch,
            reproducible under Lightning's ``seed_everything``).
        real_repeat: passes over ``records`` per epoch.
        Other arguments: see :class:`DetectionDataset`.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        scenes: int,
        faces: Sequence[Path],
        backgrounds: Sequence[Path],
        settings: PasteSettings,
        pipeline: Callable | None,
        image_size: int,
        mean,
        std,
        train: bool,
        seed: int = 0,
        fixed: bool = False,
        real_repeat: int = 1,
        decode_side: int = 0,
    ) -> None:
        super().__init__(records, pipeline, image_size, mean, std, train, decode_side)
        self.scenes, self.faces, self.backgrounds = int(scenes), list(faces), list(backgrounds)
        self.settings, self.seed, self.fixed = settings, int(seed), bool(fixed)
        self.real_repeat = int(real_repeat) if records else 0

    def __len__(self) -> int:
        return self.scenes + len(self.records) * self.real_repeat

    def _read(self, path: Path) -> np.ndarray:
        try:
            return read_rgb(path)
        except ImageReadError as err:
            self.skips.skip(path, str(err.__cause__ or err))
            raise

    def scene(self, index: int) -> tuple[np.ndarray, ImageRecord]:
        """Scene ``index`` and its record (``image_id`` = ``index``)."""
        key = [self.seed, index] if self.fixed else [self.seed, index, int(np.random.randint(2**31))]
        rng = np.random.default_rng(key)
        for _attempt in range(20):
            try:
                image, boxes = compose_scene(rng, self.faces, self.backgrounds, self.settings, self._read)
                break
            except ImageReadError:  # counted by _read; draw another scene
                continue
        else:
            raise DataError("data.faces / data.backgrounds: 20 scenes in a row hit unreadable files")
        side = image.shape[0]
        rec = ImageRecord(index, Path(f"<pasted scene {index}>"), side, side)
        rec.set_boxes(boxes, np.zeros(len(boxes), np.int64), np.zeros(len(boxes), bool))
        return image, rec

    def __getitem__(self, idx: int):
        if idx < self.scenes:
            image, rec = self.scene(idx)
            return self._sample(rec, image)
        return super().__getitem__((idx - self.scenes) % len(self.records))


class FacePasteDataModule(DetectionDataModule):
    """One-class ``face`` detection data from composed scenes, optionally mixed with real photos
    (module docstring).

    Args:
        faces: folder(s) of face photos (searched recursively: identity folders are fine).
        backgrounds: folder(s) of photos without faces to paste into.
        real: a dlib imglab root with real annotated photos (``train_xml`` / ``test_xml`` relative to
            it), or ``None`` for composed scenes only.
        train_xml / test_xml: the real training and test files.
        val: ``"real"`` (hold out ``val_fraction`` of the real training photos), ``"pasted"``
            (``val_scenes`` fixed scenes) or ``None`` (real when ``real`` is given).
        scenes_per_epoch / val_scenes / test_scenes: composed scenes per split (test scenes only
            without ``real``).
        real_repeat: passes over the real training photos per epoch.
        scene_size / faces_per_scene / face_size / face_box / max_cover / feather / color_match:
            see :class:`PasteSettings`.
        seed: the val / test scenes' seed (training scenes follow the run's seed).
        eval_wider: val / test also report WIDER-style AP (``wider_ap_all``).
        Other arguments: see :class:`DetectionDataModule`.
    """

    def __init__(
        self,
        faces: str | Sequence[str],
        backgrounds: str | Sequence[str],
        real: str | None = None,
        train_xml: str = "training.xml",
        test_xml: str | None = "testing.xml",
        val: str | None = None,
        scenes_per_epoch: int = 2000,
        val_scenes: int = 200,
        test_scenes: int = 200,
        real_repeat: int = 1,
        scene_size: Sequence[int] = (320, 512),
        faces_per_scene: Sequence[int] = (1, 6),
        face_size: Sequence[float] = (16.0, 160.0),
        face_box: Sequence[float] = ORL_FACE_BOX,
        max_cover: float = 0.2,
        feather: float = 0.06,
        color_match: float = 0.5,
        seed: int = 0,
        eval_wider: bool = True,
        image_size: int = 320,
        batch_size: int = 16,
        num_workers: int = 2,
        train_transforms: Callable | None = None,
        eval_transforms: Callable | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        val_fraction: float = 0.25,
        generator: Callable | None = None,
    ) -> None:
        super().__init__(
            real or ".",
            image_size,
            batch_size,
            num_workers,
            train_transforms,
            eval_transforms,
            mean,
            std,
            val_fraction,
            generator,
        )
        self.faces_dirs, self.background_dirs, self.real = faces, backgrounds, real
        self.train_xml, self.test_xml = train_xml, test_xml
        if val not in (None, "real", "pasted"):
            raise ConfigError(f"data.val={val!r}: expected real, pasted or null")
        if val == "real" and not real:
            raise ConfigError("data.val=real needs data.real (a dlib imglab root); use data.val=pasted without it")
        self.val = val or ("real" if real else "pasted")
        counts = {
            "scenes_per_epoch": scenes_per_epoch,
            "val_scenes": val_scenes,
            "test_scenes": test_scenes,
            "real_repeat": real_repeat,
        }
        for key, value in counts.items():
            if int(value) < 0:
                raise ConfigError(f"data.{key}={value}: expected a count >= 0")
        if int(scenes_per_epoch) == 0 and not (real and int(real_repeat) > 0):
            raise ConfigError(
                "data.scenes_per_epoch=0 and no real photos (data.real, data.real_repeat > 0): nothing to train on"
            )
        self.scenes_per_epoch, self.val_scenes = int(scenes_per_epoch), int(val_scenes)
        self.test_scenes, self.real_repeat = int(test_scenes), int(real_repeat)
        self.settings = PasteSettings(
            tuple(int(v) for v in scene_size),
            tuple(int(v) for v in faces_per_scene),
            tuple(float(v) for v in face_size),
            tuple(float(v) for v in face_box),
            float(max_cover),
            float(feather),
            float(color_match),
        ).check()
        self.seed = int(seed)
        self.eval_wider = bool(eval_wider)
        self.class_names, self.category_ids = ["face"], [1]

    def load_splits(self) -> dict[str, list[ImageRecord]]:
        """The real photos' records per split (empty lists where the split is composed)."""
        out: dict[str, list[ImageRecord]] = {"train": [], "val": [], "test": []}
        if not self.real:
            return out
        path = self.root / self.train_xml
        report = self.report_for(path)
        train, _ = load_imglab(path, self.class_names, "face", report)
        require_boxes(train, path, report)
        if self.val == "real":
            train, out["val"] = split_off(train, self.val_fraction)
        out["train"] = train
        if self.test_xml:
            test_path = self.root / self.test_xml
            out["test"] = load_imglab(test_path, self.class_names, "face", self.report_for(test_path))[0]
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.prepare_data()
        faces = find_images(self.faces_dirs, "data.faces")
        backgrounds = find_images(self.background_dirs, "data.backgrounds")
        real = self.load_splits()
        common = {
            "faces": faces,
            "backgrounds": backgrounds,
            "settings": self.settings,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
        }
        self.datasets["train"] = FacePasteDataset(
            real["train"],
            self.scenes_per_epoch,
            pipeline=self.train_transforms,
            train=True,
            seed=self.seed,
            real_repeat=self.real_repeat,
            decode_side=self.min_side_for(self.train_transforms),
            **common,
        )
        for split, count, seed in (("val", self.val_scenes, self.seed + 1), ("test", self.test_scenes, self.seed + 2)):
            records = real[split]
            composed = 0 if records else count
            if not records and composed == 0:
                raise ConfigError(f"data.{split}_scenes=0 and no real {split} photos: the {split} split would be empty")
            self.datasets[split] = FacePasteDataset(
                records,
                composed,
                pipeline=self.eval_transforms,
                train=False,
                seed=seed,
                fixed=True,
                decode_side=self.min_side_for(self.eval_transforms),
                **common,
            )
        log.info(
            "face paste data: %d face photos, %d backgrounds; train %d scenes + %d real x%d, val %s, test %s",
            len(faces),
            len(backgrounds),
            self.scenes_per_epoch,
            len(real["train"]),
            self.real_repeat,
            f"{len(real['val'])} real" if real["val"] else f"{self.val_scenes} scenes",
            f"{len(real['test'])} real" if real["test"] else f"{self.test_scenes} scenes",
        )
