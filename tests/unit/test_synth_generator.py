"""Synthetic whole-body generator: reproducibility, formats, labels, variety (MODEL.md §5)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msanet_core.synth import SyntheticPatient, generate_patient
from msanet_core.synth.skeleton import THORAX_SITES
from msanet_core.synth.split import assign_splits, parse_fractions


@pytest.fixture(scope="module")
def cohort() -> list[SyntheticPatient]:
    return [generate_patient(21, i) for i in range(60)]


def test_same_seed_and_index_give_identical_patients() -> None:
    a, b = generate_patient(5, 3), generate_patient(5, 3)
    for va, vb in zip(a.views, b.views, strict=True):
        np.testing.assert_array_equal(va.counts, vb.counts)
        np.testing.assert_array_equal(va.lesion_mask, vb.lesion_mask)
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
    assert not np.array_equal(generate_patient(6, 3).anterior.counts, a.anterior.counts)


def test_views_are_uint16_counts_with_uint8_masks_of_whole_body_shape(
    cohort: list[SyntheticPatient],
) -> None:
    for view in cohort[0].views:
        assert view.counts.shape == (1024, 256)
        assert view.counts.dtype == np.uint16
        assert view.lesion_mask.dtype == np.uint8
        assert view.benign_mask.dtype == np.uint8
        assert (
            view.lesion_mask.shape == view.benign_mask.shape == view.instances.shape == (1024, 256)
        )
    assert [v.view for v in cohort[0].views] == ["anterior", "posterior"]


def test_posterior_is_mirrored_left_right_relative_to_anterior(
    cohort: list[SyntheticPatient],
) -> None:
    p = cohort[0]
    np.testing.assert_array_equal(p.posterior.regions["body"], p.anterior.regions["body"][:, ::-1])
    lateral = p.params["body"]["center_col"] - 128.0
    ant_cols = np.flatnonzero(p.anterior.regions["body"].any(axis=0))
    post_cols = np.flatnonzero(p.posterior.regions["body"].any(axis=0))
    assert ant_cols.mean() - 127.5 == pytest.approx(-(post_cols.mean() - 127.5), abs=1e-6)
    assert abs(lateral) <= 10.0


def test_params_record_every_sampled_parameter_as_json(cohort: list[SyntheticPatient]) -> None:
    params = json.loads(json.dumps(cohort[1].params))
    for key in (
        "body",
        "bone_gain",
        "mu_per_cm",
        "psf_sigma_px",
        "total_counts_target",
        "organs",
        "metastases",
        "benign",
        "shoulder_row",
        "thorax_top",
        "element_activity",
    ):
        assert key in params
    assert {"height_px", "top_row", "shoulder_hw", "thickness_cm", "tilt"} <= set(params["body"])


def test_lesion_masks_match_the_labelled_metastases(cohort: list[SyntheticPatient]) -> None:
    for p in cohort:
        for v, view in enumerate(p.views):
            ids = set(np.unique(view.instances)) - {0}
            labelled = {m["id"] for m in p.params["metastases"] if m["visible"][v]}
            assert ids <= labelled
            np.testing.assert_array_equal(view.lesion_mask, (view.instances > 0).astype(np.uint8))
            assert not (view.lesion_mask & ~view.regions["body"]).any()


def test_cohort_has_negatives_clusters_benign_mimics_and_varied_builds(
    cohort: list[SyntheticPatient],
) -> None:
    negative = sum(p.params["negative"] for p in cohort)
    assert 0.12 * len(cohort) <= negative <= 0.5 * len(cohort)  # MODEL.md §5.7: ≈30 %
    big = [generate_patient(21, i) for i in range(60, 160)]
    assert any(m["cluster"] >= 0 for p in cohort + big for m in p.params["metastases"])
    kinds = {b["kind"] for p in cohort for b in p.params["benign"]}
    assert {"degenerative_joint", "rib_fracture_row", "costochondral"} <= kinds
    heights = [p.params["body"]["height_px"] * 0.226 for p in cohort]
    assert min(heights) < 158
    assert max(heights) > 182
    counts = [int(p.anterior.counts.sum()) for p in cohort]
    assert min(counts) < 1.3e6
    assert max(counts) > 2.6e6


def test_metastases_are_mostly_axial_with_contrast_in_range(cohort: list[SyntheticPatient]) -> None:
    mets = [m for p in cohort for m in p.params["metastases"]]
    axial = [m for m in mets if m["site"] in THORAX_SITES | {"lumbar_spine", "pelvis"}]
    assert len(axial) >= 0.7 * len(mets)
    assert all(1.5 <= m["contrast"] <= 6.0 for m in mets)


def test_split_keeps_patients_whole_and_matches_fractions() -> None:
    ids = [f"P{i:03d}" for i in range(100)]
    split = assign_splits(ids + ids, (0.7, 0.15, 0.15), seed=1)
    assert sorted(split) == ids
    assert [list(split.values()).count(s) for s in ("train", "val", "test")] == [70, 15, 15]
    assert assign_splits(list(reversed(ids)), (0.7, 0.15, 0.15), seed=1) == split
    assert parse_fractions("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    with pytest.raises(ValueError, match="summing to 1"):
        parse_fractions("0.8,0.3,0.1")
