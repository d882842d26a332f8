"""Segment one whole-body scan: views → thorax crops → MSA-Net (both views in one batch) →
full-frame masks → lesion table → one SEG, checked by the conformance gate. No database here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from msanet_core import NoBodyFoundError, crop_thorax
from msanet_core.lesions import Lesion, find_lesions
from pipeline.dicom.conformance import check_seg
from pipeline.dicom.seg import ViewMask, build_seg, order_views
from pipeline.dicom.views import View, ViewError, ViewImage, split_views
from pipeline.errors import PermanentError


class Predictor(Protocol):
    """What the workflow needs of :class:`msanet_core.Segmenter`."""

    model_version: str
    threshold: float

    def predict(self, crops: npt.ArrayLike) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class ViewResult:
    """One view's outcome: crop offset (stored rows), full-frame mask and lesions."""

    image: ViewImage
    crop_top: int
    mask: npt.NDArray[np.bool_]
    probabilities: npt.NDArray[np.float32]  # the crop's, (256, columns), head side at row 0
    lesions: list[Lesion]

    @property
    def lesion_area_mm2(self) -> float:
        return float(sum(lesion.area_mm2 for lesion in self.lesions))


@dataclass(frozen=True)
class ScanResult:
    seg: Dataset
    views: dict[View, ViewResult]
    model_version: str


def segment_scan(
    sources: list[Dataset], predictor: Predictor, *, generation: int = 0
) -> ScanResult:
    """Segment the scan held by ``sources`` (one 2-frame instance or two single-frame views).

    Raises
    ------
    PermanentError
        When the scan has no anterior/posterior pair, no body is found in a view, or the SEG
        fails the conformance gate: retrying cannot help.
    """
    try:
        images = split_views(sources)
        crops = {
            view: crop_thorax(image.pixels, head_first=image.head_first)
            for view, image in images.items()
        }
    except (ViewError, NoBodyFoundError) as error:
        raise PermanentError(str(error)) from error
    views = list(images)
    batch = np.stack([crops[view].apply(images[view].pixels) for view in views])
    probabilities = predictor.predict(batch)  # both views in one batch
    results: dict[View, ViewResult] = {}
    for index, view in enumerate(views):
        image, crop = images[view], crops[view]
        full = np.asarray(crop.paste(probabilities[index], image.pixels.shape), dtype=np.float32)
        results[view] = ViewResult(
            image=image,
            crop_top=crop.top,
            mask=full >= predictor.threshold,
            probabilities=probabilities[index],
            lesions=find_lesions(
                full,
                pixel_spacing_mm=image.pixel_spacing_mm,
                threshold=predictor.threshold,
            ),
        )
    view_masks = order_views({view: ViewMask(r.image, r.mask) for view, r in results.items()})
    seg = build_seg(
        sources, view_masks, model_version=predictor.model_version, generation=generation
    )
    check_seg(
        seg, sources, {(r.image.sop_instance_uid, r.image.frame_number) for r in results.values()}
    )
    return ScanResult(seg=seg, views=results, model_version=predictor.model_version)
