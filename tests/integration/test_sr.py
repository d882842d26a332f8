"""The TID 1500 lesion summary SR: validated by dciodvfy, read back with highdicom."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes

from pipeline.dicom.seg import ViewMask, build_seg, order_views
from pipeline.dicom.sr import (
    AREA,
    BONE_SCAN,
    NUMBER_OF_LESIONS,
    ViewSummary,
    build_summary_sr,
)
from pipeline.dicom.views import View, split_views
from pipeline.errors import PermanentError
from tests.integration.dicom_factory import nm_whole_body

DCIODVFY = "/usr/bin/dciodvfy"
MODEL = "msanet-test"
NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
# Full-frame (row, column) boxes of lesions per view: two anterior lesions, none posterior.
LESION_BOXES = {
    View.ANTERIOR: [(slice(300, 320), slice(100, 110)), (slice(400, 405), slice(150, 155))],
    View.POSTERIOR: [],
}


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which(DCIODVFY) is None:
        pytest.fail(f"{DCIODVFY} is missing: install it: apt-get install dicom3tools")
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def two_frame_scan() -> list[Dataset]:
    return [nm_whole_body(frames=2)]


def single_frame_scan() -> list[Dataset]:
    anterior = nm_whole_body(frames=1, view="anterior", seed=1)
    posterior = nm_whole_body(
        frames=1,
        view="posterior",
        seed=2,
        study_uid=anterior.StudyInstanceUID,
        series_uid=anterior.SeriesInstanceUID,
    )
    posterior.InstanceNumber = 2
    return [anterior, posterior]


def masks_and_summaries(
    sources: list[Dataset], boxes: dict[View, list[tuple[slice, slice]]]
) -> tuple[list[ViewMask], list[ViewSummary]]:
    """View masks in SEG frame order and their summaries; one lesion per (disjoint) box.

    Areas are box pixels × pixel area (what ``msanet_core.lesions.find_lesions`` gives for
    disjoint boxes); importing ``msanet_core`` would load torch, which this test does not need.
    """
    by_view = {}
    for view, image in split_views(sources).items():
        mask = np.zeros(image.pixels.shape, dtype=bool)
        for box in boxes[view]:
            mask[box] = True
        by_view[view] = ViewMask(image, mask)
    view_masks = order_views(by_view)
    summaries = []
    for frame, view_mask in enumerate(view_masks, start=1):
        row_mm, column_mm = view_mask.image.pixel_spacing_mm
        areas = [
            (box[0].stop - box[0].start) * (box[1].stop - box[1].start) * row_mm * column_mm
            for box in boxes[view_mask.image.view]
        ]
        summaries.append(ViewSummary.of(view_mask.image, frame, areas))
    return view_masks, summaries


def build(
    sources: list[Dataset],
    boxes: dict[View, list[tuple[slice, slice]]] = LESION_BOXES,
    *,
    generation: int = 0,
) -> tuple[Dataset, Dataset, list[ViewSummary]]:
    view_masks, summaries = masks_and_summaries(sources, boxes)
    seg = build_seg(sources, view_masks, model_version=MODEL, generation=generation)
    sr = build_summary_sr(
        seg, sources, summaries, model_version=MODEL, generation=generation, now=NOW
    )
    return seg, sr, summaries


def write_and_read(folder: Path, sr: Dataset) -> hd.sr.Comprehensive3DSR:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    read = hd.sr.srread(path)
    assert isinstance(read, hd.sr.Comprehensive3DSR)
    return read


def report(read: hd.sr.Comprehensive3DSR) -> hd.sr.MeasurementReport:
    content = read.content
    assert isinstance(content, hd.sr.MeasurementReport)  # TID 1500 is recognised on reading
    return content


def view_groups(
    read: hd.sr.Comprehensive3DSR,
) -> dict[str, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    groups = report(read).get_planar_roi_measurement_groups()
    return {str(group.tracking_identifier): group for group in groups}


def measured(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> tuple[float, float]:
    (count,) = group.get_measurements(name=NUMBER_OF_LESIONS)
    (area,) = group.get_measurements(name=AREA)
    assert (count.unit.value, area.unit.value) == ("{lesions}", "mm2")
    return count.value, area.value


@pytest.fixture(scope="module")
def two_frame(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR]:
    sources = two_frame_scan()
    seg, sr, summaries = build(sources)
    return sources, seg, summaries, write_and_read(tmp_path_factory.mktemp("sr"), sr)


def test_two_frame_scan_reports_count_and_total_area_per_view_on_its_seg_frame(
    two_frame: tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR],
) -> None:
    sources, seg, _, read = two_frame
    groups = view_groups(read)
    assert set(groups) == {"anterior lesions", "posterior lesions"}
    pixel_mm2 = 2.26 * 2.26
    assert measured(groups["anterior lesions"]) == pytest.approx((2, (200 + 25) * pixel_mm2))
    assert measured(groups["posterior lesions"]) == (0, 0)  # an empty view still appears
    for frame, name in enumerate(("anterior lesions", "posterior lesions"), start=1):
        reference = groups[name].referenced_segmentation_frame
        assert reference is not None
        segmentation, source = reference[0], reference[1]
        assert segmentation.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert segmentation.referenced_frame_numbers == [frame]
        assert source.referenced_sop_instance_uid == sources[0].SOPInstanceUID
        assert source.referenced_frame_numbers == [frame]  # DetectorVector [1, 2]
        assert groups[name].finding_type == codes.SCT.NeoplasmMetastatic


def test_the_seg_frames_the_sr_names_hold_those_views(
    two_frame: tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR],
) -> None:
    _, seg, _, read = two_frame
    per_frame = seg.PerFrameFunctionalGroupsSequence
    for group in view_groups(read).values():
        reference = group.referenced_segmentation_frame
        assert reference is not None
        (seg_frame,) = reference[0].referenced_frame_numbers
        derivation = per_frame[seg_frame - 1].DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == reference[1].referenced_sop_instance_uid
        assert [derivation.ReferencedFrameNumber] == reference[1].referenced_frame_numbers


def test_each_lesion_has_its_own_area_group(
    two_frame: tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR],
) -> None:
    sources, _, _, read = two_frame
    groups = report(read).get_image_measurement_groups()
    pixel_mm2 = 2.26 * 2.26
    areas = {}
    for group in groups:
        (area,) = group.get_measurements(name=AREA)
        (source,) = group.source_images
        assert source.referenced_sop_instance_uid == sources[0].SOPInstanceUID
        assert source.referenced_frame_numbers == [1]
        areas[str(group.tracking_identifier)] = area.value
    assert areas == pytest.approx(
        {"anterior lesion 1": 200 * pixel_mm2, "anterior lesion 2": 25 * pixel_mm2}
    )


def test_report_names_the_algorithm_procedure_and_evidence(
    two_frame: tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR],
) -> None:
    sources, seg, _, read = two_frame
    (device,) = report(read).get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = device.observer_identifying_attributes
    assert attributes.name == f"MSA-Net {MODEL}"
    procedures = [
        item.value
        for item in read.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121058"  # DCM Procedure reported
    ]
    assert procedures == [BONE_SCAN]
    evidence = {uid for _, _, uid, _ in read.get_evidence()}
    assert evidence == {sources[0].SOPInstanceUID, seg.SOPInstanceUID}


def test_patient_study_and_series_attributes(
    two_frame: tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR],
) -> None:
    sources, seg, _, read = two_frame
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID"):
        assert read[keyword].value == sources[0][keyword].value
    assert read.SeriesInstanceUID not in {sources[0].SeriesInstanceUID, seg.SeriesInstanceUID}
    assert read.Modality == "SR"
    assert read.Manufacturer == "bonescan"
    assert "not diagnostic" in read.SeriesDescription
    assert (str(read.ContentDate), str(read.ContentTime)) == ("20260304", "050607")
    assert read.SeriesNumber != seg.SeriesNumber
    assert read.VerificationFlag == "UNVERIFIED"


def test_single_frame_views_reference_instances_without_frame_numbers(tmp_path: Path) -> None:
    sources = single_frame_scan()
    _, sr, _ = build(sources, {View.ANTERIOR: [], View.POSTERIOR: LESION_BOXES[View.ANTERIOR]})
    read = write_and_read(tmp_path, sr)
    groups = view_groups(read)
    uids = {view: image.sop_instance_uid for view, image in split_views(sources).items()}
    for frame, view in enumerate((View.ANTERIOR, View.POSTERIOR), start=1):
        reference = groups[f"{view.value} lesions"].referenced_segmentation_frame
        assert reference is not None
        assert reference[0].referenced_frame_numbers == [frame]
        assert reference[1].referenced_sop_instance_uid == uids[view]
        assert reference[1].referenced_frame_numbers is None
    assert measured(groups["anterior lesions"]) == (0, 0)
    assert measured(groups["posterior lesions"])[0] == 2


def test_zero_lesions_give_count_zero_and_area_zero(tmp_path: Path) -> None:
    _, sr, _ = build(two_frame_scan(), {View.ANTERIOR: [], View.POSTERIOR: []})
    read = write_and_read(tmp_path, sr)
    groups = view_groups(read)
    assert {name: measured(group) for name, group in groups.items()} == {
        "anterior lesions": (0, 0),
        "posterior lesions": (0, 0),
    }
    assert report(read).get_image_measurement_groups() == []


def test_same_inputs_give_the_same_uids_and_a_rerun_new_ones(
    two_frame: tuple[list[Dataset], Dataset, list[ViewSummary], hd.sr.Comprehensive3DSR],
) -> None:
    sources, _, _, first = two_frame
    _, again, _ = build(sources)
    _, rerun, _ = build(sources, generation=1)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        first.SOPInstanceUID,
        first.SeriesInstanceUID,
    )
    assert again.file_meta.MediaStorageSOPInstanceUID == again.SOPInstanceUID
    assert tracking_uids(hd.sr.Comprehensive3DSR.from_dataset(again)) == tracking_uids(first)
    assert rerun.SOPInstanceUID != first.SOPInstanceUID
    assert rerun.SeriesNumber == first.SeriesNumber + 1


def tracking_uids(read: hd.sr.Comprehensive3DSR) -> list[str]:
    content = report(read)
    views = [str(group.tracking_uid) for group in content.get_planar_roi_measurement_groups()]
    lesions = [str(group.tracking_uid) for group in content.get_image_measurement_groups()]
    assert len(set(views + lesions)) == len(views + lesions)  # one UID per tracked finding
    return views + lesions


def test_a_source_without_type_2_patient_attributes_still_builds(tmp_path: Path) -> None:
    sources = two_frame_scan()
    for keyword in ("PatientBirthDate", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        delattr(sources[0], keyword)
    sources[0].PatientSex = "U"  # not a defined value: dropped rather than refused
    _, sr, _ = build(sources, {View.ANTERIOR: [], View.POSTERIOR: []})
    write_and_read(tmp_path, sr)
    assert sr.PatientBirthDate is None or sr.PatientBirthDate == ""
    assert dcmread(tmp_path / "sr.dcm").PatientID == "TEST-0001"


def test_a_view_outside_the_seg_or_the_sources_is_refused() -> None:
    sources = two_frame_scan()
    view_masks, summaries = masks_and_summaries(sources, LESION_BOXES)
    seg = build_seg(sources, view_masks, model_version=MODEL)
    anterior = summaries[0]
    for bad, match in (
        (ViewSummary.of(view_masks[0].image, 3, []), "SEG frame 3"),
        (
            ViewSummary(View.ANTERIOR, 1, anterior.source_sop_class_uid, "1.2.3", 1, []),
            "not among sources",
        ),
        (ViewSummary.of(view_masks[0].image, 1, [-1.0]), ">= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            build_summary_sr(seg, sources, [bad], model_version=MODEL)
    with pytest.raises(ValueError, match="two summaries"):
        build_summary_sr(seg, sources, [anterior, anterior], model_version=MODEL)


def test_a_source_header_highdicom_refuses_is_a_permanent_error() -> None:
    sources = two_frame_scan()
    with pytest.warns(UserWarning, match="VR DA"):  # pydicom warns and keeps the value
        sources[0].StudyDate = "20261345"  # month 13: fails the same way on every retry
    with (
        pytest.raises(PermanentError, match="not built: month"),
        pytest.warns(UserWarning, match="VR DA"),
    ):
        build(sources, {View.ANTERIOR: [], View.POSTERIOR: []})
