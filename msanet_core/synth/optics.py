"""Imaging physics of the phantom: attenuation, depth-dependent blur, counts (MODEL.md §5.4–5.6).

Sources are drawn into four float layers ``[view][near, far]``: for each view, sources in the
half of the body nearer the detector are blurred with the smaller PSF. Attenuation weights are
normalised to 1 at mid-depth, so element activities are calibrated projected intensities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from msanet_core.synth.body import COLS, ROWS, Body, thickness_at
from msanet_core.synth.raster import FloatArray, Shape, patch_coverage, window

BACKGROUND_PER_PX = 0.01  # expected counts per pixel outside the body (MODEL.md §5: ≈ 0)
SOFT_GAIN = 0.038  # soft-tissue activity per cm of tissue; sets bone:soft ≈ 3.4 (MODEL.md §5)


@dataclass(frozen=True)
class Acquisition:
    """Sampled camera and count parameters of one scan."""

    mu_per_cm: float  # §5.4: μ ≈ 0.15 cm⁻¹ narrow-beam; lower with scatter in the window
    sigma_near_px: float  # §5.5: PSF FWHM 7–12 mm, nearer half of the body
    sigma_far_px: float
    motion_rows: int  # §5.5: occasional 1–2 px motion blur along the scan axis
    soft_level: float  # §5.3: soft tissue 0.2–0.35 of bone, relative to the real 0.29
    total_counts: float  # §5.6: mean counts per view

    @classmethod
    def sample(cls, rng: np.random.Generator, superscan: bool) -> Acquisition:
        mu = float(rng.uniform(0.11, 0.15))
        near, far = float(rng.uniform(1.3, 1.7)), float(rng.uniform(1.8, 2.3))
        motion = int(rng.choice([1, 2, 3], p=[0.85, 0.1, 0.05]))
        soft = float(rng.uniform(0.2, 0.35)) / 0.29 * (0.6 if superscan else 1.0)
        # §5.6: counts per view ~ LogNormal centred at 2 M (0.8–4 M); 2.15 M for the mean of
        # both views puts the anterior median at ≈ 2 M (POST collects more here).
        total = float(np.clip(rng.lognormal(math.log(2.15e6), 0.3), 0.8e6, 4.0e6))
        return cls(mu, near, far, motion, soft, total)

    @property
    def sigmas(self) -> tuple[float, float]:
        return self.sigma_near_px, self.sigma_far_px

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights(depth: float, thickness_cm: float, mu: float) -> tuple[float, float]:
    """ANT and POST attenuation of a source at ``depth`` (0 front … 1 back), 1 at mid-depth."""
    return (
        math.exp(-mu * (depth - 0.5) * thickness_cm),
        math.exp(-mu * (0.5 - depth) * thickness_cm),
    )


def blur(image: FloatArray, sigma: float, motion: int) -> FloatArray:
    """Gaussian PSF (σ px), then a ``motion``-row box blur along the scan axis if > 1."""
    out: FloatArray = ndimage.gaussian_filter(image, sigma, mode="constant", truncate=3.0)
    if motion > 1:
        out = ndimage.uniform_filter1d(out, motion, axis=0, mode="constant")
    return out


def add_source(
    layers: FloatArray, shape: Shape, value: float, depth: float, *, body: Body, mu: float
) -> None:
    """Draw one source into the near/far layers of both views with its attenuation weights."""
    win = window(shape, (ROWS, COLS))
    if win is None or value == 0.0:
        return
    cov = patch_coverage(shape, *win)
    frac = (0.5 * (win[0].start + win[0].stop) - body.top_row) / body.height_px
    w_ant, w_post = weights(depth, thickness_at(body, frac), mu)
    layers[0, 0 if depth < 0.5 else 1][win] += np.float32(value * w_ant) * cov
    layers[1, 0 if depth >= 0.5 else 1][win] += np.float32(value * w_post) * cov


def soft_tissue(thickness: FloatArray, acq: Acquisition) -> FloatArray:
    """Projected activity of a uniform soft-tissue emitter over its chord (same in both views)."""
    mu = acq.mu_per_cm
    out: FloatArray = SOFT_GAIN * acq.soft_level * (1.0 - np.exp(-mu * thickness)) / mu
    return out


def project(layers: FloatArray, soft: FloatArray, acq: Acquisition) -> FloatArray:
    """Expected image of one view from its ``[near, far]`` layers and the soft tissue."""
    near, far = acq.sigmas
    mid = 0.5 * (near + far)
    return (
        blur(layers[0], near, acq.motion_rows)
        + blur(layers[1], far, acq.motion_rows)
        + blur(soft, mid, acq.motion_rows)
    )


def count(expected: list[FloatArray], acq: Acquisition, rng: np.random.Generator) -> list[Any]:
    """Poisson counts, scaled so the mean total per view is ``acq.total_counts``; uint16."""
    scale = 2.0 * acq.total_counts / float(sum(float(e.sum()) for e in expected))
    # MODEL.md §5.6: outside the body ≈ 0; a trace of room background / scatter
    return [
        np.minimum(rng.poisson(e * scale + BACKGROUND_PER_PX), 65535).astype(np.uint16)
        for e in expected
    ]
