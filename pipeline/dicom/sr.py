"""The lesion summary as a TID 1500 Measurement Report, for PACS and viewers that cannot show SEG.

One Comprehensive 3D SR per scan, written beside the SEG of :mod:`pipeline.dicom.seg`. The
document is the DICOM "Measurement Report" (PS3.16 TID 1500) that highdicom builds:

- observation context: the device observer is the algorithm (MSA-Net + model version), no
  person observer: nobody has verified the result (VerificationFlag ``UNVERIFIED``);
- procedure reported: SCT 41747008 "Bone scan";
- per view ONE TID 1410 planar ROI group whose ROI is the view's SEG frame (DCM 121214
  "Referenced Segmentation Frame", with the NM source image + frame as DCM 121233 "Source
  Image for Segmentation"). It carries the lesion count (SCT 246206008 "Number of lesions",
  UCUM ``{lesions}``) and the area of that ROI, i.e. the total lesion area (SCT 42798000
  "Area", UCUM ``mm2``). A view without lesions still gets its group: count 0, area 0. The
  frame implies the SEG's one segment, so Referenced Segment Number is left out (PS3.3
  Table 10-3 allows it only without a frame number; dciodvfy flags highdicom's default);
- per lesion one TID 1501 group (tracking identifier "anterior lesion 1", …, in the order
  given: largest first from ``find_lesions``) with its own Area and the NM source image +
  frame as "Source". Per-lesion areas are NOT put into the view's TID 1410 group: every
  measurement there is a measurement *of that ROI* (the whole frame's mask), so a second
  "Area" would contradict the total, and the SEG has no per-lesion segment a TID 1410 group
  could point at.

Finding type is the SEG's segmented property type (SCT 14799000 "Neoplasm, metastatic"),
category SCT 49755003 "Morphologically abnormal structure", finding site the SEG's anatomic
region (SCT 272710004 "Bone of thorax": the model sees the thoracic crop only).

UIDs are derived from the SEG's SOP Instance UID (itself fixed by source, model version and
generation), so a rerun of the same inputs makes the same SR, tracking UIDs included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from pipeline import __version__
from pipeline.dicom.seg import SEGMENTATION_STORAGE, derived_uid
from pipeline.dicom.views import View, ViewImage
from pipeline.errors import PermanentError

COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
SERIES_DESCRIPTION = "MSA-Net lesion summary (research use, not diagnostic)"
ALGORITHM_NAME = "MSA-Net"

# Codes, all from standard schemes (SCT = SNOMED CT, DCM = PS3.16, UCUM).
BONE_SCAN = hd.sr.CodedConcept("41747008", "SCT", "Bone scan")
NUMBER_OF_LESIONS = hd.sr.CodedConcept("246206008", "SCT", "Number of lesions")
AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
LESIONS_UNIT = hd.sr.CodedConcept("{lesions}", "UCUM", "lesions")  # a UCUM annotated unity
SQUARE_MILLIMETRE = hd.sr.CodedConcept("mm2", "UCUM", "square millimeter")
METASTATIC_NEOPLASM = hd.sr.CodedConcept("14799000", "SCT", "Neoplasm, metastatic")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
BONE_OF_THORAX = hd.sr.CodedConcept("272710004", "SCT", "Bone of thorax")
REFERENCED_SEGMENTATION_FRAME = "121214"  # DCM, TID 1410 row 7
SEGMENT_NUMBER = 1  # the SEG's one segment, "Bone metastasis"
# Attributes highdicom reads from the first evidence item without a default (Type 2 in the
# Patient and General Study modules, so a source may lack them).
_TYPE_2_PATIENT_STUDY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class ViewSummary:
    """What the SR says about one view: where its mask is and how large its lesions are.

    ``seg_frame_number`` is the 1-based SEG frame holding this view's mask (build_seg writes the
    views in :func:`pipeline.dicom.seg.order_views` order, so anterior is frame 1).
    ``source_frame_number`` is the view's 1-based frame in a multi-frame NM, ``None`` for a
    single-frame source. ``lesion_areas_mm2`` has one area per connected component (mm², the
    order is kept: :func:`msanet_core.lesions.find_lesions` gives largest first).
    """

    view: View
    seg_frame_number: int
    source_sop_class_uid: str
    source_sop_instance_uid: str
    source_frame_number: int | None
    lesion_areas_mm2: Sequence[float]

    @classmethod
    def of(
        cls, image: ViewImage, seg_frame_number: int, lesion_areas_mm2: Sequence[float]
    ) -> ViewSummary:
        """The summary of ``image``'s view, whose mask is SEG frame ``seg_frame_number``."""
        return cls(
            view=image.view,
            seg_frame_number=seg_frame_number,
            source_sop_class_uid=image.sop_class_uid,
            source_sop_instance_uid=image.sop_instance_uid,
            source_frame_number=image.frame_number,
            lesion_areas_mm2=tuple(lesion_areas_mm2),
        )

    @property
    def frame_numbers(self) -> list[int] | None:
        """The source frame as highdicom's image references take it (``None``: whole instance)."""
        return None if self.source_frame_number is None else [self.source_frame_number]


def sr_uids(seg: Dataset) -> tuple[str, str]:
    """Deterministic (series, SOP instance) UIDs of the SR of ``seg``."""
    seg_uid = str(seg.SOPInstanceUID)
    return derived_uid(seg_uid, "sr", "series"), derived_uid(seg_uid, "sr", "instance")


def _check(seg: Dataset, sources: Sequence[Dataset], views: Sequence[ViewSummary]) -> None:
    if str(seg.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise ValueError(f"seg is not a Segmentation Storage object: {seg.get('SOPClassUID')}")
    if not sources:
        raise ValueError("an SR needs the source instance(s) of the scan")
    if not views:
        raise ValueError("an SR needs at least one view summary")
    frames = int(seg.get("NumberOfFrames", 1) or 1)
    source_uids = {str(source.SOPInstanceUID) for source in sources}
    seen: set[View] = set()
    for summary in views:
        if summary.view in seen:
            raise ValueError(f"two summaries for the {summary.view} view")
        seen.add(summary.view)
        if not 1 <= summary.seg_frame_number <= frames:
            raise ValueError(
                f"{summary.view}: SEG frame {summary.seg_frame_number} not in 1..{frames}"
            )
        if summary.source_sop_instance_uid not in source_uids:
            raise ValueError(
                f"{summary.view}: source {summary.source_sop_instance_uid} is not among sources"
            )
        if any(not area >= 0 for area in summary.lesion_areas_mm2):  # NaN fails too
            raise ValueError(f"{summary.view}: lesion areas must be >= 0 mm²")


def _algorithm(model_version: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=ALGORITHM_NAME,
        version=model_version,
        family=codes.cid7162.ArtificialIntelligence,
        manufacturer="bonescan",
    )


def _observation_context(model_version: str) -> hd.sr.ObservationContext:
    # TID 1004: the device observer is the algorithm; its UID names this algorithm version.
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("bonescan", ALGORITHM_NAME, model_version, "device-observer"),
        name=f"{ALGORITHM_NAME} {model_version}",
        manufacturer_name="bonescan",
        model_name=ALGORITHM_NAME,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _finding_site() -> list[hd.sr.FindingSite]:
    return [hd.sr.FindingSite(anatomic_location=BONE_OF_THORAX)]


def _view_group(
    seg: Dataset, summary: ViewSummary, model_version: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    areas = [float(area) for area in summary.lesion_areas_mm2]
    segment = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=SEGMENTATION_STORAGE,
        sop_instance_uid=str(seg.SOPInstanceUID),
        frame_number=summary.seg_frame_number,
        segment_number=SEGMENT_NUMBER,
        source_image=hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=summary.source_sop_class_uid,
            referenced_sop_instance_uid=summary.source_sop_instance_uid,
            referenced_frame_numbers=summary.frame_numbers,
        ),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(str(seg.SOPInstanceUID), "sr", summary.view.value, "tracking"),
            identifier=f"{summary.view.value} lesions",
        ),
        referenced_segment=segment,
        finding_type=METASTATIC_NEOPLASM,
        finding_category=ABNORMAL_STRUCTURE,
        finding_sites=_finding_site(),
        algorithm_id=_algorithm(model_version),
        measurements=[
            hd.sr.Measurement(name=NUMBER_OF_LESIONS, value=len(areas), unit=LESIONS_UNIT),
            # The ROI is every lesion of the view, so its Area is the total lesion area.
            hd.sr.Measurement(name=AREA, value=sum(areas), unit=SQUARE_MILLIMETRE),
        ],
    )
    _drop_segment_number(group)
    return group


def _drop_segment_number(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> None:
    # highdicom writes Referenced Segment Number beside Referenced Frame Number; PS3.3 Table 10-3
    # allows it only when no frame is given (the frame already implies its one segment), and
    # dciodvfy reports it as an error.
    for item in group[0].ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == REFERENCED_SEGMENTATION_FRAME:
            reference = item.ReferencedSOPSequence[0]
            if "ReferencedFrameNumber" in reference and "ReferencedSegmentNumber" in reference:
                del reference.ReferencedSegmentNumber


def _lesion_groups(
    seg: Dataset, summary: ViewSummary, model_version: str
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    source = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=summary.source_sop_class_uid,
        referenced_sop_instance_uid=summary.source_sop_instance_uid,
        referenced_frame_numbers=summary.frame_numbers,
    )
    groups = []
    for number, area in enumerate(summary.lesion_areas_mm2, start=1):
        tracking = hd.sr.TrackingIdentifier(
            uid=derived_uid(
                str(seg.SOPInstanceUID), "sr", summary.view.value, "lesion", str(number)
            ),
            identifier=f"{summary.view.value} lesion {number}",
        )
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking,
                finding_type=METASTATIC_NEOPLASM,
                finding_category=ABNORMAL_STRUCTURE,
                finding_sites=_finding_site(),
                algorithm_id=_algorithm(model_version),
                measurements=[
                    hd.sr.Measurement(name=AREA, value=float(area), unit=SQUARE_MILLIMETRE)
                ],
                source_images=[source],
            )
        )
    return groups


def _patient_header(source: Dataset) -> Dataset:
    """The first source without pixels, with the Type 2 patient/study attributes present.

    highdicom copies patient and study from the first evidence item and reads some of them
    without a default; a scanner may leave them out (Type 2) or send a PatientSex highdicom
    refuses (only M, F, O are defined values).
    """
    header = Dataset()
    for element in source:
        if element.keyword != "PixelData":
            header.add(element)
    for keyword in _TYPE_2_PATIENT_STUDY:
        if keyword not in header:
            setattr(header, keyword, None)
    if str(header.PatientSex or "") not in {"M", "F", "O"}:
        header.PatientSex = None
    return header


def build_summary_sr(
    seg: Dataset,
    sources: Sequence[Dataset],
    views: Sequence[ViewSummary],
    *,
    model_version: str,
    generation: int = 0,
    series_number: int = 9951,
    now: dt.datetime | None = None,
) -> Dataset:
    """Build the TID 1500 lesion summary SR of one scan.

    Parameters
    ----------
    seg
        The scan's SEG from :func:`pipeline.dicom.seg.build_seg` (same sources, model version
        and generation); every view group points at one of its frames.
    sources
        The NM (or SC with Modality NM) instance(s) of the scan; the first gives patient and
        study.
    views
        One summary per view, in report order (anterior first by convention). A view with no
        lesions still appears, with count 0 and area 0 mm².
    model_version, generation
        Name the algorithm version; ``generation`` numbers reruns (series number
        ``series_number + generation``, like the SEG). UIDs come from the SEG's UID, so the
        same inputs give the same SR.
    now
        Content date and time (UTC); default the current time.

    Raises
    ------
    ValueError
        If a view points outside the SEG or at an instance that is not among ``sources``.
    PermanentError
        If highdicom refuses the source headers (e.g. a StudyDate that is not a date).
    """
    _check(seg, sources, views)
    try:
        sr = _build(
            seg,
            sources,
            views,
            model_version=model_version,
            series_number=series_number + generation,
            now=now,
        )
    except ValueError as error:
        # highdicom refuses what it finds in the source headers: fails the same way on retry.
        raise PermanentError(
            f"summary SR of SEG {seg.SOPInstanceUID} not built: {error}"
        ) from error
    return sr


def _build(
    seg: Dataset,
    sources: Sequence[Dataset],
    views: Sequence[ViewSummary],
    *,
    model_version: str,
    series_number: int,
    now: dt.datetime | None,
) -> Dataset:
    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [_view_group(seg, summary, model_version) for summary in views]
    for summary in views:
        groups.extend(_lesion_groups(seg, summary, model_version))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(model_version),
        procedure_reported=BONE_SCAN,
        imaging_measurements=groups,
    )
    series_uid, instance_uid = sr_uids(seg)
    moment = now or dt.datetime.now(dt.UTC)
    evidence = [_patient_header(sources[0]), *sources[1:], seg]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=instance_uid,
        instance_number=1,
        manufacturer="bonescan",
        is_complete=True,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name="bonescan MSA-Net",
        software_versions=[__version__, model_version],
        content_date=moment.date(),
        content_time=moment.time().replace(microsecond=0),
        series_date=moment.date(),
        series_time=moment.time().replace(microsecond=0),
        contributing_equipment=[_processing_equipment(model_version)],
    )
    sr.InstanceCreationDate, sr.InstanceCreationTime = sr.ContentDate, sr.ContentTime
    sr.file_meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    return sr


def _processing_equipment(model_version: str) -> hd.ContributingEquipment:
    return hd.ContributingEquipment(
        manufacturer="bonescan",
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name="bonescan MSA-Net",
        software_versions=[__version__, model_version],
        contribution_description="Automatic bone metastasis lesion summary (MSA-Net)",
    )
