"""``bonescan demo`` as a newcomer runs it: no server running, so it starts ``serve`` on embedded
defaults, sends synthetic scans over C-STORE, prints the table and writes the overlays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.integration.conftest import REPO, port_open


def test_demo_starts_serve_sends_scans_and_prints_results(
    clean_env: dict[str, str], tiny_weights: Path, tmp_path: Path
) -> None:
    port = free_port()
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "demo", "--scans", "2", "--out", str(out)],
        env={
            **clean_env,
            "BONESCAN_DATA_DIR": str(tmp_path / "data"),
            "BONESCAN_LISTENER__PORT": str(port),
            "BONESCAN_WEIGHTS": str(tiny_weights),
            "BONESCAN_LOG_LEVEL": "WARNING",
            "COLUMNS": "200",
            "PYTHONPATH": str(REPO),
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"nothing answers on 127.0.0.1:{port}: starting `bonescan serve`"
    rows = [line for line in lines if "SYN2024-0000" in line]
    assert len(rows) == 2
    assert all("segmented" in row for row in rows)
    assert sorted(p.name for p in out.glob("*.png")) == ["SYN2024-00000.png", "SYN2024-00001.png"]
    assert lines[-1] == "stopped the `bonescan serve` this demo started"
    assert not port_open(port)
    assert result.stderr == ""
