"""The ``bonescan`` command as a user runs it: a real process, real databases and peers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import __version__
from pipeline.db.migrate import head_revision
from tests.conftest import free_port

BONESCAN = [sys.executable, "-m", "pipeline.cli"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BONESCAN, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


def test_help_lists_the_command_groups(clean_env: dict[str, str]) -> None:
    result = run(clean_env, "--help")
    assert result.returncode == 0
    for command in ("version", "check", "db"):
        assert command in result.stdout


def test_version(clean_env: dict[str, str]) -> None:
    result = run(clean_env, "version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"bonescan {__version__}"


def test_db_upgrade_creates_the_schema_in_an_empty_directory(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    database = tmp_path / "empty" / "nested" / "bonescan.db"
    env = {**clean_env, "BONESCAN_DATABASE_URL": f"sqlite:///{database}"}
    upgraded = run(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert database.exists()
    current = run(env, "db", "current")
    assert current.returncode == 0
    assert "up to date" in current.stdout
    checked = run(env, "db", "check")
    assert checked.returncode == 0, checked.stderr
    assert "matches the models" in checked.stdout


def test_db_upgrade_on_postgresql(clean_env: dict[str, str], postgres_url: str) -> None:
    env = {**clean_env, "BONESCAN_DATABASE_URL": postgres_url}
    assert run(env, "db", "upgrade").returncode == 0
    assert run(env, "db", "check").returncode == 0


def test_db_current_on_an_empty_database_says_what_to_do(clean_env: dict[str, str]) -> None:
    assert_one_line_error(run(clean_env, "db", "current"), "no schema", "bonescan db upgrade")


def test_a_bad_setting_is_one_line_and_exit_1(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "BONESCAN_LISTENER__PORT": "99999"}
    assert_one_line_error(run(env, "db", "upgrade"), "BONESCAN_LISTENER__PORT")


def test_check_reports_a_down_database_in_one_line(clean_env: dict[str, str]) -> None:
    env = {
        **clean_env,
        "BONESCAN_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/bonescan",
    }
    result = run(env, "check")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    database_lines = [line for line in result.stdout.splitlines() if "database" in line]
    assert len(database_lines) == 1
    assert database_lines[0].startswith("FAIL database:")
    assert "unreachable" in database_lines[0]


def test_check_reports_a_down_broker(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "BONESCAN_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    assert run(env, "db", "upgrade").returncode == 0
    result = run(env, "check")
    assert result.returncode == 1
    assert any(line.startswith("FAIL broker:") for line in result.stdout.splitlines())


def test_check_settings_error_is_one_line(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "BONESCAN_DESTINATIONS": "[{"}
    result = run(env, "check")
    assert result.returncode == 1
    assert result.stdout.strip().splitlines() == [
        line for line in result.stdout.strip().splitlines() if line.startswith("FAIL settings:")
    ]
    assert "BONESCAN_DESTINATIONS" in result.stdout


@pytest.fixture
def storescp() -> Iterator[int]:
    """dcmtk's storescp as a live DICOM peer on 127.0.0.1."""
    binary = shutil.which("storescp", path="/usr/bin")
    if binary is None:
        pytest.fail("dcmtk is not installed: apt-get install dcmtk")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--aetitle", "PEER", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("storescp did not start listening within 10 s")
    yield port
    process.terminate()
    process.wait(timeout=10)


def test_check_passes_with_every_peer_up(
    clean_env: dict[str, str], postgres_url: str, redis_url: str, storescp: int
) -> None:
    env = {
        **clean_env,
        "BONESCAN_DATABASE_URL": postgres_url,
        "BONESCAN_BROKER_URL": redis_url,
        "BONESCAN_DESTINATIONS": (
            f'[{{"name": "pacs", "ae_title": "PEER", "host": "127.0.0.1", "port": {storescp}}},'
            f' {{"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": {free_port()}}}]'
        ),
    }
    assert run(env, "db", "upgrade").returncode == 0
    result = run(env, "check")
    lines = result.stdout.strip().splitlines()
    assert lines[:3] == [
        "ok   settings",
        f"ok   database: {postgres_url} at revision {head_revision()}",
        f"ok   broker: {redis_url}",
    ]
    assert lines[3] == f"ok   destination pacs: PEER@127.0.0.1:{storescp} C-ECHO ok"
    assert lines[4].startswith("FAIL destination gone:")
    assert result.returncode == 1
