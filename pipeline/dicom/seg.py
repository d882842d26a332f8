"""One BINARY DICOM Segmentation per whole-body scan, referencing the original NM frames.

highdicom 0.28 cannot take an NM source (highdicom #284: NM keeps its geometry in
DetectorInformationSequence), so the SEG is written with pydicom, following the encoding measured
in FACTS.md "DICOM SEG over NM": full-size frames (the thorax mask pasted back), per-frame
DerivationImageSequence › SourceImageSequence with the NM SOP Instance UID and
ReferencedFrameNumber, a shared PixelMeasures, ONE shared PlaneOrientation chosen by
:func:`plane_orientation`, and never per-frame orientations (OHIF then silently mirrors the
posterior overlay). highdicom supplies what it supports: the segment description with SCT codes
and CIELab colour, AlgorithmIdentification and ContributingEquipment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from pipeline import __version__
from pipeline.dicom.views import DEFAULT_ORIENTATION, View, ViewImage

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

SEGMENT_LABEL = "Bone metastasis"
SERIES_DESCRIPTION = "MSA-Net bone metastases (research use, not diagnostic)"
# Copied from the source so the SEG files under the same patient and study.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
LESION_COLOUR = hd.color.CIELabColor(60.0, 70.0, 50.0)  # a warm red over the grey scan


@dataclass(frozen=True)
class ViewMask:
    """A full-frame binary mask for one view, with the view it was computed on."""

    image: ViewImage
    mask: npt.NDArray[np.bool_]


def plane_orientation(source: Dataset) -> tuple[float, ...]:
    """The ONE orientation every SEG frame shares (FACTS.md: what OHIF displays correctly).

    The NM's top-level ImageOrientationPatient if present; else, for a multi-frame NM, detector
    item 1's ImageOrientationPatient (OHIF copies it to every frame); else ``[1,0,0,0,1,0]``.
    """
    top = source.get("ImageOrientationPatient")
    if top is not None and len(top) == 6:
        return tuple(float(v) for v in top)
    detectors = source.get("DetectorInformationSequence") or []
    if int(source.get("NumberOfFrames", 1) or 1) > 1 and detectors:
        value = detectors[0].get("ImageOrientationPatient")
        if value is not None and len(value) == 6:
            return tuple(float(v) for v in value)
    return DEFAULT_ORIENTATION


def derived_uid(*parts: str) -> str:
    """A UID fixed by ``parts``: PS3.5 B.2 UUID-derived form ``2.25.<128-bit integer>``."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def seg_uids(source_uids: Sequence[str], model_version: str, generation: int) -> tuple[str, str]:
    """Deterministic (series, SOP instance) UIDs of the SEG: a rerun makes the same objects."""
    entropy = [*sorted(source_uids), model_version, str(generation)]
    return derived_uid(*entropy, "seg-series"), derived_uid(*entropy, "seg-instance")


def _code_item(code: hd.sr.CodedConcept) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _segment(model_version: str) -> Dataset:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="MSA-Net",
        family=codes.cid7162.ArtificialIntelligence,
        version=model_version,
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.NeoplasmMetastatic,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.BoneOfThorax],
        display_color=LESION_COLOUR,
    )


def _frame_item(view_mask: ViewMask, stack_position: int) -> Dataset:
    image = view_mask.image
    source = Dataset()
    source.ReferencedSOPClassUID = image.sop_class_uid
    source.ReferencedSOPInstanceUID = image.sop_instance_uid
    if image.frame_number is not None:
        source.ReferencedFrameNumber = image.frame_number
    source.SpatialLocationsPreserved = "YES"  # the frame is the source frame, pixel for pixel
    source.PurposeOfReferenceCodeSequence = [
        _code_item(
            hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
        )
    ]
    derivation = Dataset()
    derivation.DerivationCodeSequence = [
        _code_item(hd.sr.CodedConcept("113076", "DCM", "Segmentation"))
    ]
    derivation.SourceImageSequence = [source]
    content = Dataset()
    content.StackID = "1"
    content.InStackPositionNumber = stack_position
    content.DimensionIndexValues = [1, stack_position]
    identification = Dataset()
    identification.ReferencedSegmentNumber = 1
    item = Dataset()
    item.DerivationImageSequence = [derivation]
    item.FrameContentSequence = [content]
    item.SegmentIdentificationSequence = [identification]
    return item


def _dimensions(dataset: Dataset) -> None:
    organisation_uid = derived_uid(str(dataset.SOPInstanceUID), "dimension-organisation")
    organisation = Dataset()
    organisation.DimensionOrganizationUID = organisation_uid
    dataset.DimensionOrganizationSequence = [organisation]
    segment = Dataset()
    segment.DimensionOrganizationUID = organisation_uid
    segment.DimensionIndexPointer = 0x0062000B  # ReferencedSegmentNumber
    segment.FunctionalGroupPointer = 0x0062000A  # SegmentIdentificationSequence
    segment.DimensionDescriptionLabel = "Segment"
    position = Dataset()
    position.DimensionOrganizationUID = organisation_uid
    position.DimensionIndexPointer = 0x00209057  # InStackPositionNumber: the view
    position.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    position.DimensionDescriptionLabel = "View"
    dataset.DimensionIndexSequence = [segment, position]


def _shared_groups(image: ViewImage, orientation_value: tuple[float, ...]) -> Dataset:
    # Without PixelMeasures the whole OHIF app goes black when the SEG opens (FACTS.md).
    measures = Dataset()
    measures.PixelSpacing = list(image.pixel_spacing_mm)
    measures.SliceThickness = 1  # required by PixelMeasures in SEG; planar scan, nominal
    orientation = Dataset()
    orientation.ImageOrientationPatient = list(orientation_value)
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orientation]
    return shared


def shared_orientation(sources: Sequence[Dataset]) -> tuple[float, ...]:
    # FACTS.md: two single-frame instances → [1,0,0,0,1,0] (OHIF ignores their detector values).
    return plane_orientation(sources[0]) if len(sources) == 1 else DEFAULT_ORIENTATION


def _pack(masks: Sequence[npt.NDArray[np.bool_]]) -> bytes:
    # PS3.5 8.1.1: BINARY frames are bit-packed, little-endian bit order, frames back to back.
    bits = np.concatenate([np.asarray(mask, dtype=bool).ravel() for mask in masks])
    packed = np.packbits(bits, bitorder="little").tobytes()
    return packed + b"\x00" * (len(packed) % 2)  # even length


def build_seg(
    sources: Sequence[Dataset],
    view_masks: Sequence[ViewMask],
    *,
    model_version: str,
    generation: int = 0,
    series_number: int = 9901,
    now: dt.datetime | None = None,
) -> Dataset:
    """Build the SEG for one scan.

    Parameters
    ----------
    sources
        The NM (or SC with Modality NM) instance(s) of the scan, headers enough.
    view_masks
        One full-frame ``(rows, columns)`` mask per view, in the order the frames are written
        (anterior first by convention); rows and columns match the source frame.
    model_version, generation
        Name the algorithm version and make the UIDs deterministic per (source, model, rerun).
    """
    if not view_masks:
        raise ValueError("a SEG needs at least one view mask")
    first = sources[0]
    rows, columns = view_masks[0].mask.shape
    for view_mask in view_masks:
        if view_mask.mask.shape != view_mask.image.pixels.shape:
            raise ValueError(
                f"{view_mask.image.view} mask {view_mask.mask.shape} does not match its frame "
                f"{view_mask.image.pixels.shape}"
            )
    series_uid, instance_uid = seg_uids(
        [str(source.SOPInstanceUID) for source in sources], model_version, generation
    )
    moment = now or dt.datetime.now(dt.UTC)
    seg = _header(first, instance_uid, moment)
    seg.SeriesInstanceUID = series_uid
    seg.SeriesNumber = series_number + generation
    _equipment(seg, model_version)
    _image(seg, rows, columns, model_version)
    seg.NumberOfFrames = len(view_masks)
    shared = _shared_groups(view_masks[0].image, shared_orientation(sources))
    seg.SharedFunctionalGroupsSequence = [shared]
    seg.PerFrameFunctionalGroupsSequence = [
        _frame_item(view_mask, position) for position, view_mask in enumerate(view_masks, start=1)
    ]
    _dimensions(seg)
    seg.ReferencedSeriesSequence = _referenced_series(sources)
    seg.PixelData = _pack([view_mask.mask for view_mask in view_masks])
    return seg


def _header(first: Dataset, instance_uid: str, moment: dt.datetime) -> Dataset:
    seg = Dataset()
    seg.file_meta = FileMetaDataset()
    seg.file_meta.MediaStorageSOPClassUID = UID(SEGMENTATION_STORAGE)
    seg.file_meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    if "SpecificCharacterSet" in first:
        seg.SpecificCharacterSet = first.SpecificCharacterSet
    seg.SOPClassUID = SEGMENTATION_STORAGE
    seg.SOPInstanceUID = instance_uid
    date, time = moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")
    seg.InstanceCreationDate = seg.SeriesDate = seg.ContentDate = date
    seg.InstanceCreationTime = seg.SeriesTime = seg.ContentTime = time
    for keyword in PATIENT_STUDY_KEYWORDS:
        setattr(seg, keyword, first.get(keyword, ""))
    seg.Modality = "SEG"
    seg.SeriesDescription = SERIES_DESCRIPTION
    seg.InstanceNumber = 1
    return seg


def _equipment(seg: Dataset, model_version: str) -> None:
    # Enhanced General Equipment (all Type 1 in the Segmentation IOD) and who contributed.
    seg.Manufacturer = "bonescan"
    seg.ManufacturerModelName = "bonescan MSA-Net"
    seg.DeviceSerialNumber = "0"
    seg.SoftwareVersions = [__version__, model_version]
    seg.ContributingEquipmentSequence = [
        hd.ContributingEquipment(
            manufacturer="bonescan",
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name="bonescan MSA-Net",
            software_versions=[__version__, model_version],
            contribution_description="Automatic bone metastasis segmentation (MSA-Net)",
        )
    ]


def _image(seg: Dataset, rows: int, columns: int, model_version: str) -> None:
    # Segmentation Image module (PS3.3 C.8.20.2) with BINARY bit-packed pixels.
    seg.ImageType = ["DERIVED", "PRIMARY"]
    seg.ContentLabel = "METASTASES"
    seg.ContentDescription = "Bone metastases, thorax"
    seg.ContentCreatorName = ""
    seg.SegmentationType = "BINARY"
    seg.SamplesPerPixel = 1
    seg.PhotometricInterpretation = "MONOCHROME2"
    seg.Rows = rows
    seg.Columns = columns
    seg.BitsAllocated = 1
    seg.BitsStored = 1
    seg.HighBit = 0
    seg.PixelRepresentation = 0
    seg.LossyImageCompression = "00"
    seg.SegmentSequence = [_segment(model_version)]


def _referenced_series(sources: Sequence[Dataset]) -> DicomSequence:
    # Common Instance Reference: without it OHIF shows only an "unsupported" thumbnail.
    by_series: dict[str, list[Dataset]] = {}
    for source in sources:
        instance = Dataset()
        instance.ReferencedSOPClassUID = source.SOPClassUID
        instance.ReferencedSOPInstanceUID = source.SOPInstanceUID
        by_series.setdefault(str(source.SeriesInstanceUID), []).append(instance)
    items = []
    for series_uid, instances in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedInstanceSequence = instances
        items.append(item)
    return DicomSequence(items)


def order_views(masks: dict[View, ViewMask]) -> list[ViewMask]:
    """Anterior first, then posterior: the frame order bonescan writes."""
    return [masks[view] for view in (View.ANTERIOR, View.POSTERIOR) if view in masks]
