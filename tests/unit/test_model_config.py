"""ModelConfig: presets, ablation rows of paper Tables 6–11, validation, dict round-trip."""

from __future__ import annotations

import pytest

from msanet_core import ABLATIONS, PRESETS, ModelConfig


def test_paper_preset_is_model_md_defaults() -> None:
    c = ModelConfig.preset("paper")
    assert c.encoder_widths == (64, 128, 256, 512, 512)
    assert c.decoder_widths == (512, 256, 128, 64)
    assert c.cdc_dilations == c.crac_dilations == (1, 2, 4, 1, 2, 4)
    assert c.rfb_dilations == (1, 3, 5)
    assert (c.alpha, c.beta, c.output_weights) == (1.0, 1.0, (1.0, 1.0, 1.0, 1.0))
    assert (c.seg_loss, c.critic_input, c.weight_clip) == ("dice", "image_x_mask", 0.05)
    assert all((c.use_cdc, c.use_msfe, c.use_pyramid, c.deep_supervision, c.adversarial))


def test_every_table_row_is_an_ablation() -> None:
    expected = {
        "t6-rms",
        "t6-gan",
        "t6-pyramid",
        "t6-deepspv",
        "t6-msfe",
        "t6-cdc",
        "t6-full",
        "t7-bce",
        "t7-dice+bce",
        "t8-case1",
        "t8-case2",
        "t8-case4",
        "t8-case5",
        "t9-case2",
        "t9-case3",
        "t9-case4",
        "t10-0.1-0.9",
        "t10-0.3-0.7",
        "t10-0.7-0.3",
        "t10-0.9-0.1",
        "t11-concat",
        "t11-sum",
        "t11-mask",
    }
    assert set(ABLATIONS) == expected


def test_table6_baseline_switches_everything_off() -> None:
    c = ModelConfig.preset("paper", ablation="t6-rms")
    assert not any((c.use_cdc, c.use_msfe, c.use_pyramid, c.deep_supervision, c.adversarial))
    assert c.use_rms
    assert c.ablation == "t6-rms"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip(name: str) -> None:
    c = ModelConfig.preset(name, ablation="t9-case3")
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"encoder_widths": (64, 128)}, "encoder_widths"),
        ({"crac_dilations": (1, 2, 0, 1, 2, 4)}, "crac_dilations"),
        ({"seg_loss": "focal"}, "seg_loss"),
        ({"critic_input": "product"}, "critic_input"),
        ({"output_weights": (1, 1, 1)}, "output_weights"),
        ({"alpha": -1.0}, "alpha"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig.preset("tiny").replace(**changes)


def test_unknown_preset_ablation_and_fields_are_named() -> None:
    with pytest.raises(ValueError, match="huge"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="t12"):
        ModelConfig.preset("tiny", ablation="t12")
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.preset("tiny").replace(colour=1)
    data = ModelConfig.preset("tiny").to_dict()
    del data["alpha"]
    with pytest.raises(ValueError, match="alpha"):
        ModelConfig.from_dict(data)
