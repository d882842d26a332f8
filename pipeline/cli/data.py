"""``bonescan data``: synthetic cohorts, generator calibration and LabelMe import.

The generator and DICOM modules are imported inside the commands: ``msanet_core`` pulls in torch,
which every other ``bonescan`` command would otherwise pay for at start-up.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli.common import fail

app = typer.Typer(
    help="Training data: synthetic whole-body scans, their calibration, LabelMe import.",
    no_args_is_help=True,
)


def _fractions(text: str) -> tuple[float, float, float]:
    from msanet_core.synth.split import parse_fractions  # noqa: PLC0415

    try:
        return parse_fractions(text)
    except ValueError as error:
        fail(str(error))


@app.command()
def synth(
    *,
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="How many patients.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    seed: Annotated[int, typer.Option(help="Seed; patient k is the same whatever N is.")] = 0,
    split: Annotated[str, typer.Option(help="train,val,test patient fractions.")] = "0.7,0.15,0.15",
    single_frame: Annotated[
        bool, typer.Option("--single-frame", help="Two single-frame instances per scan.")
    ] = False,
    feet_first: Annotated[
        bool, typer.Option("--feet-first", help="Write scans feet-first (rows reversed).")
    ] = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (default: CPU count, at most 4).")
    ] = min(os.cpu_count() or 1, 4),
) -> None:
    """Write N synthetic patients as NM DICOM + masks + parameters + training crops.

    Layout: OUT/dicom/<patient>.dcm, OUT/masks/<patient>_<view>.npz, OUT/params/<patient>.json,
    OUT/{train,val,test}/<patient>_<view>.npz (ready for `bonescan train --data OUT`).
    """
    from pipeline.dicom.synth_export import SynthOptions, write_cohort  # noqa: PLC0415

    if seed < 0:
        fail(f"--seed must be ≥ 0, got {seed}")
    options = SynthOptions(
        seed=seed,
        fractions=_fractions(split),
        single_frame=single_frame,
        head_first=not feet_first,
    )
    start = time.perf_counter()
    files = 0
    try:
        for done, count in enumerate(write_cohort(patients, out, options, workers), start=1):
            files += count
            if done % 50 == 0:
                typer.echo(f"{done}/{patients} patients", err=True)
    except OSError as error:
        fail(f"cannot write to {out}: {error.strerror or error}")
    elapsed = time.perf_counter() - start
    typer.echo(
        f"wrote {patients} patients ({files} files) to {out} in {elapsed:.1f} s "
        f"({patients / elapsed:.1f} patients/s, {workers} workers)"
    )


def _cohort_of(directory: Path) -> tuple[int, int]:
    """Seed and size of a written cohort; it is reproducible, so stats regenerate the ROIs."""
    from pipeline.dicom.synth_export import read_manifest  # noqa: PLC0415

    try:
        manifest = read_manifest(directory)
        options = manifest["options"]
        return int(options["seed"]), int(manifest["patients"])  # type: ignore[index, call-overload]
    except (OSError, ValueError, KeyError, TypeError) as error:
        fail(f"cannot read the cohort in {directory}: {error}")


@app.command()
def stats(
    directory: Annotated[
        Path | None, typer.Argument(help="A directory written by `bonescan data synth`.")
    ] = None,
    patients: Annotated[
        int | None, typer.Option("--patients", "-n", min=1, help="Generate N in memory instead.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed when generating in memory.")] = 0,
    view: Annotated[
        str, typer.Option(help="anterior (the real anchors) or posterior.")
    ] = "anterior",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Generator statistics beside the MODEL.md §5 real-scan figures, with tolerances.

    Exit status 1 when a statistic is outside its tolerance.
    """
    from msanet_core.calibration import patient_stats, summarise  # noqa: PLC0415
    from msanet_core.synth import generate_patient  # noqa: PLC0415

    if view not in ("anterior", "posterior"):
        fail(f"--view must be anterior or posterior, got {view!r}")
    if (directory is None) == (patients is None):
        fail("give either a DIRECTORY written by `bonescan data synth` or --patients N")
    if patients is None:
        seed, patients = _cohort_of(directory or Path())
    table = summarise(patient_stats(generate_patient(seed, i), view) for i in range(patients))
    if as_json:
        rows = [
            {
                "name": r.ref.name,
                "median": r.median,
                "p5": r.p5,
                "p95": r.p95,
                "reference": r.ref.reference,
                "low": r.ref.low,
                "high": r.ref.high,
                "source": r.ref.source,
                "ok": r.ok,
            }
            for r in table
        ]
        typer.echo(json.dumps({"patients": patients, "seed": seed, "view": view, "stats": rows}))
    else:
        typer.echo(f"{patients} synthetic patients, seed {seed}, {view} view")
        typer.echo(
            f"{'statistic':22} {'median':>10} {'p5–p95':>21} {'reference':>10} "
            f"{'tolerance':>21}  ok   source"
        )
        for r in table:
            typer.echo(
                f"{r.ref.name:22} {r.median:10.4g} {r.p5:10.4g}–{r.p95:<10.4g} "
                f"{r.ref.reference:10.4g} {r.ref.low:10.4g}–{r.ref.high:<10.4g}  "
                f"{'yes' if r.ok else 'NO ':4} {r.ref.source}"
            )
    if not all(r.ok for r in table):
        raise typer.Exit(1)


@app.command(name="import-labelme")
def import_labelme(
    source: Annotated[
        Path, typer.Argument(help="Folder of LabelMe JSON files (searched recursively).")
    ],
    *,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Training directory (default SOURCE/training)."),
    ] = None,
    split: Annotated[str, typer.Option(help="train,val,test patient fractions.")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="Seed of the patient-level split.")] = 0,
    lesion_label: Annotated[
        list[str] | None,
        typer.Option(
            "--lesion-label", help="Label counted as lesion (repeat); default: all but benign."
        ),
    ] = None,
    benign_label: Annotated[
        list[str] | None, typer.Option("--benign-label", help="Label of benign hot spots (repeat).")
    ] = None,
    patient_pattern: Annotated[
        str | None,
        typer.Option(help="Regex with a (?P<patient>...) group over PNG file names."),
    ] = None,
    png_feet_first: Annotated[
        bool, typer.Option("--png-feet-first", help="PNG scans have the feet at row 0.")
    ] = False,
) -> None:
    """Turn LabelMe polygons over DICOM or 16-bit PNG scans into training crops by patient."""

    from msanet_core.labelme import DEFAULT_BENIGN_LABELS  # noqa: PLC0415
    from pipeline.dicom.labelme_import import (  # noqa: PLC0415
        DEFAULT_PATIENT_PATTERN,
        ImportOptions,
    )
    from pipeline.dicom.labelme_import import import_labelme as run_import  # noqa: PLC0415

    if not source.is_dir():
        fail(f"{source} is not a directory")
    pattern = patient_pattern or DEFAULT_PATIENT_PATTERN
    try:
        if "(?P<patient>" not in pattern:
            raise re.error("needs a (?P<patient>...) group")
        re.compile(pattern)
    except re.error as error:
        fail(f"--patient-pattern {pattern!r}: {error}")
    options = ImportOptions(
        fractions=_fractions(split),
        seed=seed,
        lesion_labels=tuple(lesion_label) if lesion_label else None,
        benign_labels=tuple(benign_label) if benign_label else DEFAULT_BENIGN_LABELS,
        patient_pattern=pattern,
        png_head_first=not png_feet_first,
    )
    target = out or source / "training"
    try:
        report = run_import(source, target, options)
    except OSError as error:
        fail(f"cannot write to {target}: {error.strerror or error}")
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    for line in report.skipped:
        typer.echo(f"skipped: {line}", err=True)
    total = sum(report.written.values())
    counts = ", ".join(f"{k} {report.written.get(k, 0)}" for k in ("train", "val", "test"))
    typer.echo(
        f"imported {total} views of {report.patients} patients into {target} ({counts}); "
        f"{len(report.skipped)} skipped"
    )
    if total == 0:
        fail("no annotation could be imported")
