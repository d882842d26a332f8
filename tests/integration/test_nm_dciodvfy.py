"""Every NM file `bonescan data synth` writes passes dciodvfy, and reads back as the right views."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from msanet_core.synth import generate_patient
from pipeline.dicom.synth_export import SynthOptions, write_cohort
from pipeline.dicom.views import View, split_views

DCIODVFY = "/usr/bin/dciodvfy"
MODES = {
    "two_frame": SynthOptions(seed=11),
    "single_frame": SynthOptions(seed=11, single_frame=True),
    "feet_first": SynthOptions(seed=11, head_first=False),
}


def _dciodvfy(path: Path) -> list[str]:
    if shutil.which(DCIODVFY) is None:
        pytest.fail(f"{DCIODVFY} is missing: install it: apt-get install dicom3tools")
    done = subprocess.run(
        [DCIODVFY, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.fixture(scope="module", params=list(MODES))
def cohort(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    list(write_cohort(4, out, MODES[request.param]))
    return out


def test_every_written_file_passes_dciodvfy_without_errors_or_warnings(cohort: Path) -> None:
    files = sorted((cohort / "dicom").glob("*.dcm"))
    assert len(files) in (4, 8)
    for path in files:
        report = _dciodvfy(path)
        problems = [line for line in report if line.startswith(("Error", "Warning"))]
        assert problems == [], (path.name, problems)
        assert "NMImage" in report


def test_views_read_back_with_the_generated_counts(cohort: Path) -> None:
    patient = generate_patient(11, 1)
    files = sorted((cohort / "dicom").glob(f"{patient.patient_id}*.dcm"))
    datasets: list[pydicom.Dataset] = [pydicom.dcmread(f) for f in files]
    head_first = "feet_first" not in cohort.name
    for ds in datasets:
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.20"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
        assert ds.BitsStored == ds.BitsAllocated == 16
        assert ds.PatientID == patient.patient_id
        assert ds.PatientName != ""
    views = split_views(datasets)  # DetectorVector → detector item → ViewCodeSequence
    for view, truth in ((View.ANTERIOR, patient.anterior), (View.POSTERIOR, patient.posterior)):
        pixels = views[view].pixels if head_first else views[view].pixels[::-1]
        np.testing.assert_array_equal(pixels, truth.counts)
        assert views[view].head_first is head_first
        assert views[view].pixel_spacing_mm == (2.26, 2.26)
    if len(datasets) == 1:
        assert [int(v) for v in datasets[0].DetectorVector] == [1, 2]
    else:
        codes = [ds.DetectorInformationSequence[0].ViewCodeSequence[0].CodeValue for ds in datasets]
        assert codes == ["399321004", "399001007"]
