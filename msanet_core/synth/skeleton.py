"""Parametric 2-D skeleton atlas of the synthetic phantom (MODEL.md §5.2, §5.3).

Each :class:`Element` is a projected bone (or organ) with a relative activity (normal bone ≈ 1)
and a depth fraction (0 = anterior skin, 1 = posterior skin) used for attenuation. ``site`` is
the lesion-site category used to place metastases (MODEL.md §5.7) and to decide which lesions
belong to the thorax crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from msanet_core.synth.body import Body, arm_lines
from msanet_core.synth.raster import Ellipse, Polyline, Shape

# Sites whose lesions the thorax crop must contain (issue 4; MODEL.md §2.7).
THORAX_SITES = frozenset({"rib", "thoracic_spine", "sternum", "scapula", "clavicle"})
# Rib-cage half-span per rib as a fraction of the chest half-width (rib 1 … 12).
_RIB_SPAN = (0.42, 0.6, 0.72, 0.8, 0.85, 0.88, 0.88, 0.87, 0.84, 0.8, 0.66, 0.52)


@dataclass(frozen=True)
class Element:
    """One projected bone or organ: shape in image pixels, activity, depth fraction."""

    name: str
    site: str
    shape: Shape
    activity: float
    depth: float


def _spine(body: Body, spine_gain: float) -> list[Element]:
    """C2–C7, T1–T12, L1–L5 as stacked rounded blocks plus the sacrum (MODEL.md §5.2)."""
    out: list[Element] = []
    t1_top = body.shoulder_row - 2.0
    t12_bottom, l5_bottom = body.row(0.36), body.row(0.465)
    c_top = body.row(0.105)
    levels: list[tuple[str, str, float, float, float, float]] = []
    ch = (t1_top - c_top) / 6
    levels += [(f"C{i + 2}", "cervical_spine", c_top + i * ch, ch, 6.5, 0.6) for i in range(6)]
    th = (t12_bottom - t1_top) / 12
    levels += [
        (f"T{i + 1}", "thoracic_spine", t1_top + i * th, th, 7.5 + 0.25 * i, 0.75)
        for i in range(12)
    ]
    lh = (l5_bottom - t12_bottom) / 5
    levels += [
        (f"L{i + 1}", "lumbar_spine", t12_bottom + i * lh, lh, 10.5 + 0.3 * i, 0.7)
        for i in range(5)
    ]
    for name, site, top, height, hw, depth in levels:
        cy = top + height / 2
        shape = Ellipse(cy, body.col(cy), height / 2 - 1.0, hw, 0.0, 4.0)
        out.append(Element(name, site, shape, spine_gain, depth))
    sy = body.row(0.495)
    sacrum = Ellipse(sy, body.col(sy), 0.03 * body.height_px, 13.0, 0.0, 2.5)
    out.append(Element("sacrum", "pelvis", sacrum, 0.8 * spine_gain, 0.75))
    return out


def rib_lines(body: Body, k: int, side: int) -> tuple[Polyline, Polyline | None]:
    """Posterior and anterior arcs of rib ``k`` (1–12) on ``side`` (−1 image left, +1 right)."""
    t1_top, t12_bottom = body.shoulder_row - 2.0, body.row(0.36)
    y = t1_top + (k - 0.5) * (t12_bottom - t1_top) / 12
    span = (body.chest_hw - 8.0) * _RIB_SPAN[k - 1]
    drop = 8.0 + 0.6 * k

    def p(dy: float, frac: float) -> tuple[float, float]:
        return y + dy, body.col(y + dy, side * frac * span)

    post = Polyline((p(0, 7 / span), p(-1.5, 0.5), p(3 + 0.3 * k, 0.9), p(drop, 1.0)), 1.8)
    if k > 10:  # floating ribs have no anterior arc
        return post, None
    end = (0.16 + 0.03 * k) if k <= 7 else 0.5 + 0.05 * (k - 7)
    ant = Polyline((p(drop, 1.0), p(drop + 6 + k, 0.88), p(drop + 18 + 2.5 * k, end)), 1.7)
    return post, ant


def _thorax(body: Body) -> list[Element]:
    out: list[Element] = []
    for k in range(1, 13):
        for side in (-1, 1):
            post, ant = rib_lines(body, k, side)
            out.append(Element(f"rib{k}{'RL'[side > 0]}p", "rib", post, 0.55, 0.85))
            if ant is not None:
                out.append(Element(f"rib{k}{'RL'[side > 0]}a", "rib", ant, 0.32, 0.2))
    sh = body.shoulder_row
    xiphoid = body.row(0.30)
    sternum = Polyline(((sh + 8, body.col(sh + 8)), (xiphoid, body.col(xiphoid))), 4.5)
    out.append(Element("sternum", "sternum", sternum, 0.32, 0.08))
    out.append(
        Element("manubrium", "sternum", Ellipse(sh + 14, body.col(sh + 14), 8, 8), 0.25, 0.08)
    )
    for side in (-1, 1):
        tag = "RL"[side > 0]
        acromion = body.shoulder_hw - 15.0
        clav = Polyline(
            (
                (sh + 7, body.col(sh + 7, side * 8)),
                (sh + 2, body.col(sh + 2, side * 0.5 * acromion)),
                (sh + 3, body.col(sh + 3, side * acromion)),
            ),
            2.6,
        )
        out.append(Element(f"clavicle{tag}", "clavicle", clav, 0.7, 0.15))
        sy = sh + 0.058 * body.height_px
        scap = Ellipse(
            sy,
            body.col(sy, side * 0.6 * body.shoulder_hw),
            0.05 * body.height_px,
            0.2 * body.shoulder_hw,
            side * 0.25,
        )
        out.append(Element(f"scapula{tag}", "scapula", scap, 0.35, 0.85))
        out.append(
            Element(
                f"glenoid{tag}",
                "scapula",
                Ellipse(sh + 6, body.col(sh + 6, side * acromion), 4, 4),
                0.8,
                0.5,
            )
        )
    return out


def _head(body: Body) -> list[Element]:
    cy, ry, rx = body.row(0.062), 0.056 * body.height_px, body.head_rx - 4.0
    cx = body.col(cy)
    face_y = body.row(0.1)
    jaw_y = body.row(0.122)
    jaw = Polyline(
        (
            (face_y, body.col(face_y, -0.7 * rx)),
            (jaw_y, body.col(jaw_y, -0.3 * rx)),
            (jaw_y, body.col(jaw_y, 0.3 * rx)),
            (face_y, body.col(face_y, 0.7 * rx)),
        ),
        2.5,
    )
    return [
        Element("skull", "skull", Ellipse(cy, cx, ry, rx), 1.0, 0.5),
        Element("skull_inner", "skull", Ellipse(cy, cx, ry - 4.0, rx - 4.0), -0.6, 0.5),
        Element(
            "face",
            "skull",
            Ellipse(face_y, body.col(face_y), 0.022 * body.height_px, 0.6 * rx),
            0.6,
            0.15,
        ),
        Element("mandible", "skull", jaw, 0.8, 0.2),
    ]


def _limbs(body: Body) -> list[Element]:
    out: list[Element] = []
    hip_y, knee_y, ankle_y = body.row(0.515), body.row(0.735), body.row(0.955)
    for side in (-1, 1):
        tag = "RL"[side > 0]
        arm = arm_lines(body, side)[1]
        head_y, head_x = arm.points[0][0] + 8, arm.points[0][1]
        out.append(
            Element(
                f"humerus{tag}",
                "humerus",
                Polyline(((head_y, head_x), *arm.points[1:2]), 4.0),
                0.55,
                0.5,
            )
        )
        out.append(
            Element(f"humeral_head{tag}", "humerus", Ellipse(head_y, head_x, 8, 7), 0.9, 0.5)
        )
        (ey, ex), (wy, wx) = arm.points[1], arm.points[2]
        for off in (-3.0, 3.0):
            out.append(
                Element(
                    f"forearm{tag}",
                    "limb",
                    Polyline(((ey, ex + off), (wy, wx + off)), 2.2),
                    0.45,
                    0.5,
                )
            )
        hand_y = wy + 0.035 * body.height_px
        out.append(
            Element(f"hand{tag}", "hand", Ellipse(hand_y, wx, 0.03 * body.height_px, 8), 0.55, 0.5)
        )
        fx, kx = body.hip_hw * 0.55, body.hip_hw * 0.32
        out.append(
            Element(
                f"hip{tag}", "pelvis", Ellipse(hip_y, body.col(hip_y, side * fx), 9, 9), 1.1, 0.5
            )
        )
        femur = Polyline(
            ((hip_y + 6, body.col(hip_y, side * fx)), (knee_y, body.col(knee_y, side * kx))), 5.0
        )
        out.append(Element(f"femur{tag}", "femur", femur, 0.6, 0.5))
        for dy in (-6.0, 8.0):
            out.append(
                Element(
                    f"knee{tag}",
                    "knee",
                    Ellipse(knee_y + dy, body.col(knee_y, side * kx), 6, 10),
                    0.9,
                    0.5,
                )
            )
        out.append(
            Element(
                f"patella{tag}",
                "knee",
                Ellipse(knee_y - 2, body.col(knee_y, side * kx), 5, 5),
                0.8,
                0.05,
            )
        )
        ax = body.hip_hw * 0.28
        tibia = Polyline(
            ((knee_y + 10, body.col(knee_y, side * kx)), (ankle_y, body.col(ankle_y, side * ax))),
            4.0,
        )
        out.append(Element(f"tibia{tag}", "limb", tibia, 0.55, 0.45))
        out.append(
            Element(
                f"ankle{tag}",
                "foot",
                Ellipse(ankle_y, body.col(ankle_y, side * ax), 5, 7),
                1.0,
                0.5,
            )
        )
        foot_y = body.row(0.985)
        out.append(
            Element(
                f"foot{tag}", "foot", Ellipse(foot_y, body.col(foot_y, side * ax), 9, 7), 0.6, 0.5
            )
        )
    return out


def _pelvis(body: Body) -> list[Element]:
    out: list[Element] = []
    wy, py = body.row(0.455), body.row(0.535)
    for side in (-1, 1):
        tag = "RL"[side > 0]
        wing = Ellipse(
            wy,
            body.col(wy, side * 0.55 * body.hip_hw),
            0.038 * body.height_px,
            0.26 * body.hip_hw,
            -side * 0.4,
        )
        out.append(Element(f"ilium{tag}", "pelvis", wing, 0.4, 0.6))
        crest_y = wy - 0.03 * body.height_px
        crest = Polyline(
            (
                (crest_y + 10, body.col(crest_y + 10, side * 0.3 * body.hip_hw)),
                (crest_y, body.col(crest_y, side * 0.55 * body.hip_hw)),
                (crest_y + 12, body.col(crest_y + 12, side * 0.8 * body.hip_hw)),
            ),
            2.5,
        )
        out.append(Element(f"iliac_crest{tag}", "pelvis", crest, 0.35, 0.6))
        si_y = body.row(0.475)
        out.append(
            Element(
                f"si{tag}", "pelvis", Ellipse(si_y, body.col(si_y, side * 13), 10, 3.5), 1.0, 0.75
            )
        )
        out.append(
            Element(
                f"ischium{tag}",
                "pelvis",
                Ellipse(py, body.col(py, side * 0.3 * body.hip_hw), 7, 5),
                0.6,
                0.5,
            )
        )
    out.append(
        Element("pubis", "pelvis", Ellipse(py, body.col(py), 5, 0.3 * body.hip_hw), 0.6, 0.2)
    )
    return out


def build_skeleton(body: Body, rng: np.random.Generator) -> list[Element]:
    """All bone elements with per-element activity jitter ±10 % (MODEL.md §5.3)."""
    spine_gain = rng.uniform(1.2, 1.4)  # MODEL.md §5.3: spine 1.2–1.4 × normal bone
    elements = _head(body) + _spine(body, spine_gain) + _thorax(body) + _pelvis(body) + _limbs(body)
    jitter = rng.uniform(0.9, 1.1, size=len(elements))
    return [
        Element(e.name, e.site, e.shape, e.activity * float(j), e.depth) if e.activity > 0 else e
        for e, j in zip(elements, jitter, strict=True)
    ]
