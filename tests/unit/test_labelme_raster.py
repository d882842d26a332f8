"""Pure LabelMe parsing and polygon rasterising (msanet_core.labelme)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from msanet_core.labelme import Annotation, Shape, fill_polygon, parse_labelme, rasterise, view_hint

SIZE = (64, 48)


@given(x0=st.integers(0, 40), y0=st.integers(0, 50), w=st.integers(0, 7), h=st.integers(0, 13))
def test_integer_rectangle_fills_its_pixels_inclusive(x0: int, y0: int, w: int, h: int) -> None:
    mask = fill_polygon([(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)], SIZE)
    expected = np.zeros(SIZE, dtype=np.uint8)
    expected[y0 : y0 + h + 1, x0 : x0 + w + 1] = 1
    np.testing.assert_array_equal(mask, expected)


@given(
    pts=st.lists(st.tuples(st.floats(5, 30), st.floats(5, 30)), min_size=3, max_size=8),
    dx=st.integers(-5, 10),
    dy=st.integers(-5, 20),
)
def test_integer_translation_moves_the_mask(
    pts: list[tuple[float, float]], dx: int, dy: int
) -> None:
    base = fill_polygon(pts, SIZE)
    moved = fill_polygon([(x + dx, y + dy) for x, y in pts], SIZE)
    np.testing.assert_array_equal(np.roll(base, (dy, dx), axis=(0, 1)), moved)


@given(pts=st.lists(st.tuples(st.floats(-100, 200), st.floats(-100, 200)), min_size=3, max_size=8))
def test_polygons_partly_or_wholly_outside_are_clipped(pts: list[tuple[float, float]]) -> None:
    mask = fill_polygon(pts, SIZE)
    assert mask.shape == SIZE
    assert set(np.unique(mask)) <= {0, 1}


def test_triangle_area_is_close_to_the_polygon_area() -> None:
    mask = fill_polygon([(2, 2), (42, 2), (2, 52)], SIZE)
    assert abs(int(mask.sum()) - 0.5 * 40 * 50) < 0.12 * 1000


def test_parse_names_the_bad_field() -> None:
    with pytest.raises(ValueError, match="imagePath is missing"):
        parse_labelme({"shapes": []}, "a.json")
    with pytest.raises(ValueError, match=r"shapes\[0\]: points"):
        parse_labelme({"imagePath": "x.png", "shapes": [{"label": "l", "points": [[1]]}]}, "a.json")
    with pytest.raises(ValueError, match=r"shapes\[0\]: label"):
        parse_labelme({"imagePath": "x.png", "shapes": [{"points": [[1, 2]]}]}, "a.json")


def test_benign_and_unknown_shape_types_are_separated() -> None:
    note = Annotation(
        "x.png",
        64,
        48,
        (
            Shape("met", ((1, 1), (5, 1), (5, 5))),
            Shape("benign", ((20, 20), (24, 20), (24, 24), (20, 24))),
            Shape("met", ((30, 30),), "point"),
        ),
    )
    masks = rasterise(note, SIZE)
    assert masks.lesion.sum() > 0
    assert masks.benign.sum() == 25
    assert len(masks.skipped) == 1


def test_view_hint_prefers_flags_then_file_name_words() -> None:
    flagged = Annotation("x.png", None, None, (), {"posterior": True})
    assert view_hint(flagged, "scan_ant") == "posterior"
    plain = Annotation("x.png", None, None, ())
    assert view_hint(plain, "P12_ANT") == "anterior"
    assert view_hint(plain, "P12-posterior-v2") == "posterior"
    assert view_hint(plain, "P12_ant_post") is None
    assert view_hint(plain, "pantograph") is None
