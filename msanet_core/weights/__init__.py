"""The checkpoint shipped with bonescan: the ``lite`` generator trained on synthetic scans only.

For demonstration and tests, not for clinical use (see ``MODEL_CARD.md``). It is what
:meth:`msanet_core.Segmenter.load` uses when no path is given (``BONESCAN_WEIGHTS`` unset).
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_NAME = "msanet-lite-synthetic.pt"
SHIPPED_CHECKPOINT = Path(__file__).with_name(SHIPPED_NAME)
