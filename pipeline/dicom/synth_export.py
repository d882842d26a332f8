"""Write a synthetic cohort to disk: NM DICOM, full-size masks, parameters and training crops.

Layout under the output directory (``bonescan data synth``)::

    dicom/<patient>.dcm                      one 2-frame NM instance (or <patient>_1/_2.dcm)
    masks/<patient>_<view>.npz               lesion, benign (uint8) and instances (uint16),
                                             (1024, 256), same row order as the DICOM pixels
    params/<patient>.json                    every sampled parameter (msanet_core.synth)
    {train,val,test}/<patient>_<view>.npz    thorax crops in the training format
                                             (msanet_core.dataset), cropped with crop_thorax
    manifest.json                            seed, patients, split, options

The same patient id is the DICOM PatientID, the file stem and the training ``patient_id``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from msanet_core.crop import CROP_SIZE, SHOULDER_MARGIN, NoBodyFoundError, ThoraxCrop, crop_thorax
from msanet_core.dataset import Sample, save_sample
from msanet_core.synth import SyntheticPatient, generate_patient, patient_id_for
from msanet_core.synth.split import assign_splits
from pipeline.dicom.nm import PIXEL_SPACING_MM, ScanIdentity, build_whole_body, save

logger = logging.getLogger(__name__)
_A = TypeVar("_A", bound=np.generic)


@dataclass(frozen=True)
class SynthOptions:
    """What ``bonescan data synth`` writes; see the module docstring for the layout."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    single_frame: bool = False
    head_first: bool = True


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are plain data files
    os.replace(tmp, path)


def _crop(counts: npt.NDArray[np.uint16], truth: int, head_first: bool) -> ThoraxCrop:
    try:
        return crop_thorax(counts, head_first=head_first)
    except NoBodyFoundError:  # never seen on the phantom; keep the cohort whole
        logger.warning("crop_fallback_to_true_window")
        rows, shoulder = counts.shape[0], truth + SHOULDER_MARGIN
        if head_first:
            return ThoraxCrop(top=truth, shoulder_row=shoulder, head_first=True)
        return ThoraxCrop(
            top=rows - truth - CROP_SIZE, shoulder_row=rows - 1 - shoulder, head_first=False
        )


def write_patient(patient: SyntheticPatient, out: Path, split: str, options: SynthOptions) -> int:
    """Write one patient's files (see module docstring); return the number of files written."""
    pid = patient.patient_id
    who = ScanIdentity.synthetic(patient.seed, patient.index, pid)

    def order(a: npt.NDArray[_A]) -> npt.NDArray[_A]:
        return a if options.head_first else a[::-1]

    datasets = build_whole_body(
        patient.anterior.counts,
        patient.posterior.counts,
        who,
        head_first=options.head_first,
        single_frame=options.single_frame,
    )
    names = [f"{pid}.dcm"] if len(datasets) == 1 else [f"{pid}_{n}.dcm" for n in (1, 2)]
    for ds, name in zip(datasets, names, strict=True):
        save(ds, out / "dicom" / name)
    _atomic_text(out / "params" / f"{pid}.json", json.dumps(patient.params, indent=1))
    for view in patient.views:
        counts = np.ascontiguousarray(order(view.counts))
        lesion, benign = order(view.lesion_mask), order(view.benign_mask)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out / "masks" / f"{pid}_{view.view}.npz",
            lesion=lesion,
            benign=benign,
            instances=order(view.instances),
        )
        crop = _crop(counts, view.thorax_top, options.head_first)
        sample = Sample(
            image=np.asarray(crop.apply(counts), dtype=np.uint16),
            mask=np.asarray(crop.apply(lesion), dtype=np.uint8),
            patient_id=pid,
            view=view.view,
            crop_top=crop.top,
            pixel_spacing_mm=PIXEL_SPACING_MM,
            benign=np.asarray(crop.apply(benign), dtype=np.uint8),
        )
        save_sample(sample, out / split)
    return len(datasets) + 5


def _work(args: tuple[int, int, str, str, SynthOptions]) -> int:
    seed, index, out, split, options = args
    return write_patient(generate_patient(seed, index), Path(out), split, options)


def write_cohort(
    patients: int, out: Path, options: SynthOptions, workers: int = 1
) -> Iterator[int]:
    """Generate and write patients ``0 … patients−1``; yield each finished patient's file count.

    Patients are split at patient level (:func:`msanet_core.synth.split.assign_splits`) and
    written by ``workers`` processes; patient ``k`` is identical whatever ``patients`` is.
    """
    ids = [patient_id_for(options.seed, i) for i in range(patients)]
    split = assign_splits(ids, options.fractions, seed=options.seed)
    manifest = {
        "generator": "msanet_core.synth",
        "patients": patients,
        "options": asdict(options),
        "split": split,
    }
    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "manifest.json", json.dumps(manifest, indent=1))
    jobs = [(options.seed, i, str(out), split[ids[i]], options) for i in range(patients)]
    if workers <= 1:
        for job in jobs:
            yield _work(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_work, jobs, chunksize=4)


def read_manifest(directory: Path) -> dict[str, object]:
    """The ``manifest.json`` of a cohort written by :func:`write_cohort`."""
    path = directory / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a directory written by `bonescan data synth`"
        )
    data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return data
