"""DICOM SEG over NM: the FACTS.md encoding, validated by dciodvfy and read back by highdicom."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread

from msanet_core.synth import SyntheticPatient, generate_patient
from pipeline.dicom.conformance import check_seg, unpacked_frames
from pipeline.dicom.nm import ANTERIOR, POSTERIOR, ScanIdentity, build_nm, build_whole_body, save
from pipeline.dicom.seg import DEFAULT_ORIENTATION, ViewMask, build_seg, order_views
from pipeline.dicom.views import View, split_views
from pipeline.errors import PermanentError

DCIODVFY = "/usr/bin/dciodvfy"


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which(DCIODVFY) is None:
        pytest.fail(f"{DCIODVFY} is missing: install it: apt-get install dicom3tools")
    done = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def patient() -> SyntheticPatient:
    return generate_patient(7, 3)


def scan(
    patient: SyntheticPatient, *, head_first: bool = True, single: bool = False
) -> list[Dataset]:
    anterior, posterior = (v.counts for v in patient.views)
    who = ScanIdentity.synthetic(7, 3, patient.patient_id)
    built = build_whole_body(anterior, posterior, who, head_first=head_first, single_frame=single)
    return [as_received(dataset) for dataset in built]


def as_received(dataset: Dataset) -> Dataset:
    """The dataset as a worker reads it: written as a Part 10 file and read back."""
    with tempfile.TemporaryDirectory() as folder:
        return dcmread(save(dataset, Path(folder) / "nm.dcm"))


def truth_masks(
    patient: SyntheticPatient, sources: list[Dataset], head_first: bool
) -> list[ViewMask]:
    images = split_views(sources)
    masks = {}
    for view, image in images.items():
        mask = getattr(patient, view.value).lesion_mask.astype(bool)
        masks[view] = ViewMask(image, mask if head_first else mask[::-1])
    return order_views(masks)


def write_and_read(tmp_path: Path, seg: Dataset, sources: list[Dataset]) -> hd.seg.Segmentation:
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    return hd.seg.segread(tmp_path / "seg.dcm")


@pytest.mark.parametrize("head_first", [True, False], ids=["head_first", "feet_first"])
def test_two_frame_scan_masks_land_on_their_own_frames(
    tmp_path: Path, patient: SyntheticPatient, head_first: bool
) -> None:
    sources = scan(patient, head_first=head_first)
    view_masks = truth_masks(patient, sources, head_first)
    seg = build_seg(sources, view_masks, model_version="msanet-test")
    read = write_and_read(tmp_path, seg, sources)
    nm_uid = sources[0].SOPInstanceUID
    for view_mask in view_masks:
        frame = view_mask.image.frame_number
        pixels = read.get_pixels_by_source_frame(nm_uid, source_frame_numbers=[frame])
        assert np.array_equal(pixels[0, :, :, 0].astype(bool), view_mask.mask), view_mask.image.view
    assert view_masks[1].mask.any(), "the posterior view must carry lesions for this test to bite"


def test_shared_orientation_follows_the_rule_and_frames_have_none(
    patient: SyntheticPatient,
) -> None:
    sources = scan(patient)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    detector_1 = sources[0].DetectorInformationSequence[0].ImageOrientationPatient
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [
        float(v) for v in detector_1
    ]
    assert shared.PixelMeasuresSequence[0].PixelSpacing == sources[0].PixelSpacing
    for frame in seg.PerFrameFunctionalGroupsSequence:
        assert "PlaneOrientationSequence" not in frame


def test_single_frame_views_reference_instances_without_frame_numbers(
    tmp_path: Path, patient: SyntheticPatient
) -> None:
    sources = scan(patient, single=True)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    assert tuple(float(v) for v in orientation.ImageOrientationPatient) == DEFAULT_ORIENTATION
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert "ReferencedFrameNumber" not in source
    read = write_and_read(tmp_path, seg, sources)
    posterior = split_views(sources)[View.POSTERIOR]
    pixels = read.get_pixels_by_source_instance([posterior.sop_instance_uid])
    assert np.array_equal(pixels[0, :, :, 0].astype(bool), patient.posterior.lesion_mask > 0)


def test_views_come_from_detector_codes_not_frame_order(patient: SyntheticPatient) -> None:
    who = ScanIdentity.synthetic(7, 3, patient.patient_id)
    anterior, posterior = (v.counts for v in patient.views)
    reversed_scan = as_received(build_nm([(POSTERIOR, posterior), (ANTERIOR, anterior)], who))
    views = split_views([reversed_scan])
    assert views[View.ANTERIOR].frame_number == 2
    assert np.array_equal(views[View.ANTERIOR].pixels, anterior)


def test_uids_are_deterministic_per_source_model_and_generation(patient: SyntheticPatient) -> None:
    sources = scan(patient)
    masks = truth_masks(patient, sources, True)
    first = build_seg(sources, masks, model_version="msanet-a")
    again = build_seg(sources, masks, model_version="msanet-a")
    other = build_seg(sources, masks, model_version="msanet-b")
    rerun = build_seg(sources, masks, model_version="msanet-a", generation=1)
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (
        again.SOPInstanceUID,
        again.SeriesInstanceUID,
    )
    assert len({first.SOPInstanceUID, other.SOPInstanceUID, rerun.SOPInstanceUID}) == 3
    assert rerun.SeriesNumber == first.SeriesNumber + 1


def _views_of(sources: list[Dataset]) -> set[tuple[str, int | None]]:
    return {(i.sop_instance_uid, i.frame_number) for i in split_views(sources).values()}


def test_the_gate_passes_a_good_seg(patient: SyntheticPatient) -> None:
    sources = scan(patient)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    check_seg(seg, sources, _views_of(sources))
    assert unpacked_frames(seg).shape == (2, 1024, 256)


def test_the_gate_refuses_per_frame_orientations(patient: SyntheticPatient) -> None:
    sources = scan(patient)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    for value, frame in zip(
        ([1, 0, 0, 0, 0, -1], [-1, 0, 0, 0, 0, -1]),
        seg.PerFrameFunctionalGroupsSequence,
        strict=True,
    ):
        orientation = Dataset()
        orientation.ImageOrientationPatient = value
        frame.PlaneOrientationSequence = [orientation]
    with pytest.raises(PermanentError, match="own orientation"):
        check_seg(seg, sources, _views_of(sources))


def test_the_gate_refuses_missing_frame_numbers(patient: SyntheticPatient) -> None:
    sources = scan(patient)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber
    with pytest.raises(PermanentError, match="ReferencedFrameNumber"):
        check_seg(seg, sources, _views_of(sources))


def test_the_gate_refuses_a_wrong_shared_orientation(patient: SyntheticPatient) -> None:
    sources = scan(patient)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient = [
        1,
        0,
        0,
        0,
        1,
        0,
    ]
    with pytest.raises(PermanentError, match="the rule"):
        check_seg(seg, sources, _views_of(sources))


def test_patient_and_study_are_copied_from_the_source(
    tmp_path: Path, patient: SyntheticPatient
) -> None:
    sources = scan(patient)
    seg = build_seg(sources, truth_masks(patient, sources, True), model_version="msanet-test")
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    read = dcmread(tmp_path / "seg.dcm")
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert read[keyword].value == sources[0][keyword].value
    assert read.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert read.SegmentSequence[0].SegmentAlgorithmName == "MSA-Net"
    assert "RecommendedDisplayCIELabValue" in read.SegmentSequence[0]
