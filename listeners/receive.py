"""From the bytes of a C-STORE to what the tracking tables keep: parse the header once, classify.

Used by the C-STORE handler and by the sweeper when it recovers a spooled file that has no row.
Pixels are never decoded: the pixel data element is hashed as it was encoded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.tag import Tag
from pydicom.uid import UID

from listeners.classify import Classification, classify
from listeners.spool import Stored, is_valid_uid
from pipeline.db.ingest import ReceivedInstance

PIXEL_DATA = Tag(0x7FE0, 0x0010)
PIXEL_DATA_TAGS = (PIXEL_DATA, Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))  # + float, double float


class UnreadableDatasetError(ValueError):
    """The bytes are not a DICOM dataset we can file (PS3.4 B.2.3: 0xC000 cannot understand)."""


@dataclass(frozen=True)
class Parsed:
    """The header attributes bonescan files an instance by, and what it is."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    classification: Classification
    pixel_digest: str | None
    modality: str | None
    series_number: int | None
    series_description: str | None
    patient_name: str | None
    patient_id: str | None
    study_date: str | None
    study_description: str | None
    accession_number: str | None
    calling_ae_title: str | None  # from the file meta (0002,0016), for recovered files


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip() or None


def _uid(dataset: Dataset, keyword: str) -> str:
    value = _text(dataset, keyword)
    if value is None or not is_valid_uid(value):
        raise UnreadableDatasetError(f"{keyword} is missing or not a valid UID")
    return value


def _series_number(dataset: Dataset) -> int | None:
    try:
        value = dataset.get("SeriesNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def pixel_value(dataset: Dataset) -> bytes | None:
    """The pixel data element's value as encoded (not decoded), or None without pixel data."""
    for tag in PIXEL_DATA_TAGS:
        if tag in dataset:
            value = dataset.get_item(tag).value
            if isinstance(value, bytes):
                return value
    return None


def _describe(dataset: Dataset, sop_class_uid: str) -> Parsed:
    meta = dataset.file_meta
    pixels = pixel_value(dataset)
    classification = classify(
        dataset,
        sop_class_uid,
        pixel_data_length=None if pixels is None else len(pixels),
        encapsulated=UID(str(meta.TransferSyntaxUID)).is_encapsulated,
    )
    return Parsed(
        study_instance_uid=_uid(dataset, "StudyInstanceUID"),
        series_instance_uid=_uid(dataset, "SeriesInstanceUID"),
        sop_instance_uid=_uid(dataset, "SOPInstanceUID"),
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
        classification=classification,
        pixel_digest=None if pixels is None else hashlib.sha256(pixels).hexdigest(),
        modality=_text(dataset, "Modality"),
        series_number=_series_number(dataset),
        series_description=_text(dataset, "SeriesDescription"),
        patient_name=_text(dataset, "PatientName"),
        patient_id=_text(dataset, "PatientID"),
        study_date=_text(dataset, "StudyDate"),
        study_description=_text(dataset, "StudyDescription"),
        accession_number=_text(dataset, "AccessionNumber"),
        calling_ae_title=_text(meta, "SourceApplicationEntityTitle"),
    )


def parse(part10: bytes, sop_class_uid: str | None = None) -> Parsed:
    """Parse a DICOM file's bytes (preamble, meta, dataset) and classify it.

    ``sop_class_uid`` is the C-STORE's Affected SOP Class UID; the file meta's is used without.

    Raises
    ------
    UnreadableDatasetError
        For anything pydicom cannot read or that lacks valid Study/Series/SOP Instance UIDs.
    """
    try:
        dataset = dcmread(BytesIO(part10))
        sop_class = sop_class_uid or str(dataset.file_meta.MediaStorageSOPClassUID)
        return _describe(dataset, sop_class)
    except UnreadableDatasetError:
        raise
    # A sender's bytes reach pydicom's parser and converters here; they raise whatever the
    # malformed input provokes (struct.error, KeyError, NotImplementedError, ...). This is the
    # boundary where that becomes one error the handler answers with 0xC000 (STYLE.md Errors).
    except Exception as error:
        raise UnreadableDatasetError(f"{type(error).__name__}: {str(error)[:200]}") from None


def received_instance(
    parsed: Parsed,
    stored: Stored,
    *,
    calling_ae_title: str,
    called_ae_title: str | None,
) -> ReceivedInstance:
    """The row to insert for ``parsed``, stored as ``stored``."""
    return ReceivedInstance(
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        size_bytes=stored.size_bytes,
        content_digest=stored.content_digest,
        pixel_digest=parsed.pixel_digest,
        spool_path=str(stored.path),
        number_of_frames=parsed.classification.number_of_frames,
        skip_reason=parsed.classification.reason,
        modality=parsed.modality,
        series_number=parsed.series_number,
        series_description=parsed.series_description,
        patient_name=parsed.patient_name,
        patient_id=parsed.patient_id,
        study_date=parsed.study_date,
        study_description=parsed.study_description,
        accession_number=parsed.accession_number,
    )
