"""MSA-Net building blocks: CDC, CRAC, RFB, MSFE, RMS (paper Figs. 3–5, MODEL.md §2.2–2.5).

All blocks keep the spatial size (stride 1, ``padding = dilation`` for 3×3 convolutions) and
take/return ``(N, C, H, W)`` float tensors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """3×3 conv (dilated) → BatchNorm → ReLU; padding keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """U-Net double 3×3 Conv-BN-ReLU: stands in for CDC/MSFE/RMS when an ablation removes them."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels)
        )


class CDC(nn.Sequential):
    """Cascade dilated convolution: six sequential Conv-BN-ReLU, dilations 1,2,4,1,2,4.

    Paper Table 2: receptive fields 3, 7, 15, 17, 21, 29 (stride 1, strictly sequential).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 2, 4, 1, 2, 4)
    ) -> None:
        layers = [
            ConvBNReLU(in_channels if i == 0 else out_channels, out_channels, d)
            for i, d in enumerate(dilations)
        ]
        super().__init__(*layers)


class CRAC(nn.Module):
    """Cascade residual atrous convolution: CDC with two residual adds.

    MODEL.md A3: ``out3 = L3(L2(L1 x)) + L1 x`` and ``out6 = L6(L5(L4 out3)) + L4 out3``
    (paper: residuals "between the 1st and 3rd, and the 4th and 6th layers"); plain adds (A5).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 2, 4, 1, 2, 4)
    ) -> None:
        super().__init__()
        if len(dilations) != 6:
            raise ValueError(f"CRAC needs 6 dilations, got {tuple(dilations)}")
        self.layers = nn.ModuleList(
            ConvBNReLU(in_channels if i == 0 else out_channels, out_channels, d)
            for i, d in enumerate(dilations)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l1, l2, l3, l4, l5, l6 = self.layers
        y1 = l1(x)
        y3 = l3(l2(y1)) + y1
        y4: torch.Tensor = l4(y3)
        out: torch.Tensor = l6(l5(y4)) + y4
        return out


class BasicConv(nn.Sequential):
    """RFBNet ``BasicConv``: Conv(bias=False) → BN(eps 1e-5, momentum 0.01) → optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        relu: bool = True,
        momentum: float = 0.01,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=1e-5, momentum=momentum),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class RFBBranches(nn.Module):
    """The three RFB branches + ``ConvLinear`` + ``shortcut`` (RFBNet ``BasicRFB``, MODEL.md A2).

    Branch equivalent kernels 1, 3, 5 (two 3×3 ≈ 5×5), each closed by a 3×3 conv of dilation
    ``dilations[i]`` (paper: 1, 3, 5). Returns ``scale·ConvLinear(cat(b0,b1,b2)) + shortcut(x)``
    without the final ReLU: MSFE adds the CRAC output first (paper "summed element-wise with the
    residual paths and the CRAC outputs, then ReLU").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int] = (1, 3, 5),
        scale: float = 1.0,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        conv = functools.partial(BasicConv, momentum=bn_momentum)
        inter = max(in_channels // 8, 2)  # RFBNet: in_planes // 8 (floor 2 for tiny widths)
        d0, d1, d2 = dilations
        self.scale = scale
        self.branch0 = nn.Sequential(
            conv(in_channels, 2 * inter, 1),
            conv(2 * inter, 2 * inter, 3, dilation=d0, relu=False),
        )
        self.branch1 = nn.Sequential(
            conv(in_channels, inter, 1),
            conv(inter, 2 * inter, 3),
            conv(2 * inter, 2 * inter, 3, dilation=d1, relu=False),
        )
        mid = (inter // 2) * 3
        self.branch2 = nn.Sequential(
            conv(in_channels, inter, 1),
            conv(inter, mid, 3),
            conv(mid, 2 * inter, 3),
            conv(2 * inter, 2 * inter, 3, dilation=d2, relu=False),
        )
        self.conv_linear = conv(6 * inter, out_channels, 1, relu=False)
        self.shortcut = conv(in_channels, out_channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), dim=1)
        out: torch.Tensor = self.conv_linear(branches) * self.scale + self.shortcut(x)
        return out


class MSFE(nn.Module):
    """Multi-scale feature extraction: ``ReLU(CRAC(x) + RFB(x))`` (paper Fig. 4, MODEL.md §2.4)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        crac_dilations: Sequence[int] = (1, 2, 4, 1, 2, 4),
        rfb_dilations: Sequence[int] = (1, 3, 5),
        *,
        rfb_scale: float = 1.0,
        rfb_bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        self.crac = CRAC(in_channels, out_channels, crac_dilations)
        self.rfb = RFBBranches(
            in_channels, out_channels, rfb_dilations, scale=rfb_scale, bn_momentum=rfb_bn_momentum
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.crac(x) + self.rfb(x))
        return out


class RMS(nn.Module):
    """Residual multi-scale decoder block: three Conv-BN-ReLU, dilations 1, 2, 4.

    MODEL.md A4: ``y1 = L1(x); out = y1 + L3(L2(y1))`` (paper: residuals "after the first and
    third layers"; the first conv changes the channel count, so no projection is needed).
    """

    def __init__(
        self, in_channels: int, out_channels: int, dilations: Sequence[int] = (1, 2, 4)
    ) -> None:
        super().__init__()
        d1, d2, d3 = dilations
        self.l1 = ConvBNReLU(in_channels, out_channels, d1)
        self.l2 = ConvBNReLU(out_channels, out_channels, d2)
        self.l3 = ConvBNReLU(out_channels, out_channels, d3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1: torch.Tensor = self.l1(x)
        out: torch.Tensor = y1 + self.l3(self.l2(y1))
        return out
