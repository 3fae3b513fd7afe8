"""Data-set layouts on disk, mask reading, seeded split files and Detectron2 registration.

Layouts (``--dataset NAME=LAYOUT:ROOT``):

* ``kvasir``: Kvasir-SEG, ``ROOT/images/*.jpg`` and ``ROOT/masks/*.jpg``; masks are JPEG, so
  their values are only *near* 0/255: they are thresholded at 128.
* ``cvc``: CVC-ClinicDB, ``ROOT/Original/*.tif`` and ``ROOT/Ground Truth/*.tif``; thresholded.
* ``folder``: any ``ROOT/images`` and ``ROOT/masks`` pair of binary masks (0/255 or near it).
* ``folder-index``: the same folders with class-index masks (PNG values 0..K-1, 255 ignored);
  class names from ``ROOT/classes.txt`` (one a line, background first) if it exists.

Images and masks pair by file stem (``a.jpg`` with ``a.png``). A split list file records which
stem is in ``train``/``val``/``test``; it is drawn once from a seed and then read back, so every
run and every user of the file sees the same split.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["LAYOUTS", "SPLITS", "Layout", "PairScan", "make_split", "parse_dataset_spec",
           "read_mask", "read_split_file", "register_segmentation_dataset", "scan_pairs",
           "write_split_file"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")
# Binary masks: values at or above this are foreground (JPEG masks are only near 0/255).
BINARY_THRESHOLD = 128


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps images and masks, and how its masks encode classes."""

    image_dir: str
    mask_dir: str
    mask_format: str  # "binary" (threshold at 128) or "index" (class indices, 255 ignored)


LAYOUTS: Dict[str, Layout] = {
    "kvasir": Layout("images", "masks", "binary"),
    "cvc": Layout("Original", "Ground Truth", "binary"),
    "folder": Layout("images", "masks", "binary"),
    "folder-index": Layout("images", "masks", "index"),
}


def get_layout(name: str) -> Layout:
    """The layout called ``name``, or a ValueError listing the valid ones."""
    if name not in LAYOUTS:
        raise ValueError(f"Unknown layout {name!r}; valid: {', '.join(LAYOUTS)}.")
    return LAYOUTS[name]


@dataclass
class PairScan:
    """Result of pairing a layout's image and mask folders by file stem."""

    pairs: List[Tuple[str, str, str]] = field(default_factory=list)  # (stem, image, mask)
    images_without_mask: List[str] = field(default_factory=list)
    masks_without_image: List[str] = field(default_factory=list)


def _files_by_stem(folder: str) -> Dict[str, str]:
    found = {}
    for name in sorted(os.listdir(folder)):
        stem, extension = os.path.splitext(name)
        if extension.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
            found.setdefault(stem, os.path.join(folder, name))
    return found


def scan_pairs(layout: str, root: str) -> PairScan:
    """Pair the images and masks of ``root`` laid out as ``layout``.

    Raises:
        FileNotFoundError: a folder the layout needs is missing (the message names it).
    """
    spec = get_layout(layout)
    folders = {}
    for role, sub in (("images", spec.image_dir), ("masks", spec.mask_dir)):
        path = os.path.join(root, sub)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Layout {layout!r} expects the {role} in {path!r}, which is "
                                    f"not a folder (expected {spec.image_dir}/ and "
                                    f"{spec.mask_dir}/ under {root!r}).")
        folders[role] = _files_by_stem(path)
    images, masks = folders["images"], folders["masks"]
    scan = PairScan()
    for stem in sorted(images):
        if stem in masks:
            scan.pairs.append((stem, images[stem], masks[stem]))
        else:
            scan.images_without_mask.append(images[stem])
    scan.masks_without_image = [masks[stem] for stem in sorted(masks) if stem not in images]
    return scan


def read_mask(path: str, mask_format: str = "binary") -> np.ndarray:
    """Read a mask as an (H, W) uint8 class map.

    Args:
        path: the mask file.
        mask_format: "binary" (grayscale >= 128 is class 1, RGB masks are converted to
            grayscale first) or "index" (values are class indices; 255 is ignored).

    Returns:
        The class map.
    """
    with Image.open(path) as image:
        if mask_format == "binary":
            gray = np.asarray(image.convert("L"))
            return (gray >= BINARY_THRESHOLD).astype(np.uint8)
        if mask_format == "index":
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"Class-index mask {path!r} has mode {image.mode!r}; expected a "
                                 "single-channel (L or palette P) image of class indices.")
            return np.asarray(image).astype(np.uint8)
    raise ValueError(f"Unknown mask format {mask_format!r}; valid: binary, index.")


def make_split(stems: Sequence[str], seed: int = 0,
               fractions: Tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Dict[str, List[str]]:
    """Shuffle ``stems`` with ``seed`` and cut them into train/val/test by ``fractions``.

    The paper's Kvasir-SEG and CVC-ClinicDB experiments use 80/10/10.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"Split fractions {list(fractions)} must be three values >= 0 that sum "
                         "to 1 (train, val, test).")
    order = sorted(stems)
    random.Random(seed).shuffle(order)
    n_train = int(round(fractions[0] * len(order)))
    n_val = int(round(fractions[1] * len(order)))
    return {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
            "test": sorted(order[n_train + n_val:])}


def write_split_file(path: str, split: Dict[str, List[str]], comment: str = "") -> None:
    """Write ``split`` as lines ``<split>\\t<stem>`` (comment lines start with '#')."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        if comment:
            file.write(f"# {comment}\n")
        for name in SPLITS:
            for stem in split.get(name, []):
                file.write(f"{name}\t{stem}\n")


def read_split_file(path: str) -> Dict[str, List[str]]:
    """Read a file written by :func:`write_split_file`; errors name the line at fault."""
    split: Dict[str, List[str]] = {name: [] for name in SPLITS}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            name, _, stem = line.partition("\t")
            if name not in split or not stem:
                raise ValueError(f"{path}:{number}: expected '<split>\\t<stem>' with split one of "
                                 f"{', '.join(SPLITS)}; got {line!r}.")
            split[name].append(stem)
    return split


def parse_dataset_spec(spec: str) -> Tuple[str, str, str]:
    """Parse ``NAME=LAYOUT:ROOT`` into (name, layout, root)."""
    name, sep, rest = spec.partition("=")
    layout, sep2, root = rest.partition(":")
    if not sep or not sep2 or not name or not root:
        raise ValueError(f"--dataset {spec!r} is not NAME=LAYOUT:ROOT (e.g. "
                         f"kvasir=kvasir:datasets/Kvasir-SEG); layouts: {', '.join(LAYOUTS)}.")
    get_layout(layout)
    return name, layout, root


def _class_names(layout: str, root: str, num_classes: int) -> List[str]:
    listed = os.path.join(root, "classes.txt")
    if os.path.isfile(listed):
        with open(listed, encoding="utf-8") as file:
            names = [line.strip() for line in file if line.strip()]
        return names
    if get_layout(layout).mask_format == "binary":
        return ["background", "polyp"]
    return ["background"] + [f"class_{index}" for index in range(1, num_classes)]


def _records(layout: str, root: str, stems: Sequence[str]) -> List[Dict]:
    scan = scan_pairs(layout, root)
    by_stem = {stem: (image, mask) for stem, image, mask in scan.pairs}
    missing = [stem for stem in stems if stem not in by_stem]
    if missing:
        raise FileNotFoundError(f"The split lists {len(missing)} stems with no image+mask pair "
                                f"under {root!r} ({layout} layout), e.g. {missing[:3]}.")
    mask_format = get_layout(layout).mask_format
    records = []
    for stem in stems:
        image, mask = by_stem[stem]
        record = {"file_name": image, "sem_seg_file_name": mask, "image_id": stem,
                  "mask_format": mask_format}
        try:
            with Image.open(image) as opened:
                record["width"], record["height"] = opened.size
        except Exception:  # unreadable: the validator reports it before training
            pass
        records.append(record)
    return records


def register_segmentation_dataset(name: str, layout: str, root: str, split_file: str = "",
                                  seed: int = 0, num_classes: int = 2) -> List[str]:
    """Register ``NAME_train``, ``NAME_val``, ``NAME_test`` and ``NAME_all`` with Detectron2.

    Args:
        name: prefix of the registered names.
        layout: one of :data:`LAYOUTS`.
        root: the data set's folder.
        split_file: a split list file; read if it exists, else drawn from ``seed`` over the
            paired stems and written there ("" draws without writing).
        seed: seed of a newly drawn split.
        num_classes: classes incl. background (names for ``folder-index`` without classes.txt).

    Returns:
        The registered names.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    scan = scan_pairs(layout, root)
    if split_file and os.path.isfile(split_file):
        split = read_split_file(split_file)
    else:
        split = make_split([stem for stem, _, _ in scan.pairs], seed)
        if split_file:
            write_split_file(split_file, split, f"seed {seed}, 80/10/10 of {len(scan.pairs)} "
                             f"pairs in {root} ({layout} layout)")
    split["all"] = sorted(stem for part in SPLITS for stem in split[part])
    classes = _class_names(layout, root, num_classes)
    registered = []
    for part, stems in split.items():
        full = f"{name}_{part}"
        if full in DatasetCatalog.list():
            DatasetCatalog.remove(full)
            MetadataCatalog.remove(full)
        DatasetCatalog.register(full, lambda stems=tuple(stems): _records(layout, root, stems))
        MetadataCatalog.get(full).set(
            stuff_classes=classes, ignore_label=255, evaluator_type="resunetpp", layout=layout,
            root=root, mask_format=get_layout(layout).mask_format, split_file=split_file,
            images_without_mask=list(scan.images_without_mask),
            masks_without_image=list(scan.masks_without_image))
        registered.append(full)
    return registered

