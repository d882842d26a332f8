"""Metastases, benign mimics and non-bone uptake of a synthetic patient (MODEL.md §5.3, §5.7, §5.8).

A :class:`Hotspot` is excess activity added on top of the skeleton. Metastases (label 1) and
benign mimics (label 0, own mask for false-positive analysis) are both hotspots; organs, the
injection site and urine contamination are plain :class:`~msanet_core.synth.skeleton.Element`\\ s
without a mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from msanet_core.synth.body import Body
from msanet_core.synth.raster import Ellipse, Polyline
from msanet_core.synth.skeleton import Element, rib_lines

# MODEL.md §5.7: ≈80 % axial; lung-cancer thorax task: ribs ~35 %, thoracic/lumbar spine ~35 %.
_SITE_P = {
    "rib": 0.33,
    "thoracic_spine": 0.25,
    "lumbar_spine": 0.1,
    "sternum": 0.04,
    "scapula": 0.05,
    "clavicle": 0.03,
    "humerus": 0.04,
    "pelvis": 0.1,
    "skull": 0.03,
    "femur": 0.03,
}
_CLUSTER_SITES = ("rib", "thoracic_spine", "lumbar_spine", "pelvis")


@dataclass(frozen=True)
class Hotspot:
    """Excess activity on a bone: ``kind`` is ``metastasis`` or a benign-mimic type."""

    kind: str
    site: str
    element: str
    shape: Ellipse
    contrast: float  # hotspot : normal bone (MODEL.md §5.7: 1.5–6, skewed to 2–3)
    excess: float  # activity added, (contrast − 1) × the bone's activity
    depth: float
    cluster: int = -1  # id of a merged-lesion cluster, −1 when isolated

    @property
    def is_lesion(self) -> bool:
        return self.kind == "metastasis"

    def as_dict(self) -> dict[str, Any]:
        s = self.shape
        return {
            "kind": self.kind,
            "site": self.site,
            "element": self.element,
            "center_row": s.cy,
            "center_col": s.cx,
            "radius_rows": s.ry,
            "radius_cols": s.rx,
            "angle_rad": s.angle,
            "power": s.power,
            "contrast": self.contrast,
            "excess": self.excess,
            "depth": self.depth,
            "cluster": self.cluster,
        }


def _contrast(rng: np.random.Generator) -> float:
    return float(min(1.5 + rng.gamma(2.0, 0.5), 6.0))


def _lesion_on(el: Element, rng: np.random.Generator, scale: float = 1.0) -> Ellipse:
    """A lesion footprint on element ``el``: elongated along lines, partial/whole on blocks."""
    if isinstance(el.shape, Polyline):
        cy, cx, angle = el.shape.point_at(float(rng.uniform(0.1, 0.9)))
        along = rng.uniform(1.5, 8.0) * scale
        across = min(along, el.shape.radius + rng.uniform(0.5, 2.0))
        return Ellipse(cy, cx, across, along, angle)
    s = el.shape
    if el.site.endswith("spine"):  # MODEL.md §5.7: part or all of a vertebral body
        fy, fx = rng.uniform(0.45, 1.05, size=2)
        oy, ox = rng.uniform(-0.3, 0.3, size=2)
        return Ellipse(s.cy + oy * s.ry, s.cx + ox * s.rx, fy * s.ry, fx * s.rx, s.angle, 3.0)
    r = min(rng.uniform(1.5, 11.0) * scale, 1.2 * min(s.ry, s.rx))
    oy, ox = rng.uniform(-0.5, 0.5, size=2)
    return Ellipse(
        s.cy + oy * s.ry, s.cx + ox * s.rx, r * rng.uniform(0.7, 1.0), r, rng.uniform(0, math.pi)
    )


def sample_metastases(elements: list[Element], rng: np.random.Generator) -> list[Hotspot]:
    """No lesion in ≈30 % of patients, else 1–3 (most), 4–9 or 10–20; clusters in ≈12 % (§5.7)."""
    if rng.random() < 0.3:
        return []
    by_site: dict[str, list[Element]] = {}
    for el in elements:
        if el.activity > 0:
            by_site.setdefault(el.site, []).append(el)
    band = rng.choice(3, p=[0.6, 0.25, 0.15])
    n = int(rng.integers(*((1, 4), (4, 10), (10, 21))[band]))
    sites = list(_SITE_P)
    probs = np.array([_SITE_P[s] for s in sites])
    out = []
    for site in rng.choice(sites, size=n, p=probs / probs.sum()):
        el = by_site[str(site)][int(rng.integers(len(by_site[str(site)])))]
        c = _contrast(rng)
        out.append(
            Hotspot(
                "metastasis",
                el.site,
                el.name,
                _lesion_on(el, rng),
                c,
                (c - 1) * el.activity,
                el.depth,
            )
        )
    if rng.random() < 0.12:  # MODEL.md §5.7: merged clusters, the paper's failure mode
        out += _cluster(by_site, rng)
    return out


def _cluster(by_site: dict[str, list[Element]], rng: np.random.Generator) -> list[Hotspot]:
    site = str(rng.choice(_CLUSTER_SITES))
    el = by_site[site][int(rng.integers(len(by_site[site])))]
    seed = _lesion_on(el, rng, scale=0.8)
    out = []
    cy, cx = seed.cy, seed.cx
    for _ in range(int(rng.integers(2, 7))):
        r = float(rng.uniform(2.0, 6.0))
        shape = Ellipse(cy, cx, r * rng.uniform(0.6, 1.0), r, float(rng.uniform(0, math.pi)))
        c = _contrast(rng)
        out.append(
            Hotspot(
                "metastasis", site, el.name, shape, c, (c - 1) * el.activity, el.depth, cluster=0
            )
        )
        step, theta = rng.uniform(0.8, 1.4) * r, rng.uniform(0, 2 * math.pi)
        cy, cx = cy + step * math.sin(theta), cx + step * math.cos(theta)
    return out


def _spot(
    el: Element, cy: float, cx: float, r: float, *, kind: str, rng: np.random.Generator
) -> Hotspot:
    c = float(rng.uniform(1.5, 3.0))
    activity = (c - 1) * max(el.activity, 0.5)
    return Hotspot(kind, el.site, el.name, Ellipse(cy, cx, r, r), c, activity, el.depth)


_Named = dict[str, Element]
_Sides = tuple[int, ...]


def _joints(body: Body, named: _Named, sides: _Sides, rng: np.random.Generator) -> list[Hotspot]:
    """Degenerative joint disease, often symmetric (shoulder, knee, sternoclavicular, facets)."""
    joint = str(rng.choice(["glenoid", "knee", "sternoclavicular", "facet"]))
    out = []
    for side in sides:
        if joint == "sternoclavicular":
            el = named["manubrium"]
            m = cast(Ellipse, el.shape)
            cy, cx, r = m.cy - 5, m.cx + 9 * side, 3.0
        elif joint == "facet":
            el = named[f"L{int(rng.integers(3, 6))}"]
            v = cast(Ellipse, el.shape)
            cy, cx, r = v.cy, v.cx + side * 8, 3.0
        else:
            el = named[f"{joint}{'RL'[side > 0]}"]
            j = cast(Ellipse, el.shape)
            cy, cx, r = j.cy, j.cx, float(rng.uniform(3, 6))
        out.append(_spot(el, cy, cx, r, kind="degenerative_joint", rng=rng))
    return out


def _fracture_row(
    body: Body, named: _Named, sides: _Sides, rng: np.random.Generator
) -> list[Hotspot]:
    """Rib fractures: a vertical row of small spots on consecutive ribs (MODEL.md §5.8)."""
    side, k0 = int(rng.choice([-1, 1])), int(rng.integers(3, 9))
    u = float(rng.uniform(0.5, 0.9))
    out = []
    for k in range(k0, k0 + int(rng.integers(2, 5))):
        el = named[f"rib{k}{'RL'[side > 0]}p"]
        cy, cx, _ = rib_lines(body, k, side)[0].point_at(u)
        out.append(
            _spot(el, cy, cx, float(rng.uniform(1.5, 3.0)), kind="rib_fracture_row", rng=rng)
        )
    return out


def _costochondral(
    body: Body, named: _Named, sides: _Sides, rng: np.random.Generator
) -> list[Hotspot]:
    out = []
    for k in rng.choice(np.arange(1, 8), size=int(rng.integers(1, 4)), replace=False):
        for side in sides:
            el = named[f"rib{k}{'RL'[side > 0]}a"]
            cy, cx = cast(Polyline, el.shape).points[-1]
            out.append(
                _spot(el, cy, cx, float(rng.uniform(2.0, 3.0)), kind="costochondral", rng=rng)
            )
    return out


def _compression(
    body: Body, named: _Named, sides: _Sides, rng: np.random.Generator
) -> list[Hotspot]:
    """Vertebral compression fracture: a horizontal band across one thoracic body."""
    el = named[f"T{int(rng.integers(6, 13))}"]
    v = cast(Ellipse, el.shape)
    c = float(rng.uniform(1.8, 3.0))
    band = Ellipse(v.cy + rng.uniform(-2, 2), v.cx, 2.5, v.rx, 0.0, 4.0)
    return [
        Hotspot("compression_fracture", el.site, el.name, band, c, (c - 1) * el.activity, el.depth)
    ]


def _arthritis(body: Body, named: _Named, sides: _Sides, rng: np.random.Generator) -> list[Hotspot]:
    out = []
    for side in sides:
        el = named[f"{rng.choice(['hand', 'foot'])}{'RL'[side > 0]}"]
        h = cast(Ellipse, el.shape)
        cy, cx = h.cy + rng.uniform(-5, 5), h.cx + rng.uniform(-4, 4)
        out.append(_spot(el, cy, cx, 3.0, kind="arthritis", rng=rng))
    return out


_MIMICS = {
    "degenerative_joint": (0.35, _joints),
    "rib_fracture_row": (0.2, _fracture_row),
    "costochondral": (0.2, _costochondral),
    "compression_fracture": (0.1, _compression),
    "arthritis": (0.15, _arthritis),
}


def sample_benign(body: Body, elements: list[Element], rng: np.random.Generator) -> list[Hotspot]:
    """Benign mimics (MODEL.md §5.8): joints, rib-fracture rows, costochondral spots, etc."""
    named = {e.name: e for e in elements}
    kinds = list(_MIMICS)
    probs = [_MIMICS[k][0] for k in kinds]
    out: list[Hotspot] = []
    for _ in range(int(rng.poisson(1.5))):
        kind = str(rng.choice(kinds, p=probs))
        sides = (-1, 1) if rng.random() < 0.6 else (int(rng.choice([-1, 1])),)
        out += _MIMICS[kind][1](body, named, sides, rng)
    return out
