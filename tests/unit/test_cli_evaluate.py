"""``bonescan evaluate`` end to end on synthetic crops and a tiny checkpoint, and its user errors.

The checkpoint is an untrained ``tiny`` generator: its probabilities sit in a narrow band, so the
tests threshold at their median (through ``--threshold``) to get a prediction that is neither
empty nor everything. The expected numbers come from ``msanet_core.metrics.evaluate`` run on the
same probabilities here, not from the command.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from typer.testing import CliRunner

from msanet_core.checkpoint import save_checkpoint
from msanet_core.config import ModelConfig
from msanet_core.dataset import load_sample
from msanet_core.generator import build_generator, count_parameters
from msanet_core.inference import Segmenter
from msanet_core.metrics import confusion, evaluate, scores
from pipeline.cli.evaluate import CSV_FIELDS
from pipeline.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # 2 shared cores: a second spinning OpenMP thread only slows us


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    args = ["data", "synth", "--patients", "4", "--out", str(out), "--seed", "3",
            "--split", "0,0,1", "--workers", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    metadata = {"epochs": 0, "seed": 0, "data": "none (untrained)", "metrics": {}}
    save_checkpoint(path, config=config, generator=build_generator(config), metadata=metadata)
    return path


class Expected:
    """What the command must report, computed directly with Segmenter + metrics.evaluate."""

    def __init__(self, weights: Path, data: Path) -> None:
        segmenter = Segmenter.load(weights, device="cpu")
        self.parameters = count_parameters(segmenter.model)
        self.version = segmenter.model_version
        samples = [load_sample(p) for p in sorted((data / "test").glob("*.npz"))]
        self.names = [s.name for s in samples]
        probs = segmenter.predict(np.stack([s.image for s in samples]))
        self.threshold = float(np.median(probs))
        self.pred: npt.NDArray[np.bool_] = probs >= self.threshold
        self.gt = np.stack([s.mask for s in samples]) > 0
        self.metrics = evaluate(self.pred, self.gt)
        self.dsc = scores(confusion(self.pred, self.gt))["dsc"]


@pytest.fixture(scope="module")
def expected(weights: Path, data: Path) -> Expected:
    return Expected(weights, data)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory: pytest.TempPathFactory, weights: Path, data: Path,
              expected: Expected) -> tuple[str, Path]:  # fmt: skip
    out = tmp_path_factory.mktemp("eval")
    args = ["evaluate", "--weights", str(weights), "--data", str(data), "--out", str(out),
            "--worst", "3", "--threshold", repr(expected.threshold), "--device", "cpu",
            "--threads", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout, out


def _same(reported: Any, direct: Any) -> bool:
    if isinstance(direct, dict):
        return set(reported) == set(direct) and all(_same(reported[k], direct[k]) for k in direct)
    if isinstance(direct, tuple | list):
        return list(reported) == list(direct)
    if isinstance(direct, float) and math.isnan(direct):
        return reported is None  # strict JSON: NaN is written as null
    return bool(reported == pytest.approx(direct, rel=1e-12, abs=1e-12))


def test_table_shows_every_headline_number(table_run: tuple[str, Path], expected: Expected) -> None:
    stdout, _ = table_run
    for label in ("pooled DSC", "pooled precision", "pooled recall", "mean per-image DSC",
                  "lesion sensitivity", "FP lesions per image", "HD95 mm",
                  "sensitivity, small lesions", "sensitivity, medium lesions",
                  "sensitivity, large lesions", "images (patients)", "parameters"):  # fmt: skip
        assert label in stdout, label
    assert expected.version in stdout
    assert f"{expected.parameters:,}" in stdout
    assert f"{expected.metrics['dsc']:.4f}" in stdout
    assert "8 (4)" in stdout


def test_metrics_json_agrees_with_msanet_core_metrics(
    table_run: tuple[str, Path], expected: Expected, weights: Path
) -> None:
    report = json.loads((table_run[1] / "metrics.json").read_text())
    assert _same(report["metrics"], expected.metrics)
    assert report["model_version"] == expected.version
    assert report["parameters"] == expected.parameters
    assert report["images"] == 8
    assert report["patients"] == 4
    assert report["split"] == "test"
    assert report["threshold"] == expected.threshold
    assert report["weights"] == str(weights)


def test_per_image_csv_has_one_row_per_crop(
    table_run: tuple[str, Path], expected: Expected
) -> None:
    with (table_run[1] / "per_image.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_FIELDS
        rows = list(reader)
    assert [r["name"] for r in rows] == expected.names
    assert [f"{r['patient']}_{r['view']}" for r in rows] == expected.names
    np.testing.assert_allclose([float(r["dsc"]) for r in rows], expected.dsc, rtol=1e-12)
    assert sum(int(r["gt_lesions"]) for r in rows) == expected.metrics["lesion_gt_lesions"]
    assert sum(int(r["detected"]) for r in rows) == expected.metrics["lesion_detected"]
    fps = sum(int(r["false_positives"]) for r in rows)
    assert fps == expected.metrics["lesion_false_positives"]
    finite = [float(r["hd95_mm"]) for r in rows if r["hd95_mm"]]
    assert len(finite) == expected.metrics["hd95_images"]


def test_worst_overlays_are_the_lowest_dsc_crops(
    table_run: tuple[str, Path], expected: Expected
) -> None:
    pngs = sorted((table_run[1] / "worst").glob("*.png"))
    order = sorted(range(8), key=lambda i: (expected.dsc[i], expected.names[i]))[:3]
    assert [p.name for p in pngs] == [
        f"{rank:02d}_{expected.names[i]}.png" for rank, i in enumerate(order, start=1)
    ]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_on_a_folder_of_crops_writes_next_to_the_weights(
    weights: Path, data: Path, expected: Expected
) -> None:
    args = ["evaluate", "--weights", str(weights), "--data", str(data / "test"), "--json",
            "--worst", "0", "--threshold", repr(expected.threshold), "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    out = weights.parent / "eval-test"
    assert printed == json.loads((out / "metrics.json").read_text())
    assert printed["split"] is None
    assert printed["crops"] == str(data / "test")
    assert _same(printed["metrics"], expected.metrics)
    assert list((out / "worst").glob("*.png")) == []
    assert len((out / "per_image.csv").read_text().splitlines()) == 9


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_weights", "weights not found"),
        ("not_a_checkpoint", "cannot read checkpoint"),
        ("no_crops", "no .npz crops"),
        ("missing_data", "data directory not found"),
        ("bad_split", "--split must be one of train, val, test"),
        ("bad_threshold", "--threshold must be in (0, 1]"),
        ("bad_worst", "--worst must be ≥ 0"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(
    case: str, message: str, tmp_path: Path, weights: Path, data: Path
) -> None:
    empty = tmp_path / "empty"
    (empty / "test").mkdir(parents=True)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    w, d, extra = weights, data, []
    match case:
        case "missing_weights":
            w = tmp_path / "nope.pt"
        case "not_a_checkpoint":
            w = junk
        case "no_crops":
            d = empty
        case "missing_data":
            d = tmp_path / "nowhere"
        case "bad_split":
            extra = ["--split", "holdout"]
        case "bad_threshold":
            extra = ["--threshold", "0"]
        case "bad_worst":
            extra = ["--worst", "-1"]
    args = ["evaluate", "--weights", str(w), "--data", str(d), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args + extra)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.strip().count("\n") == 0, result.output
    assert result.output.startswith("error: ")
    assert message in result.output
