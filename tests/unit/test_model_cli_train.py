"""``bonescan train``: a tiny run end to end, and user errors as one line with exit code 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from msanet_core.dataset import Sample, save_sample
from pipeline.cli.main import app


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crops")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for i in range(n):
            image = rng.poisson(20, (256, 256)).astype(np.uint16)
            mask = np.zeros((256, 256), np.uint8)
            mask[100:110, 60:75] = 1
            image[mask > 0] += 80
            save_sample(Sample(image, mask, f"{split}{i}", "posterior"), root / split)
    return root


def test_tiny_run_writes_checkpoints_logs_and_curves(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1",
         "--batch-size", "3", "--threads", "1", "--no-pyramid", "--alpha", "0.7"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("best.pt", "last.pt", "log.json", "log.csv", "curves.png"):
        assert (out / name).is_file(), name
    log = json.loads((out / "log.json").read_text())
    assert log["config"]["use_pyramid"] is False
    assert log["config"]["alpha"] == 0.7
    assert log["epochs"][0]["epoch"] == 1
    assert "msanet-tiny-" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent/crops"], "data directory not found"),
        (["--ablation", "t99"], "ablation 't99'"),
        (["--output-weights", "1,1"], "output_weights"),
        (["--crac-dilations", "1,two"], "--crac-dilations"),
        (["--resume", "/nonexistent/last.pt"], "checkpoint not found"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(
    data: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = ["train", "--data", str(data), "--out", str(tmp_path / "o"), "--preset", "tiny"]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.output
    assert "Traceback" not in result.output


def test_empty_split_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "d" / "train").mkdir(parents=True)
    result = CliRunner().invoke(
        app, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "no samples" in result.output
