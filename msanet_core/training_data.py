"""Training data in memory: one split of :mod:`msanet_core.dataset` crops, normalised, plus
augmentation (MODEL.md A13: mirror, ±6 px shift, ±5° rotation as in the paper's ref. [13]).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from msanet_core import dataset
from msanet_core.inference import normalise_counts

MAX_SHIFT_PX = 6
MAX_ROTATION_DEG = 5.0


class TrainingDataError(ValueError):
    """The data directory is missing, has no samples, or holds an unreadable sample."""


@dataclass(frozen=True)
class CropSet:
    """``images`` (N, 256, 256) float32 in [0, 1] (MODEL.md A10); ``masks`` (N, 256, 256) uint8."""

    images: npt.NDArray[np.float32]
    masks: npt.NDArray[np.uint8]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


def load_split(root: Path, split: str, percentile: float = 99.5, required: bool = True) -> CropSet:
    """Load every ``root/split/*.npz`` and normalise each image by its own ``percentile``.

    Raises
    ------
    TrainingDataError
        ``root`` is not a directory, a required split has no samples, or a file is unreadable.
    """
    if not root.is_dir():
        raise TrainingDataError(f"data directory not found: {root}")
    paths = dataset.split_paths(root, split)
    if not paths:
        if required:
            raise TrainingDataError(f"no samples in {root / split} (expected *.npz crops)")
        empty = np.zeros((0, dataset.CROP_SIZE, dataset.CROP_SIZE))
        return CropSet(empty.astype(np.float32), empty.astype(np.uint8), ())
    images, masks, names = [], [], []
    for path in paths:
        try:
            sample = dataset.load_sample(path)
        except (OSError, KeyError, ValueError) as exc:
            raise TrainingDataError(f"cannot read sample {path}: {exc}") from exc
        images.append(sample.image)
        masks.append(sample.mask)
        names.append(sample.name)
    stack = normalise_counts(np.stack(images), percentile)
    return CropSet(stack, (np.stack(masks) > 0).astype(np.uint8), tuple(names))


def _shift(a: npt.NDArray[np.float32], dy: int, dx: int) -> npt.NDArray[np.float32]:
    out = np.zeros_like(a)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def augment_batch(
    images: npt.NDArray[np.float32],
    masks: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    rotate_probability: float = 0.5,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Random mirror (p 0.5), shift ±6 px and rotation ±5° (p ``rotate_probability``) per crop.

    Returns new float32 arrays; masks stay binary (nearest-neighbour rotation).
    """
    out_i = np.empty(images.shape, dtype=np.float32)
    out_m = np.empty(masks.shape, dtype=np.float32)
    for k in range(images.shape[0]):
        img = images[k].astype(np.float32)
        msk = masks[k].astype(np.float32)
        if rng.random() < 0.5:
            img, msk = img[:, ::-1], msk[:, ::-1]
        dy, dx = (int(v) for v in rng.integers(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1, size=2))
        img, msk = _shift(img, dy, dx), _shift(msk, dy, dx)
        if rng.random() < rotate_probability:
            angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
            img = ndimage.rotate(img, angle, reshape=False, order=1, mode="constant")
            msk = ndimage.rotate(msk, angle, reshape=False, order=0, mode="constant")
        out_i[k], out_m[k] = np.clip(img, 0.0, 1.0), msk
    return out_i, out_m
