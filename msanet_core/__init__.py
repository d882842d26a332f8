"""MSA-Net for bone-scan metastasis segmentation: model, losses, metrics, training, inference.

Imports torch, numpy and scipy only (plus the standard library).
"""

from msanet_core.checkpoint import CheckpointError, load_checkpoint
from msanet_core.config import ABLATIONS, PRESETS, ModelConfig
from msanet_core.critic import build_critic
from msanet_core.crop import NoBodyFoundError, ThoraxCrop, crop_thorax
from msanet_core.generator import build_generator, build_unet, count_parameters
from msanet_core.inference import THRESHOLD, Segmenter, normalise_counts
from msanet_core.synth import SyntheticPatient, SyntheticView, generate_patient

__all__ = [
    "ABLATIONS",
    "PRESETS",
    "THRESHOLD",
    "CheckpointError",
    "ModelConfig",
    "NoBodyFoundError",
    "Segmenter",
    "SyntheticPatient",
    "SyntheticView",
    "ThoraxCrop",
    "build_critic",
    "build_generator",
    "build_unet",
    "count_parameters",
    "crop_thorax",
    "generate_patient",
    "load_checkpoint",
    "normalise_counts",
]
