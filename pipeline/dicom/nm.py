"""Write whole-body bone scans as NM Image Storage, the way a Siemens E.CAM sends them.

One 2-frame instance per scan (SOP class 1.2.840.10008.5.1.4.1.1.20, ImageType
``ORIGINAL\\PRIMARY\\WHOLE BODY\\EMISSION``, Frame Increment Pointer EnergyWindowVector\\
DetectorVector, DetectorVector [1, 2], detector items carrying the view code and geometry), or
optionally two single-frame instances in one series. FACTS.md "NM whole-body objects" lists the
rules ``dciodvfy`` checks. Pixel arrays are ``(rows=1024, cols=256)`` uint16 counts in *head-first*
order (row 0 = head); a feet-first scan is written with its rows reversed (row 0 = feet), which
is what a feet-first acquisition stores. The posterior view is stored as acquired (mirrored).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from pipeline.dicom.views import NM_IMAGE_STORAGE

PIXEL_SPACING_MM = 2.26  # MODEL.md §1
SCAN_VELOCITY_MM_S = 2.5  # 15 cm/min (SNM guideline 10–15 cm/min, MODEL.md §5)
ANTERIOR = ("399321004", "anterior projection")  # CID 26 Nuclear Medicine Projections
POSTERIOR = ("399001007", "posterior projection")
_FIRST = ("ANNA", "BEN", "CARLA", "DAVID", "EMMA", "FELIX", "GRETA", "HUGO", "IDA", "JONAS")
_LAST = ("MUELLER", "SCHMIDT", "WEBER", "WAGNER", "BECKER", "HOFFMANN", "KOCH", "RICHTER")
_BASE_DATE = dt.date(2024, 1, 8)


@dataclass(frozen=True)
class ScanIdentity:
    """Who and when: fake but plausible patient and study attributes, deterministic per seed."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_instance_uid: str
    series_instance_uid: str
    uid_root: str  # entropy for the instance UIDs, so re-writing gives the same UIDs

    @classmethod
    def synthetic(cls, seed: int, index: int, patient_id: str) -> ScanIdentity:
        """Identity of synthetic patient ``index`` of ``seed``: same inputs, same attributes."""
        rng = np.random.default_rng([seed, index, 0x4E4D])  # own stream: pixels stay unchanged
        sex = str(rng.choice(["F", "M"]))
        born = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 50)))
        when = _BASE_DATE + dt.timedelta(days=int(rng.integers(0, 600)))
        root = f"bonescan-synth:{seed}:{index}"
        return cls(
            patient_id=patient_id,
            patient_name=f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}",
            birth_date=born.strftime("%Y%m%d"),
            sex=sex,
            study_date=when.strftime("%Y%m%d"),
            study_time=f"{int(rng.integers(7, 17)):02d}{int(rng.integers(0, 60)):02d}00",
            accession_number=f"A{int(rng.integers(10**7, 10**8))}",
            study_instance_uid=generate_uid(entropy_srcs=[root, "study"]),
            series_instance_uid=generate_uid(entropy_srcs=[root, "series"]),
            uid_root=root,
        )


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _detector(view: tuple[str, str], head_first: bool, rows: int, cols: int) -> Dataset:
    """Detector item: collimator, geometry (IPP/IOP, Type 2) and the view code."""
    item = Dataset()
    item.CollimatorGridName = "LEHR"
    item.CollimatorType = "PARA"
    item.FieldOfViewShape = "RECTANGLE"
    item.FieldOfViewDimensions = [533, 387]
    item.FocalDistance = 0
    item.XFocusCenter = 0
    item.YFocusCenter = 0
    item.ZoomFactor = [1.0, 1.0]
    # LPS: columns run to the patient's left on ANT, right on POST (as acquired); rows run
    # head→feet (−z) when head-first, feet→head (+z) when feet-first.
    x = 1.0 if view == ANTERIOR else -1.0
    z = -1.0 if head_first else 1.0
    item.ImageOrientationPatient = [x, 0.0, 0.0, 0.0, 0.0, z]
    half_width = (cols - 1) / 2 * PIXEL_SPACING_MM
    z0 = 0.0 if head_first else -(rows - 1) * PIXEL_SPACING_MM
    item.ImagePositionPatient = [round(-x * half_width, 2), 0.0, round(z0, 2)]
    item.ViewCodeSequence = Sequence([_code(*view)])
    return item


def _patient_study_series(ds: Dataset, who: ScanIdentity, head_first: bool) -> None:
    ds.PatientName, ds.PatientID = who.patient_name, who.patient_id
    ds.PatientBirthDate, ds.PatientSex = who.birth_date, who.sex
    ds.StudyInstanceUID, ds.SeriesInstanceUID = who.study_instance_uid, who.series_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = who.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = who.study_time
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = who.accession_number, "", "1"
    ds.StudyDescription = "NM Bone Whole Body"
    ds.SeriesDescription = "WB MDP ANT/POST"
    ds.Modality, ds.SeriesNumber = "NM", 1
    # HFS / FFS is carried by the NM/PET Patient Orientation codes (Type 2); PatientPosition
    # (0018,5100) "shall not be present" alongside them (dciodvfy, PS3.3 C.7.3.1).
    ds.BodyPartExamined = "WHOLEBODY"  # unpaired, so Laterality (Type 2C) is absent
    ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "E.CAM"
    ds.InstitutionName, ds.StationName = "BONESCAN SYNTHETIC", "ECAM01"
    ds.SoftwareVersions, ds.DeviceSerialNumber = "syngo MI.Apps", "1234"
    orientation = _code("102538003", "recumbent")
    orientation.PatientOrientationModifierCodeSequence = Sequence([_code("40199007", "supine")])
    ds.PatientOrientationCodeSequence = Sequence([orientation])
    gantry = ("102540008", "headfirst") if head_first else ("102541007", "feet-first")
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code(*gantry)])


def _isotope(ds: Dataset, frames: int) -> None:
    window = Dataset()
    energy = Dataset()
    energy.EnergyWindowLowerLimit, energy.EnergyWindowUpperLimit = 126.0, 154.0  # 20 % at 140 keV
    window.EnergyWindowRangeSequence = Sequence([energy])
    window.EnergyWindowName = "Tc99m"
    ds.EnergyWindowInformationSequence = Sequence([window])
    ds.NumberOfEnergyWindows = 1
    ds.EnergyWindowVector = [1] * frames
    drug = Dataset()
    drug.Radiopharmaceutical = "Tc-99m MDP"
    drug.RadionuclideCodeSequence = Sequence([_code("44588005", "Technetium-99m")])
    drug.RadionuclideTotalDose = 650.0  # MBq, EANM 2016: 300–740 MBq
    ds.RadiopharmaceuticalInformationSequence = Sequence([drug])


def build_nm(
    views: list[tuple[tuple[str, str], npt.NDArray[np.uint16]]],
    who: ScanIdentity,
    *,
    head_first: bool = True,
    instance_number: int = 1,
) -> Dataset:
    """One NM Image Storage dataset holding ``views`` (``[(view code, image)]``) as frames.

    Each image is ``(rows, cols)`` uint16 counts in head-first row order; it is stored
    reversed for a feet-first scan.
    """
    rows, cols = views[0][1].shape
    frames = np.stack([img if head_first else img[::-1] for _, img in views]).astype(np.uint16)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[who.uid_root, "instance", str(instance_number)])
    _patient_study_series(ds, who, head_first)
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "WHOLE BODY", "EMISSION"]
    ds.ImageComments = "\\".join("ANT" if code == ANTERIOR else "POST" for code, _ in views)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 16  # FACTS.md: BitsStored must equal BitsAllocated
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.NumberOfFrames = len(views)
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]  # FACTS.md: EnergyWindow\Detector vector
    _isotope(ds, len(views))
    ds.DetectorVector = list(range(1, len(views) + 1))
    ds.NumberOfDetectors = len(views)
    ds.DetectorInformationSequence = Sequence(
        [_detector(code, head_first, rows, cols) for code, _ in views]
    )
    ds.ScanVelocity = SCAN_VELOCITY_MM_S
    ds.ScanLength = round(rows * PIXEL_SPACING_MM)
    ds.WholeBodyTechnique = "2PS"  # two-pass … here one pass, two heads
    ds.ActualFrameDuration = int(rows * PIXEL_SPACING_MM / SCAN_VELOCITY_MM_S * 1000)
    ds.CountsAccumulated = int(frames.sum(dtype=np.int64))
    ds.AcquisitionTerminationCondition = "MANU"
    ds.LargestImagePixelValue = int(frames.max())
    ds.SmallestImagePixelValue = int(frames.min())
    ds.PixelData = frames.tobytes()
    return ds


def build_whole_body(
    anterior: npt.NDArray[np.uint16],
    posterior: npt.NDArray[np.uint16],
    who: ScanIdentity,
    *,
    head_first: bool = True,
    single_frame: bool = False,
) -> list[Dataset]:
    """The scan as one 2-frame instance, or as two single-frame instances (``single_frame``)."""
    pair = [(ANTERIOR, anterior), (POSTERIOR, posterior)]
    if not single_frame:
        return [build_nm(pair, who, head_first=head_first)]
    return [
        build_nm([view], who, head_first=head_first, instance_number=n)
        for n, view in enumerate(pair, start=1)
    ]


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file (explicit VR little endian); return ``path``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
