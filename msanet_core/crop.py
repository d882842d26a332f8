"""Thorax crop of a whole-body bone scan from the body-outline profile (MODEL.md §2.7).

After the paper's ref [13] (Lin et al., PLoS ONE 2020;15:e0243253, Fig. 2: a body-outline curve and
its derivative locate the shoulders): the smoothed image is thresholded at 5 % of its 99th
percentile to get the body outline, the body width per row is smoothed, and the shoulder line is
the row of maximal d(width)/d(row) in the upper 35 % of the body. The crop is rows
``[shoulder − 16, shoulder + 240)``, full width (MODEL.md §2.7), shifted to stay inside the image.

One refinement over the plain recipe: the search starts below the widest row of the head, so the
top of the skull (whose outline also widens quickly) never wins over the shoulders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

CROP_SIZE = 256
SHOULDER_MARGIN = 16  # MODEL.md §2.7: rows kept above the shoulder line
OUTLINE_FRACTION = 0.05  # MODEL.md §2.7: body outline at 5 % of the smoothed image's p99
UPPER_BODY = 0.35  # MODEL.md §2.7: the shoulders lie in the upper 35 % of the body
HEAD_SEARCH = 0.12  # the head's widest row lies in the upper 12 % of the body
HEAD_WIDTH_FRACTION = 0.6  # a head is < 60 % of the shoulder width (≈ 15 vs 36–50 cm)
MIN_BODY_ROWS = 100  # fewer body rows than this is not a whole-body scan
MIN_WIDTH_PX = 6
MIN_SHOULDER_SLOPE = 1.0  # px of width per row; real shoulders give ~5–10


class NoBodyFoundError(ValueError):
    """The image holds no body outline that a thorax window can be placed on."""


@dataclass(frozen=True)
class ThoraxCrop:
    """A thorax window: rows ``[top, top + 256)`` of the image as stored, full width.

    ``top`` is a row index of the *stored* image (for a feet-first image the window lies towards
    the bottom). ``shoulder_row`` is the detected shoulder line in stored rows. ``head_first`` is
    how the caller said the image is oriented.
    """

    top: int
    shoulder_row: int
    head_first: bool = True
    size: int = CROP_SIZE

    @property
    def bottom(self) -> int:
        """One past the last row of the window (stored rows)."""
        return self.top + self.size

    def apply(self, image: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """The ``(256, cols)`` window, flipped for a feet-first image so row 0 is the head side."""
        window = image[self.top : self.bottom]
        return window if self.head_first else window[::-1]

    def paste(
        self, crop: npt.NDArray[np.generic], shape: tuple[int, int]
    ) -> npt.NDArray[np.generic]:
        """Inverse of :meth:`apply`: a zero ``shape`` array with ``crop`` put back in place."""
        out = np.zeros(shape, dtype=crop.dtype)
        out[self.top : self.bottom] = crop if self.head_first else crop[::-1]
        return out


def body_width_profile(
    image: npt.NDArray[np.generic], sigma: float = 2.0
) -> npt.NDArray[np.float64]:
    """Body width (px) per row: extent of the thresholded, smoothed outline (MODEL.md §2.7).

    ``image`` is a ``(rows, cols)`` count array in any row orientation; rows without body are 0.
    """
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma)
    level = float(np.percentile(smooth, 99.0))
    if not np.isfinite(level) or level <= 0:
        return np.zeros(image.shape[0])
    inside = smooth > OUTLINE_FRACTION * level
    inside = ndimage.binary_opening(inside, structure=np.ones((3, 3), dtype=bool))
    any_col = inside.any(axis=1)
    first = np.argmax(inside, axis=1)
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    return np.where(any_col, last - first + 1, 0).astype(np.float64)


def find_shoulder_row(image: npt.NDArray[np.generic]) -> int:
    """Shoulder line of a head-up ``(rows, cols)`` image (row 0 = head side); see module doc."""
    width = body_width_profile(image)
    body_rows = np.flatnonzero(width >= MIN_WIDTH_PX)
    if body_rows.size < MIN_BODY_ROWS:
        raise NoBodyFoundError(
            f"no body outline found: {body_rows.size} rows above the outline level "
            f"(at least {MIN_BODY_ROWS} needed); is this a whole-body scan with counts?"
        )
    start, end = int(body_rows[0]), int(body_rows[-1])
    length = end - start + 1
    smooth = ndimage.gaussian_filter1d(width, 4.0)
    stop = start + max(int(UPPER_BODY * length), 2)
    # The head is the widest part above the shoulders that is clearly narrower than them.
    head_zone = smooth[start : start + max(int(HEAD_SEARCH * length), 2)].copy()
    head_zone[head_zone > HEAD_WIDTH_FRACTION * smooth[start:stop].max()] = -1.0
    head = start + int(np.argmax(head_zone))
    stop = max(stop, head + 2)
    slope = np.gradient(smooth)
    best = head + int(np.argmax(slope[head:stop]))
    if slope[best] < MIN_SHOULDER_SLOPE:
        raise NoBodyFoundError(
            f"no shoulders found: body outline widens by at most {slope[best]:.2f} px/row "
            f"(at least {MIN_SHOULDER_SLOPE} needed); is this a whole-body scan?"
        )
    return best


def crop_thorax(image: npt.NDArray[np.generic], head_first: bool = True) -> ThoraxCrop:
    """Locate the 256-row thorax window of a whole-body view.

    Parameters
    ----------
    image
        ``(rows, cols)`` count array (typically ``(1024, 256)`` uint16), anterior or posterior,
        as stored: row 0 is the head side when ``head_first`` else the feet side.
    head_first
        Orientation of the rows, as the caller knows it (e.g. from DICOM Patient Position).

    Returns
    -------
    ThoraxCrop
        ``top`` is the first row of the window in the stored image's rows; ``apply(image)`` gives
        the ``(256, cols)`` crop with the head side at row 0.

    Raises
    ------
    NoBodyFoundError
        When no body outline is found (empty, blank or too-short image).
    ValueError
        When ``image`` is not 2-D or has fewer than 256 rows.
    """
    if image.ndim != 2 or image.shape[0] < CROP_SIZE:
        raise ValueError(
            f"image must be 2-D with at least {CROP_SIZE} rows, got shape {image.shape}"
        )
    rows = image.shape[0]
    upright = image if head_first else image[::-1]
    shoulder = find_shoulder_row(upright)
    top = int(np.clip(shoulder - SHOULDER_MARGIN, 0, rows - CROP_SIZE))
    if head_first:
        return ThoraxCrop(top=top, shoulder_row=shoulder, head_first=True)
    return ThoraxCrop(
        top=rows - top - CROP_SIZE, shoulder_row=rows - 1 - shoulder, head_first=False
    )
