"""``bonescan segment FILE…``: one-off segmentation of DICOM files into SEG files, no server.

Files are grouped into scans by Series Instance UID (a 2-frame instance, or a single-frame
anterior/posterior pair); each scan gives one SEG (the same object the pipeline sends to PACS:
same encoding, conformance gate and deterministic UIDs) and a PNG preview beside it. A file that
cannot be read, or a scan that cannot be segmented, is reported in one line; the others still
run, and the exit code is 1 when any failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.common import fail, settings_or_exit

if TYPE_CHECKING:
    from pydicom import Dataset


@dataclass
class _Scan:
    series_uid: str
    files: list[Path] = field(default_factory=list)
    datasets: list[Dataset] = field(default_factory=list)


def _read(files: list[Path]) -> tuple[list[_Scan], list[str]]:
    """Group readable DICOM files by series; one error line per unreadable file."""
    from pydicom import dcmread  # noqa: PLC0415
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    scans: dict[str, _Scan] = {}
    errors = []
    for path in files:
        if not path.is_file():
            errors.append(f"{path}: no such file")
            continue
        try:
            dataset = dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as error:
            errors.append(f"{path}: not a readable DICOM file ({error})")
            continue
        uid = str(getattr(dataset, "SeriesInstanceUID", "") or path)
        scan = scans.setdefault(uid, _Scan(uid))
        scan.files.append(path)
        scan.datasets.append(dataset)
    return list(scans.values()), errors


def segment(
    files: Annotated[list[Path], typer.Argument(help="DICOM files: NM whole-body bone scans.")],
    out: Annotated[Path, typer.Option(help="Directory for the SEG files and PNG previews.")] = Path(
        "bonescan-segment"
    ),
    weights: Annotated[
        Path | None,
        typer.Option(help="Checkpoint (default: BONESCAN_WEIGHTS, else the shipped weights)."),
    ] = None,
    png: Annotated[bool, typer.Option(help="Write a PNG preview beside each SEG.")] = True,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """Segment scans in DICOM files into DICOM SEG files (and PNG previews); no server needed."""
    settings = settings_or_exit()
    scans, errors = _read(files)
    for line in errors:
        typer.echo(f"error: {line}", err=True)
    if not scans:
        raise typer.Exit(1)
    from msanet_core import Segmenter  # noqa: PLC0415
    from pipeline.cli.preview import write_png  # noqa: PLC0415
    from pipeline.dicom.files import write_atomic  # noqa: PLC0415
    from pipeline.errors import PermanentError  # noqa: PLC0415
    from pipeline.workflow.segment import segment_scan  # noqa: PLC0415

    try:
        model = Segmenter.load(weights or settings.weights, device=device or settings.device)
    except (ValueError, OSError) as error:
        fail(f"cannot load the model: {error}")
    failed = len(errors)
    for scan in scans:
        names = ", ".join(path.name for path in scan.files)
        try:
            result = segment_scan(scan.datasets, model)
        except PermanentError as error:
            typer.echo(f"error: {names}: {error}", err=True)
            failed += 1
            continue
        seg = result.seg
        seg_path = write_atomic(seg, out / f"SEG_{seg.SOPInstanceUID}.dcm")
        lesions = ", ".join(
            f"{view.value} {len(view_result.lesions)} lesion(s) "
            f"{view_result.lesion_area_mm2:.0f} mm²"
            for view, view_result in result.views.items()
        )
        line = f"{names}: {lesions} → {seg_path}"
        if png:
            preview = write_png(
                [(v.value, r.image.pixels, r.mask) for v, r in result.views.items()],
                seg_path.with_suffix(".png"),
            )
            line += f" (preview {preview.name})"
        typer.echo(line)
    typer.echo(f"model {model.model_version}: {len(scans) + len(errors) - failed} scan(s) done")
    if failed:
        raise typer.Exit(1)
