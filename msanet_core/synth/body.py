"""Body build, pose and soft tissue of a synthetic patient (MODEL.md §5.1, §5.3, §5.4).

Geometry is expressed as fractions of the body height measured from the vertex and converted to
image rows with :meth:`Body.row`; columns follow the body midline, which is shifted and tilted
(a small rotation done as a shear, exact to < 0.2 % at ±3°) by :meth:`Body.col`. All geometry is
in the *anterior* view frame (image left = patient right); the posterior view is mirrored later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from msanet_core.synth.raster import FloatArray, Polyline

ROWS, COLS = 1024, 256
PIXEL_MM = 2.26  # MODEL.md §1: E.CAM whole-body matrix, 2.26 mm pixels


@dataclass(frozen=True)
class Body:
    """Sampled build and pose; all lengths in pixels unless the name says ``_cm``."""

    height_px: float
    top_row: float
    center_col: float
    tilt: float  # tan of the body-axis angle to the image column axis
    head_rx: float
    neck_hw: float
    shoulder_hw: float
    chest_hw: float
    waist_hw: float
    hip_hw: float
    shoulder_frac: float  # true shoulder line, fraction of height from the vertex
    shoulder_slope_rows: float
    arm_radius: float
    arm_abduction: float  # radians, each arm away from the trunk
    thickness_cm: float  # antero-posterior chest thickness T (MODEL.md §5.4)

    def row(self, frac: float) -> float:
        """Image row of a height fraction measured from the vertex."""
        return self.top_row + frac * self.height_px

    def col(self, row: float, offset: float = 0.0) -> float:
        """Image column of a point ``offset`` px right of the midline (anterior view) at ``row``."""
        return self.center_col + (row - 512.0) * self.tilt + offset

    @property
    def shoulder_row(self) -> float:
        """Row of the steepest point of the neck-to-shoulder outline (ground truth for the crop)."""
        return self.row(self.shoulder_frac)

    def as_dict(self) -> dict[str, Any]:
        return {k: float(v) for k, v in asdict(self).items()}


def sample_body(rng: np.random.Generator) -> Body:
    """Draw a build and pose: height 150–190 cm, shoulders 36–50 cm, BMI-like thickness."""
    height_cm = rng.uniform(150.0, 190.0)
    height_px = height_cm * 10.0 / PIXEL_MM  # 660–840 rows
    top = rng.uniform(20.0, min(120.0, ROWS - 8.0 - height_px))
    build = rng.uniform(0.0, 1.0)  # 0 = slim, 1 = obese: widens trunk, thickens body
    shoulder_hw = rng.uniform(80.0, 110.0) * (0.95 + 0.1 * build)
    chest_hw = shoulder_hw * rng.uniform(0.72, 0.80)
    return Body(
        height_px=height_px,
        top_row=top,
        center_col=128.0 + rng.uniform(-10.0, 10.0),
        tilt=math.tan(math.radians(rng.uniform(-3.0, 3.0))),
        head_rx=rng.uniform(29.0, 35.0),
        neck_hw=rng.uniform(20.0, 26.0) * (0.9 + 0.3 * build),
        shoulder_hw=min(shoulder_hw, 118.0),
        chest_hw=chest_hw,
        waist_hw=chest_hw * rng.uniform(0.85, 1.0 + 0.15 * build),
        hip_hw=chest_hw * rng.uniform(0.95, 1.1 + 0.1 * build),
        shoulder_frac=rng.uniform(0.165, 0.185),
        shoulder_slope_rows=rng.uniform(16.0, 30.0),
        arm_radius=rng.uniform(8.0, 11.0) * (0.9 + 0.3 * build),
        arm_abduction=math.radians(rng.uniform(0.0, 6.0)),
        thickness_cm=18.0 + 12.0 * build + rng.uniform(-1.5, 1.5),
    )


def _smoothstep(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def trunk_half_width(body: Body, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Half-width (px) of head-excluded neck + trunk outline per row; 0 outside the trunk."""
    f = (rows - body.top_row) / body.height_px
    sh, slope = body.shoulder_row, body.shoulder_slope_rows
    rise = _smoothstep((rows - (sh - slope / 2)) / slope)  # neck → shoulders (deltoids)
    hw = body.neck_hw + (body.shoulder_hw - body.neck_hw) * rise
    armpit = body.row(body.shoulder_frac + 0.07)
    below = np.interp(
        f,
        [body.shoulder_frac + 0.07, 0.30, 0.39, 0.50, 0.535],
        [body.chest_hw, body.chest_hw, body.waist_hw, body.hip_hw, body.hip_hw * 0.9],
    )
    blend = _smoothstep((rows - sh) / max(armpit - sh, 1.0))
    hw = hw * (1 - blend) + below * blend
    return np.where((f >= 0.115) & (f <= 0.535), hw, 0.0)


def arm_lines(body: Body, side: int) -> tuple[Polyline, Polyline]:
    """Soft-tissue centre line of one arm (``side`` −1 = image left) and its skeleton line."""
    sh = body.shoulder_row
    x0 = body.shoulder_hw - body.arm_radius
    spread = math.tan(body.arm_abduction)
    pts = []
    for frac in (body.shoulder_frac + 0.01, 0.37, 0.52, 0.60):
        r = body.row(frac)
        pts.append((r, body.col(r, side * (x0 + (r - sh) * spread))))
    soft = Polyline(tuple(pts), body.arm_radius)
    return soft, Polyline(tuple(pts[:3]), 4.0)


def leg_lines(body: Body, side: int) -> list[Polyline]:
    """Soft-tissue segments of one leg, thigh to foot, with tapering radii."""
    hip, knee, ankle = body.row(0.50), body.row(0.735), body.row(0.955)
    xs = (body.hip_hw * 0.5, body.hip_hw * 0.32, body.hip_hw * 0.28)
    radii = (body.hip_hw * 0.48, body.hip_hw * 0.3, body.hip_hw * 0.16)
    ys = (hip, knee, ankle)
    segs = []
    for i in range(2):
        a = (ys[i], body.col(ys[i], side * xs[i]))
        b = (ys[i + 1], body.col(ys[i + 1], side * xs[i + 1]))
        for t0 in np.linspace(0.0, 1.0, 4, endpoint=False):
            t1 = t0 + 0.25
            p0 = (a[0] + t0 * (b[0] - a[0]), a[1] + t0 * (b[1] - a[1]))
            p1 = (a[0] + t1 * (b[0] - a[0]), a[1] + t1 * (b[1] - a[1]))
            segs.append(Polyline((p0, p1), radii[i] + (t0 + 0.125) * (radii[i + 1] - radii[i])))
    foot_row = body.row(0.985)
    foot = (foot_row, body.col(foot_row, side * xs[2]))
    segs.append(Polyline(((ankle, body.col(ankle, side * xs[2])), foot), radii[2] * 0.8))
    return segs


def _tube_thickness(line: Polyline, depth_cm: float, out: FloatArray) -> None:
    """Max-combine the chord thickness (cm) of a round tube around ``line`` into ``out``."""
    ys = np.arange(ROWS, dtype=np.float32)[:, None]
    y0, y1, x0, x1 = line.bbox()
    r0, r1 = max(int(y0) - 1, 0), min(int(y1) + 2, ROWS)
    c0, c1 = max(int(x0) - 1, 0), min(int(x1) + 2, COLS)
    if r0 >= r1 or c0 >= c1:
        return
    yy, xx = np.broadcast_arrays(ys[r0:r1], np.arange(c0, c1, dtype=np.float32)[None, :])
    d = line.distance(yy, xx) / line.radius
    chord = depth_cm * np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
    np.maximum(out[r0:r1, c0:c1], chord, out=out[r0:r1, c0:c1])


def thickness_map(body: Body) -> FloatArray:
    """Antero-posterior tissue thickness (cm) per pixel of the anterior-frame image; 0 = air."""
    rows = np.arange(ROWS, dtype=np.float64)
    cols = np.arange(COLS, dtype=np.float64)[None, :]
    hw = trunk_half_width(body, rows)[:, None]
    centre = body.center_col + (rows - 512.0)[:, None] * body.tilt
    f = (rows - body.top_row) / body.height_px
    sf = body.shoulder_frac
    depth = np.interp(f, [0.115, sf, sf + 0.04], [11.0, 12.0, body.thickness_cm])[:, None]
    u = np.where(hw > 0, (cols - centre) / np.maximum(hw, 1e-3), 2.0)
    out = (depth * np.sqrt(np.clip(1.0 - u * u, 0.0, 1.0))).astype(np.float32)
    head_row = body.row(0.065)
    head_ry = 0.062 * body.height_px
    uy = (rows[:, None] - head_row) / head_ry
    ux = (cols - body.col(head_row)) / body.head_rx
    head = 17.0 * np.sqrt(np.clip(1.0 - uy * uy - ux * ux, 0.0, 1.0))
    np.maximum(out, head.astype(np.float32), out=out)
    for side in (-1, 1):
        _tube_thickness(arm_lines(body, side)[0], 9.0 + 0.2 * body.arm_radius, out)
        for seg in leg_lines(body, side):
            _tube_thickness(seg, min(2.2 * seg.radius * PIXEL_MM / 10.0, 18.0), out)
    return out


def thickness_at(body: Body, frac: float) -> float:
    """Body thickness T (cm) used for attenuation of bone elements at a height fraction."""
    if frac < 0.115:
        return 17.0
    if frac < 0.17:
        return 12.0
    if frac < 0.53:
        return body.thickness_cm
    return max(body.thickness_cm * (0.7 - 0.6 * (frac - 0.53)), 8.0)
