"""Patient-level train/val/test split (MODEL.md §1: both views of a patient in the same split)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.7,0.15,0.15"`` into three non-negative fractions that sum to 1 (±0.001)."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError as exc:
        raise ValueError(f"split {text!r}: expected three numbers like 0.7,0.15,0.15") from exc
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-3:
        raise ValueError(f"split {text!r}: need three non-negative fractions summing to 1")
    return parts[0], parts[1], parts[2]


def _rank_key(patient_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def assign_splits(
    patient_ids: Iterable[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, str]:
    """Map each distinct patient id to ``train``, ``val`` or ``test``.

    Patients are ordered by a seeded hash of their id (so the order does not depend on how the
    ids were listed) and cut into consecutive groups of ``round(fraction × n)`` patients, the
    remainder going to ``train``. Every view of a patient follows its id, so views never straddle
    splits (MODEL.md §1).
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-3:
        raise ValueError(
            f"fractions {tuple(fractions)} must be three non-negative values summing to 1"
        )
    ids = sorted(set(patient_ids), key=lambda p: _rank_key(p, seed))
    n = len(ids)
    n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
    n_train = n - n_val - n_test
    if n_train < 0:  # rounding with tiny n
        n_train, n_test = 0, n - n_val
    out = {}
    for i, pid in enumerate(ids):
        out[pid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out
