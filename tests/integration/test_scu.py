"""The export side's DICOM network code against real peers: C-STORE into Orthanc with a C-FIND
read-back, and every fault class (retry later or fail at once) with dcmtk and Orthanc."""

from __future__ import annotations

import dataclasses
import io
import time
import uuid
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import UID, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pipeline.dicom.nm import ScanIdentity, build_whole_body, save
from pipeline.dicom.scu import StoreResult, echo, store, store_outcome, verify_stored
from pipeline.dicom.seg import SEGMENTATION_STORAGE, ViewMask, build_seg, order_views
from pipeline.dicom.views import View, split_views
from pipeline.errors import PermanentError, RetryableError
from pipeline.settings import Destination
from tests.conftest import free_port
from tests.integration.conftest import StartListener
from tests.integration.pacs import OrthancPacs, StartOrthanc, StartStoreScp, StoreScp

pytestmark = pytest.mark.timeout(180)
CALLING = "BONESCAN"
TIMEOUT_S = 30.0
NM_NAME = "Nuclear Medicine Image Storage (1.2.840.10008.5.1.4.1.1.20)"
SEG_NAME = f"Segmentation Storage ({SEGMENTATION_STORAGE})"


@dataclasses.dataclass(frozen=True)
class Scan:
    """A 2-frame whole-body NM file (1024 × 256 × 2 uint16, ~1 MB) and a SEG for it, with fresh
    UIDs. Made with numpy alone: msanet_core (torch) takes long to import and is not needed."""

    nm: Path
    seg: Path
    nm_dataset: Dataset
    seg_dataset: Dataset


def _view(rng: np.random.Generator) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.bool_]]:
    counts = rng.poisson(3.0, size=(1024, 256)).astype(np.uint16)
    counts[128:896, 64:192] += 40  # a body
    mask = np.zeros(counts.shape, dtype=bool)
    mask[300:312, 100:114] = True  # one "lesion" in the thorax
    counts[mask] += 60
    return counts, mask


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """Built once: every peer here is fresh or emptied per test, so the UIDs may repeat."""
    tmp_path = tmp_path_factory.mktemp("scan")
    rng = np.random.default_rng(42)
    (anterior, anterior_mask), (posterior, posterior_mask) = _view(rng), _view(rng)
    who = dataclasses.replace(
        ScanIdentity.synthetic(11, 0, "SCU-TEST"),
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        uid_root=f"test-scu:{uuid.uuid4()}",
    )
    nm = save(build_whole_body(anterior, posterior, who)[0], tmp_path / "nm.dcm")
    source = dcmread(nm)
    views = split_views([source])
    masks = {View.ANTERIOR: anterior_mask, View.POSTERIOR: posterior_mask}
    view_masks = order_views({view: ViewMask(image, masks[view]) for view, image in views.items()})
    seg_dataset = build_seg([source], view_masks, model_version=f"test-{uuid.uuid4().hex[:8]}")
    seg = tmp_path / "seg.dcm"
    seg_dataset.save_as(seg, enforce_file_format=True)
    return Scan(nm, seg, source, dcmread(seg))


def send(destination: Destination, path: Path) -> StoreResult:
    return store(destination, path, calling_ae_title=CALLING, timeout_s=TIMEOUT_S)


def read_back(destination: Destination, dataset: Dataset) -> bool | None:
    return verify_stored(
        destination,
        study_uid=dataset.StudyInstanceUID,
        series_uid=dataset.SeriesInstanceUID,
        sop_instance_uid=dataset.SOPInstanceUID,
        calling_ae_title=CALLING,
        timeout_s=TIMEOUT_S,
    )


def test_nm_and_seg_stored_in_orthanc_are_found_on_read_back(
    orthanc: OrthancPacs, scan: Scan
) -> None:
    assert send(orthanc.destination, scan.nm) == StoreResult(0x0000, "stored")
    assert send(orthanc.destination, scan.seg) == StoreResult(0x0000, "stored")

    assert read_back(orthanc.destination, scan.nm_dataset) is True
    assert read_back(orthanc.destination, scan.seg_dataset) is True
    assert len(orthanc.instances()) == 2
    stored = dcmread(io.BytesIO(orthanc.download(scan.seg_dataset.SOPInstanceUID)))
    assert stored.SOPClassUID == SEGMENTATION_STORAGE
    assert stored.PixelData == scan.seg_dataset.PixelData
    nm = dcmread(io.BytesIO(orthanc.download(scan.nm_dataset.SOPInstanceUID)))
    assert np.array_equal(nm.pixel_array, scan.nm_dataset.pixel_array)


def test_read_back_of_an_instance_the_peer_does_not_hold_is_false(
    orthanc: OrthancPacs, scan: Scan
) -> None:
    unknown = Dataset()
    unknown.StudyInstanceUID, unknown.SeriesInstanceUID = generate_uid(), generate_uid()
    unknown.SOPInstanceUID = generate_uid()
    assert read_back(orthanc.destination, unknown) is False

    send(orthanc.destination, scan.nm)
    same_series = Dataset()
    same_series.StudyInstanceUID = scan.nm_dataset.StudyInstanceUID
    same_series.SeriesInstanceUID = scan.nm_dataset.SeriesInstanceUID
    same_series.SOPInstanceUID = generate_uid()
    assert read_back(orthanc.destination, same_series) is False


def test_read_back_is_skipped_when_the_destination_turns_it_off(
    orthanc: OrthancPacs, scan: Scan
) -> None:
    send(orthanc.destination, scan.nm)
    quiet = orthanc.destination.model_copy(update={"verify": False})
    assert read_back(quiet, scan.nm_dataset) is None


def test_read_back_is_none_when_the_peer_has_no_query_retrieve(
    storescp: StoreScp, scan: Scan
) -> None:
    assert send(storescp.destination, scan.seg).status == 0x0000
    assert [path.name for path in storescp.files()] == [f"SG.{scan.seg_dataset.SOPInstanceUID}"]
    assert read_back(storescp.destination, scan.seg_dataset) is None


def test_seg_to_a_peer_without_segmentation_storage_fails_permanently(
    storescp_without_seg: Destination, scan: Scan
) -> None:
    assert send(storescp_without_seg, scan.nm).status == 0x0000  # the peer works

    with pytest.raises(PermanentError) as failed:
        send(storescp_without_seg, scan.seg)
    assert str(failed.value) == (
        f"destination {storescp_without_seg.name} does not accept {SEG_NAME}"
    )


def test_compressed_file_to_a_peer_without_its_transfer_syntax_fails_permanently(
    storescp_without_seg: Destination, scan: Scan, tmp_path: Path
) -> None:
    compressed = dcmread(scan.nm)
    compressed.compress(RLELossless)
    path = tmp_path / "nm-rle.dcm"
    compressed.save_as(path, enforce_file_format=True)

    with pytest.raises(PermanentError) as failed:
        send(storescp_without_seg, path)
    assert str(failed.value) == (
        f"destination {storescp_without_seg.name} does not accept {NM_NAME} in RLE Lossless"
    )


def test_uncompressed_file_goes_in_the_syntax_the_peer_accepts(
    start_storescp: StartStoreScp, scan: Scan
) -> None:
    implicit_only = start_storescp("+xi")  # accepts Implicit VR Little Endian only

    assert send(implicit_only.destination, scan.nm).status == 0x0000
    (received,) = implicit_only.files()
    arrived = dcmread(received)
    assert arrived.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert np.array_equal(arrived.pixel_array, scan.nm_dataset.pixel_array)


def test_nothing_listening_is_retryable(scan: Scan) -> None:
    port = free_port()
    nowhere = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)

    with pytest.raises(RetryableError) as failed:
        send(nowhere, scan.seg)
    assert f"destination pacs (PACS@127.0.0.1:{port}): no association" in str(failed.value)
    with pytest.raises(RetryableError):
        read_back(nowhere, scan.seg_dataset)


def test_orthanc_down_is_retryable_and_a_later_attempt_succeeds(
    orthanc: OrthancPacs, scan: Scan
) -> None:
    orthanc.stop()
    with pytest.raises(RetryableError, match="no association"):
        send(orthanc.destination, scan.seg)
    with pytest.raises(RetryableError, match="no association"):
        read_back(orthanc.destination, scan.seg_dataset)

    orthanc.start()
    assert send(orthanc.destination, scan.seg).status == 0x0000
    assert read_back(orthanc.destination, scan.seg_dataset) is True


def test_wrong_called_ae_title_is_a_permanent_rejection(
    start_orthanc: StartOrthanc, scan: Scan
) -> None:
    strict = start_orthanc(DicomCheckCalledAet=True)
    wrong = strict.destination.model_copy(update={"ae_title": "NOT-ORTHANC"})

    with pytest.raises(PermanentError) as failed:
        send(wrong, scan.seg)
    reason = str(failed.value)
    assert "rejected the association (permanent)" in reason
    assert "Called AE title not recognised" in reason
    assert "result 0x01" in reason
    assert "NOT-ORTHANC@127.0.0.1" in reason
    assert send(strict.destination, scan.seg).status == 0x0000  # the right title is let in


def test_a_busy_peer_rejecting_transiently_is_retryable(
    dcmqrscp_one_association: Destination, scan: Scan
) -> None:
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate(
        dcmqrscp_one_association.host,
        dcmqrscp_one_association.port,
        ae_title=dcmqrscp_one_association.ae_title,
    )
    try:
        assert held.is_established
        with pytest.raises(RetryableError) as failed:
            send(dcmqrscp_one_association, scan.nm)
        with pytest.raises(RetryableError, match="transient"):
            read_back(dcmqrscp_one_association, scan.nm_dataset)
    finally:
        held.release()
    reason = str(failed.value)
    assert "rejected the association (transient): Local limit exceeded" in reason
    assert "result 0x02" in reason


def test_fast_rejections_are_told_apart_from_no_association(
    start_listener: StartListener, scan: Scan
) -> None:
    # bonescan's listener answers an association it refuses within a millisecond, fast enough
    # that pynetdicom's requestor misreads ~15 % of them as a failed connection (scu.py,
    # _rejection_of): 30 tries each, every one must be classified by the peer's reason.
    listener = start_listener(LISTENER__MAX_ASSOCIATIONS="1")
    busy = Destination(name="bonescan", ae_title="BONESCAN", host="127.0.0.1", port=listener.port)
    wrong = busy.model_copy(update={"ae_title": "NOT-BONESCAN"})
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = holder.associate("127.0.0.1", listener.port, ae_title="BONESCAN")
    try:
        assert held.is_established
        for _ in range(30):
            with pytest.raises(RetryableError, match=r"rejected the association \(transient\)"):
                send(busy, scan.nm)
            with pytest.raises(PermanentError, match=r"rejected the association \(permanent\)"):
                send(wrong, scan.nm)
            assert echo(busy, CALLING).detail == "association rejected"
    finally:
        held.release()


def test_read_back_on_a_peer_rejecting_the_association_permanently_is_unavailable(
    start_orthanc: StartOrthanc, scan: Scan, caplog: pytest.LogCaptureFixture
) -> None:
    # (storescp --refuse is not used: it may stop listening after its first refusal, and the
    # fixture's readiness probe can be that first one.)
    strict = start_orthanc(DicomCheckCalledAet=True)
    wrong = strict.destination.model_copy(update={"ae_title": "NOT-ORTHANC"})
    with pytest.raises(PermanentError, match=r"rejected the association \(permanent\)"):
        send(wrong, scan.nm)

    # A read-back runs after a delivery: what cannot be checked is None with a logged reason.
    assert read_back(wrong, scan.nm_dataset) is None
    assert "read_back_unavailable" in caplog.text
    assert "rejected the association (permanent)" in caplog.text


def test_out_of_resources_is_retryable(start_storescp: StartStoreScp, scan: Scan) -> None:
    full = start_storescp()
    full.output_dir.rmdir()  # storescp cannot write the file: it answers 0xA700

    with pytest.raises(RetryableError) as failed:
        send(full.destination, scan.nm)
    assert str(failed.value) == (
        f"destination {full.destination.name} (STORESCP@127.0.0.1:{full.destination.port}) "
        "answered C-STORE of Nuclear Medicine Image Storage with status 0xA700 "
        "(Refused: Out of Resources)"
    )


def test_peer_aborting_during_the_store_is_retryable(
    start_storescp: StartStoreScp, scan: Scan
) -> None:
    aborting = start_storescp("--abort-after")  # aborts after the C-STORE-RQ, before answering
    with pytest.raises(RetryableError, match=r"no C-STORE response .*aborted"):
        send(aborting.destination, scan.nm)


def _settled_log(scp: StoreScp, quiet_s: float = 0.5, timeout_s: float = 10.0) -> str:
    """storescp's log once it has not changed for ``quiet_s`` (it logs the fixture's readiness
    probe asynchronously; counting before that line lands made this test flaky)."""
    deadline = time.monotonic() + timeout_s
    text = scp.log()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = scp.log()
        if again == text:
            return text
        text = again
    return text


def test_unreadable_file_fails_permanently_without_contacting_the_peer(
    tmp_path: Path, storescp: StoreScp
) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"this is not DICOM" * 20)
    associations = _settled_log(storescp).count("Association Received")  # the readiness probe's

    with pytest.raises(PermanentError, match=r"cannot read DICOM file garbage\.dcm"):
        send(storescp.destination, garbage)
    with pytest.raises(PermanentError, match="FileNotFoundError"):
        send(storescp.destination, tmp_path / "missing.dcm")
    assert storescp.log().count("Association Received") == associations


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0x0000, "stored"),
        (0xB000, "stored with warning 0xB000 (Coercion of Data Elements)"),
        (0xB006, "stored with warning 0xB006 (Element Discarded)"),
        (0xB007, "stored with warning 0xB007 (Data Set Does Not Match SOP Class)"),
        (0xA700, RetryableError),
        (0xA7FF, RetryableError),
        (0xA900, PermanentError),
        (0xC000, PermanentError),
        (0xCFFF, PermanentError),
        (0x0122, PermanentError),
        (0x0124, PermanentError),
        (0x0211, PermanentError),
        (0xFF00, PermanentError),
    ],
)
def test_store_status_is_translated_by_what_the_caller_must_do(
    code: int, outcome: str | type[Exception]
) -> None:
    """The statuses no test peer here can be made to answer; the rest are covered above."""
    pacs = Destination(name="pacs", ae_title="PACS", host="10.0.0.5", port=104)
    sop_class = UID(SEGMENTATION_STORAGE)
    if isinstance(outcome, str):
        assert store_outcome(pacs, sop_class, code) == StoreResult(code, outcome)
        return
    with pytest.raises(outcome) as failed:
        store_outcome(pacs, sop_class, code)
    assert str(failed.value).startswith(
        f"destination pacs (PACS@10.0.0.5:104) answered C-STORE of Segmentation Storage with "
        f"status 0x{code:04X}"
    )
