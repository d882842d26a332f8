"""Thorax crop (MODEL.md §2.7) against the phantom's true shoulder-based window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msanet_core import crop_thorax
from msanet_core.crop import NoBodyFoundError
from msanet_core.synth import SyntheticPatient, generate_patient

N_PATIENTS = 200


@pytest.fixture(scope="module")
def patients() -> list[SyntheticPatient]:
    return [generate_patient(2026, i) for i in range(N_PATIENTS)]


def test_crop_top_is_within_10_rows_of_truth_for_98_percent_of_views(
    patients: list[SyntheticPatient],
) -> None:
    errors = np.array([crop_thorax(v.counts).top - v.thorax_top for p in patients for v in p.views])
    assert errors.size == 2 * N_PATIENTS
    assert np.mean(np.abs(errors) <= 10) >= 0.98, np.percentile(errors, [0, 1, 50, 99, 100])


def test_every_thorax_lesion_lies_inside_the_crop(patients: list[SyntheticPatient]) -> None:
    checked = 0
    for p in patients:
        for v in p.views:
            crop = crop_thorax(v.counts)
            for lesion in v.thorax_lesions:
                rows = np.flatnonzero((v.instances == lesion + 1).any(axis=1))
                assert rows.min() >= crop.top, (p.patient_id, v.view)
                assert rows.max() < crop.bottom, (p.patient_id, v.view)
                checked += 1
    assert checked > 100


def test_cohort_covers_short_tall_and_low_count_bodies(patients: list[SyntheticPatient]) -> None:
    heights = [p.params["body"]["height_px"] * 0.226 for p in patients]
    assert min(heights) < 153
    assert max(heights) > 187
    assert min(int(v.counts.sum()) for p in patients for v in p.views) < 1.0e6


def test_feet_first_crop_is_the_same_window_flipped(patients: list[SyntheticPatient]) -> None:
    for p in patients[:10]:
        image = p.posterior.counts
        head = crop_thorax(image)
        feet = crop_thorax(image[::-1], head_first=False)
        assert feet.top == 1024 - head.top - 256
        np.testing.assert_array_equal(feet.apply(image[::-1]), head.apply(image))
        pasted = feet.paste(feet.apply(image[::-1]), image.shape)
        np.testing.assert_array_equal(
            pasted[feet.top : feet.bottom], image[::-1][feet.top : feet.bottom]
        )


def test_hot_bladder_and_injection_site_do_not_move_the_window(
    patients: list[SyntheticPatient],
) -> None:
    p = patients[3]
    image = p.anterior.counts.astype(np.int64)
    rows = np.flatnonzero(p.anterior.regions["bladder"].any(axis=1))
    cols = np.flatnonzero(p.anterior.regions["bladder"].any(axis=0))
    image[rows.min() : rows.max(), cols.min() : cols.max()] *= 20  # very hot bladder
    image[p.anterior.thorax_top + 120 : p.anterior.thorax_top + 124, 10:14] = 60000  # injection
    crop = crop_thorax(np.minimum(image, 65535).astype(np.uint16))
    assert abs(crop.top - p.anterior.thorax_top) <= 10


def test_very_low_counts_still_find_the_shoulders(patients: list[SyntheticPatient]) -> None:
    rng = np.random.default_rng(0)
    for p in patients[:10]:
        thin = rng.binomial(p.anterior.counts, 0.2).astype(np.uint16)  # ≈ 0.4 M counts
        assert abs(crop_thorax(thin).top - p.anterior.thorax_top) <= 10


def test_empty_or_shapeless_images_raise_a_clear_error() -> None:
    with pytest.raises(NoBodyFoundError, match="no body outline"):
        crop_thorax(np.zeros((1024, 256), dtype=np.uint16))
    noise = np.random.default_rng(1).poisson(5.0, (1024, 256)).astype(np.uint16)
    with pytest.raises(NoBodyFoundError, match="no shoulders"):
        crop_thorax(noise)
    with pytest.raises(ValueError, match="at least 256 rows"):
        crop_thorax(np.zeros((100, 256)))


@settings(max_examples=25, deadline=None)
@given(
    top=st.integers(10, 200),
    neck=st.integers(18, 30),
    shoulder=st.integers(70, 120),
    head_rows=st.integers(80, 110),
    neck_rows=st.integers(15, 40),
)
def test_outline_phantom_shoulder_is_found_near_the_steepest_widening(
    top: int, neck: int, shoulder: int, head_rows: int, neck_rows: int
) -> None:
    rows = np.arange(1024, dtype=np.float64)
    head_c, head_r = top + head_rows / 2, head_rows / 2
    head = 32 * np.sqrt(np.clip(1 - ((rows - head_c) / head_r) ** 2, 0, 1))
    s = top + head_rows + neck_rows  # true shoulder line (centre of the slope)
    rise = np.clip((rows - (s - 10)) / 20, 0, 1)
    trunk = np.where(
        rows >= top + head_rows - 5, neck + (shoulder - neck) * rise * rise * (3 - 2 * rise), 0
    )
    trunk = np.where(rows < top + 700, trunk, 0)
    hw = np.maximum(head, trunk)[:, None]
    image = (np.abs(np.arange(256)[None, :] - 128) < hw) * 30.0
    found = crop_thorax(image.astype(np.uint16)).shoulder_row
    assert abs(found - s) <= 4
