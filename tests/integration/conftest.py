"""Listener fixtures: the listener as a subprocess (``python -m listeners``) on a free port, with
its own data dir and database, and helpers to wait for ports and rows with deadlines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from listeners.spool import INCOMING, RESERVE_SUFFIX
from pipeline.db.migrate import upgrade
from pipeline.db.models import Instance, Job
from pipeline.db.session import make_engine, make_session_factory
from tests.conftest import free_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
AE_TITLE = "BONESCAN"


def wait_for(check: Callable[[], T], *, timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def echo_refusal(port: int) -> str:
    """What dcmtk's echoscu prints when the listener refuses its association ("" if accepted).

    The limit tests ask echoscu, not pynetdicom, for the one association too many: pynetdicom's
    requestor looks at its socket after sending the request, and when the listener's A-ASSOCIATE-RJ
    came back and closed the connection before that look, it reports a failed connect instead of
    the rejection (seen in ~15 % of fast rejections)."""
    result = subprocess.run(
        [ECHOSCU, "-v", "-aec", AE_TITLE, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    return output if "Association Rejected" in output else ""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class RunningListener:
    """A listener subprocess and what it writes."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    database_url: str
    env: dict[str, str]
    log_path: Path
    _engine: Any = field(default=None, repr=False)

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def session(self) -> Session:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return make_session_factory(self._engine)()

    def instances(self) -> list[Instance]:
        with self.session() as session:
            query = select(Instance).options(selectinload(Instance.series)).order_by(Instance.id)
            return list(session.scalars(query))

    def jobs(self) -> list[Job]:
        with self.session() as session:
            return list(session.scalars(select(Job).order_by(Job.id)))

    def spool_files(self) -> list[Path]:
        """Every file in the spool but the empty ones made ahead for the next data sets
        (``Spool(reserve=…)``), which are checked to be empty."""
        files = sorted(p for p in self.spool.rglob("*") if p.is_file())
        reserved = [p for p in files if p.name.endswith(RESERVE_SUFFIX)]
        assert all(p.parent.name == INCOMING and p.stat().st_size == 0 for p in reserved)
        return [p for p in files if p not in reserved]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.alive():
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def storescu(
        self,
        *files: Path,
        calling: str = "MODALITY",
        extra: tuple[str, ...] = (),
        check: bool = True,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Send ``files`` with dcmtk's storescu (by full path: the venv shadows it)."""
        result = subprocess.run(
            [
                STORESCU,
                "-v",
                "-aet",
                calling,
                "-aec",
                AE_TITLE,
                *extra,
                "127.0.0.1",
                str(self.port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TCP_NODELAY": "1"},
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"storescu failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
                f"\n--- listener log ---\n{self.log()[-3000:]}"
            )
        return result


StartListener = Callable[..., RunningListener]


@pytest.fixture
def start_listener(clean_env: dict[str, str], tmp_path: Path) -> Iterator[StartListener]:
    """Start ``python -m listeners`` with settings as keyword arguments (``BONESCAN_*`` names
    without the prefix, e.g. ``LISTENER__QUIET_SECONDS="1"``) and wait until it listens."""
    started: list[RunningListener] = []

    def start(
        *,
        database_url: str | None = None,
        migrate: bool = True,
        port: int | None = None,
        data_dir: Path | None = None,
        wait: bool = True,
        **settings: str,
    ) -> RunningListener:
        data = data_dir or tmp_path / "data"
        url = database_url or f"sqlite:///{data / 'bonescan.db'}"
        if migrate:
            upgrade(url)
        port = port or free_port()
        env = {
            **clean_env,
            "BONESCAN_DATA_DIR": str(data),
            "BONESCAN_DATABASE_URL": url,
            "BONESCAN_LISTENER__PORT": str(port),
            "BONESCAN_LISTENER__AE_TITLE": AE_TITLE,
            "BONESCAN_LOG_FORMAT": "text",
            "PYTHONPATH": str(REPO),
        }
        env.update({f"BONESCAN_{key}": value for key, value in settings.items()})
        log_path = tmp_path / f"listener-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "listeners"],
                cwd=tmp_path / "cwd",
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        running = RunningListener(process, port, data, url, env, log_path)
        started.append(running)
        if wait:
            # its own "listening" line, not only an open port: another run's listener (tests
            # run side by side) may have taken the port this one was given, and this one exits
            listening = f"listening ae_title={AE_TITLE} "
            wait_for(
                lambda: (
                    (
                        listening in running.log()
                        and f" port={port} " in running.log()
                        and port_open(port)
                    )
                    or not running.alive()
                ),
                timeout=120,  # a deadline, not a measurement: CI hosts can be busy
                what="the listener to listen",
            )
            if not running.alive():
                pytest.fail(f"listener exited {process.returncode}:\n{running.log()}")
        return running

    yield start
    for running in started:
        if running.alive():
            running.process.kill()
            running.process.wait(timeout=10)
        if running._engine is not None:
            running._engine.dispose()


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a DICOM file after its preamble and file meta group (what C-STORE carries)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with path.open("rb") as handle:
        read_preamble(handle, False)
        _read_file_meta_info(handle)
        return handle.read()


# ------------------------------------------------------------------------------------- workers


@dataclass
class RunningWorker:
    """A ``bonescan worker`` subprocess (its own session: kill -9 reaches its pool too)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def children(self) -> list[int]:
        """PIDs of the pool processes."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def kill(self) -> None:
        """kill -9 the worker and its pool at once (a host losing the process)."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


StartWorker = Callable[..., RunningWorker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``bonescan worker`` with the listener's environment (plus overrides) and wait until
    it consumes."""
    started: list[RunningWorker] = []

    def start(
        env: dict[str, str], *, queues: str = "segment,export", **settings: str
    ) -> RunningWorker:
        full = {**env, **{f"BONESCAN_{key}": value for key, value in settings.items()}}
        log_path = tmp_path / f"worker-{len(started)}.log"
        (tmp_path / "cwd").mkdir(exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "worker", "--queues", queues],
                cwd=tmp_path / "cwd",
                env=full,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running = RunningWorker(process, log_path, full)
        started.append(running)
        wait_for(
            lambda: " ready." in running.log() or not running.alive(),
            timeout=240,  # a deadline for busy CI hosts, not a measurement
            what="the worker to be ready",
            every=0.2,
        )
        if not running.alive():
            pytest.fail(f"worker exited {process.returncode}:\n{running.log()}")
        return running

    yield start
    for running in started:
        if running.alive():
            running.kill()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained ``tiny`` checkpoint: fast, deterministic plumbing for pipeline tests."""
    import torch

    from msanet_core import (
        ModelConfig,
        build_generator,
        crop_thorax,
        generate_patient,
        normalise_counts,
    )
    from msanet_core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig.preset("tiny")
    generator = build_generator(config).eval()
    # Untrained, its probabilities sit in a narrow band around 0.58: every pixel would be a
    # lesion. Rescale the output head so that the top ~10 % of a sample view's logits cross
    # 0.5: the mask then follows the image, differs between views and shows any mirroring.
    head = generator.heads[-1] if config.deep_supervision else generator.heads[0]
    counts = generate_patient(11, 0).anterior.counts
    crop = normalise_counts(crop_thorax(counts).apply(counts))
    with torch.no_grad():
        logits = torch.logit(generator(torch.from_numpy(crop)[None, None]).double(), eps=1e-12)
        cut = float(torch.quantile(logits.flatten(), 0.9))
        scale = 10.0 / max(float((logits - cut).abs().max()), 1e-9)
        head.weight.mul_(scale)
        head.bias.sub_(cut).mul_(scale)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(
        path,
        config=config,
        generator=generator,
        metadata={"epochs": 0, "seed": 0, "data": "untrained, for tests", "metrics": {}},
    )
    return path
