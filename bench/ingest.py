"""Ingest benchmark: 200 NM scans of ~1 MB sent by dcmtk's storescu over 1 association and over
20 parallel associations, to bonescan's listener, dcmtk storescp and Orthanc, in one run.

    .venv/bin/python bench/ingest.py [--files 200] [--parallel 20] [--rounds 3] [--processes N]

Each server first gets one unmeasured warm-up pass; then every round measures all of them, the
order rotating from round to round, and the table shows the median of the rounds. Order
matters on a VM: memory the guest touches for the first time is slow to fault in, so whichever
server ran first wrote its files into cold page cache (storescp measured 527 files/s after
another server's files had been deleted and 213 files/s when it ran first). A second table
gives each server's CPU time per file (user + system of its process and children, from
``/proc``), which is steadier than files/s on a shared VM and shows where a rate is bounded by
the processor.

Everything binds or is sent to 127.0.0.1 (storescp and Orthanc bind all interfaces: FACTS.md).
DCMTK gets TCP_NODELAY=1 (FACTS.md). bonescan runs as in production: SQLite in its data dir,
spool with fsync, jobs enqueued on Redis (db 14, flushed), with ``listener.processes`` set to
``--processes`` (default: the number of CPUs, as the README advises for a busy node; Orthanc and
storescp use every core too). Targets: ≥ 1.0× Orthanc and ≥ 0.5× storescp on both rows.
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
# a running server: port, AE title, how many files it kept, its process id
Server = tuple[int, str, Callable[[], int], int]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
REDIS_URL = "redis://127.0.0.1:6379/14"
PROCESSES = {"listener": os.cpu_count() or 1}  # --processes


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


def wait_echo(port: int, ae_title: str, timeout: float = 60) -> None:
    """Until a C-ECHO (dcmtk echoscu) succeeds: the server answers, not only listens."""
    deadline = time.monotonic() + timeout
    command = ["/usr/bin/echoscu", "-aet", "BENCH", "-aec", ae_title, "127.0.0.1", str(port)]
    while subprocess.run(command, capture_output=True, check=False).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no C-ECHO answer on {port} after {timeout} s")
        time.sleep(0.2)


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
def storescp(work: Path) -> Iterator[Server]:
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
        yield port, "STORESCP", lambda: sum(1 for p in out.iterdir() if p.is_file()), process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def orthanc(work: Path) -> Iterator[Server]:
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
            process.pid,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def bonescan(work: Path) -> Iterator[Server]:
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
            "BONESCAN_LISTENER__PROCESSES": str(PROCESSES["listener"]),
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
        # association processes import their modules, and the sender process loads Celery,
        # after the port opens: not measured
        wait_echo(port, "BONESCAN")
        time.sleep(2)
        yield port, "BONESCAN", count, process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)
        engine.dispose()
        redis.Redis.from_url(REDIS_URL).flushdb()


SERVERS = {"bonescan": bonescan, "storescp": storescp, "Orthanc": orthanc}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and its living descendants (Linux ``/proc``)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total


def measure(
    name: str, parallel: int, scans: list[Path], tmp: Path, label: str
) -> tuple[float, float]:
    """files/s of one pass of ``scans`` to a fresh ``name`` server over ``parallel``, and the
    server's CPU milliseconds per file."""
    work = tmp / f"{name}-{parallel}-{label}"
    work.mkdir()
    try:
        with SERVERS[name](work) as (port, ae_title, received, pid):
            cpu = cpu_seconds(pid)
            seconds = send(port, ae_title, scans, parallel)
            cpu = cpu_seconds(pid) - cpu
            got = received()
        if got != len(scans):
            raise RuntimeError(f"{name} kept {got} of {len(scans)} files")
        return len(scans) / seconds, 1000 * cpu / len(scans)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=PROCESSES["listener"])
    args = parser.parse_args()
    PROCESSES["listener"] = args.processes
    names = list(SERVERS)
    levels = (1, args.parallel)
    results: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bonescan-bench-") as tmp:
        scans = make_scans(Path(tmp) / "scans", args.files)
        size_mb = sum(p.stat().st_size for p in scans) / len(scans) / 1e6
        print(f"{len(scans)} scans of {size_mb:.2f} MB; {os.cpu_count()} CPUs", flush=True)
        for name in names:
            rate, _ = measure(name, 1, scans, Path(tmp), "warm-up")
            print(f"  warm-up   {name:9s}  1 assoc: {rate:7.1f} files/s")
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                for parallel in levels:
                    rate, ms = measure(name, parallel, scans, Path(tmp), str(round_))
                    results.setdefault((name, parallel), []).append(rate)
                    cpu.setdefault((name, parallel), []).append(ms)
                    label = f"round {round_ + 1}"
                    print(
                        f"  {label:9s} {name:9s} {parallel:2d} assoc: {rate:7.1f} files/s, "
                        f"{ms:5.1f} ms CPU per file"
                    )
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
    print()
    print("server CPU per file (user + system, the process and its children), median, ms:")
    print()
    print("| associations | bonescan | storescp | Orthanc |")
    print("| --- | --- | --- | --- |")
    for parallel in levels:
        ms = [statistics.median(cpu[n, parallel]) for n in ("bonescan", "storescp", "Orthanc")]
        print(f"| {parallel} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} |")


if __name__ == "__main__":
    main()
