"""Checkpoints: a ``torch.save`` of plain types + state dicts, loaded with ``weights_only=True``.

Fields (all required unless marked optional):

``format_version``  int, :data:`FORMAT_VERSION`
``model_version``   str, e.g. ``msanet-lite-20261121-1a2b3c4d`` (preset, date, weight digest)
``config``          dict, :meth:`ModelConfig.to_dict`
``generator``       state dict of :class:`~msanet_core.generator.MSANetGenerator`
``critic``          state dict of the SegAN critic, or None (optional: inference does not need it)
``metadata``        dict with ``epochs`` (int), ``seed`` (int), ``data`` (str: what it was trained
                    on), ``metrics`` (dict of str → float), plus free plain-typed entries
``training_state``  dict or None (optional): optimiser states, epoch, RNG states, history — what
                    exact resume needs (:mod:`msanet_core.training`)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msanet_core.config import ModelConfig

FORMAT_VERSION = 1
REQUIRED_FIELDS = ("format_version", "model_version", "config", "generator", "metadata")
REQUIRED_METADATA = {"epochs": int, "seed": int, "data": str, "metrics": dict}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or has a wrong or missing field."""


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint (see the module docstring for the fields)."""

    path: Path
    model_version: str
    config: ModelConfig
    generator: dict[str, torch.Tensor]
    critic: dict[str, torch.Tensor] | None
    metadata: dict[str, Any]
    training_state: dict[str, Any] | None


def plain(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and Paths to types ``weights_only`` loading accepts."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path | str):  # also str subclasses such as torch.__version__
        return str(value)
    return value


def model_version(config: ModelConfig, generator: nn.Module, when: dt.date | None = None) -> str:
    """``msanet-<preset>[-<ablation>]-<YYYYMMDD>-<8 hex of a digest of the weights>``."""
    digest = hashlib.sha256(config.to_json().encode())
    for name, tensor in sorted(generator.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    day = (when or dt.datetime.now(dt.UTC).date()).strftime("%Y%m%d")
    tag = f"{config.name}-{config.ablation}" if config.ablation else config.name
    return f"msanet-{tag}-{day}-{digest.hexdigest()[:8]}"


def save_checkpoint(
    path: Path,
    *,
    config: ModelConfig,
    generator: nn.Module,
    metadata: dict[str, Any],
    critic: nn.Module | None = None,
    training_state: dict[str, Any] | None = None,
    version: str | None = None,
) -> str:
    """Write a checkpoint atomically; return its model version string."""
    for key, kind in REQUIRED_METADATA.items():
        if not isinstance(metadata.get(key), kind):
            raise ValueError(
                f"metadata[{key!r}] must be {kind.__name__}, got {metadata.get(key)!r}"
            )
    version = version or model_version(config, generator)
    payload = {
        "format_version": FORMAT_VERSION,
        "model_version": version,
        "config": config.to_dict(),
        "generator": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
        "critic": None
        if critic is None
        else {k: v.detach().cpu() for k, v in critic.state_dict().items()},
        "metadata": plain(metadata),
        "training_state": training_state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return version


def _field(raw: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in raw:
        raise CheckpointError(f"checkpoint field {key!r} is missing")
    value = raw[key]
    if not isinstance(value, kind):
        raise CheckpointError(
            f"checkpoint field {key!r} has type {type(value).__name__}, expected {kind}"
        )
    return value


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and validate a checkpoint with ``torch.load(weights_only=True)``.

    Raises
    ------
    CheckpointError
        The file is missing or unreadable, or a field is missing or wrong (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError)
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict")
    version = _field(raw, "format_version", int)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint field 'format_version' is {version}, this code reads {FORMAT_VERSION}"
        )
    name = _field(raw, "model_version", str)
    if not name.startswith("msanet-"):
        raise CheckpointError(f"checkpoint field 'model_version' {name!r} must start 'msanet-'")
    try:
        config = ModelConfig.from_dict(_field(raw, "config", dict))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint field 'config': {exc}") from exc
    generator = _field(raw, "generator", dict)
    metadata = _field(raw, "metadata", dict)
    for key, kind in REQUIRED_METADATA.items():
        if not isinstance(metadata.get(key), kind):
            raise CheckpointError(
                f"checkpoint field 'metadata.{key}' is {metadata.get(key)!r}, "
                f"expected {kind.__name__}"
            )
    critic = raw.get("critic")
    state = raw.get("training_state")
    if critic is not None and not isinstance(critic, dict):
        raise CheckpointError("checkpoint field 'critic' must be a state dict or None")
    if state is not None and not isinstance(state, dict):
        raise CheckpointError("checkpoint field 'training_state' must be a dict or None")
    return Checkpoint(path, name, config, generator, critic, metadata, state)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], field: str) -> None:
    """``load_state_dict(strict=True)`` with a CheckpointError naming the field on mismatch."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(
            f"checkpoint field {field!r} does not match its config: {' '.join(first)}"
        ) from exc
