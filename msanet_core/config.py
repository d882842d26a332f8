"""MSA-Net model configuration: one frozen dataclass, size presets and the paper's ablation rows.

Every open choice of the paper is a field here; the defaults are MODEL.md's recommendations
(A1–A14). The size presets (``paper``, ``lite``, ``tiny``) fix the widths; the ablation overrides
(:data:`ABLATIONS`) reproduce each row of the paper's Tables 6–11 on top of any size preset::

    ModelConfig.preset("paper")                       # Table 4 / the proposed model
    ModelConfig.preset("lite", ablation="t6-rms")     # Table 6 row 1 at lite widths
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

SegLoss = Literal["dice", "bce", "dice+bce", "dice+blob"]
CriticInput = Literal["image_x_mask", "concat", "sum", "mask"]

SEG_LOSSES: tuple[str, ...] = get_args(SegLoss)
CRITIC_INPUTS: tuple[str, ...] = get_args(CriticInput)
# Fields that shape the training losses, not the network: a fine-tuning phase (--init-from) may
# change them and still start from the checkpoint's weights.
LOSS_FIELDS: tuple[str, ...] = (
    "alpha", "beta", "output_weights", "seg_loss", "weight_clip", "dice_eps"
)  # fmt: skip
NUM_OUTPUTS = 4  # paper "Deep supervision": four decoder outputs D1 (deepest) … D4 (final)


def _ints(value: Any, name: str, length: int | None = None) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}") from None
    if length is not None and len(out) != length:
        raise ValueError(f"{name} must have {length} values, got {len(out)}: {out}")
    if any(v < 1 for v in out):
        raise ValueError(f"{name} values must be >= 1, got {out}")
    return out


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines an MSA-Net generator + SegAN critic and its losses.

    Parameters
    ----------
    name
        Preset name; goes into the model version string.
    encoder_widths
        Output channels of encoder layers 1–5 (MODEL.md A1: 64-128-256-512-512).
    decoder_widths
        Output channels of the decoder blocks from deepest (1/8 resolution) to full resolution
        (MODEL.md A1: 512-256-128-64).
    cdc_dilations, crac_dilations
        The six dilation rates of the CDC block (layer 1) and of the CRAC inside every MSFE
        (paper Table 2 and Table 8; default 1,2,4,1,2,4).
    rfb_dilations
        Dilations closing the three RFB branches (paper: 1, 3, 5; MODEL.md §2.4).
    rms_dilations
        The three dilations of each RMS decoder block (paper Fig. 5: 1, 2, 4).
    rfb_scale
        Multiplier of the RFB branch sum (RFBNet ``scale``; 1.0 = plain sum as the paper says).
    rfb_bn_momentum
        BatchNorm momentum inside the RFB (RFBNet ``BasicConv``: 0.01; ``lite`` and ``tiny`` use
        PyTorch's 0.1 so that the running statistics settle within a few dozen steps).
    use_cdc, use_msfe
        Layer 1 = CDC / layers 2–5 = MSFE; when off, a U-Net double 3×3 conv is used instead
        (paper Table 6 ablation).
    use_rms
        Decoder blocks = RMS; when off, U-Net double 3×3 convs (a plain U-Net when every switch
        is off; used as the baseline in ``bench/inference.py``).
    use_pyramid
        Concatenate the 1/2, 1/4, 1/8 average-pooled input after layers 1–3 (paper "Input image
        pyramid").
    deep_supervision
        Four outputs (D1–D4) in training; when off, only the final output is supervised.
    adversarial
        Train against the SegAN critic (paper Table 6 "GAN").
    alpha, beta
        Weights of L_seg and L_adv in L(G) = αL_seg + βL_adv (paper Eq. 5, Table 10: 1, 1).
    output_weights
        Loss weights of D1…D4 (paper Table 9: 1,1,1,1); losses are the weighted mean over outputs.
    seg_loss
        ``dice`` | ``bce`` | ``dice+bce`` (paper Table 7; Dice best) | ``dice+blob``: Dice plus a
        BCE whose lesion pixels weigh ``100 / lesion area`` (1 to 10), so that every lesion of
        the crop counts about alike (not in the paper: it trades a little precision for lesion
        sensitivity, the small and faint lesions that pooled Dice overlooks).
    critic_input
        What the critic sees (paper Table 11): ``image_x_mask`` (best), ``concat`` (2 channels),
        ``sum`` (image + mask) or ``mask`` only.
    critic_widths
        Output channels of the six SegAN critic convolutions (SegAN ``ndf`` = 64:
        64-128-256-512-512-512).
    critic_feature_weights
        Weights of [input, c1, …, c6] in the critic's feature vector (SegAN code: 1,1,2,2,2,2,4;
        MODEL.md A7).
    weight_clip
        Clamp every critic parameter to ±this after each critic step (SegAN; MODEL.md A8);
        0 disables clipping.
    dice_eps
        Smoothing ε of the soft Dice (2Σpg + ε) / (Σp² + Σg² + ε) (MODEL.md A11: SegAN form;
        ε in the numerator too, so an empty crop predicted empty scores 1, not 0).
    norm_percentile
        Per-crop percentile that maps raw counts to 1.0 (MODEL.md A10: 99.5).
    ablation
        Name of the applied :data:`ABLATIONS` row ("" = the proposed model); set by
        :meth:`with_ablation` and part of the model version string.
    """

    name: str = "paper"
    encoder_widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    decoder_widths: tuple[int, ...] = (512, 256, 128, 64)
    cdc_dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4)
    crac_dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4)
    rfb_dilations: tuple[int, ...] = (1, 3, 5)
    rms_dilations: tuple[int, ...] = (1, 2, 4)
    rfb_scale: float = 1.0
    rfb_bn_momentum: float = 0.01
    use_cdc: bool = True
    use_msfe: bool = True
    use_rms: bool = True
    use_pyramid: bool = True
    deep_supervision: bool = True
    adversarial: bool = True
    alpha: float = 1.0
    beta: float = 1.0
    output_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    seg_loss: SegLoss = "dice"
    critic_input: CriticInput = "image_x_mask"
    critic_widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    critic_feature_weights: tuple[float, ...] = (1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 4.0)
    weight_clip: float = 0.05
    dice_eps: float = 1.0
    norm_percentile: float = 99.5
    ablation: str = field(default="")

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples, then validate every field by name.
        ints = {
            "encoder_widths": 5,
            "decoder_widths": 4,
            "cdc_dilations": 6,
            "crac_dilations": 6,
            "rfb_dilations": 3,
            "rms_dilations": 3,
            "critic_widths": 6,
        }
        for key, length in ints.items():
            object.__setattr__(self, key, _ints(getattr(self, key), key, length))
        for key, length in (("output_weights", NUM_OUTPUTS), ("critic_feature_weights", 7)):
            values = tuple(float(v) for v in getattr(self, key))
            if len(values) != length or any(v < 0 for v in values) or sum(values) <= 0:
                raise ValueError(f"{key} must be {length} non-negative numbers, got {values}")
            object.__setattr__(self, key, values)
        if self.seg_loss not in SEG_LOSSES:
            raise ValueError(f"seg_loss {self.seg_loss!r} is not one of {SEG_LOSSES}")
        if self.critic_input not in CRITIC_INPUTS:
            raise ValueError(f"critic_input {self.critic_input!r} is not one of {CRITIC_INPUTS}")
        for key in ("alpha", "beta", "weight_clip", "dice_eps", "rfb_scale", "rfb_bn_momentum"):
            if float(getattr(self, key)) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 50.0 <= self.norm_percentile <= 100.0:
            raise ValueError(f"norm_percentile must be in [50, 100], got {self.norm_percentile}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, ablation: str | None = None) -> ModelConfig:
        """Return a size preset (``paper``, ``lite``, ``tiny``), optionally with an ablation row.

        Parameters
        ----------
        name
            One of :data:`PRESETS`.
        ablation
            A key of :data:`ABLATIONS` (e.g. ``"t6-rms"``, ``"t11-concat"``) or None.
        """
        if name not in PRESETS:
            raise ValueError(f"preset {name!r} is not one of {sorted(PRESETS)}")
        config = cls(name=name, **PRESETS[name])
        return config.with_ablation(ablation) if ablation else config

    def with_ablation(self, ablation: str) -> ModelConfig:
        """Apply one row of the paper's Tables 6–11 (see :data:`ABLATIONS`)."""
        if ablation not in ABLATIONS:
            raise ValueError(f"ablation {ablation!r} is not one of {sorted(ABLATIONS)}")
        return self.replace(ablation=ablation, **ABLATIONS[ablation])

    def replace(self, **changes: Any) -> ModelConfig:
        """Copy with ``changes`` applied (unknown field names raise ValueError)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def same_network(self, other: ModelConfig) -> bool:
        """Whether ``other`` builds the same networks (it may differ in :data:`LOSS_FIELDS`)."""
        return self.replace(**{k: getattr(other, k) for k in LOSS_FIELDS}) == other

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (lists instead of tuples) for checkpoints and JSON logs."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; a missing or unknown key raises ValueError naming it."""
        if not isinstance(data, dict):
            raise ValueError(f"config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"config has unknown field(s): {sorted(unknown)}")
        missing = names - set(data)
        if missing:
            raise ValueError(f"config is missing field(s): {sorted(missing)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def num_outputs(self) -> int:
        """Outputs returned in training mode: 4 with deep supervision, else 1."""
        return NUM_OUTPUTS if self.deep_supervision else 1

    @property
    def critic_in_channels(self) -> int:
        return 2 if self.critic_input == "concat" else 1


# Size presets. `paper` = MODEL.md §2.1 variant E (46.6 M G, 55.9 M G+D; paper: 57 M).
# `lite` = paper widths / 8 (bottleneck / 4) for CPU training: 1.37 M G params, 3.6 GFLOP per view;
# a G+D step measured 0.14 s per crop on 2 shared cores (0.18 s on one): ≈ 55–70 s per epoch of
# 400 crops; inference 30–50 ms per view.
# `tiny` = for unit tests only.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "lite": {
        "encoder_widths": (8, 16, 32, 64, 128),
        "decoder_widths": (64, 32, 16, 8),
        "critic_widths": (8, 16, 32, 64, 64, 64),
        "rfb_bn_momentum": 0.1,  # ~35 steps per epoch on CPU: 0.01 leaves eval-mode BN stale
    },
    "tiny": {
        "encoder_widths": (8, 16, 16, 32, 32),
        "decoder_widths": (32, 16, 16, 8),
        "critic_widths": (4, 8, 8, 16, 16, 16),
        "rfb_bn_momentum": 0.1,
    },
}

# One entry per row of paper Tables 6–11 that differs from the proposed model. The proposed model
# itself is Table 6 row 7 = Table 7 row 1 = Table 8 case 3 = Table 9 case 1 = Table 10 (1, 1) =
# Table 11 "image * pred/gt", i.e. the preset with no ablation ("t6-full" is an explicit alias).
_PLAIN = {"use_cdc": False, "use_msfe": False}
ABLATIONS: dict[str, dict[str, Any]] = {
    # Table 6: components added one by one to the RMS baseline (U-Net with RMS decoder blocks).
    "t6-rms": {**_PLAIN, "adversarial": False, "use_pyramid": False, "deep_supervision": False},
    "t6-gan": {**_PLAIN, "use_pyramid": False, "deep_supervision": False},
    "t6-pyramid": {**_PLAIN, "deep_supervision": False},
    "t6-deepspv": {**_PLAIN},
    "t6-msfe": {"use_cdc": False},
    "t6-cdc": {"use_msfe": False},
    "t6-full": {},
    # Table 7: generator segmentation loss.
    "t7-bce": {"seg_loss": "bce"},
    "t7-dice+bce": {"seg_loss": "dice+bce"},
    # Table 8: CRAC dilation rates (case 3 = proposed).
    "t8-case1": {"crac_dilations": (1, 1, 1, 1, 1, 1)},
    "t8-case2": {"crac_dilations": (1, 2, 3, 1, 2, 3)},
    "t8-case4": {"crac_dilations": (1, 3, 5, 1, 3, 5)},
    "t8-case5": {"crac_dilations": (1, 5, 7, 1, 5, 7)},
    # Table 9: weights of the D1 (deepest) … D4 (final) losses (case 1 = proposed).
    "t9-case2": {"output_weights": (0.4, 0.4, 0.1, 0.1)},
    "t9-case3": {"output_weights": (0.1, 0.1, 0.4, 0.4)},
    "t9-case4": {"output_weights": (0.1, 0.4, 0.4, 0.1)},
    # Table 10: (α, β) of Eq. 5 (1, 1 = proposed).
    "t10-0.1-0.9": {"alpha": 0.1, "beta": 0.9},
    "t10-0.3-0.7": {"alpha": 0.3, "beta": 0.7},
    "t10-0.7-0.3": {"alpha": 0.7, "beta": 0.3},
    "t10-0.9-0.1": {"alpha": 0.9, "beta": 0.1},
    # Table 11: critic input (image × mask = proposed).
    "t11-concat": {"critic_input": "concat"},
    "t11-sum": {"critic_input": "sum"},
    "t11-mask": {"critic_input": "mask"},
}

# A plain U-Net of the same widths (no paper component): the baseline of bench/inference.py.
UNET_OVERRIDES: dict[str, Any] = {
    **_PLAIN,
    "use_rms": False,
    "use_pyramid": False,
    "deep_supervision": False,
    "adversarial": False,
}

# `lite-unet`: the plain U-Net baseline of MODEL_CARD.md, widened (lite × 13/8) to lite's size:
# 1.30 M generator parameters against lite's 1.37 M. `bonescan train --preset lite-unet`.
PRESETS["lite-unet"] = {
    **UNET_OVERRIDES,
    "encoder_widths": (13, 26, 52, 104, 208),
    "decoder_widths": (104, 52, 26, 13),
}
