"""Anterior and posterior views of a whole-body NM scan, found the way the standard says.

A view is told by DetectorVector → DetectorInformationSequence item → ViewCodeSequence, never by
frame order alone (FACTS.md "NM whole-body objects"). Whole-body scans arrive as one 2-frame NM
instance (DetectorVector [1, 2]) or as two single-frame instances; some sites send them as
Secondary Capture with Modality NM, which has no detector module: then the fallbacks below apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.multival import MultiValue

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
DEFAULT_PIXEL_SPACING_MM = (2.26, 2.26)  # MODEL.md §1: Siemens E.CAM whole-body matrix
DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

# SCT codes of ViewCodeSequence (CID 26 "Nuclear Medicine Projections").
ANTERIOR_CODES = frozenset({"399321004", "R-10206"})
POSTERIOR_CODES = frozenset({"399001007", "R-10214"})
# SCT codes of PatientGantryRelationshipCodeSequence (CID 21).
HEAD_FIRST_CODES = frozenset({"102540008", "F-10470"})
FEET_FIRST_CODES = frozenset({"102541007", "F-10480"})


class View(StrEnum):
    ANTERIOR = "anterior"
    POSTERIOR = "posterior"


class ViewError(ValueError):
    """The instances do not make one anterior and one posterior whole-body view."""


@dataclass(frozen=True)
class ViewImage:
    """One view of a scan: its pixels and where they come from.

    ``pixels`` is ``(rows, columns)`` counts exactly as stored (no mirroring); ``frame_number``
    is the 1-based frame in a multi-frame source, ``None`` for a single-frame source.
    """

    view: View
    sop_instance_uid: str
    sop_class_uid: str
    frame_number: int | None
    pixels: npt.NDArray[np.uint16]
    head_first: bool
    pixel_spacing_mm: tuple[float, float]


def _code_values(sequence: object) -> set[str]:
    return {str(getattr(item, "CodeValue", "")) for item in (sequence or [])}  # type: ignore[attr-defined]


def _view_from_codes(item: Dataset) -> View | None:
    codes = _code_values(item.get("ViewCodeSequence"))
    if codes & ANTERIOR_CODES:
        return View.ANTERIOR
    if codes & POSTERIOR_CODES:
        return View.POSTERIOR
    return None


def _view_from_text(dataset: Dataset) -> View | None:
    # Fallback for objects without codes (SC copies): ImageComments / SeriesDescription words.
    text = " ".join(
        str(dataset.get(keyword, "")) for keyword in ("ImageComments", "SeriesDescription")
    ).upper()
    has_ant = "ANT" in text
    has_post = "POST" in text
    if has_ant != has_post:
        return View.ANTERIOR if has_ant else View.POSTERIOR
    return None


def is_head_first(dataset: Dataset) -> bool:
    """Whether row 0 is the head: PatientGantryRelationshipCodeSequence, else PatientPosition
    (``HF…`` / ``FF…``), else head-first (the usual whole-body acquisition)."""
    for item in dataset.get("PatientOrientationCodeSequence") or []:
        codes = _code_values(item.get("PatientGantryRelationshipCodeSequence"))
        if codes & FEET_FIRST_CODES:
            return False
        if codes & HEAD_FIRST_CODES:
            return True
    codes = _code_values(dataset.get("PatientGantryRelationshipCodeSequence"))
    if codes & FEET_FIRST_CODES:
        return False
    position = str(dataset.get("PatientPosition", "")).upper()
    return not position.startswith("FF")


def pixel_spacing(dataset: Dataset) -> tuple[float, float]:
    """(row, column) spacing in mm: top-level PixelSpacing, else the first detector item's,
    else the E.CAM whole-body default."""
    spacing = dataset.get("PixelSpacing")
    if spacing is None:
        detectors = dataset.get("DetectorInformationSequence") or []
        spacing = detectors[0].get("PixelSpacing") if detectors else None
    if spacing is None or len(spacing) != 2:
        return DEFAULT_PIXEL_SPACING_MM
    return float(spacing[0]), float(spacing[1])


def _frames(dataset: Dataset) -> npt.NDArray[np.uint16]:
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for undecodable pixel data
        raise ViewError(f"pixel data cannot be decoded: {error}") from error
    frames = pixels if pixels.ndim == 3 else pixels[np.newaxis]
    return np.asarray(frames, dtype=np.uint16)


def _detector_views(dataset: Dataset, count: int) -> list[View | None]:
    detectors = list(dataset.get("DetectorInformationSequence") or [])
    raw = dataset.get("DetectorVector")
    values = [] if raw is None else (raw if isinstance(raw, MultiValue | list) else [raw])
    vector = [int(v) for v in values]  # pydicom gives a bare int when VM is 1
    if not vector and count == 1 and len(detectors) == 1:
        vector = [1]
    views: list[View | None] = []
    for index in range(count):
        number = vector[index] if index < len(vector) else None
        item = detectors[number - 1] if number and 0 < number <= len(detectors) else None
        views.append(_view_from_codes(item) if item is not None else None)
    return views


def split_views(datasets: list[Dataset]) -> dict[View, ViewImage]:
    """The anterior and posterior :class:`ViewImage` of one scan.

    Fallback when the codes are absent (documented in the README): a 2-frame instance takes
    frame 1 as anterior and frame 2 as posterior; single-frame instances are told apart by
    ``ImageComments`` / ``SeriesDescription`` words ``ANT`` / ``POST``.

    Raises
    ------
    ViewError
        If the instances do not hold exactly one anterior and one posterior view.
    """
    found: dict[View, ViewImage] = {}
    for dataset in datasets:
        frames = _frames(dataset)
        views = _detector_views(dataset, len(frames))
        if len(frames) == 2 and views == [None, None]:
            views = [View.ANTERIOR, View.POSTERIOR]
        if len(frames) == 1 and views == [None]:
            views = [_view_from_text(dataset)]
        for index, (frame, view) in enumerate(zip(frames, views, strict=True)):
            if view is None:
                raise ViewError(f"frame {index + 1} of {dataset.SOPInstanceUID}: no view code")
            if view in found:
                raise ViewError(f"two {view} views in one scan")
            found[view] = ViewImage(
                view=view,
                sop_instance_uid=str(dataset.SOPInstanceUID),
                sop_class_uid=str(dataset.SOPClassUID),
                frame_number=index + 1 if len(frames) > 1 else None,
                pixels=frame,
                head_first=is_head_first(dataset),
                pixel_spacing_mm=pixel_spacing(dataset),
            )
    missing = [view.value for view in View if view not in found]
    if missing:
        raise ViewError(f"no {' or '.join(missing)} view in the scan")
    return found
