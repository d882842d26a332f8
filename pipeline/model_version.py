"""The model version a new job is opened for, read without importing torch.

The listener opens jobs but must never import torch (DESIGN.md), so it cannot ``load_checkpoint``.
A job's ``model_version`` is the first of:

1. ``<weights>.json`` next to the checkpoint, ``{"model_version": "msanet-..."}`` (a sidecar a
   release may ship);
2. the ``model_version`` string inside the checkpoint itself: ``torch.save`` writes a zip whose
   ``*/data.pkl`` is a pickle; :func:`pickletools.genops` walks its opcodes *without executing
   them*, and the string that follows the ``"model_version"`` key is the version;
3. :data:`DEFAULT_MODEL_VERSION`, when no weights file is found.

With ``BONESCAN_WEIGHTS`` unset the weights are the checkpoint shipped in ``msanet_core/weights``,
located without importing ``msanet_core`` (which would pull in torch).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pickletools
import zipfile
from pathlib import Path

from pipeline.settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_MODEL_VERSION = "msanet-default"
_STRING_OPCODES = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})
_MAX_PICKLE_BYTES = 16 * 1024 * 1024  # tensors live outside data.pkl; anything bigger is odd


def _from_sidecar(weights: Path) -> str | None:
    sidecar = weights.with_name(weights.name + ".json")
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get("model_version")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("model_version_sidecar_unreadable path=%s error=%s", sidecar, error)
        return None
    return value if isinstance(value, str) and value else None


def version_in_pickle(data: bytes) -> str | None:
    """The string value after the first ``"model_version"`` key in pickle ``data``, or None."""
    previous_was_key = False
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name not in _STRING_OPCODES:
                if opcode.name not in {"BINPUT", "LONG_BINPUT", "MEMOIZE"}:
                    previous_was_key = False
                continue
            if previous_was_key and isinstance(argument, str):
                return argument
            previous_was_key = argument == "model_version"
    except (ValueError, EOFError) as error:  # not a pickle, or truncated
        logger.warning("model_version_pickle_unreadable error=%s", error)
    return None


def _from_checkpoint(weights: Path) -> str | None:
    try:
        with zipfile.ZipFile(weights) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names or archive.getinfo(names[0]).file_size > _MAX_PICKLE_BYTES:
                return None
            return version_in_pickle(archive.read(names[0]))
    except (OSError, zipfile.BadZipFile) as error:
        logger.warning("model_version_checkpoint_unreadable path=%s error=%s", weights, error)
        return None


SHIPPED_RELATIVE = Path("weights") / "msanet-lite-synthetic.pt"  # = msanet_core.weights


def shipped_weights() -> Path | None:
    """Where the shipped checkpoint lies, found without importing ``msanet_core``."""
    spec = importlib.util.find_spec("msanet_core")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / SHIPPED_RELATIVE


def current_model_version(settings: Settings) -> str:
    """The version string new jobs are opened for (see the module docstring for the rule)."""
    weights = settings.weights
    if weights is None:
        weights = shipped_weights()
        if weights is None or not weights.is_file():  # no shipped checkpoint in this install
            return DEFAULT_MODEL_VERSION
    return _from_sidecar(weights) or _from_checkpoint(weights) or DEFAULT_MODEL_VERSION
