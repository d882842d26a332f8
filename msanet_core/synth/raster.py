"""Anti-aliased 2-D primitives for the synthetic phantom (MODEL.md §5.2).

Coordinates are ``(row, col)`` in pixels of the ``(1024, 256)`` whole-body image, row 0 at the
top. Every shape returns a *coverage* in ``[0, 1]`` with a one-pixel soft edge, evaluated only
inside its bounding box, so drawing a shape costs in proportion to its size rather than to the
image (the generator must make several patients per second, MODEL.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Ellipse:
    """A rotated super-ellipse: ``power`` 2 is an ellipse, 4 a rounded block (vertebral body).

    ``angle`` is in radians, counter-clockwise from the column axis; ``ry``/``rx`` are the
    semi-axes in pixels along the rotated row/column axes.
    """

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float = 0.0
    power: float = 2.0

    def bbox(self) -> tuple[float, float, float, float]:
        r = max(self.ry, self.rx) + 1.0
        return self.cy - r, self.cy + r, self.cx - r, self.cx + r

    def coverage(self, ys: FloatArray, xs: FloatArray) -> FloatArray:
        dy, dx = ys - self.cy, xs - self.cx
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = (dx * c - dy * s) / max(self.rx, 0.3)
        v = (dx * s + dy * c) / max(self.ry, 0.3)
        p = self.power
        r = (np.abs(u) ** p + np.abs(v) ** p) ** (1.0 / p)
        edge = max(min(self.ry, self.rx), 0.5)  # one-pixel soft edge in normalised units
        return np.clip(0.5 + (1.0 - r) * edge, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Polyline:
    """A thick polyline (capsule chain) through ``points`` ``((row, col), ...)``, ``radius`` px."""

    points: tuple[tuple[float, float], ...]
    radius: float

    def bbox(self) -> tuple[float, float, float, float]:
        ys = [p[0] for p in self.points]
        xs = [p[1] for p in self.points]
        r = self.radius + 1.0
        return min(ys) - r, max(ys) + r, min(xs) - r, max(xs) + r

    def coverage(self, ys: FloatArray, xs: FloatArray) -> FloatArray:
        cov: FloatArray = np.clip(self.radius + 0.5 - self.distance(ys, xs), 0.0, 1.0)
        return cov.astype(np.float32)

    def distance(self, ys: FloatArray, xs: FloatArray) -> FloatArray:
        """Distance in pixels from each sample point to the centre line."""
        dist = np.full(ys.shape, np.inf, dtype=np.float32)
        for (y0, x0), (y1, x1) in zip(self.points[:-1], self.points[1:], strict=True):
            vy, vx = y1 - y0, x1 - x0
            length2 = vy * vy + vx * vx
            if length2 == 0.0:
                t = np.zeros_like(ys)
            else:
                t = np.clip(((ys - y0) * vy + (xs - x0) * vx) / length2, 0.0, 1.0)
            d = np.hypot(ys - (y0 + t * vy), xs - (x0 + t * vx))
            np.minimum(dist, d, out=dist)
        return dist

    def point_at(self, fraction: float) -> tuple[float, float, float]:
        """Point at ``fraction`` of the arc length and the local direction angle (radians)."""
        segs = list(zip(self.points[:-1], self.points[1:], strict=True))
        lengths = [math.hypot(b[0] - a[0], b[1] - a[1]) for a, b in segs]
        target = min(max(fraction, 0.0), 1.0) * sum(lengths)
        for (a, b), length in zip(segs, lengths, strict=True):
            if target <= length or (a, b) == segs[-1]:
                t = 0.0 if length == 0 else min(target / length, 1.0)
                angle = -math.atan2(b[0] - a[0], b[1] - a[1])
                return a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), angle
            target -= length
        raise ValueError("polyline has no segments")  # pragma: no cover - points >= 2


Shape = Ellipse | Polyline


def window(
    shape: Shape, image_shape: tuple[int, int], pad: float = 0.0
) -> tuple[slice, slice] | None:
    """Integer row/column slices of the shape's bounding box (+``pad``) clipped to the image."""
    y0, y1, x0, x1 = shape.bbox()
    r0, r1 = max(math.floor(y0 - pad), 0), min(math.ceil(y1 + pad) + 1, image_shape[0])
    c0, c1 = max(math.floor(x0 - pad), 0), min(math.ceil(x1 + pad) + 1, image_shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    return slice(r0, r1), slice(c0, c1)


def patch_coverage(shape: Shape, rows: slice, cols: slice) -> FloatArray:
    """Coverage of ``shape`` sampled at the pixel centres of ``image[rows, cols]``."""
    ys = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    xs = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :]
    ys_b, xs_b = np.broadcast_arrays(ys, xs)
    return shape.coverage(ys_b, xs_b)
