"""Generator statistics within the stated tolerances of the MODEL.md §5 calibration figures."""

from __future__ import annotations

import pytest

from msanet_core.calibration import REFERENCES, StatRow, patient_stats, summarise
from msanet_core.synth import generate_patient


@pytest.fixture(scope="module")
def table() -> dict[str, StatRow]:
    rows = summarise(patient_stats(generate_patient(77, i)) for i in range(60))
    return {row.ref.name: row for row in rows}


@pytest.mark.parametrize("name", [ref.name for ref in REFERENCES])
def test_statistic_median_is_within_its_tolerance(table: dict[str, StatRow], name: str) -> None:
    row = table[name]
    assert row.ref.low <= row.median <= row.ref.high, (name, row.median, row.ref)


def test_counts_span_low_to_high_levels(table: dict[str, StatRow]) -> None:
    row = table["counts_per_view"]
    assert row.p5 < 1.3e6  # MODEL.md §5.6: range 0.8–4 M
    assert row.p95 > 2.5e6


def test_bone_to_soft_tissue_is_anchored_on_the_real_scan() -> None:
    ref = next(r for r in REFERENCES if r.name == "bone_to_soft")
    assert ref.reference == pytest.approx(82 / 24, rel=0.01)  # MODEL.md §5: spine 82 vs 24
