"""The handler's header parse (parse_header: stops before the pixel data, locates it) gives what
the full parse of the stored file gives, in every transfer syntax dcmtk writes, and for
truncated data sets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from listeners.receive import Parsed, UnreadableDatasetError, parse, parse_header
from tests.integration import dicom_factory as factory

TOOLS = {
    "explicit-little": None,
    "implicit-little": ["/usr/bin/dcmconv", "+ti"],
    "explicit-big": ["/usr/bin/dcmconv", "+tb"],
    "deflated": ["/usr/bin/dcmconv", "+td"],
    "jpeg-lossless": ["/usr/bin/dcmcjpeg", "+e1"],
    "jpeg-ls": ["/usr/bin/dcmcjpls"],
    "rle": ["/usr/bin/dcmcrle"],
}


def _split(path: Path) -> tuple[bytes, bytes]:
    """The preamble and file meta, and the data set, of a Part 10 file."""
    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")  # (0002,0000) UL, first after DICM
    return raw[: 144 + group_length], raw[144 + group_length :]


def _fast(meta: bytes, data: bytes, sop_class: str, syntax: str) -> Parsed | str:
    try:
        return parse_header(meta, data, sop_class, syntax)
    except UnreadableDatasetError as error:
        return f"unreadable: {error}"


def _full(part10: bytes, sop_class: str) -> Parsed | str:
    try:
        return parse(part10, sop_class)
    except UnreadableDatasetError as error:
        return f"unreadable: {error}"


@pytest.mark.parametrize("syntax_name", list(TOOLS))
def test_header_parse_equals_the_full_parse(syntax_name: str, tmp_path: Path) -> None:
    source = factory.save(factory.nm_whole_body(), tmp_path / "source.dcm")
    tool = TOOLS[syntax_name]
    path = source
    if tool is not None:
        path = tmp_path / "converted.dcm"
        subprocess.run([*tool, str(source), str(path)], check=True, timeout=60)
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    meta, data = _split(path)
    sop_class = "1.2.840.10008.5.1.4.1.1.20"
    full = _full(meta + data, sop_class)
    assert isinstance(full, Parsed)
    assert full.classification.reason is None
    assert _fast(meta, data, sop_class, syntax) == full
    # cut anywhere: in the header, in the pixel data, in an encapsulated fragment
    for cut in (200, 1500, 70_000, len(data) // 2, len(data) - 7):
        if cut < len(data):
            part = data[:cut]
            assert _fast(meta, part, sop_class, syntax) == _full(meta + part, sop_class), cut


@pytest.mark.parametrize(
    "dataset",
    [factory.ct_image(), factory.sc_with_modality_nm()],
    ids=["ct", "secondary-capture"],
)
def test_header_parse_of_other_objects(dataset: pydicom.Dataset, tmp_path: Path) -> None:
    path = factory.save(dataset, tmp_path / "object.dcm")
    meta, data = _split(path)
    sop_class = str(dataset.SOPClassUID)
    syntax = str(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    assert _fast(meta, data, sop_class, syntax) == _full(meta + data, sop_class)
    del dataset.PixelData  # no pixel data at all
    meta, data = _split(factory.save(dataset, tmp_path / "no-pixels.dcm"))
    fast = _fast(meta, data, sop_class, syntax)
    assert fast == _full(meta + data, sop_class)
    assert isinstance(fast, Parsed)
    assert fast.classification.reason is not None  # no pixel data: skipped, said why


def _single_view(ds: pydicom.Dataset) -> None:
    ds.NumberOfFrames = 1
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.DetectorInformationSequence = ds.DetectorInformationSequence[:1]


# name: (attributes to set, None deletes; whether the quick path reads it)
CHANGES: dict[str, tuple[dict[str, object], bool]] = {
    "as-made": ({}, True),
    "utf-8": (
        {
            "SpecificCharacterSet": "ISO_IR 192",
            "PatientName": "Müller^Jürgen",
            "StudyDescription": "Knochenszintigrafie Ganzkörper",
        },
        True,
    ),
    "latin-1": ({"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Åström^Björn"}, True),
    "cyrillic": ({"SpecificCharacterSet": "ISO_IR 144", "PatientName": "Иванов^Иван"}, False),
    "multi-valued": ({"PatientID": "A\\B"}, False),  # pydicom's MultiValue decides
    "padded": ({"SeriesNumber": " 7 ", "AccessionNumber": "", "SeriesDescription": "WB  "}, True),
    "not-nm": ({"Modality": "CT"}, True),
    "no-series-number": ({"SeriesNumber": None}, True),
    "single-view": ({}, False),  # _single_view: the view code is in a sequence
}


@pytest.mark.parametrize("defined_lengths", [False, True], ids=["undefined", "defined"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_quick_path_reads_what_pydicom_reads(
    change: str, defined_lengths: bool, tmp_path: Path
) -> None:
    """parse_header reads a 2-frame Explicit VR Little Endian scan without pydicom; what it
    does not read exactly as pydicom would, it leaves to pydicom. Both give the full parse."""
    from listeners.receive import _quick_header

    ds = factory.nm_whole_body()
    attributes, quick = CHANGES[change]
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if change == "single-view":
        _single_view(ds)
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    if defined_lengths:  # dcmtk writes sequences and items with explicit lengths
        converted = tmp_path / "defined.dcm"
        subprocess.run(["/usr/bin/dcmconv", "+e", str(path), str(converted)], check=True)
        path = converted
    meta, data = _split(path)
    sop_class = "1.2.840.10008.5.1.4.1.1.20"
    full = _full(meta + data, sop_class)
    assert isinstance(full, Parsed)
    assert _fast(meta, data, sop_class, "1.2.840.10008.1.2.1") == full
    assert (_quick_header(meta, data, sop_class) is not None) == quick
    for cut in (300, 2000, len(data) - len(ds.PixelData) - 3, len(data) - 9):
        part = data[:cut]  # cut in the header, in the pixel data element's header, in pixels
        assert _fast(meta, part, sop_class, "1.2.840.10008.1.2.1") == _full(meta + part, sop_class)
