"""The annotation page in a real headless Chromium: clicks land where they are made, undo, next, reload resumes.

Needs ``pip install playwright`` and Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without them.
Screenshots go to ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visarl.annotate.server import AnnotationServer
from visarl.annotate.store import load_annotations

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
N, S = 3, 64  # frames of 64 x 64, shown at 512 px (8 screen px per frame px)


def scene(k: int) -> np.ndarray:
    """A toy tabletop: floor gradient, a table, a gripper, a red block and a green goal, moved per frame."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    img = np.stack([70 + 40 * yy / S, 80 + 40 * yy / S, 95 + 50 * yy / S], -1)
    img[yy > 28] = img[yy > 28] * 0.5 + np.array([150, 120, 90]) * 0.5  # table top
    bx, by = 18 + 9 * k, 40 - 2 * k
    img[(abs(xx - bx) < 4) & (abs(yy - by) < 4)] = (200, 40, 40)  # block
    gx, gy = 46 - 5 * k, 48
    img[(xx - gx) ** 2 + (yy - gy) ** 2 < 9] = (60, 190, 90)  # goal
    px = 30 + 4 * k
    img[(abs(xx - px) < 2) & (yy < 22)] = (40, 40, 48)  # arm
    img[(abs(xx - px) < 5) & (yy >= 20) & (yy < 24)] = (30, 30, 36)  # gripper
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def browser():
    pw_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


def test_page_clicks_undo_next_reload(browser, tmp_path):
    frames = np.stack([scene(k) for k in range(N)])
    refs = [("reach-v3_000.h5", 17 * k) for k in range(N)]
    srv = AnnotationServer(frames, refs, tmp_path / "ann.jsonl", task="reach-v3", annotator="tester").start()
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's own CSP forbids.
    page = browser.new_page(viewport={"width": 1180, "height": 860}, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(srv.url)
        page.wait_for_selector("body.ready", timeout=15000)
        assert page.locator("#strip .thumb").count() == N
        assert page.inner_text("#n-total") == str(N)
        box = page.locator("#stage").bounding_box()
        assert box["width"] == pytest.approx(512) and box["height"] == pytest.approx(512)

        def click_at(x: float, y: float, expect_count: int) -> None:
            # Frame pixel (x, y) -> its centre on screen.
            page.mouse.click(box["x"] + (x + 0.5) * box["width"] / S, box["y"] + (y + 0.5) * box["height"] / S)
            page.wait_for_function(
                f"document.getElementById('click-count').textContent === '{expect_count}'"
                " && document.getElementById('saved').classList.contains('ok')",
                timeout=10000,
            )

        click_at(30, 21, 1)  # gripper
        click_at(5, 5, 2)  # a wrong click...
        page.keyboard.press("z")  # ...undone
        page.wait_for_function("document.getElementById('click-count').textContent === '1'")
        click_at(18, 40, 2)  # block
        click_at(46, 48, 3)  # goal
        assert page.inner_text("#n-done") == "1"
        np.testing.assert_allclose(srv.store.clicks(0), [[30, 21], [18, 40], [46, 48]], atol=0.07)

        page.keyboard.press("ArrowRight")
        page.wait_for_function("document.getElementById('frame-no').textContent === '2'")
        click_at(27, 38, 1)
        page.wait_for_function("document.getElementById('n-done').textContent === '2'")
        assert srv.store.current == 1

        page.reload()
        page.wait_for_selector("body.ready", timeout=15000)
        assert page.inner_text("#frame-no") == "2"  # resumes on the frame it left
        assert page.inner_text("#click-count") == "1" and page.inner_text("#n-done") == "2"

        # The stored maps peak where the clicks were, at frame resolution.
        m0, m1 = srv.store.map(0), srv.store.map(1)
        assert m0.shape == (S, S) and m0.dtype == np.float32
        for x, y in [(30, 21), (18, 40), (46, 48)]:
            assert m0[y, x] > 0.99
        assert m0[5, 5] < 1e-3  # the undone click left nothing
        assert np.unravel_index(np.argmax(m1), m1.shape) == (38, 27)

        # The overlay is drawn: warm pixels where the clicks are, transparent far away.
        alpha = page.evaluate(
            """() => { const c = document.getElementById('overlay'); const s = c.width / 64;
                   const ctx = c.getContext('2d');
                   return [ctx.getImageData((27.5) * s, (38.5) * s, 1, 1).data[3],
                           ctx.getImageData(2 * s, 2 * s, 1, 1).data[3]]; }"""
        )
        assert alpha[0] > 100 and alpha[1] == 0

        page.keyboard.press("ArrowLeft")
        page.wait_for_function("document.getElementById('frame-no').textContent === '1'")
        page.mouse.move(box["x"] + 300, box["y"] + 150)
        page.wait_for_timeout(300)  # let the strip's highlight transition finish before the screenshot
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotate_page.png"))

        # Last frame, Next -> review (frame 3 has no clicks) -> Enter exports.
        page.keyboard.press("d")
        page.keyboard.press("d")
        page.wait_for_function("document.getElementById('frame-no').textContent === '3'")
        page.keyboard.press("Enter")
        page.wait_for_selector("#review:not(.hidden)")
        assert page.locator("#review-missing .thumb").count() == 1
        page.screenshot(path=str(ARTIFACTS / "annotate_review.png"))
        page.keyboard.press("Enter")
        page.wait_for_selector("#finished:not(.hidden)", timeout=10000)
        page.screenshot(path=str(ARTIFACTS / "annotate_done.png"))
        exported = page.inner_text("#finished-path")
        a = load_annotations(exported)
        assert [len(c) for c in a.clicks] == [3, 1, 0]
        np.testing.assert_allclose(a.clicks[1], [[27, 38]], atol=0.07)
        assert a.annotators[0] == "tester" and a.refs[2] == ("reach-v3_000.h5", 34)
        np.testing.assert_array_equal(a.frames, frames)
        assert not errors, errors
    finally:
        page.close()
        srv.shutdown()
