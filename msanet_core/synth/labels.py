"""Ground-truth masks and calibration ROIs of the phantom (MODEL.md §5.9, §5 validation)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from msanet_core.synth.body import COLS, ROWS, Body, thickness_at
from msanet_core.synth.hotspots import Hotspot
from msanet_core.synth.optics import Acquisition, blur, weights
from msanet_core.synth.raster import Ellipse, FloatArray, patch_coverage, window
from msanet_core.synth.skeleton import Element

MASK_FRACTION = 0.4  # MODEL.md §5.9: mask = excess ≥ 40 % of the lesion's peak excess
VISIBLE_CONTRAST = 0.15  # hotspots below this peak excess : local level are not labelled


@dataclass(frozen=True)
class ViewLabels:
    """Masks of one view (anterior frame, before mirroring) and the labelled metastases."""

    lesion: npt.NDArray[np.uint8]
    benign: npt.NDArray[np.uint8]
    instances: npt.NDArray[np.uint16]  # metastasis index + 1, 0 = none
    visible: tuple[int, ...]  # indices of metastases with pixels in this view


def _excess(
    spot: Hotspot, view: int, body: Body, acq: Acquisition
) -> tuple[tuple[slice, slice] | None, FloatArray]:
    """The hotspot's own blurred excess in this view, on a padded window around it."""
    near = (spot.depth < 0.5) == (view == 0)
    sigma = acq.sigmas[0 if near else 1]
    win = window(spot.shape, (ROWS, COLS), pad=3.0 * sigma + acq.motion_rows)
    if win is None:
        return None, np.zeros((0, 0), dtype=np.float32)
    frac = (spot.shape.cy - body.top_row) / body.height_px
    w = weights(spot.depth, thickness_at(body, frac), acq.mu_per_cm)[view]
    cov = patch_coverage(spot.shape, *win) * np.float32(spot.excess * w)
    return win, blur(cov, sigma, acq.motion_rows)


def label_view(
    spots: list[Hotspot],
    expected: FloatArray,
    view: int,
    *,
    body: Body,
    acq: Acquisition,
    inside: npt.NDArray[np.bool_],
) -> ViewLabels:
    """Masks from each hotspot's own blurred excess ≥ 40 % of its peak (MODEL.md §5.9).

    A hotspot fainter than 15 % of the local level is not labelled in this view; overlapping
    metastases share pixels by the larger excess (instance map); masks stay inside the body.
    """
    best = np.zeros((ROWS, COLS), dtype=np.float32)
    inst = np.zeros((ROWS, COLS), dtype=np.uint16)
    benign = np.zeros((ROWS, COLS), dtype=np.uint8)
    for i, spot in enumerate(spots):
        win, excess = _excess(spot, view, body, acq)
        if win is None:
            continue
        peak = float(excess.max())
        if peak <= 0 or peak < VISIBLE_CONTRAST * float(expected[win].max() - peak):
            continue
        region = (excess >= MASK_FRACTION * peak) & inside[win]
        if spot.is_lesion:
            better = region & (excess > best[win])
            best[win] = np.where(better, excess, best[win])
            inst[win] = np.where(better, i + 1, inst[win])
        else:
            benign[win] |= region.astype(np.uint8)
    present = tuple(int(v) - 1 for v in np.unique(inst) if v > 0)
    return ViewLabels((inst > 0).astype(np.uint8), benign, inst, present)


def calibration_regions(
    body: Body, organs: list[Element], thick: FloatArray, hot: FloatArray, soft: FloatArray
) -> dict[str, npt.NDArray[np.bool_]]:
    """Calibration ROIs (MODEL.md §5 validation) in the anterior frame.

    ``thoracic_spine``: a ±4 px column over T9–T11, below the sternum; ``soft_tissue``: trunk
    pixels at ≥ 60 % of the body thickness where blurred bone/organ activity is < 5 % of the soft
    tissue; ``bladder``: the bladder's core; ``body``: any tissue.
    """
    rows = np.arange(ROWS, dtype=np.float64)[:, None]
    cols = np.arange(COLS, dtype=np.float64)[None, :]
    t12 = body.row(0.36)
    step = (t12 - body.shoulder_row) / 12
    # Below the xiphoid (row 0.30 H) so that the sternum does not overlap on the ANT view.
    spine = (
        (rows >= body.row(0.30) + 4)
        & (rows < t12 - step)
        & (np.abs(cols - body.col(0.0) - rows * body.tilt) <= 4)
    )
    near_bone = ndimage.gaussian_filter(hot, 3.0) > 0.05 * soft
    trunk = (rows >= body.row(0.22)) & (rows < body.row(0.5))
    soft_roi = trunk & (thick >= 0.6 * body.thickness_cm) & ~near_bone
    bladder = np.zeros((ROWS, COLS), dtype=bool)
    for el in organs:
        if el.name == "bladder" and isinstance(el.shape, Ellipse):
            core = Ellipse(el.shape.cy, el.shape.cx, 0.7 * el.shape.ry, 0.7 * el.shape.rx)
            win = window(core, (ROWS, COLS))
            if win is not None:
                bladder[win] = patch_coverage(core, *win) > 0.5
    return {"body": thick > 0, "thoracic_spine": spine, "soft_tissue": soft_roi, "bladder": bladder}
