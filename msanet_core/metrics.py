"""Segmentation metrics: pixel DSC/precision/recall (paper Eqs. 7–9), lesion-wise detection, HD95.

Masks are binary ``(N, H, W)`` (or ``(H, W)``) arrays, 1 = lesion. Conventions:

Pixel metrics (MODEL.md A12) are reported two ways:

- *pooled*: TP/FP/FN summed over the whole set, then ``DSC = 2TP/(2TP+FP+FN)`` (= 2PR/(P+R),
  paper Eq. 7), ``precision = TP/(TP+FP)`` (Eq. 8), ``recall = TP/(TP+FN)`` (Eq. 9);
- *per image*: the same per image, then mean ± SD and median over images.

Empty cases (a zero denominator) score 1.0 — nothing was claimed wrongly / nothing was missed:
GT and prediction both empty → DSC = precision = recall = 1; empty prediction on a non-empty GT →
DSC 0, recall 0, precision 1; a prediction on an empty GT → DSC 0, precision 0, recall 1.

Lesions are 8-connected components (MODEL.md §6.3). Matching rule: a GT lesion is *detected*
when some predicted component overlaps it with IoU ≥ ``min_iou`` (default 0.1; ``min_iou=0``
means any overlap); a predicted component that reaches IoU ≥ ``min_iou`` with no GT lesion is a
*false positive*. One predicted blob may detect several GT lesions (clusters).

HD95 (mm): the 95th percentile of the symmetric surface distances (medpy's ``hd95`` form),
pixel spacing 2.26 mm by default; NaN when either mask is empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
SIZE_BINS_PX = (20, 100)  # MODEL.md §6.3: area < 20 / 20–100 / > 100 px


def _stack(masks: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    a = np.asarray(masks)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (N, H, W) or (H, W), got shape {np.shape(masks)}")
    return a > 0


def _pair(pred: npt.ArrayLike, gt: npt.ArrayLike) -> tuple[npt.NDArray[np.bool_], ...]:
    p, g = _stack(pred, "pred"), _stack(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred shape {p.shape} differs from gt shape {g.shape}")
    return p, g


def confusion(pred: npt.ArrayLike, gt: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Per-image ``[TP, FP, FN]`` counts, shape ``(N, 3)``."""
    p, g = _pair(pred, gt)
    tp = (p & g).sum(axis=(1, 2))
    fp = (p & ~g).sum(axis=(1, 2))
    fn = (~p & g).sum(axis=(1, 2))
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out = np.ones_like(num, dtype=np.float64)  # empty case = 1.0 (module docstring)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores(counts: npt.ArrayLike) -> dict[str, npt.NDArray[np.float64]]:
    """DSC, precision, recall from ``[TP, FP, FN]`` rows (paper Eqs. 7–9, empty cases = 1)."""
    c = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    tp, fp, fn = c[:, 0], c[:, 1], c[:, 2]
    return {
        "dsc": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def pixel_metrics(pred: npt.ArrayLike, gt: npt.ArrayLike) -> dict[str, float]:
    """Pooled and per-image DSC / precision / recall.

    Returns keys ``dsc``, ``precision``, ``recall`` (pooled over the set), and
    ``dsc_mean``, ``dsc_sd``, ``dsc_median``, ``precision_mean``, ``recall_mean`` (per image).
    """
    counts = confusion(pred, gt)
    pooled = scores(counts.sum(axis=0))
    per = scores(counts)
    return {
        "dsc": float(pooled["dsc"][0]),
        "precision": float(pooled["precision"][0]),
        "recall": float(pooled["recall"][0]),
        "dsc_mean": float(per["dsc"].mean()),
        "dsc_sd": float(per["dsc"].std()),
        "dsc_median": float(np.median(per["dsc"])),
        "precision_mean": float(per["precision"].mean()),
        "recall_mean": float(per["recall"].mean()),
    }


@dataclass(frozen=True)
class LesionCounts:
    """Lesion-level counts over a set of images."""

    gt_lesions: int
    detected: int
    pred_components: int
    false_positives: int
    images: int
    by_size: dict[str, tuple[int, int]]  # bin name → (GT lesions, detected)

    @property
    def sensitivity(self) -> float:
        return self.detected / self.gt_lesions if self.gt_lesions else 1.0

    @property
    def fp_per_image(self) -> float:
        return self.false_positives / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(sensitivity=self.sensitivity, fp_per_image=self.fp_per_image)
        for name, (n, d) in self.by_size.items():
            out[f"sensitivity_{name}"] = d / n if n else float("nan")
        return out


def _size_bin(area: int, bins: tuple[int, int]) -> str:
    if area < bins[0]:
        return "small"
    return "medium" if area <= bins[1] else "large"


def _match_image(
    p: npt.NDArray[np.bool_], g: npt.NDArray[np.bool_], min_iou: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], int, int]:
    """GT component areas, their detected flags, #pred components, #FP components."""
    gl, ng = ndimage.label(g, structure=EIGHT)
    pl, npred = ndimage.label(p, structure=EIGHT)
    g_area = np.bincount(gl.ravel(), minlength=ng + 1)
    p_area = np.bincount(pl.ravel(), minlength=npred + 1)
    # joint histogram of (gt id, pred id) overlaps
    inter = np.zeros((ng + 1, npred + 1), dtype=np.int64)
    np.add.at(inter, (gl.ravel(), pl.ravel()), 1)
    inter = inter[1:, 1:]
    union = g_area[1:, None] + p_area[None, 1:] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    hit = (iou >= min_iou) & (inter > 0)
    detected = np.asarray(hit.any(axis=1) if npred else np.zeros(ng, dtype=bool), dtype=bool)
    fp = int((~hit.any(axis=0)).sum()) if ng else int(npred)
    return g_area[1:].astype(np.int64), detected, int(npred), fp


def lesion_metrics(
    pred: npt.ArrayLike,
    gt: npt.ArrayLike,
    min_iou: float = 0.1,
    size_bins_px: tuple[int, int] = SIZE_BINS_PX,
) -> LesionCounts:
    """Lesion-wise sensitivity, FP components per image and a breakdown by lesion area.

    Size bins by GT lesion area in pixels: ``small`` < ``size_bins_px[0]`` ≤ ``medium`` ≤
    ``size_bins_px[1]`` < ``large`` (20 px² ≈ 10 mm equivalent diameter at 2.26 mm).
    """
    if min_iou < 0 or min_iou > 1:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
    p_all, g_all = _pair(pred, gt)
    totals = [0, 0, 0, 0]
    by_size = {"small": [0, 0], "medium": [0, 0], "large": [0, 0]}
    for p, g in zip(p_all, g_all, strict=True):
        areas, detected, npred, fp = _match_image(p, g, min_iou)
        totals[0] += len(areas)
        totals[1] += int(detected.sum())
        totals[2] += npred
        totals[3] += fp
        for area, hit in zip(areas, detected, strict=True):
            cell = by_size[_size_bin(int(area), size_bins_px)]
            cell[0] += 1
            cell[1] += int(hit)
    sizes = {k: (v[0], v[1]) for k, v in by_size.items()}
    return LesionCounts(totals[0], totals[1], totals[2], totals[3], len(p_all), sizes)


def _surface(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    inner = np.asarray(ndimage.binary_erosion(mask, structure=EIGHT, border_value=0), dtype=bool)
    surface: npt.NDArray[np.bool_] = mask & ~inner
    return surface


def hd95(
    pred: npt.ArrayLike, gt: npt.ArrayLike, spacing_mm: tuple[float, float] = (2.26, 2.26)
) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) of one image pair; NaN if one is empty."""
    p, g = _pair(pred, gt)
    if p.shape[0] != 1:
        raise ValueError(f"hd95 takes one image pair, got {p.shape[0]}")
    p, g = p[0], g[0]
    if not p.any() or not g.any():
        return float("nan")
    sp, sg = _surface(p), _surface(g)
    dist_to_g = ndimage.distance_transform_edt(~sg, sampling=spacing_mm)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing_mm)
    d = np.concatenate([dist_to_g[sp], dist_to_p[sg]])
    return float(np.percentile(d, 95))


def evaluate(
    pred: npt.ArrayLike,
    gt: npt.ArrayLike,
    min_iou: float = 0.1,
    spacing_mm: tuple[float, float] = (2.26, 2.26),
) -> dict[str, Any]:
    """Everything above for a set: pixel (pooled + per image), lesion-wise, mean HD95 (mm)."""
    p, g = _pair(pred, gt)
    out: dict[str, Any] = pixel_metrics(p, g)
    out.update({f"lesion_{k}": v for k, v in lesion_metrics(p, g, min_iou).to_dict().items()})
    dists = [hd95(a, b, spacing_mm) for a, b in zip(p, g, strict=True)]
    finite = [d for d in dists if np.isfinite(d)]
    out["hd95_mm"] = float(np.mean(finite)) if finite else float("nan")
    out["hd95_images"] = len(finite)
    return out
