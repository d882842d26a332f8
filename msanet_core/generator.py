"""The MSA-Net generator (paper Fig. 2, MODEL.md §2.1).

Encoder: layer 1 = CDC, layers 2–5 = MSFE, 2×2 average pooling between layers, the 1/2, 1/4, 1/8
average-pooled input concatenated after layers 1–3 (input pyramid). Decoder: bilinear ×2 up,
concat with the encoder skip, RMS block; a 1×1 conv head on each of the four decoder blocks,
bilinearly resized to the input size, then sigmoid (deep supervision, MODEL.md A6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msanet_core.blocks import CDC, MSFE, RMS, DoubleConv
from msanet_core.config import UNET_OVERRIDES, ModelConfig


class MSANetGenerator(nn.Module):
    """MSA-Net generator.

    ``forward(x)`` takes ``(N, 1, H, W)`` normalised images, ``H`` and ``W`` divisible by 16.
    In training mode it returns a list of ``config.num_outputs`` probability maps
    ``(N, 1, H, W)``, deepest first (D1 … D4), the final map last; in eval mode only the
    final map, a tensor ``(N, 1, H, W)`` of probabilities in [0, 1].
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        enc = config.encoder_widths
        dec = config.decoder_widths
        pyr = 1 if config.use_pyramid else 0
        in_ch = [1, enc[0] + pyr, enc[1] + pyr, enc[2] + pyr, enc[3]]
        self.encoder = nn.ModuleList()
        for level, (cin, cout) in enumerate(zip(in_ch, enc, strict=True)):
            self.encoder.append(self._encoder_block(level, cin, cout))
        self.decoder = nn.ModuleList()
        self.heads = nn.ModuleList()
        below = enc[4]
        for i, cout in enumerate(dec):
            skip = enc[3 - i]
            block: nn.Module
            if config.use_rms:
                block = RMS(below + skip, cout, config.rms_dilations)
            else:
                block = DoubleConv(below + skip, cout)
            self.decoder.append(block)
            # paper "Deep supervision": 1×1 conv to 1 channel on every decoder level
            if config.deep_supervision or i == len(dec) - 1:
                self.heads.append(nn.Conv2d(cout, 1, 1))
            below = cout

    def _encoder_block(self, level: int, cin: int, cout: int) -> nn.Module:
        c = self.config
        if level == 0:
            return CDC(cin, cout, c.cdc_dilations) if c.use_cdc else DoubleConv(cin, cout)
        if c.use_msfe:
            return MSFE(
                cin,
                cout,
                c.crac_dilations,
                c.rfb_dilations,
                rfb_scale=c.rfb_scale,
                rfb_bn_momentum=c.rfb_bn_momentum,
            )
        return DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        size = x.shape[-2:]
        skips: list[torch.Tensor] = []
        h = x
        for level, block in enumerate(self.encoder):
            h = block(h)
            if level < 4:
                skips.append(h)
                h = F.avg_pool2d(h, 2)
                if self.config.use_pyramid and level < 3:
                    # paper "Input image pyramid": 1/2, 1/4, 1/8 of the input after layers 1–3
                    h = torch.cat((h, F.avg_pool2d(x, 2 ** (level + 1))), dim=1)
        logits: list[torch.Tensor] = []
        last = len(self.decoder) - 1
        ds = self.config.deep_supervision
        for i, block in enumerate(self.decoder):
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = block(torch.cat((h, skips[3 - i]), dim=1))
            if ds and (self.training or i == last):
                logits.append(self._head(self.heads[i], h, size))
            elif i == last:
                logits.append(self._head(self.heads[0], h, size))
        probs = [torch.sigmoid(z) for z in logits]
        return probs if self.training else probs[-1]

    @staticmethod
    def _head(head: nn.Module, h: torch.Tensor, size: torch.Size) -> torch.Tensor:
        z: torch.Tensor = head(h)
        if z.shape[-2:] != size:
            z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        return z


def build_generator(config: ModelConfig) -> MSANetGenerator:
    """Build the MSA-Net generator described by ``config`` (weights: PyTorch default init)."""
    return MSANetGenerator(config)


def build_unet(config: ModelConfig) -> MSANetGenerator:
    """A plain U-Net (double 3×3 convs, avg-pool, bilinear up, one head) of ``config``'s widths."""
    return MSANetGenerator(config.replace(name=f"{config.name}-unet", **UNET_OVERRIDES))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
