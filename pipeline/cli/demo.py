"""``bonescan demo``: a newcomer's first minute — synthetic scans through the real product.

1. C-ECHO the configured listener; when nothing answers, start ``bonescan serve`` (embedded
   defaults unless configured otherwise) and stop it again at the end;
2. make ``--scans`` synthetic whole-body bone scans (bonescan's generator; no real patient) and
   send them over DICOM C-STORE, as a modality would;
3. wait for their jobs in the tracking database (the same ``BONESCAN_*`` settings as ``serve``)
   and print a table: lesions found per view beside the generator's truth in the thorax crop;
4. write a PNG per scan: both views with the SEG that the pipeline wrote overlaid in red.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.cli.common import fail, settings_or_exit
from pipeline.settings import Destination, Settings

DEMO_SEED = 2024
DEMO_AE_TITLE = "BONESCANDEMO"
SERVE_START_TIMEOUT_S = 300.0


def _echo(destination: Destination) -> bool:
    from pipeline.dicom.scu import echo  # noqa: PLC0415

    return echo(destination, DEMO_AE_TITLE, timeout_s=3.0).ok


def _start_serve(destination: Destination, log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve"],
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + SERVE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail(f"bonescan serve exited with code {process.returncode}; see {log_path}")
        if _echo(destination):  # the broker holds the tasks until the worker is up
            return process
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=120)
    fail(f"bonescan serve did not answer within {SERVE_START_TIMEOUT_S:.0f} s; see {log_path}")


def _make_scans(folder: Path, count: int) -> list[tuple[Path, Any]]:
    from msanet_core import generate_patient  # noqa: PLC0415
    from pipeline.dicom.nm import ScanIdentity, build_whole_body, save  # noqa: PLC0415

    scans = []
    for index in range(count):
        patient = generate_patient(DEMO_SEED, index)
        who = ScanIdentity.synthetic(DEMO_SEED, index, patient.patient_id)
        (dataset,) = build_whole_body(patient.anterior.counts, patient.posterior.counts, who)
        scans.append((save(dataset, folder / f"{patient.patient_id}.dcm"), patient))
    return scans


def _truth_in_thorax(view: Any) -> int:
    """Metastases of the generator's truth inside the view's thorax crop."""
    import numpy as np  # noqa: PLC0415
    from scipy import ndimage  # noqa: PLC0415

    from msanet_core import crop_thorax  # noqa: PLC0415

    crop = crop_thorax(view.counts, head_first=True)
    truth = np.asarray(crop.apply(view.lesion_mask)) > 0
    return int(ndimage.label(truth)[1])


def _finished(settings: Settings) -> set[str]:
    done = {"exported", "export_failed", "failed", "skipped"}
    return done if settings.destinations else {*done, "segmented"}


def _wait_for_jobs(
    settings: Settings, sessions: Any, series_uids: list[str], timeout: float
) -> dict[str, Any]:
    from sqlalchemy import select  # noqa: PLC0415

    from pipeline.db.models import Job, Series  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            rows = session.execute(
                select(Series.series_instance_uid, Job)
                .join(Job, Job.series_id == Series.id)
                .where(Series.series_instance_uid.in_(series_uids))
                .order_by(Job.id)
            ).all()
            jobs = {str(uid): job for uid, job in rows}  # the newest job per series wins
            for job in jobs.values():
                session.expunge(job)
        states = {uid: job.state.value for uid, job in jobs.items()}
        if len(states) == len(series_uids) and set(states.values()) <= _finished(settings):
            return jobs
        if time.monotonic() > deadline:
            waiting = len(series_uids) - sum(s in _finished(settings) for s in states.values())
            fail(f"{waiting} scan(s) not finished after {timeout:.0f} s (bonescan jobs list)")
        time.sleep(0.25)


def _results(sessions: Any, job_id: int) -> list[Any]:
    from sqlalchemy import select  # noqa: PLC0415

    from pipeline.db.models import Result  # noqa: PLC0415

    with sessions() as session:
        rows = list(session.scalars(select(Result).where(Result.job_id == job_id)))
        for row in rows:
            session.expunge(row)
        return rows


def _overlay(results: list[Any], dataset: Any, out: Path) -> Path | None:
    """PNG of both views with the SEG the pipeline wrote (read back from its file)."""
    import highdicom as hd  # noqa: PLC0415

    from pipeline.cli.preview import write_png  # noqa: PLC0415

    if not results:
        return None
    seg = hd.seg.segread(results[0].seg_path)
    pixels = dataset.pixel_array
    views = []
    for result in sorted(results, key=lambda r: r.view):
        frame = result.source_frame_number or 1
        mask = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=result.source_sop_instance_uid,
            source_frame_numbers=[frame],
            segment_numbers=[1],
            assert_missing_frames_are_empty=False,
        )[0, :, :, 0].astype(bool)
        views.append((result.view, pixels[frame - 1], mask))
    return write_png(views, out)


def demo(
    scans: Annotated[int, typer.Option(min=1, max=50, help="How many synthetic scans.")] = 3,
    out: Annotated[Path, typer.Option(help="Directory for the scans and PNGs.")] = Path(
        "bonescan-demo"
    ),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the results.")] = 600.0,
) -> None:
    """Send synthetic scans to bonescan (starting `serve` if none answers) and show the results."""
    settings = settings_or_exit()
    # "connection refused" while probing for a listener is expected, not an error to show
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    listener = settings.listener
    host = "127.0.0.1" if listener.host in ("0.0.0.0", "::", "") else listener.host  # noqa: S104
    target = Destination(name="bonescan", ae_title=listener.ae_title, host=host, port=listener.port)
    out.mkdir(parents=True, exist_ok=True)
    serve = None
    if _echo(target):
        typer.echo(f"using the bonescan listening on {host}:{listener.port}")
    else:
        typer.echo(f"nothing answers on {host}:{listener.port}: starting `bonescan serve`")
        serve = _start_serve(target, out / "serve.log")
    try:
        _run(settings, target, scans, out, timeout)
    finally:
        if serve is not None:
            serve.send_signal(signal.SIGINT)
            serve.wait(timeout=120)
            typer.echo("stopped the `bonescan serve` this demo started")


def _run(settings: Settings, target: Destination, count: int, out: Path, timeout: float) -> None:
    from pydicom import dcmread  # noqa: PLC0415

    from pipeline.cli.admin import Column, show_table  # noqa: PLC0415
    from pipeline.db.session import make_engine, make_session_factory  # noqa: PLC0415
    from pipeline.dicom.scu import store  # noqa: PLC0415
    from pipeline.errors import PermanentError, RetryableError  # noqa: PLC0415

    made = _make_scans(out / "scans", count)
    typer.echo(f"made {count} synthetic scan(s) in {out / 'scans'}; sending them over C-STORE")
    started = time.monotonic()
    for path, _ in made:
        try:
            store(target, path, calling_ae_title=DEMO_AE_TITLE, timeout_s=30.0)
        except (PermanentError, RetryableError) as error:
            fail(f"C-STORE of {path.name} failed: {error}")
    datasets = [dcmread(path) for path, _ in made]
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    try:
        jobs = _wait_for_jobs(settings, sessions, [d.SeriesInstanceUID for d in datasets], timeout)
        results_of = {job.id: _results(sessions, job.id) for job in jobs.values()}
    finally:
        engine.dispose()
    elapsed = time.monotonic() - started
    rows = []
    for (_path, patient), dataset in zip(made, datasets, strict=True):
        job = jobs[dataset.SeriesInstanceUID]
        results = results_of[job.id]
        found = {r.view: r.lesion_count for r in results}
        png = _overlay(results, dataset, out / f"{patient.patient_id}.png")
        rows.append(
            {
                "scan": patient.patient_id,
                "state": job.state.value,
                "anterior": f"{found.get('anterior', '-')} / {_truth_in_thorax(patient.anterior)}",
                "posterior": f"{found.get('posterior', '-')} / "
                f"{_truth_in_thorax(patient.posterior)}",
                "overlay": str(png) if png else (job.error or "-"),
            }
        )
    columns: list[Column] = [(key, itemgetter(key)) for key in rows[0]]
    show_table(
        f"{count} synthetic scan(s), sent → results in {elapsed:.1f} s "
        "(lesions found / in the generator's truth, thorax crop)",
        columns,
        rows,
    )
    typer.echo(
        "The shipped weights are trained on synthetic scans: a demonstration, not for clinical use."
    )
