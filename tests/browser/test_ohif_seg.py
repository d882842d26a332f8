"""The SEG displays in a real viewer: OHIF, served against Orthanc's DICOMweb (metadata "Full"),
in headless Chromium, shows the overlay on the anterior and on the posterior frame where the
model's mask is, not mirrored and not swapped.

Pixels, not only a screenshot: for each frame the viewport is captured before the SEG is loaded
and again after OHIF hydrated it; the pixels that changed are the overlay. Cornerstone's own
viewport transform (``imageData.indexToWorld`` → ``viewport.worldToCanvas``) maps every canvas
pixel back to the NM pixel it shows, so the overlay is compared pixel by pixel with the mask, its
left-right mirror and the other view's mask. The same mapping is checked first on the grey
image itself (the rendered NM correlates with the NM's counts, not with their mirror).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from pydicom import Dataset, dcmread
from scipy import ndimage

from msanet_core import Segmenter
from pipeline.dicom import scu
from pipeline.dicom.files import write_atomic
from pipeline.workflow.segment import ScanResult, ViewResult, segment_scan
from tests.browser.conftest import DEADLINE_S, OhifServer
from tests.integration.pacs import OrthancPacs
from tests.integration.test_pipeline import write_scan

pytestmark = pytest.mark.browser

# Patient 1 of seed 11 with the tiny test model: masks of about 5,000 (anterior) and 13,000
# (posterior) pixels whose left-right mirrors overlap them by about 0.2 (IoU), and 0.07 with each
# other; the test checks that this still holds before it relies on it.
PATIENT = 1
CHANGED = 24  # a pixel whose R, G or B moved more than this (of 255) shows the overlay
EDGE_PX = 2  # canvas pixels along the edges left out: the active viewport's border

Mask = npt.NDArray[np.bool_]

# JavaScript run in the page. The OHIF rendering engine's viewport that shows the NM instance.
FIND_VIEWPORT = """(uid) => {
  const engine = window.cornerstone?.getRenderingEngine('OHIFCornerstoneRenderingEngine');
  return (engine?.getViewports() ?? []).find(
    (v) => (v.getImageIds?.() ?? []).some((id) => id.includes(`/instances/${uid}/frames/`)));
}"""

NM_SHOWN = f"""(uid) => {{
  const viewport = ({FIND_VIEWPORT})(uid);
  return Boolean(viewport && viewport.getImageIds().length === 2 && viewport.getImageData());
}}"""

# Show frame ``index`` of the stack and return the transform index → canvas (CSS pixels).
SHOW_FRAME = f"""async ([uid, index]) => {{
  const viewport = ({FIND_VIEWPORT})(uid);
  if (viewport.getCurrentImageIdIndex() !== index) {{ await viewport.setImageIdIndex(index); }}
  viewport.render();
  const image = viewport.getImageData().imageData;
  const canvas = (ijk) => Array.from(viewport.worldToCanvas(image.indexToWorld(ijk)));
  const box = viewport.canvas.getBoundingClientRect();
  return {{
    imageId: viewport.getCurrentImageId(),
    dimensions: Array.from(image.getDimensions()),
    origin: canvas([0, 0, 0]), column: canvas([1, 0, 0]), row: canvas([0, 1, 0]),
    box: [box.x, box.y, box.width, box.height],
    dpr: window.devicePixelRatio,
  }};
}}"""

SEG_ON_VIEWPORT = f"""([uid, segUid]) => {{
  const viewport = ({FIND_VIEWPORT})(uid);
  const services = window.services;
  if (!viewport || !services) return false;
  const seg = services.displaySetService.getActiveDisplaySets()
    .find((d) => d.SOPInstanceUID === segUid);
  if (!seg) return false;
  return services.segmentationService.getSegmentationRepresentations(viewport.id)
    .some((r) => r.segmentationId === seg.displaySetInstanceUID && r.visible
      && r.type === 'Labelmap');
}}"""


@dataclass(frozen=True)
class Frame:
    """One displayed frame: canvas pixels and where each shows an NM pixel."""

    image_id: str
    rgb: npt.NDArray[np.int16]  # (height, width, 3) of the viewport canvas
    rows: npt.NDArray[np.intp]  # NM row shown at each canvas pixel
    columns: npt.NDArray[np.intp]  # NM column shown at each canvas pixel
    inside: Mask  # the canvas pixel shows the NM (and is not UI chrome)
    geometry: tuple[float, ...]

    def resample(self, image: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """``image`` (NM rows × columns) as the canvas shows it; 0 outside the NM."""
        out = np.zeros(self.inside.shape, dtype=image.dtype)
        out[self.inside] = image[self.rows[self.inside], self.columns[self.inside]]
        return out


@dataclass(frozen=True)
class Match:
    dice: float
    recall: float  # share of the mask's interior (eroded 1 px) that shows the overlay
    precision: float  # share of the overlay within 1 px of the mask

    def __str__(self) -> str:
        return f"dice {self.dice:.3f}, recall {self.recall:.3f}, precision {self.precision:.3f}"


def iou(a: Mask, b: Mask) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def match(overlay: Mask, mask: Mask, frame: Frame) -> Match:
    shown = frame.resample(mask)
    interior = frame.resample(ndimage.binary_erosion(mask))
    near = frame.resample(ndimage.binary_dilation(mask))
    return Match(
        dice=float(2 * (overlay & shown).sum() / max(overlay.sum() + shown.sum(), 1)),
        recall=float((overlay & interior).sum() / max(interior.sum(), 1)),
        precision=float((overlay & near).sum() / max(overlay.sum(), 1)),
    )


def correlation(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def wait_until(page: Page, script: str, argument: object, what: str) -> None:
    try:
        page.wait_for_function(script, arg=argument, timeout=DEADLINE_S * 1000, polling=100)
    except PlaywrightTimeoutError as error:
        pytest.fail(f"OHIF: timed out after {DEADLINE_S} s waiting for {what}: {error}")


def settled_screenshot(page: Page, box: list[float]) -> npt.NDArray[np.int16]:
    """The canvas once two captures in a row are identical (rendering has settled)."""
    deadline = time.monotonic() + DEADLINE_S
    previous = b""
    while True:
        png = page.screenshot(
            clip={"x": box[0], "y": box[1], "width": box[2], "height": box[3]},
            animations="disabled",
            caret="hide",
        )
        if png == previous:
            rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
            return rgb
        if time.monotonic() > deadline:
            pytest.fail(f"OHIF's viewport never stopped changing within {DEADLINE_S} s")
        previous = png


def show_frame(page: Page, nm_uid: str, frame_number: int, out: Path) -> Frame:
    """Show ``frame_number`` (1-based) of the NM instance and capture the viewport."""
    geometry = page.evaluate(SHOW_FRAME, [nm_uid, frame_number - 1])
    assert geometry["imageId"].endswith(f"/instances/{nm_uid}/frames/{frame_number}")
    assert geometry["dpr"] == 1, "the screenshot pixels must be CSS pixels"
    rgb = settled_screenshot(page, geometry["box"])
    Image.fromarray(rgb.astype(np.uint8)).save(out)  # kept in tmp_path for a human
    # canvas = origin + column·i + row·j for the NM pixel centre (i, j): invert at pixel centres
    origin = np.array(geometry["origin"])
    axes = np.array([geometry["column"], geometry["row"]]).T - origin[:, None]
    height, width = rgb.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    centres = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5]) - origin[:, None]
    i, j = np.rint(np.linalg.solve(axes, centres)).astype(np.intp).reshape(2, height, width)
    columns, rows = geometry["dimensions"][:2]
    inside = (i >= 0) & (i < columns) & (j >= 0) & (j < rows)
    inside[:EDGE_PX, :] = inside[-EDGE_PX:, :] = False
    inside[:, :EDGE_PX] = inside[:, -EDGE_PX:] = False
    assert inside.sum() > 0.2 * inside.size, f"the NM fills too little of the canvas: {geometry}"
    return Frame(
        image_id=geometry["imageId"],
        rgb=rgb,
        rows=np.clip(j, 0, rows - 1),
        columns=np.clip(i, 0, columns - 1),
        inside=inside,
        geometry=tuple(np.round([*geometry["origin"], *geometry["column"], *geometry["row"]], 3)),
    )


@pytest.fixture
def scan(tmp_path: Path, tiny_weights: Path) -> tuple[list[Path], ScanResult]:
    """A synthetic 2-frame NM scan and what the product makes of it (SEG included)."""
    paths = write_scan(tmp_path, PATIENT)
    sources: list[Dataset] = [dcmread(path) for path in paths]
    result = segment_scan(sources, Segmenter.load(tiny_weights, device="cpu"))
    return paths, result


@pytest.fixture
def stored(
    scan: tuple[list[Path], ScanResult], dicomweb_orthanc: OrthancPacs, tmp_path: Path
) -> tuple[list[Path], ScanResult]:
    """The scan and its SEG in Orthanc, sent with the export's C-STORE."""
    paths, result = scan
    seg_path = write_atomic(
        result.seg, tmp_path / "results" / f"SEG_{result.seg.SOPInstanceUID}.dcm"
    )
    for path in [*paths, seg_path]:
        sent = scu.store(
            dicomweb_orthanc.destination, path, calling_ae_title="BONESCAN", timeout_s=60
        )
        assert sent.status == 0, sent
    return paths, result


def test_seg_overlays_each_view_where_the_mask_is_not_mirrored(
    stored: tuple[list[Path], ScanResult], ohif: OhifServer, page: Page, tmp_path: Path
) -> None:
    paths, result = stored
    views: list[ViewResult] = list(result.views.values())
    assert len(paths) == 1
    assert len(views) == 2
    nm = dcmread(paths[0], stop_before_pixels=True)
    nm_uid, seg_uid = str(nm.SOPInstanceUID), str(result.seg.SOPInstanceUID)
    masks: dict[int, Mask] = {}
    for view in views:
        assert view.image.frame_number is not None  # one 2-frame instance
        masks[view.image.frame_number] = view.mask
    assert sorted(masks) == [1, 2]
    # the scan can tell a mirrored or a swapped overlay from the right one
    for mask in masks.values():
        assert mask.sum() > 1000
        assert iou(mask, mask[:, ::-1]) < 0.4
    assert iou(masks[1], masks[2]) < 0.4

    page.goto(f"{ohif.url}/viewer?StudyInstanceUIDs={nm.StudyInstanceUID}")
    wait_until(page, NM_SHOWN, nm_uid, "the NM in a viewport")
    before = {n: show_frame(page, nm_uid, n, tmp_path / f"frame{n}-nm.png") for n in (1, 2)}
    for number, frame in before.items():  # the mapping is right: the NM shows as itself
        pixels = next(v.image.pixels for v in views if v.image.frame_number == number)
        grey = frame.rgb.mean(axis=2)[frame.inside]
        straight = correlation(grey, frame.resample(pixels)[frame.inside])
        mirrored = correlation(grey, frame.resample(pixels[:, ::-1])[frame.inside])
        assert straight > 0.8, (number, straight, mirrored)
        assert straight > mirrored + 0.2, (number, straight, mirrored)

    # OHIF loads a SEG on a double-click of its thumbnail and asks before it hydrates it
    page.get_by_text(str(result.seg.SeriesDescription), exact=False).first.dblclick()
    page.get_by_role("button", name="Yes", exact=True).click()
    page.get_by_role("button", name="Yes", exact=True).wait_for(state="detached")
    page.mouse.move(0, 0)
    wait_until(page, SEG_ON_VIEWPORT, [nm_uid, seg_uid], "the SEG on the NM's viewport")

    for number, mask in masks.items():
        frame = show_frame(page, nm_uid, number, tmp_path / f"frame{number}-seg.png")
        assert frame.geometry == before[number].geometry, "the viewport moved: pixels differ"
        changed = np.abs(frame.rgb - before[number].rgb).max(axis=2) > CHANGED
        overlay = changed & frame.inside
        other = masks[3 - number]
        right = match(overlay, mask, frame)
        wrong = {
            "mirrored": match(overlay, mask[:, ::-1], frame),
            "other view": match(overlay, other, frame),
            "other view mirrored": match(overlay, other[:, ::-1], frame),
        }
        report = f"frame {number}: mask {right}; " + "; ".join(f"{k} {v}" for k, v in wrong.items())
        assert overlay.sum() > 0.5 * frame.resample(mask).sum(), report
        assert right.recall > 0.95, report
        assert right.precision > 0.95, report
        assert right.dice > 0.9, report
        assert all(w.dice < right.dice - 0.3 for w in wrong.values()), report
