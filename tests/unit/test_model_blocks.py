"""MSA-Net blocks: shapes, receptive fields measured from gradients, residual wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from msanet_core.blocks import CDC, CRAC, MSFE, RMS, RFBBranches


def _positive_weights(module: nn.Module) -> None:
    """All conv weights 1/fan-in so every ReLU stays open and every tap carries gradient."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.constant_(m.weight, 1.0 / (m.in_channels * m.kernel_size[0] ** 2))


def _receptive_field(layers: nn.Module, size: int = 65) -> int:
    """Width of the input region whose gradient w.r.t. the centre output pixel is non-zero."""
    x = torch.ones(1, 1, size, size, requires_grad=True)
    y = layers(x)
    y[0, :, size // 2, size // 2].sum().backward()
    assert x.grad is not None
    cols = (x.grad[0, 0].abs() > 0).any(dim=0).nonzero()
    rows = (x.grad[0, 0].abs() > 0).any(dim=1).nonzero()
    width = int(cols.max() - cols.min() + 1)
    assert width == int(rows.max() - rows.min() + 1)
    return width


def test_cdc_receptive_fields_measured_from_gradients_are_paper_table_2() -> None:
    cdc = CDC(1, 4).eval()
    _positive_weights(cdc)
    measured = [_receptive_field(nn.Sequential(*list(cdc)[: k + 1])) for k in range(6)]
    assert measured == [3, 7, 15, 17, 21, 29]


def test_crac_residuals_do_not_change_the_receptive_field() -> None:
    crac = CRAC(1, 4).eval()
    _positive_weights(crac)
    assert _receptive_field(crac) == 29


def test_crac_adds_layer1_to_layer3_and_layer4_to_layer6() -> None:
    crac = CRAC(3, 4).eval()
    x = torch.randn(1, 3, 16, 16)
    l1, l2, l3, l4, l5, l6 = crac.layers
    y3 = l3(l2(l1(x))) + l1(x)
    expected = l6(l5(l4(y3))) + l4(y3)
    torch.testing.assert_close(crac(x), expected)


def test_rms_is_first_layer_plus_layers_two_and_three() -> None:
    rms = RMS(6, 4).eval()
    x = torch.randn(2, 6, 16, 16)
    y1 = rms.l1(x)
    torch.testing.assert_close(rms(x), y1 + rms.l3(rms.l2(y1)))
    dilations = [m[0].dilation for m in (rms.l1, rms.l2, rms.l3)]
    assert dilations == [(1, 1), (2, 2), (4, 4)]


def test_rfb_branches_close_with_dilations_1_3_5() -> None:
    rfb = RFBBranches(64, 32)
    closing = [rfb.branch0[-1][0], rfb.branch1[-1][0], rfb.branch2[-1][0]]
    assert [c.dilation for c in closing] == [(1, 1), (3, 3), (5, 5)]
    assert rfb.conv_linear[0].in_channels == 6 * (64 // 8)


@pytest.mark.parametrize("block", [CDC(5, 8), CRAC(5, 8), MSFE(5, 8), RMS(5, 8)])
def test_blocks_keep_spatial_size_and_set_channels(block: nn.Module) -> None:
    y = block(torch.randn(2, 5, 32, 48))
    assert y.shape == (2, 8, 32, 48)


def test_msfe_output_is_relu_of_crac_plus_rfb() -> None:
    msfe = MSFE(8, 8).eval()
    x = torch.randn(1, 8, 16, 16)
    torch.testing.assert_close(msfe(x), torch.relu(msfe.crac(x) + msfe.rfb(x)))
