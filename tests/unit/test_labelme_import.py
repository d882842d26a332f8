"""`bonescan data import-labelme` over the hand-written fixtures in tests/fixtures/labelme/."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from msanet_core.dataset import SPLITS, load_sample
from msanet_core.synth import generate_patient
from pipeline.cli.main import app
from pipeline.dicom.nm import ScanIdentity, build_whole_body, save

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "labelme"
runner = CliRunner()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """Fixture JSONs plus the scans they annotate: two PNG views and one 2-frame NM file."""
    for path in FIXTURES.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    first = generate_patient(4, 0)
    for view in first.views:
        Image.fromarray(view.counts).save(tmp_path / f"p001_{view.view}.png")
    second = generate_patient(4, 1)
    who = ScanIdentity.synthetic(4, 1, "P002")
    save(
        build_whole_body(second.anterior.counts, second.posterior.counts, who)[0],
        tmp_path / "p002.dcm",
    )
    third = generate_patient(4, 2)
    who = ScanIdentity.synthetic(4, 2, "P003")
    pair = build_whole_body(third.anterior.counts, third.posterior.counts, who, single_frame=True)
    save(pair[0], tmp_path / "p003" / "view1.dcm")
    return tmp_path


def _samples(out: Path) -> dict[str, tuple[str, Path]]:
    return {p.stem: (split, p) for split in SPLITS for p in (out / split).glob("*.npz")}


def test_import_writes_one_sample_per_annotated_view_split_by_patient(workspace: Path) -> None:
    out = workspace / "out"
    result = runner.invoke(
        app, ["data", "import-labelme", str(workspace), "--out", str(out), "--split", "0.5,0.5,0"]
    )
    assert result.exit_code == 0, result.output
    samples = _samples(out)
    assert sorted(samples) == [
        "P002_anterior",
        "P002_posterior",
        "P003_anterior",
        "p001_anterior",
        "p001_posterior",
    ]
    assert samples["p001_anterior"][0] == samples["p001_posterior"][0]
    assert samples["P002_anterior"][0] == samples["P002_posterior"][0]
    assert {split for split, _ in samples.values()} == {"train", "val"}
    assert "imported 5 views of 3 patients" in result.stdout
    assert "nowhere_ant.png" in result.stderr  # the missing image is skipped, named


def test_polygon_crossing_the_crop_edge_is_clipped_and_reported(workspace: Path) -> None:
    out = workspace / "out"
    result = runner.invoke(app, ["data", "import-labelme", str(workspace), "--out", str(out)])
    sample = load_sample(_samples(out)["p001_anterior"][1])
    top = sample.crop_top
    assert 430 < top + 256 < 470  # the fixture polygon spans rows 430–470
    rows = np.flatnonzero(sample.mask.any(axis=1))
    assert rows.max() == 255  # clipped at the bottom edge, not dropped
    assert sample.mask[255, 100:131].all()
    assert sample.mask[292 - top : 307 - top, 136:147].any()  # the inner triangle
    assert "lesion pixels lie outside the thorax crop" in result.stderr
    assert "skipped line" in result.stderr
    assert sample.benign is not None  # "Benign" matches case-insensitively
    assert sample.benign[248 - top : 255 - top, 58:65].all()
    assert not (sample.mask & sample.benign).any()


def test_image_without_annotations_becomes_an_empty_mask(workspace: Path) -> None:
    out = workspace / "out"
    runner.invoke(app, ["data", "import-labelme", str(workspace), "--out", str(out)])
    sample = load_sample(_samples(out)["p001_posterior"][1])
    assert sample.mask.sum() == 0
    assert sample.benign is None
    assert sample.image.sum() > 0


def test_dicom_views_come_from_flags_or_file_names(workspace: Path) -> None:
    out = workspace / "out"
    runner.invoke(app, ["data", "import-labelme", str(workspace), "--out", str(out)])
    ant = load_sample(_samples(out)["P002_anterior"][1])
    post = load_sample(_samples(out)["P002_posterior"][1])
    assert ant.mask[260 - ant.crop_top : 271 - ant.crop_top, 110:121].all()
    assert ant.mask.sum() == 121 + int(ant.mask[:, 140:].sum())  # rectangle + circle
    assert 45 <= int(ant.mask[:, 140:].sum()) <= 75  # circle r = 4 (+ half-pixel outline)
    assert post.mask.sum() == 7 * 9
    truth = generate_patient(4, 1).posterior.counts
    np.testing.assert_array_equal(post.image, truth[post.crop_top : post.crop_top + 256])


def test_lesion_labels_can_be_restricted(workspace: Path) -> None:
    out = workspace / "out"
    args = [
        "data",
        "import-labelme",
        str(workspace),
        "--out",
        str(out),
        "--lesion-label",
        "metastasis",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert load_sample(_samples(out)["P002_anterior"][1]).mask.sum() == 0
    assert load_sample(_samples(out)["p001_anterior"][1]).mask.sum() > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--patient-pattern", "(unclosed"], "--patient-pattern"),
        (["--patient-pattern", "^(.+)_ant"], "(?P<patient>"),
        (["--split", "1,1,1"], "summing to 1"),
    ],
)
def test_bad_options_are_one_line_errors(workspace: Path, extra: list[str], message: str) -> None:
    result = runner.invoke(app, ["data", "import-labelme", str(workspace), *extra])
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_folder_without_usable_annotations_fails(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "missing_image_ant.json", tmp_path)
    result = runner.invoke(app, ["data", "import-labelme", str(tmp_path)])
    assert result.exit_code == 1
    assert "no annotation could be imported" in result.stderr


def test_single_frame_dicom_view_comes_from_its_view_code(workspace: Path) -> None:
    out = workspace / "out"
    runner.invoke(app, ["data", "import-labelme", str(workspace), "--out", str(out)])
    sample = load_sample(_samples(out)["P003_anterior"][1])
    assert sample.mask.sum() == 7 * 5
    truth = generate_patient(4, 2).anterior.counts
    np.testing.assert_array_equal(sample.image, truth[sample.crop_top : sample.crop_top + 256])
