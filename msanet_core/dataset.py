"""The training format: one ``.npz`` file per view crop, split by patient into folders.

A training directory holds ``train/``, ``val/`` and ``test/`` sub-folders (any may be missing);
each holds ``<patient_id>_<view>.npz`` files with these arrays:

``image``
    ``(256, 256)`` uint16 raw counts of the thorax crop, row 0 = the crop's top (head side),
    column 0 = image column 0 as stored in the scan (no mirroring).
``mask``
    ``(256, 256)`` uint8, 1 = metastatic lesion, 0 = anything else.
``benign`` (optional)
    ``(256, 256)`` uint8, 1 = benign hot spot (synthetic data only; for false-positive analysis).
``patient_id``, ``view`` (``"anterior"`` | ``"posterior"``), ``crop_top`` (row of the crop's top in
the full 1024-row image), ``pixel_spacing_mm`` (row and column spacing, mm).

Both views of a patient always sit in the same split (the paper's patient-level split).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

CROP_SIZE = 256
SPLITS = ("train", "val", "test")
VIEWS = ("anterior", "posterior")


@dataclass(frozen=True)
class Sample:
    """One view crop with its labels; see the module docstring for axis order and units."""

    image: npt.NDArray[np.uint16]
    mask: npt.NDArray[np.uint8]
    patient_id: str
    view: str
    crop_top: int = 0
    pixel_spacing_mm: float = 2.26
    benign: npt.NDArray[np.uint8] | None = None

    def __post_init__(self) -> None:
        shape = (CROP_SIZE, CROP_SIZE)
        if self.image.shape != shape or self.mask.shape != shape:
            raise ValueError(
                f"sample {self.patient_id}/{self.view}: image {self.image.shape} and mask "
                f"{self.mask.shape} must both be {shape}"
            )
        if self.view not in VIEWS:
            raise ValueError(f"sample {self.patient_id}: view {self.view!r} is not one of {VIEWS}")
        if self.benign is not None and self.benign.shape != shape:
            raise ValueError(f"sample {self.patient_id}/{self.view}: benign {self.benign.shape}")

    @property
    def name(self) -> str:
        return f"{self.patient_id}_{self.view}"


def save_sample(sample: Sample, directory: Path) -> Path:
    """Write ``sample`` as ``directory/<patient_id>_<view>.npz`` atomically; return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "image": sample.image.astype(np.uint16, copy=False),
        "mask": (sample.mask > 0).astype(np.uint8),
        "patient_id": np.array(sample.patient_id),
        "view": np.array(sample.view),
        "crop_top": np.array(sample.crop_top, dtype=np.int64),
        "pixel_spacing_mm": np.array(sample.pixel_spacing_mm, dtype=np.float64),
    }
    if sample.benign is not None:
        arrays["benign"] = (sample.benign > 0).astype(np.uint8)
    target = directory / f"{sample.name}.npz"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_sample(path: Path) -> Sample:
    """Read one ``.npz`` written by :func:`save_sample`."""
    with np.load(path, allow_pickle=False) as data:
        benign = data["benign"] if "benign" in data.files else None
        return Sample(
            image=data["image"].astype(np.uint16, copy=False),
            mask=data["mask"].astype(np.uint8, copy=False),
            patient_id=str(data["patient_id"]),
            view=str(data["view"]),
            crop_top=int(data["crop_top"]),
            pixel_spacing_mm=float(data["pixel_spacing_mm"]),
            benign=benign,
        )


def split_paths(root: Path, split: str) -> list[Path]:
    """Sorted ``.npz`` paths of one split (``train``, ``val`` or ``test``) under ``root``."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    folder = root / split
    return sorted(folder.glob("*.npz")) if folder.is_dir() else []


def iter_split(root: Path, split: str) -> Iterator[Sample]:
    """Yield the samples of one split in file-name order."""
    for path in split_paths(root, split):
        yield load_sample(path)
