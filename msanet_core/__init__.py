"""MSA-Net for bone-scan metastasis segmentation: model, losses, metrics, training, inference.

Imports torch, numpy and scipy only (plus the standard library).
"""

from msanet_core.checkpoint import CheckpointError, load_checkpoint
from msanet_core.config import ABLATIONS, PRESETS, ModelConfig
from msanet_core.critic import build_critic
from msanet_core.generator import build_generator, build_unet, count_parameters
from msanet_core.inference import THRESHOLD, Segmenter, normalise_counts

__all__ = [
    "ABLATIONS",
    "PRESETS",
    "THRESHOLD",
    "CheckpointError",
    "ModelConfig",
    "Segmenter",
    "build_critic",
    "build_generator",
    "build_unet",
    "count_parameters",
    "load_checkpoint",
    "normalise_counts",
]
