"""LabelMe annotations → label masks (the paper's annotation tool, MODEL.md §1).

Pure parsing and rasterising: the image files themselves are read by the pipeline. A LabelMe
JSON has ``shapes`` (``label``, ``points`` as ``[x, y]`` = ``[column, row]`` pixel coordinates,
``shape_type``), ``imagePath``, ``imageHeight``, ``imageWidth`` and optional ``flags``.

Rasterising follows LabelMe's own ``shape_to_mask`` (PIL ``ImageDraw.polygon`` with fill and
outline): pixel ``(row, col)`` is inside when its centre ``(x=col, y=row)`` is inside the polygon
(even-odd rule) or within half a pixel of its outline. Masks are ``(rows, cols)`` uint8, 0/1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_BENIGN_LABELS = ("benign", "normal", "ignore")
_VIEW_WORDS = {
    "anterior": "anterior",
    "ant": "anterior",
    "posterior": "posterior",
    "post": "posterior",
}


@dataclass(frozen=True)
class Shape:
    """One annotated shape; ``points`` are ``(x, y)`` = ``(column, row)`` in pixels."""

    label: str
    points: tuple[tuple[float, float], ...]
    shape_type: str = "polygon"


@dataclass(frozen=True)
class Annotation:
    """A parsed LabelMe file."""

    image_path: str
    height: int | None
    width: int | None
    shapes: tuple[Shape, ...]
    flags: Mapping[str, bool] = field(default_factory=dict)


def parse_labelme(data: Mapping[str, Any], source: str = "annotation") -> Annotation:
    """Validate and parse a LabelMe JSON object; ``ValueError`` names the bad field and file."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: not a JSON object")
    path = data.get("imagePath")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{source}: imagePath is missing")
    shapes = []
    for i, raw in enumerate(data.get("shapes") or []):
        where = f"{source}: shapes[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} is not an object")
        label, kind = raw.get("label"), raw.get("shape_type") or "polygon"
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}: label is missing")
        try:
            points = tuple((float(p[0]), float(p[1])) for p in raw.get("points") or [])
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{where}: points must be [x, y] pairs") from exc
        if not all(math.isfinite(v) for p in points for v in p):
            raise ValueError(f"{where}: points must be finite numbers")
        shapes.append(Shape(label.strip(), points, str(kind)))
    height, width = data.get("imageHeight"), data.get("imageWidth")
    flags = {str(k): bool(v) for k, v in (data.get("flags") or {}).items()}
    return Annotation(
        image_path=path,
        height=int(height) if height is not None else None,
        width=int(width) if width is not None else None,
        shapes=tuple(shapes),
        flags=flags,
    )


def _edge_distance(
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    a: tuple[float, float],
    b: tuple[float, float],
) -> npt.NDArray[np.float64]:
    vx, vy = b[0] - a[0], b[1] - a[1]
    length2 = vx * vx + vy * vy
    t = (
        np.zeros_like(xs)
        if length2 == 0
        else np.clip(((xs - a[0]) * vx + (ys - a[1]) * vy) / length2, 0, 1)
    )
    dist: npt.NDArray[np.float64] = np.hypot(xs - (a[0] + t * vx), ys - (a[1] + t * vy))
    return dist


def fill_polygon(
    points: Iterable[tuple[float, float]], shape: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """Rasterise a closed polygon of ``(x, y)`` points into a ``shape`` = ``(rows, cols)`` mask.

    Parts of the polygon outside the image are clipped. Fewer than one point gives an empty mask.
    """
    pts = list(points)
    out = np.zeros(shape, dtype=np.uint8)
    if not pts:
        return out
    px = np.array([p[0] for p in pts])
    py = np.array([p[1] for p in pts])
    r0, r1 = max(int(np.floor(py.min())) - 1, 0), min(int(np.ceil(py.max())) + 2, shape[0])
    c0, c1 = max(int(np.floor(px.min())) - 1, 0), min(int(np.ceil(px.max())) + 2, shape[1])
    if r0 >= r1 or c0 >= c1:
        return out
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    inside = np.zeros(xs.shape, dtype=bool)
    near = np.zeros(xs.shape, dtype=bool)
    for i in range(len(pts)):
        a, b = pts[i], pts[(i + 1) % len(pts)]
        crosses = (a[1] > ys) != (b[1] > ys)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x_at = a[0] + (ys - a[1]) * (b[0] - a[0]) / (b[1] - a[1])
        inside ^= crosses & (xs < x_at)
        near |= _edge_distance(xs, ys, a, b) <= 0.5  # PIL draws the outline too
    out[r0:r1, c0:c1] = inside | near
    return out


def shape_mask(item: Shape, shape: tuple[int, int]) -> npt.NDArray[np.uint8] | None:
    """Mask of one LabelMe shape, or ``None`` for shape types that carry no area."""
    pts = item.points
    if item.shape_type == "polygon" and len(pts) >= 3:
        return fill_polygon(pts, shape)
    if item.shape_type == "rectangle" and len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        return fill_polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], shape)
    if item.shape_type == "circle" and len(pts) == 2:
        (cx, cy), (ex, ey) = pts
        r = math.hypot(ex - cx, ey - cy)
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
        disc: npt.NDArray[np.uint8] = ((xs - cx) ** 2 + (ys - cy) ** 2 <= (r + 0.5) ** 2).astype(
            np.uint8
        )
        return disc
    return None


@dataclass(frozen=True)
class LabelMasks:
    """Lesion and benign masks of one annotated image plus what was skipped."""

    lesion: npt.NDArray[np.uint8]
    benign: npt.NDArray[np.uint8]
    skipped: tuple[str, ...]


def rasterise(
    annotation: Annotation,
    shape: tuple[int, int],
    *,
    lesion_labels: Iterable[str] | None = None,
    benign_labels: Iterable[str] = DEFAULT_BENIGN_LABELS,
) -> LabelMasks:
    """Union of the lesion shapes and of the benign shapes, each a ``shape`` uint8 mask.

    Labels match case-insensitively. With ``lesion_labels`` None every label that is not a
    benign label counts as a lesion. Shapes of other types (lines, points) are listed in
    ``skipped``.
    """
    benign_set = {b.lower() for b in benign_labels}
    lesion_set = None if lesion_labels is None else {x.lower() for x in lesion_labels}
    lesion = np.zeros(shape, dtype=np.uint8)
    benign = np.zeros(shape, dtype=np.uint8)
    skipped = []
    for item in annotation.shapes:
        label = item.label.lower()
        is_benign = label in benign_set
        if not is_benign and lesion_set is not None and label not in lesion_set:
            skipped.append(f"label {item.label!r} not selected")
            continue
        mask = shape_mask(item, shape)
        if mask is None:
            skipped.append(f"{item.shape_type} {item.label!r} with {len(item.points)} points")
            continue
        np.maximum(benign if is_benign else lesion, mask, out=benign if is_benign else lesion)
    return LabelMasks(lesion, benign, tuple(skipped))


def view_hint(annotation: Annotation, filename: str) -> str | None:
    """``anterior``/``posterior`` from a true flag, else from a word in ``filename``, else None."""
    for name, value in annotation.flags.items():
        if value and name.lower() in _VIEW_WORDS:
            return _VIEW_WORDS[name.lower()]
    words = re.split(r"[^a-z]+", filename.lower())
    found = {_VIEW_WORDS[w] for w in words if w in _VIEW_WORDS}
    return found.pop() if len(found) == 1 else None
