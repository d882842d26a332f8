"""Reprocessing throughput: scans per second when ``bonescan jobs reprocess`` re-runs a stored
archive through the workers, beside the same scans segmented in one process (the compute floor).

    .venv/bin/python bench/reprocess.py [--scans 40] [--concurrency 2] [--weights PATH] [--export]

The stack runs as in production on one host: listener process, ``bonescan worker`` (prefork,
``--concurrency`` processes sharing the cores), Redis broker (db 11, flushed), SQLite. The archive
is made first: ``--scans`` synthetic 2-frame scans sent by dcmtk's storescu in one association
and segmented once (that first pass is reported too). Then the clock starts, ``bonescan jobs
reprocess --from 2000-01-01`` opens a new job per series, and it stops when every new job has
finished. With ``--export`` the SEG and SR of every job also go to an Orthanc started here
(the production shape; it shares the same cores). The peer rows run in this process on the same
scans with all cores: ``segment_scan`` (read, crop, both views in one batch, SEG + SR build
without DB, broker or files) and the model alone. Target (issue 6): ≥ 5 scans/s on 2 CPU cores
with the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import create_engine, func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from msanet_core import generate_patient  # noqa: E402
from pipeline.db.migrate import upgrade  # noqa: E402
from pipeline.db.models import Job  # noqa: E402
from pipeline.db.session import normalise_url  # noqa: E402
from pipeline.dicom.nm import ScanIdentity, build_whole_body, save  # noqa: E402
from tests.conftest import free_port  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/11"
# A job is done when segmented (no destination) or when its exports settled (with --export).
FINISHED = ("exported", "failed", "export_failed", "skipped")


def make_scans(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for index in range(count):
        patient = generate_patient(91, index)
        who = ScanIdentity.synthetic(91, index, patient.patient_id)
        (dataset,) = build_whole_body(patient.anterior.counts, patient.posterior.counts, who)
        paths.append(save(dataset, folder / f"scan{index:03d}.dcm"))
    return paths


def finished_jobs(engine: object, generation: int) -> dict[str, int]:
    with Session(engine) as session:  # type: ignore[arg-type]
        rows = session.execute(
            select(Job.state, func.count()).where(Job.generation == generation).group_by(Job.state)
        ).all()
    return {str(getattr(state, "value", state)): int(count) for state, count in rows}


def wait_finished(
    engine: object, generation: int, count: int, timeout: float, *, export: bool
) -> dict[str, int]:
    finished = FINISHED if export else (*FINISHED, "segmented")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = finished_jobs(engine, generation)
        if sum(states.get(state, 0) for state in finished) >= count:
            return states
        time.sleep(0.02)
    raise TimeoutError(f"generation {generation}: {finished_jobs(engine, generation)}")


def wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not in {path} after {timeout} s")


def in_process(paths: list[Path], weights: Path | None) -> tuple[float, float]:
    """Scans per second of ``segment_scan`` and of the model alone, in this process."""
    import torch  # noqa: PLC0415

    from msanet_core import Segmenter, crop_thorax  # noqa: PLC0415
    from pipeline.dicom.files import read_source  # noqa: PLC0415
    from pipeline.dicom.views import split_views  # noqa: PLC0415
    from pipeline.workflow.segment import segment_scan  # noqa: PLC0415

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = Segmenter.load(weights)
    segment_scan([read_source(paths[0])], model)  # warm-up
    started = time.perf_counter()
    for path in paths:
        segment_scan([read_source(path)], model)
    pipeline_rate = len(paths) / (time.perf_counter() - started)
    batches = []
    for path in paths:
        views = split_views([read_source(path)])
        batches.append(
            np.stack(
                [
                    crop_thorax(view.pixels, head_first=view.head_first).apply(view.pixels)
                    for view in views.values()
                ]
            )
        )
    started = time.perf_counter()
    for batch in batches:
        model.predict(batch)
    return pipeline_rate, len(paths) / (time.perf_counter() - started)


def main() -> None:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None, help="default: shipped weights")
    parser.add_argument("--export", action="store_true", help="also deliver to an Orthanc")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bonescan-reprocess-"))
    redis.Redis.from_url(REDIS_URL).flushdb()
    data = work / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'bonescan.db'}"
    upgrade(url)
    port = free_port()
    env = {
        **os.environ,
        "BONESCAN_DATA_DIR": str(data),
        "BONESCAN_DATABASE_URL": url,
        "BONESCAN_BROKER_URL": REDIS_URL,
        "BONESCAN_LISTENER__PORT": str(port),
        "BONESCAN_DESTINATIONS": "[]",
        "BONESCAN_LOG_LEVEL": "WARNING",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": str(REPO),
    }
    pacs = None
    if args.export:
        from tests.integration.pacs import OrthancPacs  # noqa: PLC0415

        pacs = OrthancPacs(work / "orthanc")
        pacs.start()
        env["BONESCAN_DESTINATIONS"] = json.dumps([pacs.destination.model_dump()])
    if args.weights:
        env["BONESCAN_WEIGHTS"] = str(args.weights.resolve())
    scans = make_scans(work / "scans", args.scans)
    listener_log, worker_log = work / "listener.log", work / "worker.log"
    listener = subprocess.Popen(
        [sys.executable, "-m", "listeners"],
        env=env,
        stdout=listener_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "worker",
            "--concurrency",
            str(args.concurrency),
        ],
        env={**env, "BONESCAN_LOG_LEVEL": "INFO"},
        stdout=worker_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    engine = create_engine(normalise_url(url))
    try:
        wait_for(worker_log, " ready.", 120)
        started = time.perf_counter()
        subprocess.run(
            [shutil.which("storescu") or "storescu", "-aec", "BONESCAN", "127.0.0.1", str(port)]
            + [str(path) for path in scans],
            check=True,
            capture_output=True,
        )
        first_states = wait_finished(engine, 0, args.scans, 600, export=args.export)
        first = args.scans / (time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "jobs", "reprocess", "--from", "2000-01-01"],
            env=env,
            check=True,
            capture_output=True,
        )
        states = wait_finished(engine, 1, args.scans, 600, export=args.export)
        again = args.scans / (time.perf_counter() - started)
    finally:
        worker.terminate()
        listener.terminate()
        worker.wait(60)
        listener.wait(60)
        engine.dispose()
        if pacs is not None:
            pacs.stop()
    floor, model_only = in_process(scans, args.weights)
    load = os.getloadavg()[0]
    print(
        f"scans: {args.scans}, worker processes: {args.concurrency}, cores: "
        f"{len(os.sched_getaffinity(0))}, weights: {args.weights or 'shipped'}, "
        f"export: {'Orthanc' if args.export else 'none'}, load after: {load:.1f}"
    )
    print(f"{'':46}{'scans/s':>9}")
    print(f"{'bonescan: reprocess (jobs reprocess → done)':46}{again:9.2f}   {states}")
    print(f"{'bonescan: first pass (storescu → done)':46}{first:9.2f}   {first_states}")
    print(f"{'peer: segment_scan in one process':46}{floor:9.2f}")
    print(f"{'peer: model alone (both views, one batch)':46}{model_only:9.2f}")
    print(f"ratio reprocess / in-process segment_scan: {again / floor:.2f}×")
    print("target ≥ 5 scans/s:", "met" if again >= 5 else "NOT met")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
