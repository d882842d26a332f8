"""Small DICOM test objects made with pydicom: NM whole-body scans (2-frame, single views), SC
with modality NM, a CT image. Independent of ``pipeline.dicom.nm`` on purpose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VIEW_CODES = {"anterior": ("399321004", "anterior"), "posterior": ("399001007", "posterior")}


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def _detector(view: str) -> Dataset:
    item = Dataset()
    item.ImagePositionPatient = [0.0, 0.0, 0.0]
    item.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    item.ViewCodeSequence = Sequence([_code(*VIEW_CODES[view])])
    return item


def _base(sop_class: str, study_uid: str | None, series_uid: str | None, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-0001"
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "bonescan tests"
    return ds


def _pixels(ds: Dataset, frames: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = frames.astype("<u2").tobytes()


def counts(frames: int, rows: int = 1024, columns: int = 256, seed: int = 0) -> np.ndarray:
    """Poisson-like counts with a brighter 'body' in the middle columns."""
    rng = np.random.default_rng(seed)
    image = rng.poisson(3.0, size=(frames, rows, columns)).astype(np.uint16)
    image[:, rows // 8 : rows - rows // 8, columns // 4 : columns - columns // 4] += 40
    return image


def nm_whole_body(
    *,
    frames: int = 2,
    view: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    rows: int = 1024,
    columns: int = 256,
    seed: int = 0,
    sop_class: str = NM_IMAGE_STORAGE,
) -> Dataset:
    """A whole-body NM scan: 2 frames (anterior, posterior) or one frame of ``view``."""
    ds = _base(sop_class, study_uid, series_uid, "NM")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.SeriesDescription = "WB bone scan"
    views = ["anterior", "posterior"] if frames == 2 else [view or "anterior"]
    _pixels(ds, counts(frames, rows, columns, seed))
    ds.NumberOfFrames = frames
    ds.PixelSpacing = [2.26, 2.26]
    # FACTS.md: for WHOLE BODY the Frame Increment Pointer is EnergyWindowVector\DetectorVector.
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]
    ds.EnergyWindowVector = [1] * frames
    ds.NumberOfEnergyWindows = 1
    ds.DetectorVector = list(range(1, frames + 1))
    ds.NumberOfDetectors = frames
    ds.DetectorInformationSequence = Sequence([_detector(v) for v in views])
    return ds


def sc_with_modality_nm(**kwargs: object) -> Dataset:
    """A whole-body view sent as Secondary Capture with Modality NM (some sites do this)."""
    ds = nm_whole_body(frames=1, sop_class=SC_STORAGE, **kwargs)  # type: ignore[arg-type]
    ds.ConversionType = "WSD"
    return ds


def ct_image(*, size: int = 64) -> Dataset:
    """A small CT slice: routed to us by mistake, stored and skipped."""
    ds = _base(CT_IMAGE_STORAGE, None, None, "CT")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    _pixels(ds, counts(1, size, size))
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    return ds


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (with file meta) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
