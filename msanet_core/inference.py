"""Inference: :class:`Segmenter` loads a checkpoint once and predicts many 256×256 crops.

Input crops are raw counts ``(N, 256, 256)`` (row 0 = head side, as in :mod:`msanet_core.dataset`);
each crop is scaled to [0, 1] by its own 99.5th percentile (MODEL.md A10) inside.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from msanet_core.checkpoint import Checkpoint, load_checkpoint, load_state
from msanet_core.config import ModelConfig
from msanet_core.generator import MSANetGenerator, build_generator
from msanet_core.weights import SHIPPED_CHECKPOINT

logger = logging.getLogger(__name__)

THRESHOLD = 0.5  # paper "Experimental setup": p ≥ 0.5 = lesion
CROP_SHAPE = (256, 256)


def normalise_counts(crops: npt.ArrayLike, percentile: float = 99.5) -> npt.NDArray[np.float32]:
    """Scale each crop to [0, 1] by its own ``percentile`` and clip above (MODEL.md A10).

    Parameters
    ----------
    crops
        ``(N, H, W)`` or ``(H, W)`` raw counts (any real dtype); negative counts are clipped to 0.
    percentile
        The per-crop percentile that maps to 1.0; a crop whose percentile is 0 (empty) stays 0.
    """
    a = np.asarray(crops, dtype=np.float32)
    if a.ndim not in (2, 3):
        raise ValueError(f"crops must be (N, H, W) or (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("crops contain NaN or infinite values")
    flat = a.reshape(-1, a.shape[-2] * a.shape[-1]) if a.ndim == 3 else a.reshape(1, -1)
    scale = np.percentile(flat, percentile, axis=1).astype(np.float32)
    scale[scale <= 0] = 1.0
    shape = (-1, 1, 1) if a.ndim == 3 else ()
    out: npt.NDArray[np.float32] = np.clip(a / scale.reshape(shape), 0.0, 1.0).astype(np.float32)
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA if available, else CPU; otherwise the named device (checked)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not one of auto, cpu, cuda")
    return dev


class Segmenter:
    """Load once, predict many: MSA-Net generator in eval mode under ``torch.inference_mode``.

    Use :meth:`load` to build one from a checkpoint. On CUDA the forward pass runs in bfloat16
    autocast; on CPU in float32. Both use ``channels_last``.
    """

    threshold: float = THRESHOLD

    def __init__(
        self,
        generator: MSANetGenerator,
        config: ModelConfig,
        model_version: str,
        device: torch.device,
        *,
        metadata: dict[str, Any] | None = None,
        batch_size: int | None = None,
    ) -> None:
        if batch_size is None:
            # bench/inference.py: on CPU batch 1 is fastest per view (paper: 1.1 s vs 1.6 s at 8)
            batch_size = 8 if device.type == "cuda" else 1
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = config
        self.model_version = model_version
        self.metadata = metadata or {}
        self.device = device
        self.batch_size = batch_size
        self.model = generator.to(device).eval()
        self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def load(
        cls, path: Path | str | None = None, device: str = "auto", batch_size: int | None = None
    ) -> Segmenter:
        """Load a checkpoint (validated, ``weights_only=True``) onto ``device``.

        Parameters
        ----------
        path
            A checkpoint written by :func:`msanet_core.checkpoint.save_checkpoint`; ``None``
            loads the shipped one (:data:`msanet_core.weights.SHIPPED_CHECKPOINT`).
        device
            ``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``.
        batch_size
            Crops per forward pass; default 1 on CPU, 8 on CUDA.

        Raises
        ------
        CheckpointError
            Missing file, unreadable file, or a wrong or missing field (named in the message).
        """
        ckpt: Checkpoint = load_checkpoint(SHIPPED_CHECKPOINT if path is None else path)
        generator = build_generator(ckpt.config)
        load_state(generator, ckpt.generator, "generator")
        dev = resolve_device(device)
        logger.info("loaded %s on %s", ckpt.model_version, dev)
        return cls(
            generator,
            ckpt.config,
            ckpt.model_version,
            dev,
            metadata=ckpt.metadata,
            batch_size=batch_size,
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batches(self, x: npt.NDArray[np.float32]) -> Iterator[npt.NDArray[np.float32]]:
        for start in range(0, x.shape[0], self.batch_size):
            yield x[start : start + self.batch_size]

    def predict(self, crops: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Lesion probabilities for raw-count crops.

        Parameters
        ----------
        crops
            ``(N, 256, 256)`` raw counts (or one ``(256, 256)`` crop).

        Returns
        -------
        ``(N, 256, 256)`` (or ``(256, 256)``) float32 probabilities in [0, 1].
        """
        a = np.asarray(crops)
        single = a.ndim == 2
        if single:
            a = a[None]
        if a.ndim != 3 or a.shape[1:] != CROP_SHAPE:
            raise ValueError(f"crops must have shape (N, 256, 256), got {np.shape(crops)}")
        x = normalise_counts(a, self.config.norm_percentile)
        out = np.empty(x.shape, dtype=np.float32)
        pos = 0
        with torch.inference_mode(), self._autocast():
            for batch in self._batches(x):
                t = torch.from_numpy(batch).unsqueeze(1).to(self.device)
                t = t.contiguous(memory_format=torch.channels_last)
                p = self.model(t)
                n = batch.shape[0]
                out[pos : pos + n] = p.float().squeeze(1).cpu().numpy()
                pos += n
        return out[0] if single else out

    def predict_masks(self, crops: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Binary lesion masks, probability ≥ 0.5 (paper threshold), shaped as ``predict``."""
        return self.masks(self.predict(crops))

    def masks(self, probabilities: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
        """Threshold probabilities at :attr:`threshold` (≥ is lesion)."""
        return (np.asarray(probabilities) >= self.threshold).astype(np.uint8)
