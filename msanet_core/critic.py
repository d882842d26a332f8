"""The SegAN critic (Xue et al. 2018, ``NetC``; MODEL.md §2.6) and its input modes (paper Table 11).

The critic maps a masked image ``(N, C, H, W)`` to a multi-scale feature vector ``(N, F)``: the
flattened input and the outputs of six strided convolutions, each multiplied by its weight
(SegAN code: 1, 1, 2, 2, 2, 2, 4; MODEL.md A7). The adversarial loss is the mean absolute
difference of two such vectors (:func:`msanet_core.losses.adversarial_loss`).
"""

from __future__ import annotations

import torch
from torch import nn

from msanet_core.config import ModelConfig

# SegAN NetC: (kernel, stride, padding) of c1 … c6; c1 has no BatchNorm.
_LAYERS = ((7, 2, 3), (5, 2, 2), (4, 2, 1), (4, 2, 1), (4, 2, 1), (3, 2, 1))


class SegANCritic(nn.Module):
    """SegAN critic returning the weighted, flattened multi-scale features ``(N, F)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList()
        cin = config.critic_in_channels
        for i, ((k, s, p), cout) in enumerate(zip(_LAYERS, config.critic_widths, strict=True)):
            ops: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)]
            if i > 0:
                ops.append(nn.BatchNorm2d(cout))
            ops.append(nn.LeakyReLU(0.2, inplace=True))
            self.layers.append(nn.Sequential(*ops))
            cin = cout
        self.feature_weights = config.critic_feature_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        w = self.feature_weights
        features = [w[0] * x.reshape(n, -1)]
        h = x
        for weight, layer in zip(w[1:], self.layers, strict=True):
            h = layer(h)
            features.append(weight * h.reshape(n, -1))
        return torch.cat(features, dim=1)

    @torch.no_grad()
    def clip_weights(self) -> None:
        """SegAN: clamp every parameter to ±``config.weight_clip`` after each critic step (A8)."""
        c = self.config.weight_clip
        if c > 0:
            for p in self.parameters():
                p.clamp_(-c, c)


def critic_input(image: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Compose the critic input from an image and a (predicted or true) mask (paper Table 11).

    Parameters
    ----------
    image, mask
        ``(N, 1, H, W)``; image normalised to [0, 1], mask probabilities or {0, 1}.
    mode
        ``image_x_mask`` (proposed), ``concat`` (2 channels), ``sum`` or ``mask``.
    """
    if mode == "image_x_mask":
        return image * mask
    if mode == "concat":
        return torch.cat((image, mask), dim=1)
    if mode == "sum":
        return image + mask
    if mode == "mask":
        return mask
    raise ValueError(f"critic input mode {mode!r} is not one of image_x_mask, concat, sum, mask")


def build_critic(config: ModelConfig) -> SegANCritic:
    """Build the SegAN critic described by ``config``."""
    return SegANCritic(config)
