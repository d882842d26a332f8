"""From the bytes of a C-STORE to what the tracking tables keep: parse the header once, classify.

Used by the C-STORE handler and by the sweeper when it recovers a spooled file that has no row.
Pixels are never decoded nor hashed: the pixel data element is only located, and its length
checked against the geometry.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset, dcmread
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from listeners.classify import Classification, classify
from listeners.spool import Stored, is_valid_uid
from pipeline.db.ingest import ReceivedInstance

PIXEL_DATA = Tag(0x7FE0, 0x0010)
PIXEL_DATA_TAGS = (PIXEL_DATA, Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))  # + float, double float
_PIXEL_TAG_PAIRS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
# PS3.5 7.1.2: explicit VRs with two reserved bytes and a 4-byte length
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
HEADER_PREFIX = 64 * 1024  # the bytes of a data set read for its header (before pixel data)


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


def pixel_length(dataset: Dataset) -> int | None:
    """The length of the pixel data element's value as encoded, or None without pixel data."""
    for tag in PIXEL_DATA_TAGS:
        if tag in dataset:
            value = dataset.get_item(tag).value
            if isinstance(value, bytes):
                return len(value)
    return None


def _describe(dataset: Dataset, sop_class_uid: str, pixel_data_length: int | None) -> Parsed:
    meta = dataset.file_meta
    classification = classify(
        dataset,
        sop_class_uid,
        pixel_data_length=pixel_data_length,
        encapsulated=UID(str(meta.TransferSyntaxUID)).is_encapsulated,
    )
    return _parsed(
        lambda keyword: _text(dataset, keyword),
        (
            _uid(dataset, "StudyInstanceUID"),
            _uid(dataset, "SeriesInstanceUID"),
            _uid(dataset, "SOPInstanceUID"),
        ),
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=str(meta.TransferSyntaxUID),
        classification=classification,
        series_number=_series_number(dataset),
        calling_ae_title=_text(meta, "SourceApplicationEntityTitle"),
    )


def _parsed(
    text: Callable[[str], str | None],
    uids: tuple[str, str, str],
    *,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    classification: Classification,
    series_number: int | None,
    calling_ae_title: str | None,
) -> Parsed:
    """The :class:`Parsed` of both readers; ``text(keyword)`` gives an attribute's text."""
    return Parsed(
        study_instance_uid=uids[0],
        series_instance_uid=uids[1],
        sop_instance_uid=uids[2],
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        classification=classification,
        modality=text("Modality"),
        series_number=series_number,
        series_description=text("SeriesDescription"),
        patient_name=text("PatientName"),
        patient_id=text("PatientID"),
        study_date=text("StudyDate"),
        study_description=text("StudyDescription"),
        accession_number=text("AccessionNumber"),
        calling_ae_title=calling_ae_title,
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
        return _describe(dataset, sop_class, pixel_length(dataset))
    except UnreadableDatasetError:
        raise
    # A sender's bytes reach pydicom's parser and converters here; they raise whatever the
    # malformed input provokes (struct.error, KeyError, NotImplementedError, ...). This is the
    # boundary where that becomes one error the handler answers with 0xC000 (STYLE.md Errors).
    except Exception as error:
        raise UnreadableDatasetError(f"{type(error).__name__}: {str(error)[:200]}") from None


def parse_header(
    file_meta: bytes, data: bytes | memoryview, sop_class_uid: str, transfer_syntax_uid: str
) -> Parsed:
    """Parse a received data set's header without reading its pixel data, and classify it.

    ``file_meta`` is the preamble and encoded File Meta Information the data set will be stored
    with, ``data`` the data set as received in ``transfer_syntax_uid``. Only the elements before
    the pixel data are parsed (from the first :data:`HEADER_PREFIX` bytes when they hold them);
    the pixel data element is located, not copied. The result equals :func:`parse` of the
    stored file (tested), at a fraction of its cost on a 1 MB scan.

    Raises
    ------
    UnreadableDatasetError
        As :func:`parse`.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:  # offsets are in inflated bytes
        return _read_all(file_meta + data, sop_class_uid)
    if transfer_syntax_uid == ExplicitVRLittleEndian:
        quick = _quick_header(file_meta, data, sop_class_uid)
        if quick is not None:
            return quick
    for prefix in (data[:HEADER_PREFIX], data):
        try:
            buffer = BytesIO(file_meta + prefix)
            dataset = dcmread(buffer, stop_before_pixels=True)
            at = buffer.tell() - len(file_meta)
            if at > len(prefix) - 12 and len(prefix) < len(data):
                continue  # the header runs past the prefix: read it all
            span = _pixel_span(data, at, transfer_syntax_uid)
            parsed = _describe(dataset, sop_class_uid, None if span is None else span[1] - span[0])
        except UnreadableDatasetError:
            raise
        except _IrregularPixelDataError:
            break
        except Exception as error:  # as in parse(): the sender's bytes, one error
            if len(prefix) < len(data):
                continue
            raise UnreadableDatasetError(f"{type(error).__name__}: {str(error)[:200]}") from None
        return parsed
    return _read_all(file_meta + data, sop_class_uid)  # irregular pixel data


def _read_all(part10: bytes, sop_class_uid: str) -> Parsed:
    """The slow path: the whole file read by pydicom."""
    try:
        dataset = dcmread(BytesIO(part10))
        return _describe(dataset, sop_class_uid, pixel_length(dataset))
    except UnreadableDatasetError:
        raise
    except Exception as error:
        raise UnreadableDatasetError(f"{type(error).__name__}: {str(error)[:200]}") from None


class _IrregularPixelDataError(Exception):
    """Pixel data the fast path does not follow (pydicom's full read decides)."""


def _pixel_span(
    data: bytes | memoryview, at: int, transfer_syntax_uid: str
) -> tuple[int, int] | None:
    """Where the value of the pixel data element that starts at ``at`` lies in ``data``.

    None when ``at`` is the end of the data set (no pixel data). A defined length running past
    the end is cut there, as pydicom reads it (the classifier then finds the geometry short).
    An undefined length (encapsulated) ends at its Sequence Delimitation Item.
    """
    end = len(data)
    if at >= end:
        return None
    if end - at < 8:
        raise _IrregularPixelDataError
    order = ">" if transfer_syntax_uid == ExplicitVRBigEndian else "<"
    group, element = struct.unpack_from(order + "HH", data, at)
    if (group, element) not in _PIXEL_TAG_PAIRS:
        raise _IrregularPixelDataError
    if transfer_syntax_uid == ImplicitVRLittleEndian:
        (length,), start = struct.unpack_from("<I", data, at + 4), at + 8
    elif bytes(data[at + 4 : at + 6]) in _LONG_VRS:
        if end - at < 12:
            raise _IrregularPixelDataError
        (length,), start = struct.unpack_from(order + "I", data, at + 8), at + 12
    else:
        (length,), start = struct.unpack_from(order + "H", data, at + 6), at + 8
    if length != 0xFFFFFFFF:
        return start, min(start + length, end)
    position = start  # PS3.5 A.4: items, then the Sequence Delimitation Item
    while end - position >= 8:
        group, element, length = struct.unpack_from(order + "HHI", data, position)
        if (group, element) == (0xFFFE, 0xE0DD):
            return start, position
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            raise _IrregularPixelDataError
        position += 8 + length
    raise _IrregularPixelDataError


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


# -- the quick path: a 2-frame scan in Explicit VR Little Endian, read without pydicom
#
# pydicom builds a Dataset of every element and converts each value it is asked for: about a
# millisecond of the interpreter per scan, the largest share of a C-STORE's Python time. The
# common case — what a Siemens camera sends — is read here instead: the top-level elements are
# walked (sequences skipped), the few values bonescan files are decoded, and anything this path
# is not sure to read exactly as pydicom does (another character set, a multi-valued text, a
# single view whose view code is inside a sequence, an odd length, a data set cut short) is
# left to pydicom. tests/integration/test_listener_parse.py holds both paths to the same result.

_QUICK_TAGS = {
    0x00080005: "SpecificCharacterSet",
    0x00080008: "ImageType",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00280002: "SamplesPerPixel",
    0x00280008: "NumberOfFrames",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
}
_QUICK_META_TAGS = {0x00020016: "SourceApplicationEntityTitle"}
_QUICK_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_QUICK_US = frozenset({"SamplesPerPixel", "Rows", "Columns", "BitsAllocated"})
_QUICK_IS = frozenset({"SeriesNumber", "NumberOfFrames"})
_QUICK_ASCII = frozenset({"ImageType", "Modality", "StudyDate", "SpecificCharacterSet"})
_QUICK_CHARSETS = {
    "": "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
}
_STOP_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # pydicom's stop_before_pixels
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_INTEGER = re.compile(r" *[+-]?[0-9]+ *")
_HEADER = struct.Struct("<HH2sH")


class _DeclinedError(Exception):
    """The quick path declines: pydicom reads this one."""


def _element(data: bytes | memoryview, at: int, end: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value start, value length) of the explicit VR LE element at ``at``."""
    if end - at < 8:
        raise _DeclinedError
    group, elem, vr, short = _HEADER.unpack_from(data, at)
    tag = group << 16 | elem
    if group == 0xFFFE:  # items and delimiters: no VR
        (length,) = struct.unpack_from("<I", data, at + 4)
        return tag, b"", at + 8, length
    if not (vr.isalpha() and vr.isupper()):
        raise _DeclinedError
    if vr in _LONG_VRS:
        if end - at < 12:
            raise _DeclinedError
        (length,) = struct.unpack_from("<I", data, at + 8)
        return tag, vr, at + 12, length
    return tag, vr, at + 8, short


def _skip_undefined(data: bytes | memoryview, at: int, end: int, depth: int = 0) -> int:
    """The offset after the undefined-length sequence whose items start at ``at``."""
    if depth > 8:
        raise _DeclinedError
    while True:
        tag, _, start, length = _element(data, at, end)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _DeclinedError
        if length != _UNDEFINED:
            at = start + length
            continue
        at = start  # an undefined-length item: its elements, then the item delimiter
        while True:
            tag, vr, start, length = _element(data, at, end)
            if tag == _ITEM_END:
                at = start
                break
            if length == _UNDEFINED:
                if vr != b"SQ":
                    raise _DeclinedError
                at = _skip_undefined(data, start, end, depth + 1)
            else:
                at = start + length
            if at > end:
                raise _DeclinedError


def _walk(
    data: bytes | memoryview, at: int, wanted: dict[int, str], *, meta: bool = False
) -> tuple[dict[str, bytes], int]:
    """The raw values of the ``wanted`` tags among the top-level elements from ``at`` (of the
    file meta, group 0002, or of the data set, no group 0002), and where the pixel data element
    starts (``len(data)`` when there is none)."""
    end = len(data)
    found: dict[str, bytes] = {}
    previous = -1
    while at < end:
        tag, vr, start, length = _element(data, at, end)
        if tag in _STOP_TAGS:
            return found, at
        if tag <= previous or tag >> 16 == 0xFFFE or (tag >> 16 == 2) != meta:
            raise _DeclinedError  # out of order, stray delimiters, meta in the data set: pydicom
        previous = tag
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _DeclinedError
            at = _skip_undefined(data, start, end)
            continue
        if start + length > end:
            raise _DeclinedError  # cut short
        name = wanted.get(tag)
        if name is not None:
            found[name] = bytes(data[start : start + length])
        at = start + length
    return found, end


class _Values:
    """What :func:`~listeners.classify.classify` asks of a data set, from the quick path."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values

    def get(self, keyword: str, default: object = None) -> object:
        value = self.values.get(keyword)
        return default if value is None else value


def _quick_values(raw: dict[str, bytes]) -> dict[str, object]:
    charset = raw.get("SpecificCharacterSet", b"").decode("ascii").strip()
    encoding = _QUICK_CHARSETS.get(charset)
    if encoding is None:
        raise _DeclinedError
    values: dict[str, object] = {}
    for name, value in raw.items():
        if name in _QUICK_US:
            if len(value) != 2:
                raise _DeclinedError
            values[name] = int.from_bytes(value, "little")
            continue
        if b"\0" in value.rstrip(b"\0"):
            raise _DeclinedError
        text = value.decode("ascii" if name in _QUICK_ASCII or name.endswith("UID") else encoding)
        if name == "ImageType":
            values[name] = [part.strip() for part in text.split("\\")]
            continue
        if "\\" in text:
            raise _DeclinedError  # multi-valued: pydicom's MultiValue decides how it reads
        text = text.rstrip("\0 ") if name.endswith("UID") else text.strip()
        if name in _QUICK_IS and text and not _INTEGER.fullmatch(text):
            raise _DeclinedError
        values[name] = text or None
    return values


def _quick_text(values: dict[str, object], name: str) -> str | None:
    value = values.get(name)
    return None if value is None else str(value)


def _quick_header(file_meta: bytes, data: bytes | memoryview, sop_class_uid: str) -> Parsed | None:
    """:func:`parse_header` of a 2-frame Explicit VR Little Endian data set, or None when the
    quick path declines (see above)."""
    try:
        meta_raw, _ = _walk(file_meta, 132, _QUICK_META_TAGS, meta=True)
        raw, at = _walk(data, 0, _QUICK_TAGS)
        values = _quick_values(raw)
        if values.get("NumberOfFrames") != "2":
            return None  # single views: the view code is in a sequence (pydicom reads it)
        ae_title = meta_raw.get("SourceApplicationEntityTitle", b"").decode("ascii").strip()
        calling = ae_title or None
        study, series, sop = (_quick_text(values, key) or "" for key in _QUICK_UID_KEYWORDS)
        if not (is_valid_uid(study) and is_valid_uid(series) and is_valid_uid(sop)):
            return None  # pydicom's path says which is missing
    except (_DeclinedError, UnicodeDecodeError, struct.error):
        return None
    try:
        span = _pixel_span(data, at, ExplicitVRLittleEndian)
    except _IrregularPixelDataError:
        return None
    classification = classify(
        _Values(values),  # type: ignore[arg-type]  # the Dataset.get subset classify uses
        sop_class_uid,
        pixel_data_length=None if span is None else span[1] - span[0],
    )
    series_number = values.get("SeriesNumber")
    return _parsed(
        lambda keyword: _quick_text(values, keyword),
        (study, series, sop),
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        classification=classification,
        series_number=None if series_number is None else int(str(series_number)),
        calling_ae_title=calling,
    )
