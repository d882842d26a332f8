"""Import LabelMe annotations over whole-body scans into the training format.

Each ``*.json`` under the input folder is a LabelMe file whose ``imagePath`` (relative to the
JSON) names the annotated scan: an NM DICOM file (2-frame whole-body or single-frame view) or a
16-bit grayscale PNG of one view. The view comes from a true LabelMe flag ``anterior`` /
``posterior``, else a word in the JSON or image file name (``_ant``, ``_post``...), else — for a
single-frame DICOM — its ViewCodeSequence. Polygons are rasterised on the full image
(:mod:`msanet_core.labelme`), the thorax is cropped with :func:`msanet_core.crop_thorax`, and
samples are written with :func:`msanet_core.dataset.save_sample` into ``train/``, ``val/`` and
``test/`` split by patient: both views of a patient on the same side (MODEL.md §1).
Patient ids come from DICOM PatientID, or from the PNG file name via a regular expression.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from msanet_core.crop import NoBodyFoundError, crop_thorax
from msanet_core.dataset import Sample, save_sample
from msanet_core.labelme import DEFAULT_BENIGN_LABELS, parse_labelme, rasterise, view_hint
from msanet_core.synth.split import assign_splits
from pipeline.dicom.views import (
    ANTERIOR_CODES,
    DEFAULT_PIXEL_SPACING_MM,
    POSTERIOR_CODES,
    ViewError,
    is_head_first,
    pixel_spacing,
    split_views,
)

logger = logging.getLogger(__name__)
DEFAULT_PATIENT_PATTERN = r"^(?P<patient>.+?)[_\-. ]+(?:ant|anterior|post|posterior)(?:[_\-. ]|$)"


class LabelMeImportError(ValueError):
    """One annotation file cannot be imported; the message names the file and the reason."""


@dataclass(frozen=True)
class ImportOptions:
    """How ``bonescan data import-labelme`` reads and splits; see the module docstring."""

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    lesion_labels: tuple[str, ...] | None = None
    benign_labels: tuple[str, ...] = DEFAULT_BENIGN_LABELS
    patient_pattern: str = DEFAULT_PATIENT_PATTERN
    png_head_first: bool = True


@dataclass(frozen=True)
class AnnotatedView:
    """One annotated view: full-size pixels as stored and where they come from."""

    pixels: npt.NDArray[np.uint16]
    view: str
    patient_id: str
    head_first: bool
    pixel_spacing_mm: float


@dataclass
class ImportReport:
    """What an import did: samples per split, patients, and files skipped with reasons."""

    written: dict[str, int] = field(default_factory=dict)
    patients: int = 0
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _dicom_view(path: Path, hint: str | None) -> AnnotatedView:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as error:
        raise LabelMeImportError(f"{path.name}: not a readable DICOM file ({error})") from error
    patient_id = str(ds.get("PatientID", "")).strip()
    if not patient_id or re.search(r"[/\\\x00]", patient_id):
        raise LabelMeImportError(
            f"{path.name}: DICOM PatientID is empty or not usable in a file name"
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        try:
            views = {str(v.view): v for v in split_views([ds]).values()}
        except ViewError as error:
            raise LabelMeImportError(f"{path.name}: {error}") from error
        if hint is None:
            raise LabelMeImportError(
                f"{path.name}: 2-frame scan, say which view the JSON annotates "
                "(flag 'anterior'/'posterior' or a view word in its name)"
            )
        pixels = views[hint].pixels
    else:
        codes = {
            str(item.get("CodeValue", ""))
            for det in ds.get("DetectorInformationSequence") or []
            for item in det.get("ViewCodeSequence") or []
        }
        coded = (
            "anterior"
            if codes & ANTERIOR_CODES
            else "posterior"
            if codes & POSTERIOR_CODES
            else None
        )
        hint = hint or coded
        if hint is None:
            raise LabelMeImportError(f"{path.name}: no view code and no view flag or word")
        pixels = np.asarray(ds.pixel_array, dtype=np.uint16)
    return AnnotatedView(pixels, hint, patient_id, is_head_first(ds), pixel_spacing(ds)[0])


def _png_view(path: Path, hint: str | None, options: ImportOptions) -> AnnotatedView:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image)
    except OSError as error:
        raise LabelMeImportError(f"{path.name}: not a readable image ({error})") from error
    if pixels.ndim != 2 or pixels.min() < 0 or pixels.max() > 65535:
        raise LabelMeImportError(
            f"{path.name}: expected a 16-bit grayscale image, got {pixels.shape}"
        )
    match = re.search(options.patient_pattern, path.stem, flags=re.IGNORECASE)
    if match is None or not match.groupdict().get("patient"):
        raise LabelMeImportError(
            f"{path.name}: patient id not found by pattern {options.patient_pattern!r}"
        )
    if hint is None:
        raise LabelMeImportError(f"{path.name}: no view flag or view word in the file names")
    return AnnotatedView(
        pixels.astype(np.uint16),
        hint,
        match["patient"],
        options.png_head_first,
        DEFAULT_PIXEL_SPACING_MM[0],
    )


def load_annotated(
    json_path: Path, options: ImportOptions
) -> tuple[AnnotatedView, Sample, list[str]]:
    """Parse one LabelMe file, read its scan and build the thorax-crop :class:`Sample`."""
    try:
        annotation = parse_labelme(
            json.loads(json_path.read_text(encoding="utf-8")), json_path.name
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelMeImportError(f"{json_path.name}: cannot read JSON ({error})") from error
    except ValueError as error:
        raise LabelMeImportError(str(error)) from error
    image_path = (json_path.parent / annotation.image_path.replace("\\", "/")).resolve()
    if not image_path.is_file():
        raise LabelMeImportError(f"{json_path.name}: image {annotation.image_path!r} not found")
    hint = view_hint(annotation, json_path.stem) or view_hint(annotation, image_path.stem)
    if image_path.suffix.lower() == ".png":
        view = _png_view(image_path, hint, options)
    else:
        view = _dicom_view(image_path, hint)
    size = (annotation.height, annotation.width)
    if None not in size and size != view.pixels.shape:
        raise LabelMeImportError(
            f"{json_path.name}: imageHeight/Width {size} != image {view.pixels.shape}"
        )
    masks = rasterise(
        annotation,
        view.pixels.shape,
        lesion_labels=options.lesion_labels,
        benign_labels=options.benign_labels,
    )
    try:
        crop = crop_thorax(view.pixels, head_first=view.head_first)
    except NoBodyFoundError as error:
        raise LabelMeImportError(f"{json_path.name}: {error}") from error
    notes = [f"{json_path.name}: skipped {s}" for s in masks.skipped]
    lost = int(masks.lesion.sum()) - int(crop.apply(masks.lesion).sum())
    if lost:
        notes.append(f"{json_path.name}: {lost} lesion pixels lie outside the thorax crop")
    sample = Sample(
        image=np.asarray(crop.apply(view.pixels), dtype=np.uint16),
        mask=np.asarray(crop.apply(masks.lesion), dtype=np.uint8),
        patient_id=view.patient_id,
        view=view.view,
        crop_top=crop.top,
        pixel_spacing_mm=view.pixel_spacing_mm,
        benign=np.asarray(crop.apply(masks.benign), dtype=np.uint8) if masks.benign.any() else None,
    )
    return view, sample, notes


def import_labelme(source: Path, out: Path, options: ImportOptions) -> ImportReport:
    """Import every LabelMe JSON under ``source`` into ``out/{train,val,test}``.

    Files that cannot be imported are skipped and listed in the report; two annotations of
    the same (patient, view) are a problem for the second one.
    """
    report = ImportReport()
    samples: dict[tuple[str, str], Sample] = {}
    for json_path in sorted(source.rglob("*.json")):
        try:
            _, sample, notes = load_annotated(json_path, options)
        except LabelMeImportError as problem:
            report.skipped.append(str(problem))
            continue
        key = (sample.patient_id, sample.view)
        if key in samples:
            report.skipped.append(
                f"{json_path.name}: a second {sample.view} annotation of one patient"
            )
            continue
        samples[key] = sample
        report.warnings += notes
    split = assign_splits((pid for pid, _ in samples), options.fractions, seed=options.seed)
    for (pid, _), sample in sorted(samples.items()):
        save_sample(sample, out / split[pid])
        report.written[split[pid]] = report.written.get(split[pid], 0) + 1
    report.patients = len(split)
    logger.info(
        "labelme_import_done", extra={"samples": len(samples), "skipped": len(report.skipped)}
    )
    return report
