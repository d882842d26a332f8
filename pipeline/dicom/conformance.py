"""The gate every SEG passes before it leaves: the encoding FACTS.md measured as displaying on
the right view, checked on the object itself rather than trusted from the builder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from pipeline.dicom.seg import SEGMENTATION_STORAGE, shared_orientation
from pipeline.errors import PermanentError


def _expected_orientation(sources: Sequence[Dataset]) -> list[float]:
    return [float(v) for v in shared_orientation(sources)]


def _frame_problems(
    seg: Dataset, sources: Sequence[Dataset], expected: set[tuple[str, int | None]]
) -> list[str]:
    problems: list[str] = []
    seen: set[tuple[str, int | None]] = set()
    for number, frame in enumerate(seg.get("PerFrameFunctionalGroupsSequence") or [], start=1):
        if "PlaneOrientationSequence" in frame:
            problems.append(f"frame {number} has its own orientation (OHIF mirrors such views)")
        if "SegmentIdentificationSequence" not in frame:
            problems.append(f"frame {number} has no SegmentIdentificationSequence")
        derivations = frame.get("DerivationImageSequence") or []
        refs = [src for d in derivations for src in (d.get("SourceImageSequence") or [])]
        if len(refs) != 1:
            problems.append(f"frame {number} references {len(refs)} source images, not 1")
            continue
        multi_frame = (
            int(_source(sources, refs[0].ReferencedSOPInstanceUID).get("NumberOfFrames", 1) or 1)
            > 1
        )
        frame_number = refs[0].get("ReferencedFrameNumber")
        if multi_frame and frame_number is None:
            problems.append(f"frame {number} lacks ReferencedFrameNumber (masks land on frame 1)")
        key = (str(refs[0].ReferencedSOPInstanceUID), int(frame_number) if frame_number else None)
        if key not in expected:
            problems.append(f"frame {number} references {key}, which is not a view of the scan")
        seen.add(key)
    if seen != expected:
        problems.append(
            f"frames reference {sorted(map(str, seen))}, expected {sorted(map(str, expected))}"
        )
    return problems


def _source(sources: Sequence[Dataset], uid: str) -> Dataset:
    for source in sources:
        if source.SOPInstanceUID == uid:
            return source
    return Dataset()


def check_seg(seg: Dataset, sources: Sequence[Dataset], views: set[tuple[str, int | None]]) -> None:
    """Raise :class:`PermanentError` listing every way ``seg`` departs from the encoding.

    ``views`` holds the (SOP Instance UID, frame number or None) of each view segmented.
    """
    problems: list[str] = []
    if seg.get("SOPClassUID") != SEGMENTATION_STORAGE or seg.get("SegmentationType") != "BINARY":
        problems.append("not a BINARY Segmentation Storage object")
    shared = (seg.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
    if "PixelMeasuresSequence" not in shared:
        problems.append("no shared PixelMeasuresSequence")
    orientations = shared.get("PlaneOrientationSequence") or []
    if len(orientations) != 1:
        problems.append("not exactly one shared PlaneOrientationSequence")
    elif [float(v) for v in orientations[0].ImageOrientationPatient] != _expected_orientation(
        sources
    ):
        problems.append(
            f"shared orientation {list(orientations[0].ImageOrientationPatient)} is not "
            f"{_expected_orientation(sources)} (the rule in FACTS.md)"
        )
    referenced = {
        str(instance.ReferencedSOPInstanceUID)
        for series in seg.get("ReferencedSeriesSequence") or []
        for instance in series.get("ReferencedInstanceSequence") or []
    }
    if referenced != {str(source.SOPInstanceUID) for source in sources}:
        problems.append("ReferencedSeriesSequence does not list exactly the source instances")
    problems += _frame_problems(seg, sources, views)
    frames = int(seg.get("NumberOfFrames", 0))
    expected_bytes = (frames * int(seg.Rows) * int(seg.Columns) + 7) // 8
    if len(seg.PixelData) < expected_bytes or frames != len(views):
        problems.append(f"{frames} frames of pixel data for {len(views)} views")
    if problems:
        raise PermanentError("SEG conformance: " + "; ".join(problems))


def unpacked_frames(seg: Dataset) -> np.ndarray:
    """``(frames, rows, columns)`` bool masks of a BINARY SEG, for checks and tests."""
    frames, rows, columns = int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)
    bits = np.unpackbits(np.frombuffer(seg.PixelData, np.uint8), bitorder="little")
    return bits[: frames * rows * columns].reshape(frames, rows, columns).astype(bool)
