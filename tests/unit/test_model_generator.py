"""Generator and critic: output count and shapes, ablation switches, paper parameter counts."""

from __future__ import annotations

import pytest
import torch

from msanet_core import ModelConfig, build_critic, build_generator, build_unet, count_parameters
from msanet_core.blocks import CDC, MSFE, RMS, DoubleConv

PAPER_PARAMS = 57_000_000  # paper "Results": "The proposed model (57 M parameters)"


def test_generator_returns_four_deep_supervision_maps_in_training_and_one_in_eval() -> None:
    g = build_generator(ModelConfig.preset("tiny"))
    x = torch.rand(2, 1, 256, 256)
    outs = g.train()(x)
    assert isinstance(outs, list)
    assert len(outs) == 4
    for o in outs:
        assert o.shape == (2, 1, 256, 256)
        assert float(o.detach().min()) >= 0.0
        assert float(o.detach().max()) <= 1.0
    with torch.no_grad():
        final = g.eval()(x)
    assert isinstance(final, torch.Tensor)
    assert final.shape == (2, 1, 256, 256)


def test_eval_output_is_the_last_training_output() -> None:
    g = build_generator(ModelConfig.preset("tiny")).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        final = g(x)
        g.training = True  # same BN statistics (eval) but the training-mode return value
        for m in g.modules():
            m.training = m is g
        outs = g(x)
    torch.testing.assert_close(outs[-1], final)


def test_without_deep_supervision_one_output_and_one_head() -> None:
    g = build_generator(ModelConfig.preset("tiny").replace(deep_supervision=False))
    outs = g.train()(torch.rand(1, 1, 64, 64))
    assert len(outs) == 1
    assert len(g.heads) == 1


def test_layer_types_follow_the_switches() -> None:
    full = build_generator(ModelConfig.preset("tiny"))
    assert isinstance(full.encoder[0], CDC)
    assert all(isinstance(b, MSFE) for b in full.encoder[1:])
    assert all(isinstance(b, RMS) for b in full.decoder)
    unet = build_unet(ModelConfig.preset("tiny"))
    assert all(isinstance(b, DoubleConv) for b in [*unet.encoder, *unet.decoder])


def test_input_pyramid_adds_one_channel_after_layers_1_to_3() -> None:
    config = ModelConfig.preset("paper")
    g = build_generator(config)
    first_convs = [b.crac.layers[0][0].in_channels for b in g.encoder[1:]]
    assert first_convs == [65, 129, 257, 512]
    plain = build_generator(config.replace(use_pyramid=False))
    assert [b.crac.layers[0][0].in_channels for b in plain.encoder[1:]] == [64, 128, 256, 512]


def test_paper_parameter_counts_against_the_papers_57m() -> None:
    config = ModelConfig.preset("paper")
    g = count_parameters(build_generator(config))
    d = count_parameters(build_critic(config))
    print(
        f"\npaper preset: G {g / 1e6:.2f} M, D {d / 1e6:.2f} M, G + D {(g + d) / 1e6:.2f} M "
        f"(paper: 57 M; G + D is {100 * (g + d - PAPER_PARAMS) / PAPER_PARAMS:+.1f} %)"
    )
    assert g == 46_562_316  # MODEL.md §2.1: 46.56 M
    assert d == 9_386_816  # MODEL.md §2.6: 9.39 M at 1 channel
    assert abs(g + d - PAPER_PARAMS) / PAPER_PARAMS < 0.03


@pytest.mark.parametrize(
    ("mode", "channels"), [("image_x_mask", 1), ("concat", 2), ("sum", 1), ("mask", 1)]
)
def test_critic_feature_vector_is_input_plus_six_layers(mode: str, channels: int) -> None:
    config = ModelConfig.preset("tiny").replace(critic_input=mode)
    critic = build_critic(config)
    x = torch.rand(3, channels, 256, 256)
    feats = critic(x)
    w = config.critic_widths
    sizes = [128, 64, 32, 16, 8, 4]
    expected = channels * 256 * 256 + sum(c * s * s for c, s in zip(w, sizes, strict=True))
    assert feats.shape == (3, expected)
    # the first block of the vector is the input itself, weight 1 (SegAN NetC)
    torch.testing.assert_close(feats[:, : channels * 256 * 256], x.reshape(3, -1))


def test_paper_critic_vector_has_segan_length() -> None:
    critic = build_critic(ModelConfig.preset("paper"))
    with torch.no_grad():
        assert critic(torch.rand(1, 1, 256, 256)).shape == (1, 2_072_576)  # MODEL.md §2.6


def test_weight_clipping_clamps_every_critic_parameter() -> None:
    critic = build_critic(ModelConfig.preset("tiny"))
    with torch.no_grad():
        for p in critic.parameters():
            p.mul_(100.0)
    critic.clip_weights()
    assert max(float(p.detach().abs().max()) for p in critic.parameters()) <= 0.05 + 1e-9
