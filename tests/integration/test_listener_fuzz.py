"""A corpus of malformed inputs, made by code, sent over real associations: the listener stays
up, answers every request with a status, and leaves no file without its row."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.integration import dicom_factory as factory
from tests.integration.conftest import AE_TITLE, RunningListener, StartListener, wait_for

pytestmark = pytest.mark.timeout(300)
CORPUS_SIZE = 520
SOP_CLASSES = [factory.NM_IMAGE_STORAGE, factory.SC_STORAGE, factory.CT_IMAGE_STORAGE]


def _encode(ds: pydicom.Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False  # explicit VR little endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _small_nm(rng: random.Random) -> pydicom.Dataset:
    ds = factory.nm_whole_body(
        frames=rng.choice([1, 2]), rows=64, columns=32, seed=rng.randint(0, 9)
    )
    ds.Rows, ds.Columns = 1024, 256  # header says whole body; pixels do not: wrong geometry
    return ds


def _mutations(rng: random.Random) -> Iterator[tuple[str, str, bytes, str]]:
    """(name, SOP class, dataset bytes, SOP instance UID) forever, through kinds of damage."""
    while True:
        base = _small_nm(rng) if rng.random() < 0.8 else factory.ct_image(size=16)
        sop_class = str(base.SOPClassUID)
        data = _encode(base)
        uid = str(base.SOPInstanceUID)
        kind = rng.randrange(10)
        if kind == 0:  # truncated anywhere
            yield "truncated", sop_class, data[: rng.randrange(len(data))], uid
        elif kind == 1:  # random bytes where the dataset should be
            yield "random", sop_class, rng.randbytes(rng.randrange(1, 4096)), uid
        elif kind == 2:  # a wrong VR on a header element
            offset = rng.randrange(0, max(1, len(data) - 400), 2)
            vr = rng.choice([b"SQ", b"UN", b"XX", b"OB", b"DS", b"\x00\x00"])
            position = data.find(
                rng.choice([b"\x28\x00\x10\x00", b"\x08\x00\x60\x00", b"\x20\x00\x0d\x00"]), offset
            )
            position = position if position >= 0 else offset
            yield "wrong_vr", sop_class, data[: position + 4] + vr + data[position + 6 :], uid
        elif kind == 3:  # an absurd length on some element
            position = rng.randrange(0, max(1, len(data) - 8))
            length = struct.pack("<I", rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 0xFFFFFFFF, 123457]))
            yield "absurd_length", sop_class, data[:position] + length + data[position + 4 :], uid
        elif kind == 4:  # no pixel data
            del base.PixelData
            yield "no_pixel_data", sop_class, _encode(base), uid
        elif kind == 5:  # geometry nonsense
            base.Rows = rng.choice([0, 1, 65535])
            base.NumberOfFrames = rng.choice([0, 3, 1000, 99999999]) if rng.random() < 0.5 else 2
            yield "geometry", sop_class, _encode(base), uid
        elif kind == 6:  # bit flips
            damaged = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
            yield "bit_flips", sop_class, bytes(damaged), uid
        elif kind == 7:  # UIDs that are missing, or not UIDs (a path, say)
            keyword = rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
            if rng.random() < 0.5:
                delattr(base, keyword)
            else:
                setattr(base, keyword, rng.choice(["../../../etc", "1.2.x", "1." * 40, ""]))
            yield "bad_uid", sop_class, _encode(base), uid
        elif kind == 8:  # an undefined-length sequence that never ends
            yield (
                "endless_sequence",
                sop_class,
                data[:200] + b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + rng.randbytes(64),
                uid,
            )
        else:  # the dataset is valid, the SOP class in the request is another one
            yield "sop_class_mismatch", rng.choice(SOP_CLASSES), data, uid


def corpus(folder: Path, size: int, seed: int = 20261121) -> list[Path]:
    """``size`` files: a valid file meta (what the SCU needs), then a damaged dataset."""
    rng = random.Random(seed)
    files = []
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE  # we mean it
    for index, (name, sop_class, data, uid) in zip(range(size), _mutations(rng), strict=False):
        meta = pydicom.dataset.FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = uid if rng.random() < 0.95 else generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = BytesIO()
        pydicom.filewriter.write_file_meta_info(buffer, meta, enforce_standard=True)
        path = folder / f"{index:04d}-{name}.dcm"
        path.write_bytes(b"\x00" * 128 + b"DICM" + buffer.getvalue() + data)
        files.append(path)
    pydicom.config.settings.writing_validation_mode = None
    return files


def _send_all(listener: RunningListener, files: list[Path]) -> list[int]:
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes as they are, not re-encoded
    try:
        statuses = []
        for start in range(0, len(files), 130):
            ae = AE(ae_title="FUZZER")
            ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 30
            for sop_class in SOP_CLASSES:
                ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
            assert assoc.is_established, listener.log()[-2000:]
            for path in files[start : start + 130]:
                status = assoc.send_c_store(path)
                assert "Status" in status, f"no answer to {path.name}: {listener.log()[-2000:]}"
                statuses.append(int(status.Status))
            assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False


def _garbage(rng: random.Random) -> Iterator[bytes]:
    """Network-level junk: random bytes, PDU headers with absurd lengths, half requests."""
    yield b""
    yield b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    yield b"\x01\x00\xff\xff\xff\xff" + rng.randbytes(100)  # A-ASSOCIATE-RQ, 4 GiB long
    yield b"\x04\x00\x00\x00\x00\x10" + rng.randbytes(16)  # P-DATA before any association
    yield b"\x01\x00\x00\x00\x00\x44\x00\x01\x00\x00" + b"BONESCAN" * 2  # cut short
    for _ in range(25):
        yield bytes([rng.randrange(1, 8), 0]) + rng.randbytes(rng.randrange(0, 600))


def _throw(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        except OSError:  # timeouts and resets too
            pass  # the listener may answer the junk with an A-ABORT and hang up first


def _echo_ok(port: int) -> bool:
    ae = AE(ae_title="FUZZER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and int(status.Status) == 0


def test_fuzz_corpus_is_answered_and_leaves_no_orphans(
    start_listener: StartListener, tmp_path: Path
) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = corpus(folder, CORPUS_SIZE)
    assert len(files) >= 500
    listener = start_listener()

    rng = random.Random(7)
    for payload in _garbage(rng):
        _throw(listener.port, payload)
    # Junk connections must not hold association slots: a modality gets in at once.
    wait_for(lambda: _echo_ok(listener.port), timeout=5, what="an echo after the junk")
    statuses = _send_all(listener, files)

    assert len(statuses) == len(files)
    assert listener.alive()
    assert _echo_ok(listener.port)
    kinds = set(statuses)
    assert 0x0000 in kinds  # some filed (most as skipped)
    assert 0xC000 in kinds  # some refused as not understood
    recorded = {row.spool_path for row in listener.instances()}
    on_disk = {str(path) for path in listener.spool_files()}
    assert on_disk == recorded  # no file without its row, no partial file
    assert all(Path(p).resolve().is_relative_to(listener.spool.resolve()) for p in on_disk)
    log = listener.log()  # pynetdicom logs the junk PDUs it refuses; our code never failed
    assert "c_store_failed_unexpectedly" not in log
    assert "sweeper_step_failed" not in log
