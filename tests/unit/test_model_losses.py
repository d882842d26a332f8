"""Losses checked against hand-computed values (paper Eqs. 3–6, MODEL.md A7, A11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from msanet_core import ModelConfig, build_critic
from msanet_core.critic import critic_input
from msanet_core.losses import (
    adversarial_loss,
    critic_loss,
    dice_loss,
    generator_loss,
    lesion_weights,
    segmentation_loss,
    single_output_loss,
    soft_dice,
)


class Flatten(nn.Module):
    """A stand-in critic whose feature vector is its input: L_adv becomes a plain mean |a − b|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


P = _t([[1.0, 0.5], [0.0, 0.0]])
G = _t([[1.0, 1.0], [0.0, 0.0]])


def test_soft_dice_by_hand() -> None:
    # Σpg = 1.5, Σp² = 1.25, Σg² = 2
    assert float(soft_dice(P, G, eps=0.0)) == pytest.approx(3.0 / 3.25)
    assert float(soft_dice(P, G, eps=1.0)) == pytest.approx(4.0 / 4.25)
    assert float(dice_loss(P, G, eps=1.0)) == pytest.approx(1 - 4.0 / 4.25)


def test_empty_crop_predicted_empty_has_zero_dice_loss() -> None:
    zero = torch.zeros(1, 1, 4, 4)
    assert float(dice_loss(zero, zero)) == 0.0


def test_dice_is_averaged_over_the_batch() -> None:
    p = torch.cat([P, torch.zeros_like(P)])
    g = torch.cat([G, G])
    expected = 1 - (4.0 / 4.25 + 1.0 / 3.0) / 2
    assert float(dice_loss(p, g)) == pytest.approx(expected)


def test_bce_and_dice_plus_bce_by_hand() -> None:
    half = torch.full((1, 1, 2, 2), 0.5)
    base = ModelConfig.preset("tiny")
    assert float(single_output_loss(half, G, base.replace(seg_loss="bce"))) == pytest.approx(
        math.log(2), rel=1e-5
    )
    dice = 1 - (2 * 1.0 + 1) / (1.0 + 2 + 1)
    both = float(single_output_loss(half, G, base.replace(seg_loss="dice+bce")))
    assert both == pytest.approx(dice + math.log(2), rel=1e-5)


def test_lesion_weights_make_each_lesion_weigh_about_alike() -> None:
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 2:7, 2:7] = 1  # 25 px: 100 / 25 = 4 per pixel
    masks[0, 10:30, 10:30] = 1  # 400 px: clipped to 1
    masks[0, 35, 35] = 1  # 1 px: clipped to 10
    weights = lesion_weights(masks)
    assert weights.dtype == np.float32
    assert weights.shape == masks.shape
    assert np.all(weights[0, 2:7, 2:7] == 4.0)
    assert np.all(weights[0, 10:30, 10:30] == 1.0)
    assert weights[0, 35, 35] == 10.0
    assert weights[0][masks[0] == 0].tolist() == [1.0] * int((masks[0] == 0).sum())
    assert np.all(weights[1] == 1.0)  # a negative crop: plain BCE


def test_dice_plus_blob_is_dice_plus_the_weighted_mean_bce() -> None:
    config = ModelConfig.preset("tiny").replace(seg_loss="dice+blob")
    pred = _t([[0.9, 0.2], [0.1, 0.1]])
    weight = _t([[4.0, 4.0], [1.0, 1.0]])
    bce = [-math.log(0.9), -math.log(0.2), -math.log(0.9), -math.log(0.9)]
    expected_bce = sum(w * b for w, b in zip([4, 4, 1, 1], bce, strict=True)) / 10
    dice = float(dice_loss(pred, G))
    got = float(single_output_loss(pred, G, config, weight))
    assert got == pytest.approx(dice + expected_bce, rel=1e-5)
    # without weights (as in validation) it is Dice + plain BCE
    plain = float(single_output_loss(pred, G, config))
    assert plain == pytest.approx(dice + sum(bce) / 4, rel=1e-5)


def test_segmentation_loss_is_the_weighted_mean_over_outputs() -> None:
    outs = [torch.zeros_like(P), P, G, G]  # dice losses 1 − 1/3, 1 − 4/4.25, 0, 0
    losses = [1 - 1 / 3, 1 - 4 / 4.25, 0.0, 0.0]
    equal = ModelConfig.preset("tiny")
    assert float(segmentation_loss(outs, G, equal)) == pytest.approx(sum(losses) / 4)
    case2 = equal.with_ablation("t9-case2")  # 0.4 0.4 0.1 0.1
    expected = (0.4 * losses[0] + 0.4 * losses[1]) / 1.0
    assert float(segmentation_loss(outs, G, case2)) == pytest.approx(expected)


def test_adversarial_loss_is_mean_abs_feature_difference_over_outputs() -> None:
    config = ModelConfig.preset("tiny")
    image = torch.full((1, 1, 2, 2), 2.0)
    outs = [torch.full_like(image, v) for v in (0.0, 0.5, 1.0, 0.25)]
    # gt·img = [2, 2, 0, 0]; y·img = 2v everywhere → mean |2v − gt·img| = (2|2v − 2| + 2|2v|) / 4
    per = [(abs(2 * v - 2) + abs(2 * v)) / 2 for v in (0.0, 0.5, 1.0, 0.25)]
    adv = adversarial_loss(Flatten(), image, outs, G, config)
    assert float(adv) == pytest.approx(sum(per) / 4)
    assert float(critic_loss(adv)) == pytest.approx(1 - sum(per) / 4)
    seg = torch.tensor(0.3)
    assert float(generator_loss(seg, adv, config)) == pytest.approx(0.3 + sum(per) / 4)
    weighted = config.replace(alpha=0.7, beta=0.3)
    assert float(generator_loss(seg, adv, weighted)) == pytest.approx(0.21 + 0.3 * sum(per) / 4)
    assert float(generator_loss(seg, None, weighted)) == pytest.approx(0.21)


def test_adversarial_loss_with_the_segan_critic_matches_a_manual_computation() -> None:
    config = ModelConfig.preset("tiny")
    critic = build_critic(config).eval()
    torch.manual_seed(0)
    image = torch.rand(2, 1, 64, 64)
    gt = (torch.rand(2, 1, 64, 64) > 0.8).float()
    outs = [torch.rand(2, 1, 64, 64) for _ in range(4)]
    real = critic(image * gt)
    manual = sum((critic(image * o) - real).abs().mean() for o in outs) / 4
    torch.testing.assert_close(adversarial_loss(critic, image, outs, gt, config), manual)


@pytest.mark.parametrize("mode", ["image_x_mask", "concat", "sum", "mask"])
def test_critic_input_modes_of_table_11(mode: str) -> None:
    image = torch.full((1, 1, 2, 2), 3.0)
    mask = G
    x = critic_input(image, mask, mode)
    expected = {
        "image_x_mask": image * mask,
        "concat": torch.cat([image, mask], 1),
        "sum": image + mask,
        "mask": mask,
    }[mode]
    torch.testing.assert_close(x, expected)


def test_unknown_critic_input_mode_is_named() -> None:
    with pytest.raises(ValueError, match="product"):
        critic_input(P, G, "product")
