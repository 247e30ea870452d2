"""Verification pairs: the field's pair files (LFW, CALFW / CPLFW, insightface ``.bin`` packs) and
deterministic fold-structured generation.

A :class:`PairSet` names the images to embed once and the pairs between them, each
pair with its ground truth (same identity or not) and its fold (the LFW protocol's
10-fold cross-validation picks thresholds on 9 folds and scores the 10th).

The LFW format (Huang et al., "Labeled Faces in the Wild", 2007, View 2)::

    10      300                   <- header: folds, pairs of each kind per fold
    Abel_Pacheco    1       4     <- same person: name, image number, image number
    Abdel_Madi_Shabneh  1  Dean_Barker  1   <- different persons: name, number, name, number

Image ``name n`` is the file ``<image_root>/<name>/<name>_<nnnn>.<ext>``. In each fold
the same-person lines come first, then the different-person lines.

CALFW / CPLFW (``pairs_CALFW.txt``, ``pairs_CPLFW.txt``, the cross-age / cross-pose LFW sets): two
consecutive lines are a pair, each ``<file> <label>`` with the file in the image folder; label 0
marks a different-person pair, any other value a same-person pair (both lines carry it).

insightface's packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``...) are pickles of ``(encoded images,
same flags)``: :func:`read_insightface_pack` reads them with an unpickler that builds plain lists,
bytes and booleans only and refuses anything that would run code, and unpacks the images once into a
cache folder.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mbtasks.atomic_files import write_text_atomic
from mbtasks.data.image_files import IMAGE_EXTENSIONS, inside_folder, is_image_file
from mbtasks.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PairSet:
    """Images to embed and the verification pairs between them.

    Attributes:
        images: the unique image files; pairs index into this list.
        labels: identity index of each image, into ``identities``.
        identities: identity names.
        pairs: ``(M, 2)`` int array of image indices.
        same: ``(M,)`` bool array, True where both images show one identity.
        folds: ``(M,)`` int array, the cross-validation fold of each pair (0-based).
        source: where the pairs come from (a file path, or ``"generated"``).
        notes: anything a reader of the results should know (fewer pairs than asked...).
    """

    images: list[Path]
    labels: list[int]
    identities: list[str]
    pairs: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    source: str = "generated"
    notes: list[str] = field(default_factory=list)

    @property
    def num_folds(self) -> int:
        return int(self.folds.max()) + 1 if len(self.folds) else 0

    def __len__(self) -> int:
        return len(self.pairs)


def _image_finder(image_root: Path):
    """``find(name, number) -> Path | None`` over ``image_root/<name>/<name>_<nnnn>.*``."""
    cache: dict[str, dict[str, Path]] = {}

    def find(name: str, number: int) -> Path | None:
        if name not in cache:
            folder = image_root / name
            files = [p for p in folder.iterdir() if is_image_file(p)] if folder.is_dir() else []
            # prefer .jpg (LFW's own) when several extensions share a stem
            files.sort(key=lambda p: IMAGE_EXTENSIONS.index(p.suffix.lower()), reverse=True)
            cache[name] = {p.stem: p for p in files}
        return cache[name].get(f"{name}_{number:04d}")

    return find


def read_lfw_pairs(path: str | Path, image_root: str | Path, num_folds: int = 10) -> PairSet:
    """Parse an LFW ``pairs.txt`` and resolve its images under ``image_root``.

    Args:
        path: the pairs file (``10 300`` header for View 2, ``1100`` for the dev
            sets, or no header).
        image_root: folder holding ``<name>/<name>_<nnnn>.<ext>``.
        num_folds: folds to deal pairs into when the header does not give them.

    Raises:
        DataError: unreadable file, malformed line or missing image (file and line named).
    """
    path, image_root = Path(path), Path(image_root)
    if not path.is_file():
        raise DataError(f"{path}: pairs file not found")
    if not image_root.is_dir():
        raise DataError(f"{image_root}: image folder of the pairs file {path} not found")
    find = _image_finder(image_root)
    lines = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(n, f) for n, f in lines if f and not f[0].startswith("#")]
    header: list[int] = []
    if lines and len(lines[0][1]) <= 2 and all(re.fullmatch(r"[0-9]+", t) for t in lines[0][1]):
        header = [int(t) for t in lines.pop(0)[1]]
    index: dict[Path, int] = {}
    images: list[Path] = []
    labels: list[int] = []
    identities: dict[str, int] = {}
    pairs, same = [], []

    def image_index(lineno: int, name: str, number: str) -> int:
        if not inside_folder(name):
            raise DataError(
                f"{path}:{lineno}: identity {name!r} is absolute or climbs out of {image_root} with "
                "'..'; expected a folder name under the image folder"
            )
        if not re.fullmatch(r"[0-9]+", number):  # str.isdigit() also takes '²', which int() refuses
            raise DataError(
                f"{path}:{lineno}: image number {number!r}: expected a whole number >= 0, the n of "
                f"the file {name}/{name}_<nnnn>.<ext> (e.g. 1 for {name}_0001.jpg)"
            )
        found = find(name, int(number))
        if found is None:
            raise DataError(f"{path}:{lineno}: image {image_root / name / f'{name}_{int(number):04d}'}.* not found")
        if found not in index:
            index[found] = len(images)
            images.append(found)
            labels.append(identities.setdefault(name, len(identities)))
        return index[found]

    for lineno, fields in lines:
        if len(fields) == 3:
            pairs.append((image_index(lineno, fields[0], fields[1]), image_index(lineno, fields[0], fields[2])))
            same.append(True)
        elif len(fields) == 4:
            pairs.append((image_index(lineno, fields[0], fields[1]), image_index(lineno, fields[2], fields[3])))
            same.append(False)
        else:
            raise DataError(
                f"{path}:{lineno}: expected 'name n1 n2' (same person) or 'name1 n1 name2 n2' "
                f"(different persons), got {len(fields)} fields"
            )
    if not pairs:
        raise DataError(f"{path}: no pairs found")
    same_arr = np.asarray(same, bool)
    notes = []
    if len(header) == 2 and header[0] * header[1] * 2 == len(pairs):
        folds = np.arange(len(pairs)) // (2 * header[1])
    else:
        if len(header) == 2:
            notes.append(
                f"{path}: header says {header[0]} folds x 2 x {header[1]} pairs, the file has "
                f"{len(pairs)}; folds dealt round-robin instead"
            )
        # deal each kind round-robin so every fold gets both kinds
        folds = np.zeros(len(pairs), int)
        for kind in (True, False):
            where = np.flatnonzero(same_arr == kind)
            folds[where] = np.arange(len(where)) % num_folds
    return PairSet(
        images,
        labels,
        list(identities),
        np.asarray(pairs, int).reshape(-1, 2),
        same_arr,
        folds.astype(int),
        source=str(path),
        notes=notes,
    )


def read_pairs(path: str | Path, image_root: str | Path, num_folds: int = 10) -> PairSet:
    """A pair file of any supported kind, told apart by its content: an insightface ``.bin`` pack,
    CALFW / CPLFW (``<file> <label>`` lines), else LFW ``pairs.txt``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: pairs file not found")
    if path.suffix.lower() == ".bin":
        return read_insightface_pack(path, num_folds)
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError) as err:
        raise DataError(f"{path}: cannot read the pairs file as text ({err})") from err
    first = next((line.split() for line in text.splitlines() if line.split() and not line.startswith("#")), [])
    if len(first) == 2 and Path(first[0]).suffix.lower() in IMAGE_EXTENSIONS:
        return read_image_pairs(path, image_root, num_folds)
    return read_lfw_pairs(path, image_root, num_folds)


def _folds(same: np.ndarray, num_folds: int, path: Path, notes: list[str]) -> np.ndarray:
    """Consecutive blocks of pairs as folds when each block holds both kinds (the published files'
    order), else each kind dealt round-robin."""
    n = len(same)
    if n % num_folds == 0 and n >= 2 * num_folds:
        blocks = np.arange(n) // (n // num_folds)
        if all(same[blocks == f].any() and (~same[blocks == f]).any() for f in range(num_folds)):
            return blocks
    notes.append(f"{path}: {n} pairs do not fall into {num_folds} consecutive folds with both kinds: dealt round-robin")
    folds = np.zeros(n, int)
    for kind in (True, False):
        where = np.flatnonzero(same == kind)
        folds[where] = np.arange(len(where)) % num_folds
    return folds


def read_image_pairs(path: str | Path, image_root: str | Path, num_folds: int = 10) -> PairSet:
    """Parse a CALFW / CPLFW pair file: two consecutive ``<file> <label>`` lines a pair, label 0 =
    different persons; the identity is the file name without its trailing ``_<number>``.

    Raises:
        DataError: malformed line, an odd line count, labels of a pair that disagree, a missing image.
    """
    path, image_root = Path(path), Path(image_root)
    if not image_root.is_dir():
        raise DataError(f"{image_root}: image folder of the pairs file {path} not found")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2 or not re.fullmatch(r"-?[0-9]+", fields[1]):
            raise DataError(f"{path}:{lineno}: expected '<image file> <label>' (CALFW / CPLFW pairs), got {line!r}")
        if not inside_folder(fields[0]):
            raise DataError(f"{path}:{lineno}: image {fields[0]!r} is absolute or climbs out of {image_root} with '..'")
        rows.append((lineno, fields[0], int(fields[1])))
    if not rows:
        raise DataError(f"{path}: no pairs found")
    if len(rows) % 2:
        raise DataError(f"{path}: {len(rows)} image lines, expected an even number (two consecutive lines a pair)")
    index: dict[Path, int] = {}
    images: list[Path] = []
    labels: list[int] = []
    identities: dict[str, int] = {}

    def image_index(lineno: int, name: str) -> int:
        file = image_root / name
        if not file.is_file():
            raise DataError(f"{path}:{lineno}: image {file} not found")
        if file not in index:
            index[file] = len(images)
            images.append(file)
            person = re.sub(r"_[0-9]+$", "", Path(name).stem)
            labels.append(identities.setdefault(person, len(identities)))
        return index[file]

    pairs, same = [], []
    for (line_a, name_a, label_a), (line_b, name_b, label_b) in zip(rows[::2], rows[1::2], strict=True):
        if (label_a == 0) != (label_b == 0):
            raise DataError(
                f"{path}:{line_a}-{line_b}: labels {label_a} and {label_b} of one pair disagree on same (non-zero) "
                "or different (0) persons"
            )
        pairs.append((image_index(line_a, name_a), image_index(line_b, name_b)))
        same.append(label_a != 0)
    same_arr = np.asarray(same, bool)
    if same_arr.all() or not same_arr.any():
        raise DataError(f"{path}: every pair is {'same' if same_arr.all() else 'different'}-person; expected both")
    notes: list[str] = []
    folds = _folds(same_arr, num_folds, path, notes)
    return PairSet(
        images, labels, list(identities), np.asarray(pairs, int), same_arr, folds, source=str(path), notes=notes
    )


class _Refused(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Builds lists, tuples, bytes, strings, numbers and booleans; refuses every class or function
    (a pickle naming one could run any code)."""

    def find_class(self, module: str, name: str):
        raise _Refused(f"it names {module}.{name}")


def pairs_cache_dir() -> Path:
    """Where packed pair sets are unpacked: ``${XDG_CACHE_HOME:-~/.cache}/mbtasks/pairs``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mbtasks" / "pairs"


def _image_suffix(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".bin"


def read_insightface_pack(path: str | Path, num_folds: int = 10) -> PairSet:
    """An insightface verification pack (``pickle.dump((encoded_images, same_flags))``, images
    ``2i`` and ``2i + 1`` a pair), read without running pickled code; the images are unpacked once into
    :func:`pairs_cache_dir` (a folder per pack content).

    Raises:
        DataError: not such a pack, a pickle that names a class or function, image / flag counts
            that disagree, an image that is neither JPEG nor PNG.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        obj = _PlainUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as err:
        raise DataError(
            f"{path}: refused: {err}. An insightface pack holds only encoded images and booleans, so "
            "mbtasks reads it without running pickled code; unpack it into a folder and a pairs file instead"
        ) from err
    except Exception as err:  # noqa: BLE001 - a damaged pickle fails in many ways
        raise DataError(f"{path}: not an insightface verification pack ({type(err).__name__}: {err})") from err
    ok = isinstance(obj, tuple | list) and len(obj) == 2 and all(isinstance(x, list | tuple) for x in obj)
    if not ok:
        raise DataError(f"{path}: expected a pickled (images, same flags) pair of lists, got {type(obj).__name__}")
    blobs, flags = obj
    if not all(isinstance(b, bytes | bytearray) for b in blobs) or not all(isinstance(f, bool | int) for f in flags):
        raise DataError(f"{path}: expected encoded images (bytes) and same flags (booleans)")
    if len(blobs) != 2 * len(flags) or not flags:
        raise DataError(f"{path}: {len(blobs)} images for {len(flags)} pairs; expected two images a pair")
    folder = pairs_cache_dir() / f"{path.stem}-{hashlib.sha1(raw).hexdigest()[:12]}"
    files = []
    for i, blob in enumerate(blobs):
        suffix = _image_suffix(bytes(blob))
        if suffix == ".bin":
            raise DataError(f"{path}: image {i} is neither JPEG nor PNG")
        files.append(folder / f"{i:06d}{suffix}")
    done = folder / "complete"
    if not done.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for file, blob in zip(files, blobs, strict=True):
            file.write_bytes(bytes(blob))
        write_text_atomic(done, f"{len(files)} images of {path}\n")
        log.info("%s: %d images unpacked into %s", path, len(files), folder)
    same = np.asarray([bool(f) for f in flags], bool)
    notes: list[str] = []
    folds = _folds(same, num_folds, path, notes)
    # a pack names no persons: each same pair one identity, each image of a different pair its own
    labels = []
    for i, s in enumerate(same):
        labels += [2 * i, 2 * i] if s else [2 * i, 2 * i + 1]
    return PairSet(
        files,
        labels,
        [f"{path.stem}:{j}" for j in range(2 * len(same))],
        np.arange(len(files)).reshape(-1, 2),
        same,
        folds,
        source=str(path),
        notes=notes,
    )


def _sample_unique(rng: np.random.Generator, draw, n: int) -> list[tuple[int, int]]:
    """Up to ``n`` distinct unordered pairs from ``draw()``, giving up after many repeats."""
    seen: set[tuple[int, int]] = set()
    out = []
    tries = 0
    while len(out) < n and tries < 50 * n + 100:
        tries += 1
        a, b = draw()
        key = (min(a, b), max(a, b))
        if a != b and key not in seen:
            seen.add(key)
            out.append((a, b))
    return out


def generate_pairs(
    identities: Mapping[str, Sequence[Path]],
    num_folds: int = 10,
    pairs_per_fold: int = 600,
    seed: int = 0,
) -> PairSet:
    """Balanced, fold-structured verification pairs over the given identities, deterministically.

    Identities are dealt to folds (identity-disjoint folds, as in LFW) when there are
    at least ``2 * num_folds`` of them and ``num_folds`` with >= 2 images; otherwise
    every fold draws from all identities (said in ``notes``). Each fold holds
    ``pairs_per_fold / 2`` same-identity and as many different-identity pairs (fewer,
    still balanced, when the identities do not have that many distinct pairs).
    Identities with a single image appear only in different-identity pairs.

    Raises:
        DataError: fewer than 2 identities, or none with 2 images.
    """
    names = sorted(identities)
    multi = [n for n in names if len(identities[n]) >= 2]
    if len(names) < 2 or not multi:
        raise DataError(
            f"verification pairs need >= 2 identities, one of them with >= 2 images; got "
            f"{len(names)} identities, {len(multi)} with >= 2 images"
        )
    rng = np.random.default_rng(seed)
    images: list[Path] = []
    labels: list[int] = []
    first: dict[str, int] = {}
    for label, name in enumerate(names):
        first[name] = len(images)
        images.extend(identities[name])
        labels.extend([label] * len(identities[name]))
    notes = []
    if len(multi) >= num_folds and len(names) >= 2 * num_folds:
        singles = [n for n in names if len(identities[n]) < 2]
        order = list(rng.permutation(multi)) + list(rng.permutation(singles))
        fold_names = [order[f::num_folds] for f in range(num_folds)]
    else:
        notes.append(f"only {len(names)} identities ({len(multi)} with >= 2 images): folds share identities")
        fold_names = [names] * num_folds
    pairs, same, folds = [], [], []
    for fold, members in enumerate(fold_names):
        fold_multi = [n for n in members if len(identities[n]) >= 2]

        def draw_same(fold_multi=fold_multi):
            name = fold_multi[rng.integers(len(fold_multi))]
            i, j = rng.choice(len(identities[name]), 2, replace=False)
            return first[name] + int(i), first[name] + int(j)

        def draw_diff(members=members):
            a, b = rng.choice(len(members), 2, replace=False)
            na, nb = members[a], members[b]
            return first[na] + int(rng.integers(len(identities[na]))), first[nb] + int(
                rng.integers(len(identities[nb]))
            )

        pos = _sample_unique(rng, draw_same, pairs_per_fold // 2)
        neg = _sample_unique(rng, draw_diff, len(pos))
        pos = pos[: len(neg)]
        pairs += pos + neg
        same += [True] * len(pos) + [False] * len(neg)
        folds += [fold] * (len(pos) + len(neg))
    if len(pairs) < num_folds * 2 * (pairs_per_fold // 2):
        notes.append(
            f"{len(pairs)} pairs instead of {num_folds} x {pairs_per_fold}: the identities have "
            "no more distinct balanced pairs"
        )
    for note in notes:
        log.info("verification pairs: %s", note)
    return PairSet(
        images,
        labels,
        names,
        np.asarray(pairs, int).reshape(-1, 2),
        np.asarray(same, bool),
        np.asarray(folds, int),
        source="generated",
        notes=notes,
    )


def write_lfw_pairs(pair_set: PairSet, path: str | Path) -> None:
    """Write a pair set whose files follow the LFW naming back as an LFW ``pairs.txt``.

    Folds are written in order, same-identity lines first, with a ``folds per_fold``
    header when every fold holds as many pairs of each kind.
    """

    def number(i: int) -> str:
        return str(int(pair_set.images[i].stem.rsplit("_", 1)[-1]))

    def name(i: int) -> str:
        return pair_set.identities[pair_set.labels[i]]

    per_same = np.bincount(pair_set.folds[pair_set.same], minlength=pair_set.num_folds)
    per_diff = np.bincount(pair_set.folds[~pair_set.same], minlength=pair_set.num_folds)
    lines = []
    if len(set(per_same.tolist())) == 1 and (per_same == per_diff).all():
        lines.append(f"{pair_set.num_folds}\t{per_same[0]}")
    for fold in range(pair_set.num_folds):
        for kind in (True, False):
            for a, b in pair_set.pairs[(pair_set.folds == fold) & (pair_set.same == kind)]:
                lines.append(
                    "\t".join([name(a), number(a), number(b)] if kind else [name(a), number(a), name(b), number(b)])
                )
    Path(path).write_text("\n".join(lines) + "\n")
