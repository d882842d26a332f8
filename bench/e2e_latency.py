"""End-to-end latency: from the last C-STORE response of a scan to its SEG acknowledged by the
PACS (Orthanc), p50 and p95 over N scans sent one after another, with the given weights on CPU.

    .venv/bin/python bench/e2e_latency.py [--scans 20] [--weights PATH]

The stack runs as in production on one host: listener process, ``bonescan worker`` (prefork,
1 process), Redis broker (db 12, flushed), SQLite, Orthanc with DICOMweb. One warm-up scan loads
the model first. The peer row is dcmtk's storescu sending the same SEG file to the same Orthanc:
the floor of the last step alone. Per-stage medians come from the job events. Targets
(issue 6): p50 ≤ 1.5 s, p95 ≤ 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import NuclearMedicineImageStorage  # type: ignore[attr-defined]  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from msanet_core import generate_patient  # noqa: E402
from pipeline.db.migrate import upgrade  # noqa: E402
from pipeline.db.models import Export, Job, JobEvent, Result  # noqa: E402
from pipeline.db.session import normalise_url  # noqa: E402
from pipeline.dicom.nm import ScanIdentity, build_whole_body, save  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.pacs import OrthancPacs  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/12"
STORESCU = "/usr/bin/storescu"
STAGES = ("complete", "queued", "started", "inference_done", "seg_written", "sent")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"{what}: nothing after {timeout} s")


def make_scan(folder: Path, index: int) -> Path:
    patient = generate_patient(77, index)
    who = ScanIdentity.synthetic(77, index, patient.patient_id)
    (dataset,) = build_whole_body(patient.anterior.counts, patient.posterior.counts, who)
    return save(dataset, folder / f"scan{index:03d}.dcm")


def c_store(port: int, path: Path) -> float:
    """Send one file; return the wall time (epoch seconds) of the C-STORE response."""
    from pydicom import dcmread  # noqa: PLC0415

    ae = AE(ae_title="BENCHMOD")
    ae.add_requested_context(NuclearMedicineImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="BONESCAN")
    if not assoc.is_established:
        raise RuntimeError("listener refused the association")
    status = assoc.send_c_store(dcmread(path))
    answered = time.time()
    assoc.release()
    if getattr(status, "Status", None) != 0:
        raise RuntimeError(f"C-STORE status {status}")
    return answered


def seg_delivered(engine: object, sop_uid: str) -> datetime | None:
    with Session(engine) as session:  # type: ignore[arg-type]
        job = session.scalars(
            select(Job)
            .join(Result, Result.job_id == Job.id)
            .where(Result.source_sop_instance_uid == sop_uid)
        ).first()
        if job is None:
            return None
        seg_uid = session.scalars(
            select(Result.seg_sop_instance_uid).where(Result.job_id == job.id)
        ).first()
        return session.scalars(
            select(Export.delivered_at).where(
                Export.job_id == job.id, Export.sop_instance_uid == seg_uid
            )
        ).first()


def stage_times(engine: object) -> dict[str, list[float]]:
    """Per job, seconds from the previous stage mark to each stage mark."""
    out: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with Session(engine) as session:  # type: ignore[arg-type]
        for job_id in session.scalars(select(Job.id)):
            marks: dict[str, datetime] = {}
            for event in session.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            ):
                if event.stage and event.stage not in marks:
                    marks[event.stage] = event.at
            previous = marks.get("received")
            for stage in STAGES:
                if stage in marks and previous is not None:
                    out[stage].append((marks[stage] - previous).total_seconds())
                    previous = marks[stage]
    return out


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped weights")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bonescan-e2e-"))
    redis.Redis.from_url(REDIS_URL).flushdb()
    pacs = OrthancPacs(work / "orthanc")
    pacs.start()
    data = work / "data"
    url = f"sqlite:///{data / 'bonescan.db'}"
    data.mkdir()
    upgrade(url)
    port = free_port()
    env = {
        **os.environ,
        "BONESCAN_DATA_DIR": str(data),
        "BONESCAN_DATABASE_URL": url,
        "BONESCAN_BROKER_URL": REDIS_URL,
        "BONESCAN_LISTENER__PORT": str(port),
        "BONESCAN_DESTINATIONS": json.dumps([pacs.destination.model_dump()]),
        "BONESCAN_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    if args.weights:
        env["BONESCAN_WEIGHTS"] = str(args.weights.resolve())
    logs = (work / "listener.log").open("wb"), (work / "worker.log").open("wb")
    listener = subprocess.Popen(
        [sys.executable, "-m", "listeners"], env=env, stdout=logs[0], stderr=subprocess.STDOUT
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker", "--concurrency", "1"],
        env={**env, "BONESCAN_LOG_LEVEL": "INFO"},
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    engine = create_engine(normalise_url(url))
    try:
        scans = [make_scan(work, index) for index in range(args.scans + 1)]
        wait(lambda: " ready." in (work / "worker.log").read_text(), 120, "worker ready")
        from pydicom import dcmread  # noqa: PLC0415

        latencies = []
        for index, path in enumerate(scans):
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            answered = c_store(port, path)
            delivered = wait(lambda u=uid: seg_delivered(engine, u), 300, "SEG delivered")
            assert isinstance(delivered, datetime)
            if index > 0:  # scan 0 warms the model up
                latencies.append(delivered.timestamp() - answered)
        seg_file = next((data / "results").rglob("SEG_*.dcm"))
        peer = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run(
                [
                    STORESCU,
                    "-R",
                    "-aec",
                    pacs.ae_title,
                    "127.0.0.1",
                    str(pacs.dicom_port),
                    str(seg_file),
                ],
                check=True,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
            peer.append(time.perf_counter() - started)
        stages = stage_times(engine)
    finally:
        worker.terminate()
        listener.terminate()
        worker.wait(30)
        listener.wait(30)
        pacs.stop()
        engine.dispose()
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    peer50 = statistics.median(peer)
    print(f"scans: {len(latencies)} (after 1 warm-up), weights: {args.weights or 'shipped'}")
    print(f"{'':34}{'p50 s':>8}{'p95 s':>8}{'max s':>8}")
    print(f"{'bonescan: last C-STORE → SEG acked':34}{p50:8.3f}{p95:8.3f}{max(latencies):8.3f}")
    print(f"{'peer: storescu SEG → Orthanc':34}{peer50:8.3f}")
    print(f"ratio bonescan p50 / storescu-to-Orthanc: {p50 / peer50:.1f}×")
    print("targets: p50 ≤ 1.5 s, p95 ≤ 3 s:", "met" if p50 <= 1.5 and p95 <= 3 else "NOT met")
    print("per-stage medians (s, from the previous mark, all jobs incl. warm-up):")
    for stage, values in stages.items():
        if values:
            print(f"  {stage:16}{statistics.median(values):8.3f}")


if __name__ == "__main__":
    main()
