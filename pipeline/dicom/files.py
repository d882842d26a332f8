"""Reading sources and writing results as DICOM Part 10 files, never half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from pipeline.errors import PermanentError


def write_atomic(dataset: Dataset, path: Path) -> Path:
    """Write ``dataset`` to ``path`` as Part 10 (explicit VR little endian unless its file meta
    says otherwise): temp file in the same directory, fsync, rename, fsync of the directory."""
    meta = getattr(dataset, "file_meta", None) or Dataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.file_meta = meta  # type: ignore[assignment]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def read_source(path: Path) -> FileDataset:
    """Read a spooled source instance with its pixel data decoded on access (any transfer
    syntax pydicom's plugins decode: uncompressed, deflated, RLE, JPEG, JPEG-LS, JPEG 2000).

    Raises
    ------
    PermanentError
        The file is gone or not DICOM (naming the path, never patient data).
    """
    try:
        return dcmread(path)
    except FileNotFoundError:
        raise PermanentError(f"source file missing from the spool: {path}") from None
    except (InvalidDicomError, OSError, ValueError) as error:
        raise PermanentError(f"source file unreadable: {path}: {error}") from None
