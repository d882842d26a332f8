"""PNG previews of a scan with its lesion mask: both views side by side, the mask in red.

Shared by ``bonescan segment`` and ``bonescan demo``. The pixels are shown as stored (no
mirroring): the anterior view as the camera saw it, the posterior likewise, so a preview reads
like the PACS viewer with the SEG overlaid. Window: 0 to the 99.5th count percentile of each
view (the bladder and injection site would otherwise leave the skeleton black).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

RED = np.array([230, 40, 40], dtype=np.float32)
ALPHA = 0.55
GAP_PX = 8


def _grey(pixels: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    counts = pixels.astype(np.float32)
    top = float(np.percentile(counts, 99.5)) or 1.0
    return np.asarray(np.clip(counts / top, 0.0, 1.0) * 255.0, dtype=np.float32)


def render(views: list[tuple[str, npt.NDArray[np.generic], npt.NDArray[np.bool_]]]) -> np.ndarray:
    """An RGB ``uint8`` image of the views (label, counts, mask) side by side."""
    rows = max(counts.shape[0] for _, counts, _ in views)
    panels = []
    for _, counts, mask in views:
        grey = _grey(counts)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * RED
        panel = np.zeros((rows, counts.shape[1], 3), dtype=np.float32)
        panel[: counts.shape[0]] = rgb
        panels.append(panel)
        panels.append(np.full((rows, GAP_PX, 3), 255.0, dtype=np.float32))
    return np.concatenate(panels[:-1], axis=1).astype(np.uint8)


def write_png(
    views: list[tuple[str, npt.NDArray[np.generic], npt.NDArray[np.bool_]]], path: Path
) -> Path:
    """Render ``views`` to ``path`` (written to a temporary name, then renamed)."""
    from PIL import Image  # noqa: PLC0415 - only the commands that draw need Pillow

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(render(views), mode="RGB").save(partial, format="PNG")
    partial.replace(path)
    return path
