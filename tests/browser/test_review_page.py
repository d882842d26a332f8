"""The review page in a real browser: Debian's headless Chromium (Playwright) logs in, opens a
study, sees both views with the SEG overlay in red where the pipeline's mask is, clicks accept
with a comment, and the review is in the database.

The study is segmented by the real pipeline code with the tiny test model (see
``tests/integration/test_review_web.py``); the server is ``bonescan review-server`` as a
subprocess over SQLite. A screenshot of the study page is kept in the test's tmp dir and copied
to ``test-artifacts/review-page.png`` at the top of the repository (git-ignored).
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from playwright.sync_api import Page

from pipeline.db.states import ReviewState
from tests.browser.conftest import REPO, chromium_page
from tests.integration.test_review_web import (
    PASSWORD,
    REVIEWER,
    SegmentedStudy,
    StartServer,
    audits,
    red_pixels,
    reviews,
    seed_segmented_study,
    start_server,  # noqa: F401 - a fixture, shared
)

pytestmark = pytest.mark.browser

Mask = npt.NDArray[np.bool_]
ARTIFACT = REPO / "test-artifacts" / "review-page.png"
ALL_IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('img[id^="overlay-"]')];
  return images.length === 2 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


def on_screen_dice(shown: Mask, mask: Mask) -> float:
    """Dice of the red pixels on screen with the mask, at the best of the (at most 2 × 2)
    placements: an element at a fractional CSS position is captured one pixel larger."""
    rows, columns = mask.shape
    extra_rows, extra_columns = shown.shape[0] - rows, shown.shape[1] - columns
    assert 0 <= extra_rows <= 1, f"shown {shown.shape} for a {mask.shape} image: scaled?"
    assert 0 <= extra_columns <= 1, f"shown {shown.shape} for a {mask.shape} image: scaled?"
    best = 0.0
    for top in range(extra_rows + 1):
        for left in range(extra_columns + 1):
            window = shown[top : top + rows, left : left + columns]
            best = max(best, 2 * float((window & mask).sum()) / (window.sum() + mask.sum()))
    return best


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Page]:
    """A 1200 × 1600 page (an element screenshot's pixels are the image's). No OHIF needed."""
    with chromium_page(tmp_path / "chromium-profile", 1200) as opened:
        yield opened


@pytest.fixture
def segmented(clean_env: dict[str, str], sqlite_url: str, tiny_weights: Path) -> SegmentedStudy:
    return seed_segmented_study(sqlite_url, Path(clean_env["BONESCAN_DATA_DIR"]), tiny_weights)


def test_reviewer_accepts_a_study_in_chromium(
    browser_page: Page,
    segmented: SegmentedStudy,
    sqlite_url: str,
    start_server: StartServer,  # noqa: F811 - the shared fixture
    tmp_path: Path,
) -> None:
    page, study = browser_page, segmented
    server = start_server(sqlite_url)

    # Not logged in: the worklist sends the browser to the login form.
    page.goto(f"{server.url}/")
    assert page.url.startswith(f"{server.url}/login")
    page.fill("#user", REVIEWER)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(f"{server.url}/")
    assert page.locator("#worklist").is_visible()
    assert REVIEWER in page.inner_text("header")

    # Open the study from the worklist.
    page.click(f"text={study.patient_name}")
    page.wait_for_url(f"{server.url}/studies/{study.study_id}")
    assert study.patient_id in page.inner_text("h1")
    page.wait_for_function(ALL_IMAGES_LOADED, polling=100)

    # Each view: the PNG is red exactly where the SEG's mask is, and the browser shows it so.
    for view, mask in study.masks.items():
        image = page.locator(f"#overlay-{view}")
        src = image.get_attribute("src")
        assert src == f"/studies/{study.study_id}/jobs/{study.job_id}/{view}.png"
        served = page.request.get(f"{server.url}{src}")  # the page's own cookies
        assert served.status == 200
        assert served.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(red_pixels(served.body()), mask)
        size = image.evaluate("(img) => [img.naturalHeight, img.naturalWidth]")
        assert tuple(size) == mask.shape
        dice = on_screen_dice(red_pixels(image.screenshot(animations="disabled")), mask)
        assert dice > 0.99, f"{view}: the overlay on screen differs from the mask (dice {dice})"

    # Keep what the reviewer saw.
    screenshot = tmp_path / "review-page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert Image.open(io.BytesIO(screenshot.read_bytes())).size[0] >= 1200
    ARTIFACT.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACT)

    # Accept with a comment.
    page.fill("#comment", "Agree with both views (browser test)")
    page.click("#accept")
    page.wait_for_url(re.compile(rf".*/studies/{study.study_id}\?reviewed=\d+$"))
    assert "Review recorded." in page.inner_text("main")

    (review,) = reviews(sqlite_url, study.job_id)
    assert review.state == ReviewState.ACCEPTED
    assert review.reviewer == REVIEWER
    assert review.comment == "Agree with both views (browser test)"
    assert review.reviewed_at is not None
    (audit,) = audits(sqlite_url, "review.accept")
    assert audit.actor == REVIEWER
    assert audit.target_id == str(study.job_id)
