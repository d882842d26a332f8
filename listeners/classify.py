"""Is a received instance part of a whole-body bone scan? Pure, header-only.

A whole-body bone scan (DESIGN.md, FACTS.md "NM whole-body objects") is NM Image Storage, or
Secondary Capture with Modality NM as some sites send it; Image Type holds ``WHOLE BODY``
(PS3.3 C.8.4.6.1.1 value 3); the frame is about 256 columns × 1024 rows; 1 frame (one view) or
2 (anterior and posterior). Anything else is stored and skipped, with a reason for the admin
and a short code for the metrics. Nothing here decodes pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom import Dataset
from pydicom.multival import MultiValue

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
# PS3.4 B.5: Secondary Capture and the multi-frame SC family.
SECONDARY_CAPTURE_STORAGE = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
WHOLE_BODY_COLUMNS = range(192, 321)  # ~256, with room for other matrix sizes
WHOLE_BODY_ROWS = range(768, 1281)  # ~1024
# SCT codes in ViewCodeSequence (FACTS.md "NM whole-body objects").
ANTERIOR = "399321004"
POSTERIOR = "399001007"
VIEWS = {ANTERIOR: "anterior", POSTERIOR: "posterior"}


class SkipCode(StrEnum):
    """Why an instance is not work; the value is the metrics label."""

    SOP_CLASS = "sop_class"
    MODALITY = "modality"
    IMAGE_TYPE = "image_type"
    GEOMETRY = "geometry"
    FRAMES = "frames"
    NO_PIXEL_DATA = "no_pixel_data"


@dataclass(frozen=True)
class Classification:
    """``skip`` is None for a bone-scan instance; ``view`` is set for a recognised single view."""

    number_of_frames: int | None
    skip: SkipCode | None = None
    reason: str | None = None
    view: str | None = None

    @property
    def is_work(self) -> bool:
        """True when the instance belongs to a whole-body bone scan."""
        return self.skip is None


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _image_type(dataset: Dataset) -> list[str]:
    value = dataset.get("ImageType")
    if value is None:
        return []
    values = value if isinstance(value, (list, MultiValue)) else [value]
    return [str(item).strip().upper() for item in values]


def view_of(dataset: Dataset) -> str | None:
    """``anterior`` / ``posterior`` from the first detector's ViewCodeSequence, else top level."""
    for holder in (*dataset.get("DetectorInformationSequence", [])[:1], dataset):
        codes = holder.get("ViewCodeSequence") if isinstance(holder, Dataset) else None
        if codes:
            code = str(codes[0].get("CodeValue", ""))
            if code in VIEWS:
                return VIEWS[code]
    return None


def _skip(frames: int | None, code: SkipCode, reason: str) -> Classification:
    return Classification(number_of_frames=frames, skip=code, reason=reason)


def _native_length(dataset: Dataset, rows: int, columns: int, frames: int) -> int | None:
    bits, samples = _int(dataset.get("BitsAllocated")), _int(dataset.get("SamplesPerPixel", 1))
    if bits is None or samples is None:
        return None
    length = (rows * columns * frames * samples * bits + 7) // 8
    return length + length % 2  # PS3.5 7.1.1: values are padded to an even length


def classify(  # noqa: PLR0911 (one return per rule, in order)
    dataset: Dataset,
    sop_class_uid: str,
    *,
    pixel_data_length: int | None,
    encapsulated: bool = False,
) -> Classification:
    """Classify one instance from its header.

    ``sop_class_uid`` is the Affected SOP Class UID of the C-STORE request;
    ``pixel_data_length`` the length of (7FE0,0010) as received (None when absent), checked
    against Rows × Columns × frames for native (not ``encapsulated``) pixel data.
    """
    frames = _int(dataset.get("NumberOfFrames", 1))
    modality = str(dataset.get("Modality", "")).strip().upper()
    if modality != "NM":
        return _skip(frames, SkipCode.MODALITY, f"modality {modality or 'missing'} is not NM")
    if sop_class_uid != NM_IMAGE_STORAGE and sop_class_uid not in SECONDARY_CAPTURE_STORAGE:
        return _skip(frames, SkipCode.SOP_CLASS, f"SOP class {sop_class_uid} is not NM or SC")
    image_type = _image_type(dataset)
    if "WHOLE BODY" not in image_type:
        shown = "\\".join(image_type) or "missing"
        return _skip(frames, SkipCode.IMAGE_TYPE, f"image type {shown} is not WHOLE BODY")
    rows, columns = _int(dataset.get("Rows")), _int(dataset.get("Columns"))
    if rows not in WHOLE_BODY_ROWS or columns not in WHOLE_BODY_COLUMNS:
        return _skip(
            frames, SkipCode.GEOMETRY, f"{columns} columns × {rows} rows is not ~256 × 1024"
        )
    if frames not in (1, 2):
        return _skip(frames, SkipCode.FRAMES, f"{frames} frames: a whole-body scan has 1 or 2")
    if pixel_data_length is None:
        return _skip(frames, SkipCode.NO_PIXEL_DATA, "no pixel data")
    if not encapsulated:
        expected = _native_length(dataset, rows, columns, frames)  # type: ignore[arg-type]
        if expected is not None and pixel_data_length not in (expected, expected - 1):
            return _skip(
                frames,
                SkipCode.GEOMETRY,
                f"pixel data holds {pixel_data_length} bytes, the header needs {expected}",
            )
    return Classification(number_of_frames=frames, view=view_of(dataset) if frames == 1 else None)
