"""Render a synthetic patient's paired anterior/posterior whole-body scans (MODEL.md §5).

:func:`generate_patient` is the entry point. Arrays are ``(rows=1024, cols=256)``, row 0 = head
(head-first), counts are Poisson ``uint16``; the posterior view is stored as acquired, mirrored
left-right relative to the anterior view (MODEL.md §5.4). Patient ``k`` of seed ``s`` is drawn from
``numpy.random.default_rng([s, k])`` so it is the same whatever the number of patients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from msanet_core.synth.body import (
    COLS,
    PIXEL_MM,
    ROWS,
    Body,
    sample_body,
    thickness_at,
    thickness_map,
)
from msanet_core.synth.hotspots import Hotspot, sample_benign, sample_metastases
from msanet_core.synth.raster import Ellipse, FloatArray, Shape, patch_coverage, window
from msanet_core.synth.skeleton import THORAX_SITES, Element, build_skeleton

VIEWS = ("anterior", "posterior")
CROP_ROWS = 256
SHOULDER_MARGIN = 16  # MODEL.md §2.7: crop rows [shoulder − 16, shoulder + 240)
BACKGROUND_PER_PX = 0.01  # expected counts per pixel outside the body (MODEL.md §5: ≈ 0)
SOFT_GAIN = 0.038  # soft-tissue activity per cm of tissue; sets bone:soft ≈ 3.4 (MODEL.md §5)
MASK_FRACTION = 0.4  # MODEL.md §5.9: mask = excess ≥ 40 % of the lesion's peak excess
VISIBLE_CONTRAST = 0.15  # hotspots below this peak excess : local level are not labelled


@dataclass(frozen=True)
class SyntheticView:
    """One view: counts, label masks and the true thorax window from the phantom geometry.

    ``counts`` uint16, ``lesion_mask``/``benign_mask`` uint8 (1 = hotspot), ``instances`` uint16
    (metastasis id + 1, 0 = none); all ``(1024, 256)``, head-first, as stored for this view.
    ``shoulder_row`` and ``thorax_top`` are image rows; ``thorax_lesions`` the ids of metastases on
    thorax sites that are labelled in this view.
    """

    view: str
    counts: npt.NDArray[np.uint16]
    lesion_mask: npt.NDArray[np.uint8]
    benign_mask: npt.NDArray[np.uint8]
    instances: npt.NDArray[np.uint16]
    shoulder_row: int
    thorax_top: int
    thorax_lesions: tuple[int, ...]
    regions: dict[str, npt.NDArray[np.bool_]]


@dataclass(frozen=True)
class SyntheticPatient:
    """Both views of one synthetic patient and every sampled parameter (JSON-ready)."""

    patient_id: str
    seed: int
    index: int
    anterior: SyntheticView
    posterior: SyntheticView
    params: dict[str, Any]

    @property
    def views(self) -> tuple[SyntheticView, SyntheticView]:
        return self.anterior, self.posterior


def patient_id_for(seed: int, index: int) -> str:
    """Stable synthetic patient id, e.g. ``SYN0042-00007``."""
    return f"SYN{seed % 10000:04d}-{index:05d}"


def _uptake(body: Body, rng: np.random.Generator, superscan: bool) -> list[Element]:
    """Kidneys, bladder, injection site and urine contamination (MODEL.md §5.3)."""
    out: list[Element] = []
    kid = 0.0 if superscan else float(rng.uniform(0.4, 1.0))
    for side in (-1, 1):
        ky = body.row(0.345) + (6.0 if side < 0 else 0.0) + rng.uniform(-4, 4)
        shape = Ellipse(ky, body.col(ky, side * 0.4 * body.chest_hw), 22, 10, side * 0.3)
        out.append(Element(f"kidney{'RL'[side > 0]}", "organ", shape, 0.5 * kid, 0.72))
    by = body.row(0.522) + rng.uniform(-4, 4)
    fill = rng.uniform(0.4, 1.0)
    bladder = Ellipse(by, body.col(by), 8 + 10 * fill, 12 + 14 * fill, 0.0, 2.3)
    out.append(
        Element(
            "bladder",
            "organ",
            bladder,
            float(rng.uniform(0.32, 0.8)) * (0.5 if superscan else 1),
            0.3,
        )
    )
    side = int(rng.choice([-1, 1]))
    iy = body.row(float(rng.choice([0.37, 0.56])))
    dx = side * (
        body.shoulder_hw - body.arm_radius + (iy - body.shoulder_row) * math.tan(body.arm_abduction)
    )
    # MODEL.md §5.3: injection site 2–50 × bone; a clean injection often leaves none visible
    shot = (
        float(np.clip(rng.lognormal(math.log(5.0), 0.9), 2.0, 50.0)) if rng.random() < 0.6 else 0.0
    )
    out.append(
        Element("injection", "injection", Ellipse(iy, body.col(iy, dx), 2.5, 2.5), shot, 0.3)
    )
    for _ in range(int(rng.random() < 0.1) * int(rng.integers(1, 3))):
        cy = body.row(float(rng.uniform(0.53, 0.65)))
        blob = Ellipse(cy, body.col(cy, rng.uniform(-40, 40)), 3, 4)
        out.append(
            Element("contamination", "contamination", blob, float(rng.uniform(1.0, 5.0)), 0.02)
        )
    return out


_A = TypeVar("_A", bound=np.generic)


def _mirror(a: npt.NDArray[_A]) -> npt.NDArray[_A]:
    return np.ascontiguousarray(a[:, ::-1])


def _keep(a: npt.NDArray[_A]) -> npt.NDArray[_A]:
    return a


def _weights(depth: float, thickness: float, mu: float) -> tuple[float, float]:
    """ANT and POST attenuation of a source at ``depth``, 1 at mid-depth (MODEL.md §5.4)."""
    return (math.exp(-mu * (depth - 0.5) * thickness), math.exp(-mu * (0.5 - depth) * thickness))


def _blur(image: FloatArray, sigma: float, motion: int) -> FloatArray:
    out: FloatArray = ndimage.gaussian_filter(image, sigma, mode="constant", truncate=3.0)
    if motion > 1:  # MODEL.md §5.5: occasional motion blur along the scan axis
        out = ndimage.uniform_filter1d(out, motion, axis=0, mode="constant")
    return out


def generate_patient(seed: int, index: int) -> SyntheticPatient:
    """Draw and render patient ``index`` of ``seed``; deterministic for a given pair."""
    rng = np.random.default_rng([seed, index])
    body = sample_body(rng)
    superscan = bool(rng.random() < 0.02)
    skeleton = build_skeleton(body, rng)
    bone_gain = float(rng.uniform(0.8, 1.2)) * (1.8 if superscan else 1.0)  # §5.3: ±20 %
    mets = sample_metastases(skeleton, rng)
    benign = sample_benign(body, skeleton, rng)
    organs = _uptake(body, rng, superscan)
    mu = float(rng.uniform(0.11, 0.15))  # §5.4: μ ≈ 0.15 cm⁻¹ narrow-beam; lower with scatter
    sigma_near, sigma_far = float(rng.uniform(1.3, 1.7)), float(rng.uniform(1.8, 2.3))  # §5.5
    motion = int(rng.choice([1, 2, 3], p=[0.85, 0.1, 0.05]))
    soft_level = float(rng.uniform(0.2, 0.35)) / 0.29 * (0.6 if superscan else 1.0)
    # §5.6: counts per view ~ LogNormal centred at 2 M (0.8–4 M); 2.15 M for the mean of both
    # views puts the anterior median at ≈ 2 M (POST collects ~15 % more here).
    total = float(np.clip(rng.lognormal(math.log(2.15e6), 0.3), 0.8e6, 4.0e6))
    sigmas = (sigma_near, sigma_far)

    layers = np.zeros((2, 2, ROWS, COLS), dtype=np.float32)  # [view][near, far]
    for el in skeleton + organs:
        gain = bone_gain if el.site not in ("organ", "injection", "contamination") else 1.0
        _add(layers, el.shape, el.activity * gain, el.depth, body=body, mu=mu)
    for spot in mets + benign:
        _add(layers, spot.shape, spot.excess * bone_gain, spot.depth, body=body, mu=mu)
    thick = thickness_map(body)
    soft = SOFT_GAIN * soft_level * (1.0 - np.exp(-mu * thick)) / mu
    expected = [
        _blur(layers[v, 0], sigmas[0], motion)
        + _blur(layers[v, 1], sigmas[1], motion)
        + _blur(soft, 0.5 * (sigma_near + sigma_far), motion)
        for v in range(2)
    ]
    scale = 2.0 * total / float(expected[0].sum() + expected[1].sum())  # mean of the two views
    # MODEL.md §5.6: outside the body ≈ 0; a trace of room background / scatter
    counts = [
        np.minimum(rng.poisson(e * scale + BACKGROUND_PER_PX), 65535).astype(np.uint16)
        for e in expected
    ]

    rois = _regions(body, organs, thick, sum(layers[0]) + sum(layers[1]), soft)
    labels = [
        _labels(
            mets,
            benign,
            expected[v],
            v,
            body=body,
            mu=mu,
            sigmas=sigmas,
            motion=motion,
            inside=rois["body"],
        )
        for v in range(2)
    ]
    shoulder = round(body.shoulder_row)
    top = int(np.clip(shoulder - SHOULDER_MARGIN, 0, ROWS - CROP_ROWS))
    views = []
    for v, name in enumerate(VIEWS):
        lesion, benign_mask, inst, visible = labels[v]
        mirror = _mirror if v == 1 else _keep  # §5.4: POST stored as acquired, mirrored
        thorax = tuple(i for i in visible if mets[i].site in THORAX_SITES)
        view = SyntheticView(
            view=name,
            counts=mirror(counts[v]),
            lesion_mask=mirror(lesion),
            benign_mask=mirror(benign_mask),
            instances=mirror(inst),
            shoulder_row=shoulder,
            thorax_top=top,
            thorax_lesions=thorax,
            regions={k: mirror(r) for k, r in rois.items()},
        )
        views.append(view)
    params = {
        "seed": seed,
        "index": index,
        "superscan": superscan,
        "negative": not mets,
        "body": body.as_dict(),
        "bone_gain": bone_gain,
        "mu_per_cm": mu,
        "psf_sigma_px": {"near": sigma_near, "far": sigma_far},
        "motion_blur_rows": motion,
        "soft_tissue_level": soft_level,
        "total_counts_target": total,
        "pixel_spacing_mm": PIXEL_MM,
        "shoulder_row": shoulder,
        "thorax_top": top,
        "organs": [
            {
                "name": e.name,
                "activity": e.activity,
                "center_row": e.shape.cy,
                "center_col": e.shape.cx,
                "radius_rows": e.shape.ry,
                "radius_cols": e.shape.rx,
            }
            for e in organs
            if isinstance(e.shape, Ellipse)
        ],
        "metastases": [
            dict(h.as_dict(), id=i + 1, visible=[i in labels[0][3], i in labels[1][3]])
            for i, h in enumerate(mets)
        ],
        "benign": [h.as_dict() for h in benign],
        "element_activity": {e.name: e.activity for e in skeleton},
    }
    return SyntheticPatient(patient_id_for(seed, index), seed, index, views[0], views[1], params)


def _add(
    layers: FloatArray, shape: Shape, value: float, depth: float, *, body: Body, mu: float
) -> None:
    """Draw one source into the near/far layers of both views with its attenuation weights."""
    win = window(shape, (ROWS, COLS))
    if win is None or value == 0.0:
        return
    cov = patch_coverage(shape, *win)
    frac = (0.5 * (win[0].start + win[0].stop) - body.top_row) / body.height_px
    w_ant, w_post = _weights(depth, thickness_at(body, frac), mu)
    layers[0, 0 if depth < 0.5 else 1][win] += np.float32(value * w_ant) * cov
    layers[1, 0 if depth >= 0.5 else 1][win] += np.float32(value * w_post) * cov


def _labels(
    mets: list[Hotspot],
    benign: list[Hotspot],
    expected: FloatArray,
    view: int,
    *,
    body: Body,
    mu: float,
    sigmas: tuple[float, float],
    motion: int,
    inside: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint16], list[int]]:
    """Masks from each hotspot's own blurred excess ≥ 40 % of its peak (MODEL.md §5.9)."""
    best = np.zeros((ROWS, COLS), dtype=np.float32)
    inst = np.zeros((ROWS, COLS), dtype=np.uint16)
    benign_mask = np.zeros((ROWS, COLS), dtype=np.uint8)
    visible: list[int] = []
    for i, spot in enumerate(mets + benign):
        near = (spot.depth < 0.5) == (view == 0)
        sigma = sigmas[0 if near else 1]
        win = window(spot.shape, (ROWS, COLS), pad=3.0 * sigma + motion)
        if win is None:
            continue
        frac = (spot.shape.cy - body.top_row) / body.height_px
        w = _weights(spot.depth, thickness_at(body, frac), mu)[view]
        excess = _blur(
            patch_coverage(spot.shape, *win) * np.float32(spot.excess * w), sigma, motion
        )
        peak = float(excess.max())
        if peak <= 0 or peak < VISIBLE_CONTRAST * float(expected[win].max() - peak):
            continue
        region = (excess >= MASK_FRACTION * peak) & inside[win]
        if not region.any():
            continue
        if spot.is_lesion:
            visible.append(i)
            better = region & (excess > best[win])
            best[win] = np.where(better, excess, best[win])
            inst[win] = np.where(better, i + 1, inst[win])
        else:
            benign_mask[win] |= region.astype(np.uint8)
    present = set(np.unique(inst).tolist())
    visible = [i for i in visible if i + 1 in present]  # fully covered by a brighter neighbour
    return (inst > 0).astype(np.uint8), benign_mask, inst, visible


def _regions(
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
