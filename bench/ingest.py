"""Ingest benchmark: 200 NM scans of ~1 MB sent by dcmtk's storescu over 1 association and over
20 parallel associations, to bonescan's listener, dcmtk storescp and Orthanc, in one run.

    .venv/bin/python bench/ingest.py [--files 200] [--parallel 20] [--rounds 3]

Each server first gets one unmeasured warm-up pass; then every round measures all of them, the
order rotating from round to round, and the table shows the median of the rounds. Order
matters on a VM: memory the guest touches for the first time is slow to fault in, so whichever
server ran first wrote its files into cold page cache (storescp measured 527 files/s after
another server's files had been deleted and 213 files/s when it ran first).

Everything binds or is sent to 127.0.0.1 (storescp and Orthanc bind all interfaces: FACTS.md).
DCMTK gets TCP_NODELAY=1 (FACTS.md). bonescan runs as in production: SQLite in its data dir,
spool with fsync, jobs enqueued on Redis (db 14, flushed). Targets: ≥ 1.0× Orthanc and
≥ 0.5× storescp on both rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from pipeline.db.migrate import upgrade  # noqa: E402
from tests.integration import dicom_factory as factory  # noqa: E402

STORESCU = "/usr/bin/storescu"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
REDIS_URL = "redis://127.0.0.1:6379/14"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


def make_scans(folder: Path, count: int) -> list[Path]:
    """``count`` 2-frame NM whole-body scans, one study each, ~1 MB."""
    template = factory.nm_whole_body()
    paths = []
    for index in range(count):
        template.StudyInstanceUID, template.SeriesInstanceUID = generate_uid(), generate_uid()
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        paths.append(factory.save(template, folder / f"{index:04d}.dcm"))
    return paths


def send(port: int, ae_title: str, files: list[Path], parallel: int) -> float:
    """Seconds to send ``files`` over ``parallel`` simultaneous storescu associations."""
    chunks = [files[i::parallel] for i in range(parallel)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [STORESCU, "-aet", "BENCH", "-aec", ae_title, "127.0.0.1", str(port), *map(str, chunk)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    failures = [s.communicate()[1].decode()[-300:] for s in senders if s.wait() != 0]
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} storescu runs failed: {failures[0]}")
    return elapsed


@contextmanager
def storescp(work: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port, out = free_port(), work / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        ["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port, "STORESCP", lambda: sum(1 for p in out.iterdir() if p.is_file())
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port, http, storage = free_port(), free_port(), work / "orthanc"
    storage.mkdir()
    config = work / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "DicomAet": "ORTHANC",
                "DicomPort": port,
                "HttpPort": http,
                "RemoteAccessAllowed": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True,
                "StorageCompression": False,
                "Plugins": [],
            }
        )
    )
    process = subprocess.Popen(
        ["/usr/sbin/Orthanc", str(config)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield (
            port,
            "ORTHANC",
            lambda: sum(1 for p in storage.rglob("*") if p.is_file() and len(p.name) > 30),
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def bonescan(work: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    port, data = free_port(), work / "bonescan"
    url = f"sqlite:///{data / 'bonescan.db'}"
    upgrade(url)
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BONESCAN_")}
    env.update(
        {
            "BONESCAN_DATA_DIR": str(data),
            "BONESCAN_DATABASE_URL": url,
            "BONESCAN_BROKER_URL": REDIS_URL,
            "BONESCAN_LISTENER__PORT": str(port),
            "BONESCAN_LISTENER__MAX_ASSOCIATIONS": "25",
            "BONESCAN_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "listeners"],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    engine = create_engine(url)

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM instances")).scalar_one())

    try:
        wait_port(port)
        yield port, "BONESCAN", count
    finally:
        process.terminate()
        process.wait(timeout=60)
        engine.dispose()
        redis.Redis.from_url(REDIS_URL).flushdb()


SERVERS = {"bonescan": bonescan, "storescp": storescp, "Orthanc": orthanc}


def measure(name: str, parallel: int, scans: list[Path], tmp: Path, label: str) -> float:
    """files/s of one pass of ``scans`` to a fresh ``name`` server over ``parallel``."""
    work = tmp / f"{name}-{parallel}-{label}"
    work.mkdir()
    try:
        with SERVERS[name](work) as (port, ae_title, received):
            seconds = send(port, ae_title, scans, parallel)
            got = received()
        if got != len(scans):
            raise RuntimeError(f"{name} kept {got} of {len(scans)} files")
        return len(scans) / seconds
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = list(SERVERS)
    levels = (1, args.parallel)
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bonescan-bench-") as tmp:
        scans = make_scans(Path(tmp) / "scans", args.files)
        size_mb = sum(p.stat().st_size for p in scans) / len(scans) / 1e6
        print(f"{len(scans)} scans of {size_mb:.2f} MB; {os.cpu_count()} CPUs", flush=True)
        for name in names:
            rate = measure(name, 1, scans, Path(tmp), "warm-up")
            print(f"  warm-up   {name:9s}  1 assoc: {rate:7.1f} files/s")
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                for parallel in levels:
                    rate = measure(name, parallel, scans, Path(tmp), str(round_))
                    results.setdefault((name, parallel), []).append(rate)
                    label = f"round {round_ + 1}"
                    print(f"  {label:9s} {name:9s} {parallel:2d} assoc: {rate:7.1f} files/s")
    median = {key: statistics.median(rates) for key, rates in results.items()}
    print()
    print(f"median of {args.rounds} rounds, files/s:")
    print()
    print(
        "| associations | bonescan | storescp | Orthanc | ÷ Orthanc (≥ 1.0) | ÷ storescp (≥ 0.5) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for parallel in levels:
        ours, scp, orth = (median[n, parallel] for n in ("bonescan", "storescp", "Orthanc"))
        print(
            f"| {parallel} | {ours:.1f} | {scp:.1f} | {orth:.1f} | {ours / orth:.2f} | "
            f"{ours / scp:.2f} |"
        )


if __name__ == "__main__":
    main()
