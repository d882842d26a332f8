"""One view of a scan with its SEG mask in red, as PNG bytes (the same drawing as the previews).

The mask is read back from the SEG file the pipeline wrote (not recomputed), on the source
frame it references, so the page shows what PACS got. Renders are cached per (files, frame)
because a reviewer reloads the page; the cache key holds the files' modification times.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from pipeline.cli.preview import render
from pipeline.review_web.worklist import OverlaySource


class OverlayUnavailableError(Exception):
    """The SEG or the source instance cannot be read (purged, moved, unreadable)."""


def overlay_png(source: OverlaySource) -> bytes:
    """PNG bytes of the source view with the SEG's mask over it in red.

    Raises
    ------
    OverlayUnavailableError
        When a file is missing or unreadable.
    """
    try:
        stamps = (source.seg_path.stat().st_mtime_ns, source.source_path.stat().st_mtime_ns)
    except OSError as error:
        raise OverlayUnavailableError(f"file missing: {error.strerror}") from None
    return _cached(source, stamps)


@lru_cache(maxsize=32)
def _cached(source: OverlaySource, stamps: tuple[int, int]) -> bytes:
    import highdicom as hd  # noqa: PLC0415 - only drawing needs it
    from PIL import Image  # noqa: PLC0415
    from pydicom import dcmread  # noqa: PLC0415

    try:
        seg = hd.seg.segread(source.seg_path)
        pixels = np.asarray(dcmread(source.source_path).pixel_array)
        if source.source_frame_number is None:
            found = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[source.source_sop_instance_uid],
                segment_numbers=[1],
                assert_missing_frames_are_empty=False,
            )
            counts = pixels if pixels.ndim == 2 else pixels[0]
        else:
            found = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=source.source_sop_instance_uid,
                source_frame_numbers=[source.source_frame_number],
                segment_numbers=[1],
                assert_missing_frames_are_empty=False,
            )
            counts = pixels if pixels.ndim == 2 else pixels[source.source_frame_number - 1]
    except (OSError, ValueError, KeyError, AttributeError, IndexError) as error:
        raise OverlayUnavailableError(f"cannot read the result: {type(error).__name__}") from None
    mask = np.asarray(found[0, :, :, 0]).astype(bool)
    buffer = io.BytesIO()
    Image.fromarray(render([("", counts, mask)]), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def clear_cache() -> None:
    """Forget cached renders (tests)."""
    _cached.cache_clear()
