"""Generator statistics against the real-scan calibration figures of MODEL.md §5.

:func:`patient_stats` measures one synthetic patient from its counts and the phantom's ROIs;
:func:`summarise` turns many of those into rows of (statistic, generator median and range,
reference, tolerance, pass). The references are the figures MODEL.md §5 quotes for a real
anterior whole-body scan (3.6 M counts/view, spine 82 vs soft tissue 24 ⇒ bone : soft ≈ 3.4,
bladder ≈ 2× thoracic spine, max 3.4×, background ≈ 0; thorax crop 1.96 M of 3.6 M counts,
mean ≈ 30/px, max 278) and the generator design (counts/view LogNormal centred at 2 M, 0.8–4 M).
Per-pixel crop figures are rescaled to the real scan's 3.6 M counts before comparing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from msanet_core.crop import crop_thorax
from msanet_core.synth.scan import SyntheticPatient

REAL_COUNTS_PER_VIEW = 3.6e6  # MODEL.md §5 calibration anchor (real anterior scan)


@dataclass(frozen=True)
class Reference:
    """A calibration target: the population median must lie in ``[low, high]``."""

    name: str
    reference: float
    low: float
    high: float
    source: str


# MODEL.md §5: calibration anchors and design ranges; tolerances are ours, stated here.
REFERENCES = (
    Reference("counts_per_view", 2.0e6, 1.6e6, 2.5e6, "§5.6 design: LogNormal centred at 2 M"),
    Reference("bone_to_soft", 3.4, 2.7, 4.1, "§5 real scan: spine 82 vs soft tissue 24 (±20 %)"),
    Reference(
        "bladder_to_spine", 2.0, 1.4, 2.6, "§5 real scan: bladder ≈ 2× thoracic spine (±30 %)"
    ),
    Reference("bladder_max_to_spine", 3.4, 2.2, 4.6, "§5 real scan: bladder max 3.4× (±35 %)"),
    Reference("background_per_px", 0.0, 0.0, 0.05, "§5 real scan: background ≈ 0 counts/px"),
    Reference("crop_fraction", 0.54, 0.42, 0.66, "§5 real crop: 1.96 M of 3.6 M counts (±0.12)"),
    Reference("crop_mean_per_px", 30.0, 22.0, 38.0, "§5 real crop: mean ≈ 30/px at 3.6 M (±8)"),
    Reference("crop_max", 278.0, 139.0, 556.0, "§5 real crop: max 278 at 3.6 M (×/÷ 2)"),
)


def patient_stats(patient: SyntheticPatient, view: str = "anterior") -> dict[str, float]:
    """Calibration statistics of one view (the real anchors are anterior: MODEL.md §5)."""
    v = patient.anterior if view == "anterior" else patient.posterior
    counts = v.counts.astype(np.float64)
    total = float(counts.sum())
    spine = float(counts[v.regions["thoracic_spine"]].mean())
    soft = (
        float(counts[v.regions["soft_tissue"]].mean()) if v.regions["soft_tissue"].any() else np.nan
    )
    bladder = counts[v.regions["bladder"]]
    outside = ~ndimage.binary_dilation(v.regions["body"], iterations=10)
    crop = crop_thorax(v.counts).apply(counts)
    norm = REAL_COUNTS_PER_VIEW / total
    return {
        "counts_per_view": total,
        "bone_to_soft": spine / soft,
        "bladder_to_spine": float(bladder.mean()) / spine,
        "bladder_max_to_spine": float(bladder.max()) / spine,
        "background_per_px": float(counts[outside].mean()),
        "crop_fraction": float(crop.sum()) / total,
        "crop_mean_per_px": float(crop.mean()) * norm,
        "crop_max": float(crop.max()) * norm,
    }


@dataclass(frozen=True)
class StatRow:
    """One line of the calibration table."""

    ref: Reference
    median: float
    p5: float
    p95: float

    @property
    def ok(self) -> bool:
        return self.ref.low <= self.median <= self.ref.high


def summarise(stats: Iterable[dict[str, float]]) -> list[StatRow]:
    """Median and 5–95 % range of each statistic over patients, beside its reference."""
    table = list(stats)
    rows = []
    for ref in REFERENCES:
        values = np.array([s[ref.name] for s in table], dtype=np.float64)
        values = values[np.isfinite(values)]
        p5, med, p95 = (
            (np.percentile(values, q) for q in (5, 50, 95)) if values.size else (np.nan,) * 3
        )
        rows.append(StatRow(ref, float(med), float(p5), float(p95)))
    return rows
