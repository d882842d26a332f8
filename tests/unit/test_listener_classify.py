"""Classification of received instances, from the header alone."""

from __future__ import annotations

from listeners.classify import SkipCode, classify, view_of
from tests.integration import dicom_factory as factory


def _classify(ds, sop_class=None, *, drop_pixels=False):  # type: ignore[no-untyped-def]
    length = None if drop_pixels else len(ds.PixelData)
    return classify(ds, sop_class or str(ds.SOPClassUID), pixel_data_length=length)


def test_two_frame_whole_body_nm_is_work() -> None:
    result = _classify(factory.nm_whole_body())
    assert result.is_work
    assert result.number_of_frames == 2
    assert result.view is None


def test_single_views_are_work_with_their_view() -> None:
    assert _classify(factory.nm_whole_body(frames=1, view="anterior")).view == "anterior"
    assert _classify(factory.nm_whole_body(frames=1, view="posterior")).view == "posterior"


def test_secondary_capture_with_modality_nm_is_work() -> None:
    assert _classify(factory.sc_with_modality_nm()).is_work


def test_ct_is_skipped_for_its_modality() -> None:
    result = _classify(factory.ct_image())
    assert result.skip == SkipCode.MODALITY
    assert result.reason == "modality CT is not NM"


def test_nm_spot_view_is_skipped_for_its_image_type() -> None:
    ds = factory.nm_whole_body()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    assert _classify(ds).skip == SkipCode.IMAGE_TYPE


def test_other_nm_sop_class_is_skipped() -> None:
    assert _classify(factory.nm_whole_body(), "1.2.840.10008.5.1.4.1.1.128").skip == (
        SkipCode.SOP_CLASS
    )


def test_wrong_geometry_is_skipped() -> None:
    small = factory.nm_whole_body(rows=256, columns=256)
    assert _classify(small).skip == SkipCode.GEOMETRY
    lying = factory.nm_whole_body()
    lying.Rows = 1000  # the header no longer matches the pixel data
    assert _classify(lying).skip == SkipCode.GEOMETRY


def test_three_frames_are_skipped() -> None:
    ds = factory.nm_whole_body()
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData + ds.PixelData[: len(ds.PixelData) // 2]
    assert _classify(ds).skip == SkipCode.FRAMES


def test_missing_pixel_data_is_skipped() -> None:
    assert _classify(factory.nm_whole_body(), drop_pixels=True).skip == SkipCode.NO_PIXEL_DATA


def test_view_comes_from_the_detector_view_code() -> None:
    ds = factory.nm_whole_body(frames=1, view="posterior")
    assert view_of(ds) == "posterior"
    del ds.DetectorInformationSequence
    assert view_of(ds) is None
