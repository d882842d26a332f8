"""Metrics checked against hand-computed values (paper Eqs. 7–9, MODEL.md §6.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from msanet_core.metrics import confusion, evaluate, hd95, lesion_metrics, pixel_metrics, scores


def _masks() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((3, 8, 8), dtype=np.uint8)
    gt = np.zeros((3, 8, 8), dtype=np.uint8)
    gt[0, 0, 0:4] = 1  # image 0: gt 4 px, pred 4 px, overlap 2
    pred[0, 0, 2:6] = 1
    # image 1: both empty
    gt[2, 5, 5:7] = 1  # image 2: gt 2 px, nothing predicted
    return pred, gt


def test_confusion_counts_by_hand() -> None:
    pred, gt = _masks()
    assert confusion(pred, gt).tolist() == [[2, 2, 2], [0, 0, 0], [0, 0, 2]]


def test_pooled_and_per_image_scores_by_hand() -> None:
    pred, gt = _masks()
    m = pixel_metrics(pred, gt)
    # pooled: TP 2, FP 2, FN 4 → DSC 4/10, precision 2/4, recall 2/6
    assert m["dsc"] == pytest.approx(0.4)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1 / 3)
    # per image DSC: 0.5, 1 (both empty), 0 (missed)
    assert m["dsc_mean"] == pytest.approx(0.5)
    assert m["dsc_median"] == pytest.approx(0.5)
    # precision 0.5, 1, 1 (nothing claimed); recall 0.5, 1 (nothing to find), 0
    assert m["precision_mean"] == pytest.approx(2.5 / 3)
    assert m["recall_mean"] == pytest.approx(1.5 / 3)


def test_dsc_equals_two_pr_over_p_plus_r() -> None:
    s = scores([[30, 10, 20]])
    p, r = 30 / 40, 30 / 50
    assert s["dsc"][0] == pytest.approx(2 * p * r / (p + r))


def test_prediction_on_empty_gt_scores_zero_dsc_and_precision() -> None:
    s = scores([[0, 5, 0]])
    assert (s["dsc"][0], s["precision"][0], s["recall"][0]) == (0.0, 0.0, 1.0)


def _lesion_case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((1, 32, 32), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 2:5, 2:5] = 1  # lesion A, 9 px
    gt[0, 20:22, 20:22] = 1  # lesion B, 4 px (missed)
    gt[0, 10:22, 2:12] = 1  # lesion C, 120 px (large), detected
    pred[0, 3:6, 3:6] = 1  # overlaps A: inter 4, union 14 → IoU 0.29
    pred[0, 12:20, 4:10] = 1  # inside C
    pred[0, 28:30, 28:31] = 1  # false positive
    return pred, gt


def test_lesion_sensitivity_fp_and_size_bins_by_hand() -> None:
    pred, gt = _lesion_case()
    counts = lesion_metrics(pred, gt)
    assert (counts.gt_lesions, counts.detected, counts.pred_components) == (3, 2, 3)
    assert counts.false_positives == 1
    assert counts.sensitivity == pytest.approx(2 / 3)
    assert counts.fp_per_image == 1.0
    assert counts.by_size == {"small": (2, 1), "medium": (0, 0), "large": (1, 1)}


def test_diagonal_pixels_are_one_lesion_with_8_connectivity() -> None:
    gt = np.eye(6, dtype=np.uint8)[None]
    assert lesion_metrics(gt, gt).gt_lesions == 1


def test_min_iou_decides_whether_a_touch_counts() -> None:
    gt = np.zeros((1, 16, 16), dtype=np.uint8)
    gt[0, 0:3, 0:3] = 1  # 9 px
    pred = np.zeros_like(gt)
    pred[0, 2:8, 2:7] = 1  # 30 px, overlap 1 px → IoU 1/38
    assert lesion_metrics(pred, gt, min_iou=0.1).detected == 0
    assert lesion_metrics(pred, gt, min_iou=0.1).false_positives == 1
    assert lesion_metrics(pred, gt, min_iou=0.0).detected == 1


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing: float) -> float:
    def surface(m: np.ndarray) -> np.ndarray:
        pts = []
        for y, x in zip(*np.nonzero(m), strict=True):
            window = np.pad(m, 1)[y : y + 3, x : x + 3]
            if not window.all():
                pts.append((y, x))
        return np.array(pts, dtype=float)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1)) * spacing
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


def test_hd95_single_pixels_three_columns_apart() -> None:
    a = np.zeros((8, 8), dtype=np.uint8)
    b = np.zeros_like(a)
    a[4, 1] = 1
    b[4, 4] = 1
    assert hd95(a, b) == pytest.approx(3 * 2.26)


def test_hd95_matches_a_brute_force_computation() -> None:
    a = np.zeros((24, 24), dtype=np.uint8)
    b = np.zeros_like(a)
    a[4:12, 4:12] = 1
    b[6:15, 7:13] = 1
    b[18:20, 2:4] = 1
    assert hd95(a, b) == pytest.approx(_brute_hd95(a, b, 2.26))


def test_hd95_is_nan_when_one_mask_is_empty_and_evaluate_skips_it() -> None:
    pred, gt = _masks()
    assert math.isnan(hd95(pred[2], gt[2]))
    out = evaluate(pred, gt)
    assert out["hd95_images"] == 1
    assert out["dsc"] == pytest.approx(0.4)
    assert out["lesion_gt_lesions"] == 2


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="shape"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
