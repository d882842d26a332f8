"""``bonescan segment FILE…`` as a user runs it: the real command, real files, dciodvfy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from tests.integration.conftest import REPO
from tests.integration.test_pipeline import dciodvfy_errors, write_scan


def run(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "segment", *map(str, args)],
        env={**env, "PYTHONPATH": str(REPO), "BONESCAN_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_segment_writes_a_valid_seg_and_preview_per_scan_and_reports_bad_files(
    clean_env: dict[str, str], tiny_weights: Path, tmp_path: Path
) -> None:
    two_frame = write_scan(tmp_path, 0)
    pair_dir = tmp_path / "pair"
    pair_dir.mkdir()
    pair = write_scan(pair_dir, 1, single_frame=True)
    not_dicom = tmp_path / "notes.txt"
    not_dicom.write_text("not a scan")
    out = tmp_path / "out"

    result = run(clean_env, *two_frame, *pair, not_dicom, "--weights", tiny_weights, "--out", out)

    assert result.returncode == 1  # one file failed; the scans still ran
    assert result.stderr.splitlines()[0].startswith(f"error: {not_dicom}: not a readable DICOM")
    segs = sorted(out.glob("SEG_*.dcm"))
    assert len(segs) == 2
    for seg_path in segs:
        assert dciodvfy_errors(seg_path) == []
        assert seg_path.with_suffix(".png").is_file()
    references = {
        item.ReferencedSOPInstanceUID
        for seg_path in segs
        for series in dcmread(seg_path).ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    sources = {dcmread(path).SOPInstanceUID for path in [*two_frame, *pair]}
    assert references == sources  # the pair is one scan: one SEG over both files
    assert "2 scan(s) done" in result.stdout

    again = run(clean_env, *two_frame, "--weights", tiny_weights, "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert [p.name for p in (tmp_path / "again").glob("SEG_*.dcm")] == [
        p.name for p in segs if p.name in again.stdout
    ]  # deterministic UIDs: the same scan gives the same SEG


def test_segment_with_missing_weights_is_one_line_and_exit_1(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    scan = write_scan(tmp_path, 0)
    result = run(clean_env, *scan, "--weights", tmp_path / "missing.pt", "--out", tmp_path / "o")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: cannot load the model:")
