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

from msanet_core.synth.body import COLS, PIXEL_MM, ROWS, Body, sample_body, thickness_map
from msanet_core.synth.hotspots import Hotspot, sample_benign, sample_metastases
from msanet_core.synth.labels import ViewLabels, calibration_regions, label_view
from msanet_core.synth.optics import Acquisition, add_source, count, project, soft_tissue
from msanet_core.synth.raster import Ellipse
from msanet_core.synth.skeleton import THORAX_SITES, Element, build_skeleton

VIEWS = ("anterior", "posterior")
CROP_ROWS = 256
SHOULDER_MARGIN = 16  # MODEL.md §2.7: crop rows [shoulder − 16, shoulder + 240)
_NON_BONE = ("organ", "injection", "contamination")


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


@dataclass(frozen=True)
class _Phantom:
    """Everything sampled about the patient's anatomy and uptake."""

    body: Body
    superscan: bool
    skeleton: list[Element]
    bone_gain: float
    metastases: list[Hotspot]
    benign: list[Hotspot]
    organs: list[Element]


def _sample_phantom(rng: np.random.Generator) -> _Phantom:
    body = sample_body(rng)
    superscan = bool(rng.random() < 0.02)  # §5.7: rare superscan
    skeleton = build_skeleton(body, rng)
    bone_gain = float(rng.uniform(0.8, 1.2)) * (1.8 if superscan else 1.0)  # §5.3: ±20 %
    mets = sample_metastases(skeleton, rng)
    benign = sample_benign(body, skeleton, rng)
    organs = _uptake(body, rng, superscan)
    return _Phantom(body, superscan, skeleton, bone_gain, mets, benign, organs)


def _layers(ph: _Phantom, acq: Acquisition) -> npt.NDArray[np.float32]:
    """Bone, organ and hotspot sources in ``[view][near, far]`` layers (optics module)."""
    layers = np.zeros((2, 2, ROWS, COLS), dtype=np.float32)
    mu = acq.mu_per_cm
    for el in ph.skeleton + ph.organs:
        gain = 1.0 if el.site in _NON_BONE else ph.bone_gain
        add_source(layers, el.shape, el.activity * gain, el.depth, body=ph.body, mu=mu)
    for spot in ph.metastases + ph.benign:
        add_source(layers, spot.shape, spot.excess * ph.bone_gain, spot.depth, body=ph.body, mu=mu)
    return layers


def generate_patient(seed: int, index: int) -> SyntheticPatient:
    """Draw and render synthetic patient ``index`` of ``seed``.

    Parameters
    ----------
    seed, index
        The patient is drawn from ``numpy.random.default_rng([seed, index])``: the same pair gives
        the same patient, whatever else is generated.

    Returns
    -------
    SyntheticPatient
        Both views as ``(1024, 256)`` arrays (row 0 = head; posterior mirrored as acquired),
        label masks, the true shoulder row / thorax window, and every sampled parameter.
    """
    rng = np.random.default_rng([seed, index])
    ph = _sample_phantom(rng)
    acq = Acquisition.sample(rng, ph.superscan)
    layers = _layers(ph, acq)
    thick = thickness_map(ph.body)
    soft = soft_tissue(thick, acq)
    expected = [project(layers[v], soft, acq) for v in range(2)]
    counts = count(expected, acq, rng)
    rois = calibration_regions(ph.body, ph.organs, thick, layers.sum(axis=(0, 1)), soft)
    spots = ph.metastases + ph.benign
    labels = [
        label_view(spots, expected[v], v, body=ph.body, acq=acq, inside=rois["body"])
        for v in range(2)
    ]
    shoulder = round(ph.body.shoulder_row)
    top = int(np.clip(shoulder - SHOULDER_MARGIN, 0, ROWS - CROP_ROWS))
    views = [
        _view(name, counts[v], labels[v], rois, ph, shoulder=shoulder, top=top)
        for v, name in enumerate(VIEWS)
    ]
    params = _params(ph, acq, labels, seed=seed, index=index, shoulder=shoulder, top=top)
    return SyntheticPatient(patient_id_for(seed, index), seed, index, views[0], views[1], params)


def _view(
    name: str,
    counts: npt.NDArray[np.uint16],
    labels: ViewLabels,
    rois: dict[str, npt.NDArray[np.bool_]],
    ph: _Phantom,
    *,
    shoulder: int,
    top: int,
) -> SyntheticView:
    mirror = _mirror if name == "posterior" else _keep  # §5.4: POST stored as acquired
    return SyntheticView(
        view=name,
        counts=mirror(counts),
        lesion_mask=mirror(labels.lesion),
        benign_mask=mirror(labels.benign),
        instances=mirror(labels.instances),
        shoulder_row=shoulder,
        thorax_top=top,
        thorax_lesions=tuple(i for i in labels.visible if ph.metastases[i].site in THORAX_SITES),
        regions={k: mirror(r) for k, r in rois.items()},
    )


def _params(
    ph: _Phantom,
    acq: Acquisition,
    labels: list[ViewLabels],
    *,
    seed: int,
    index: int,
    shoulder: int,
    top: int,
) -> dict[str, Any]:
    """Every sampled parameter, JSON-ready (MODEL.md §5.10)."""
    organs = [
        {
            "name": e.name,
            "activity": e.activity,
            "center_row": e.shape.cy,
            "center_col": e.shape.cx,
            "radius_rows": e.shape.ry,
            "radius_cols": e.shape.rx,
        }
        for e in ph.organs
        if isinstance(e.shape, Ellipse)
    ]
    mets = [
        dict(h.as_dict(), id=i + 1, visible=[i in labels[0].visible, i in labels[1].visible])
        for i, h in enumerate(ph.metastases)
    ]
    return {
        "seed": seed,
        "index": index,
        "superscan": ph.superscan,
        "negative": not ph.metastases,
        "body": ph.body.as_dict(),
        "bone_gain": ph.bone_gain,
        "mu_per_cm": acq.mu_per_cm,
        "psf_sigma_px": {"near": acq.sigma_near_px, "far": acq.sigma_far_px},
        "motion_blur_rows": acq.motion_rows,
        "soft_tissue_level": acq.soft_level,
        "total_counts_target": acq.total_counts,
        "pixel_spacing_mm": PIXEL_MM,
        "shoulder_row": shoulder,
        "thorax_top": top,
        "organs": organs,
        "metastases": mets,
        "benign": [h.as_dict() for h in ph.benign],
        "element_activity": {e.name: e.activity for e in ph.skeleton},
    }
