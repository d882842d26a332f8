"""The shipped checkpoint: it loads when ``BONESCAN_WEIGHTS`` is unset, the listener reads the
same model version without torch, and its masks on fixed held-out synthetic scans stay what
they were when it was released (a golden regression test) and good enough against the truth.

Regenerate the golden file after retraining (and update MODEL_CARD.md)::

    .venv/bin/python -m tests.unit.test_shipped_weights
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt

from msanet_core import Segmenter, crop_thorax, generate_patient
from msanet_core.weights import SHIPPED_CHECKPOINT
from pipeline.model_version import current_model_version
from pipeline.settings import Settings

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden" / "shipped-weights.npz"
SEED = 7  # the held-out test set's seed (MODEL_CARD.md), never trained on
PATIENTS = range(6)
PIXEL_AGREEMENT = 0.995  # CPUs round differently near the 0.5 threshold; a few pixels may flip
MIN_POOLED_DSC = 0.6  # sanity floor on these few scans (the card's figure is over 100 patients)


def crops_and_truth() -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
    """Thorax crops of both views of the fixed patients, and their lesion masks."""
    crops, truth = [], []
    for index in PATIENTS:
        patient = generate_patient(SEED, index)
        for view in (patient.anterior, patient.posterior):
            crop = crop_thorax(view.counts, head_first=True)
            crops.append(crop.apply(view.counts))
            truth.append(np.asarray(crop.apply(view.lesion_mask)) > 0)
    return np.stack(crops), np.stack(truth)


def predict(crops: npt.NDArray[np.uint16]) -> npt.NDArray[np.bool_]:
    model = Segmenter.load(None, device="cpu")
    return np.asarray(model.predict_masks(crops), dtype=bool)


def test_shipped_checkpoint_is_in_the_package_and_loads_by_default() -> None:
    assert SHIPPED_CHECKPOINT.is_file()
    assert SHIPPED_CHECKPOINT.stat().st_size < 10 * 1024 * 1024  # "a few MB"
    model = Segmenter.load(None, device="cpu")
    assert model.model_version.startswith("msanet-lite-")
    # the listener opens jobs for the same version, read without torch
    assert current_model_version(Settings(weights=None)) == model.model_version


def test_masks_on_held_out_scans_match_the_golden_file() -> None:
    crops, _ = crops_and_truth()
    masks = predict(crops)
    golden = np.load(GOLDEN)
    expected = np.unpackbits(golden["masks"], count=masks.size).reshape(masks.shape).astype(bool)
    assert str(golden["model_version"]) == Segmenter.load(None, device="cpu").model_version
    agreement = float((masks == expected).mean())
    assert agreement >= PIXEL_AGREEMENT, agreement
    assert abs(int(masks.sum()) - int(expected.sum())) <= 0.01 * max(int(expected.sum()), 100)


def test_masks_on_held_out_scans_find_the_lesions() -> None:
    crops, truth = crops_and_truth()
    masks = predict(crops)
    intersection = float(np.logical_and(masks, truth).sum())
    dsc = 2 * intersection / float(masks.sum() + truth.sum())
    assert dsc >= MIN_POOLED_DSC, dsc


def regenerate() -> None:
    """Write the golden file from the checkpoint now shipped."""
    crops, truth = crops_and_truth()
    masks = predict(crops)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        GOLDEN,
        masks=np.packbits(masks.reshape(-1)),
        model_version=np.array(Segmenter.load(None, device="cpu").model_version),
    )
    dsc = 2 * float(np.logical_and(masks, truth).sum()) / float(masks.sum() + truth.sum())
    print(json.dumps({"golden": str(GOLDEN), "views": len(masks), "pooled_dsc": round(dsc, 4)}))


if __name__ == "__main__":
    regenerate()
