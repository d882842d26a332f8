"""The lesion table: components, areas in mm², centroids, boxes, maxima — by hand."""

from __future__ import annotations

import numpy as np
import pytest

from msanet_core.lesions import find_lesions


def test_an_empty_map_has_no_lesions() -> None:
    assert find_lesions(np.zeros((256, 256), np.float32)) == []


def test_two_components_by_hand() -> None:
    probabilities = np.zeros((20, 20), np.float32)
    probabilities[2:4, 2:5] = 0.6  # 6 px
    probabilities[3, 3] = 0.9
    probabilities[10:13, 10:13] = 0.7  # 9 px, larger → label 1
    lesions = find_lesions(probabilities, pixel_spacing_mm=(2.0, 3.0), row_offset=100)
    assert [lesion.label for lesion in lesions] == [1, 2]
    big, small = lesions
    assert big.area_px == 9
    assert big.area_mm2 == pytest.approx(54.0)
    assert (big.centroid_row, big.centroid_column) == (111.0, 11.0)
    assert (big.bbox_row_min, big.bbox_column_min, big.bbox_row_max, big.bbox_column_max) == (
        110,
        10,
        112,
        12,
    )
    assert small.area_px == 6
    assert small.max_probability == pytest.approx(0.9)
    assert small.centroid_row == pytest.approx(102.5)


def test_diagonal_neighbours_are_one_lesion() -> None:
    probabilities = np.zeros((5, 5), np.float32)
    probabilities[1, 1] = probabilities[2, 2] = 1.0
    assert len(find_lesions(probabilities)) == 1


def test_threshold_is_inclusive() -> None:
    probabilities = np.full((3, 3), 0.5, np.float32)
    assert find_lesions(probabilities)[0].area_px == 9
    assert find_lesions(probabilities, threshold=0.51) == []


def test_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="rows, columns"):
        find_lesions(np.zeros((1, 4, 4), np.float32))
