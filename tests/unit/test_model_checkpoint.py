"""Checkpoints (weights_only, validated fields) and the Segmenter (load once, predict many)."""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from msanet_core import CheckpointError, ModelConfig, Segmenter, build_generator, load_checkpoint
from msanet_core.checkpoint import save_checkpoint
from msanet_core.inference import normalise_counts


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: two spin-waiting OpenMP threads crawl on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


META = {"epochs": 3, "seed": 42, "data": "unit test", "metrics": {"val_dsc": np.float64(0.5)}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny")
    g = build_generator(config).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, config=config, generator=g, metadata=dict(META))
    return path, g


def _crops(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(30, size=(n, 256, 256)).astype(np.uint16)


def test_round_trip_keeps_config_version_metadata_and_weights(saved: Any) -> None:
    path, g = saved
    ckpt = load_checkpoint(path)
    assert ckpt.config == ModelConfig.preset("tiny")
    assert re.fullmatch(r"msanet-tiny-\d{8}-[0-9a-f]{8}", ckpt.model_version)
    assert ckpt.metadata["metrics"] == {"val_dsc": 0.5}
    for k, v in g.state_dict().items():
        torch.testing.assert_close(ckpt.generator[k], v)


def test_segmenter_predicts_what_the_generator_predicts(saved: Any) -> None:
    path, g = saved
    seg = Segmenter.load(path, device="cpu")
    crops = _crops(3)
    probs = seg.predict(crops)
    assert probs.shape == (3, 256, 256)
    assert probs.dtype == np.float32
    with torch.no_grad():
        x = torch.from_numpy(normalise_counts(crops)).unsqueeze(1)
        expected = g(x).squeeze(1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert seg.predict(crops[0]).shape == (256, 256)
    masks = seg.predict_masks(crops)
    np.testing.assert_array_equal(masks, (probs >= 0.5).astype(np.uint8))
    assert seg.threshold == 0.5
    assert seg.model_version == load_checkpoint(path).model_version


def test_segmenter_rejects_wrong_crop_shapes(saved: Any) -> None:
    seg = Segmenter.load(saved[0], device="cpu")
    with pytest.raises(ValueError, match=r"\(N, 256, 256\)"):
        seg.predict(np.zeros((2, 128, 128)))


def test_normalisation_scales_each_crop_by_its_own_percentile() -> None:
    crops = np.stack([np.arange(256 * 256).reshape(256, 256), np.zeros((256, 256))])
    out = normalise_counts(crops)
    p = np.percentile(crops[0], 99.5)
    np.testing.assert_allclose(out[0], np.clip(crops[0] / p, 0, 1), rtol=1e-6)
    assert out[1].max() == 0.0


def _tamper(path: Path, tmp_path: Path, change: Any) -> Path:
    raw = torch.load(path, weights_only=True)
    change(raw)
    out = tmp_path / "bad.pt"
    torch.save(raw, out)
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("model_version"), "'model_version' is missing"),
        (lambda r: r.pop("config"), "'config' is missing"),
        (lambda r: r.update(format_version=99), "'format_version' is 99"),
        (lambda r: r["config"].update(seg_loss="focal"), "seg_loss"),
        (lambda r: r["config"].pop("alpha"), "alpha"),
        (lambda r: r["metadata"].pop("seed"), "metadata.seed"),
        (lambda r: r["generator"].pop("heads.3.weight"), "'generator' does not match"),
        (lambda r: r.update(model_version=7), "'model_version' has type int"),
    ],
)
def test_bad_fields_fail_with_a_message_naming_them(
    saved: Any, tmp_path: Path, change: Any, message: str
) -> None:
    bad = _tamper(saved[0], tmp_path, change)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        Segmenter.load(bad, device="cpu")


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("pwned",))


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"format_version": 1, "x": Evil()}, handle, protocol=2)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_save_refuses_metadata_without_required_keys(tmp_path: Path) -> None:
    config = ModelConfig.preset("tiny")
    with pytest.raises(ValueError, match="seed"):
        save_checkpoint(
            tmp_path / "x.pt",
            config=config,
            generator=build_generator(config),
            metadata={"epochs": 1, "data": "d", "metrics": {}},
        )
