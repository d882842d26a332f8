"""MSA-Net losses (paper Eqs. 2–6).

- ``L_seg = Σ_i w_i (1 − Dice(y_i, gt)) / Σ_i w_i`` over the deep-supervision outputs (Eq. 3 with
  the Table 9 weights; equal weights give the paper's 1/4 Σ).
- ``L_adv = Σ_i w_i mean|D(y_i ∘ image) − D(gt ∘ image)| / Σ_i w_i`` (Eq. 4; the L1 is SegAN's
  mean absolute difference over the critic's multi-scale feature vector, MODEL.md A7).
- ``L(G) = α L_seg + β L_adv`` (Eq. 5), ``L(D) = 1 − L_adv`` with G's outputs detached (Eq. 6).

All tensors are ``(N, 1, H, W)``; losses are computed in float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from msanet_core.config import ModelConfig
from msanet_core.critic import critic_input
from msanet_core.metrics import EIGHT


def soft_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-image soft Dice ``(2Σpg + ε) / (Σp² + Σg² + ε)`` (MODEL.md A11), shape ``(N,)``."""
    p = pred.float().flatten(1)
    g = target.float().flatten(1)
    return (2.0 * (p * g).sum(1) + eps) / ((p * p).sum(1) + (g * g).sum(1) + eps)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 − soft Dice``, averaged over the batch."""
    return 1.0 - soft_dice(pred, target, eps).mean()


def single_output_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    config: ModelConfig,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Segmentation loss of one output: Dice, BCE or Dice + BCE (paper Table 7), or Dice + a
    pixel-weighted BCE (``dice+blob``; ``weight`` from :func:`lesion_weights`, the weighted
    mean; without ``weight`` it is plain BCE)."""
    p = pred.float()
    g = target.float()
    if config.seg_loss == "dice":
        return dice_loss(p, g, config.dice_eps)
    if config.seg_loss == "dice+blob" and weight is not None:
        w = weight.float()
        bce = F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), g, weight=w, reduction="sum")
        return dice_loss(p, g, config.dice_eps) + bce / w.sum().clamp_min(1.0)
    bce = F.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), g)
    if config.seg_loss == "bce":
        return bce
    return dice_loss(p, g, config.dice_eps) + bce


BLOB_REFERENCE_PX = 100.0  # a lesion of this area or more weighs 1 per pixel (MODEL.md §6.3 bins)
BLOB_MAX_WEIGHT = 10.0


def lesion_weights(masks: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Pixel weights of ``dice+blob``: 1, and ``100 / area`` (1 to 10) on the pixels of each
    8-connected lesion of ``masks`` (``(N, H, W)``), so each lesion weighs about alike."""
    out = np.ones(masks.shape, dtype=np.float32)
    for i, mask in enumerate(masks > 0):
        labels, _ = ndimage.label(mask, structure=EIGHT)  # the lesions the metrics count
        areas = np.bincount(labels.ravel()).astype(np.float32)
        weight = np.clip(BLOB_REFERENCE_PX / np.maximum(areas, 1.0), 1.0, BLOB_MAX_WEIGHT)
        weight[0] = 1.0  # background
        out[i] = weight[labels]
    return out


def _weights(config: ModelConfig, n: int) -> tuple[float, ...]:
    if n == len(config.output_weights):
        return config.output_weights
    if n == 1:
        return (1.0,)
    raise ValueError(f"expected 1 or {len(config.output_weights)} outputs, got {n}")


def weighted_mean(values: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """``Σ w_i v_i / Σ w_i`` (keeps device and dtype of the values)."""
    if len(values) != len(weights) or not values:
        raise ValueError(f"{len(values)} values for {len(weights)} weights")
    acc = values[0] * weights[0]
    for w, v in zip(weights[1:], values[1:], strict=True):
        acc = acc + w * v
    return acc / float(sum(weights))


def segmentation_loss(
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    config: ModelConfig,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_seg``: weighted mean over the deep-supervision outputs (paper Eq. 3, Table 9)."""
    losses = [single_output_loss(o, target, config, weight) for o in outputs]
    return weighted_mean(losses, _weights(config, len(outputs)))


def adversarial_loss(
    critic: nn.Module,
    image: torch.Tensor,
    outputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    config: ModelConfig,
    *,
    real_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_adv`` (paper Eq. 4): weighted mean over outputs of ``mean|D(y_i·img) − D(gt·img)|``.

    ``real_features`` (the critic's features of the ground truth) may be passed to avoid
    recomputing them; in the generator step they are a constant.
    """
    mode = config.critic_input
    if real_features is None:
        real_features = critic(critic_input(image, target, mode))
    terms = [
        (critic(critic_input(image, o, mode)).float() - real_features.float()).abs().mean()
        for o in outputs
    ]
    return weighted_mean(terms, _weights(config, len(outputs)))


def generator_loss(
    seg: torch.Tensor, adv: torch.Tensor | None, config: ModelConfig
) -> torch.Tensor:
    """``L(G) = α L_seg + β L_adv`` (paper Eq. 5); ``adv`` None = no adversarial training."""
    if adv is None:
        return config.alpha * seg
    return config.alpha * seg + config.beta * adv


def critic_loss(adv: torch.Tensor) -> torch.Tensor:
    """``L(D) = 1 − L_adv`` (paper Eq. 6); same gradient as SegAN's ``−L_adv``."""
    return 1.0 - adv
