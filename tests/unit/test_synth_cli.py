"""`bonescan data synth` and `bonescan data stats` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from msanet_core.dataset import SPLITS, load_sample
from msanet_core.synth import generate_patient
from pipeline.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    args = ["data", "synth", "--patients", "10", "--out", str(out), "--seed", "9", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 10 patients" in result.output
    return out


def test_synth_writes_dicom_masks_params_and_training_crops(cohort: Path) -> None:
    assert len(list((cohort / "dicom").glob("*.dcm"))) == 10
    assert len(list((cohort / "params").glob("*.json"))) == 10
    assert len(list((cohort / "masks").glob("*.npz"))) == 20
    crops = [p for split in SPLITS for p in (cohort / split).glob("*.npz")]
    assert len(crops) == 20
    sample = load_sample(crops[0])
    assert sample.image.shape == sample.mask.shape == (256, 256)
    assert sample.benign is not None
    with np.load(cohort / "masks" / f"{sample.patient_id}_{sample.view}.npz") as masks:
        full = masks["lesion"]
    np.testing.assert_array_equal(full[sample.crop_top : sample.crop_top + 256], sample.mask)


def test_both_views_of_a_patient_share_a_split(cohort: Path) -> None:
    where: dict[str, set[str]] = {}
    for split in SPLITS:
        for path in (cohort / split).glob("*.npz"):
            where.setdefault(path.stem.rsplit("_", 1)[0], set()).add(split)
    assert len(where) == 10
    assert all(len(splits) == 1 for splits in where.values())
    manifest = json.loads((cohort / "manifest.json").read_text())
    assert list(manifest["split"].values()).count("train") in (6, 7)  # 0.7 of 10, rounding


def test_patient_k_is_the_same_whatever_n(cohort: Path) -> None:
    patient = generate_patient(9, 4)
    with np.load(cohort / "masks" / f"{patient.patient_id}_anterior.npz") as masks:
        np.testing.assert_array_equal(masks["lesion"], patient.anterior.lesion_mask)
    params = json.loads((cohort / "params" / f"{patient.patient_id}.json").read_text())
    assert params == json.loads(json.dumps(patient.params))


def test_stats_of_a_written_cohort_print_each_reference(cohort: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(cohort), "--json"])
    data = json.loads(result.stdout)
    assert {row["name"] for row in data["stats"]} >= {"counts_per_view", "bone_to_soft"}
    assert data["patients"] == 10
    assert result.exit_code == (0 if all(row["ok"] for row in data["stats"]) else 1)


def test_stats_in_memory_pass_within_tolerance() -> None:
    result = runner.invoke(app, ["data", "stats", "--patients", "40", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "bone_to_soft" in result.output
    assert "3.4" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "synth", "-n", "2", "--out", "{tmp}", "--split", "0.5,0.2"], "three"),
        (["data", "stats"], "either a DIRECTORY"),
        (["data", "stats", "{tmp}"], "manifest.json not found"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
