"""The annotation page in a real headless Chromium: keyboard-only annotation to export, an outage with clicks
made while the server is down, the layout at a laptop's and a phone's size, zoom and mouse edits, two tabs.

Needs ``pip install playwright`` and Debian's ``chromium`` package (``/usr/bin/chromium``); skipped without them.
Screenshots go to ``test-artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from visarl.annotate.select import FrameContext
from visarl.annotate.server import AnnotationServer
from visarl.annotate.store import load_annotations

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
S = 64  # frames of 64 x 64
REACH = "Click the gripper tip and the goal; the puck plays no part."


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


def frames_and_refs(n: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
    return np.stack([scene(k) for k in range(n)]), [("reach-v3_000.h5", 17 * k) for k in range(n)]


@pytest.fixture(scope="module")
def browser():
    pw_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


def open_page(browser, url: str, width: int, height: int, errors: list[str]):
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the page's own CSP forbids.
    page = browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load" not in m.text else None
    )
    page.goto(url)
    page.wait_for_selector("body.ready", timeout=15000)
    return page


def text_is(page, element_id: str, value: str, timeout: float = 10000) -> None:
    page.wait_for_function(f"document.getElementById({element_id!r}).textContent === {value!r}", timeout=timeout)


def wait_saved(page, timeout: float = 10000) -> None:
    page.wait_for_function("document.getElementById('saved').classList.contains('ok')", timeout=timeout)


def frame_box(page) -> dict:
    """Where the frame is on screen (its image, after zoom and pan)."""
    return page.locator("#frame").bounding_box()


def click_frame(page, x: float, y: float, **kw) -> None:
    """Click frame pixel ``(x, y)`` (column, row) at its centre on screen."""
    box = frame_box(page)
    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / S, box["y"] + (y + 0.5) * box["height"] / S, **kw)


def inside_viewport(box: dict, width: int, height: int) -> bool:
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name))


def test_keyboard_only_from_the_first_frame_to_export(browser, tmp_path):
    frames, refs = frames_and_refs(4)
    srv = AnnotationServer(
        frames,
        refs,
        tmp_path / "ann.jsonl",
        task="reach-v3",
        annotator="tester",
        guidance=REACH,
        parts=("gripper", "goal"),
    ).start()
    errors: list[str] = []
    page = open_page(browser, srv.url, 1280, 650, errors)
    done_posts: list[str] = []
    page.on("request", lambda r: done_posts.append(r.url) if r.method == "POST" and "/api/done" in r.url else None)
    keys = page.keyboard
    try:
        # The task's guidance is on the page; at a laptop's 1280x650 the frame and the film strip are in view.
        assert page.inner_text("#guidance") == REACH
        assert page.locator("#parts .part").all_inner_texts() == ["1 gripper", "2 goal"]
        assert inside_viewport(frame_box(page), 1280, 650)
        assert inside_viewport(page.locator("#strip").bounding_box(), 1280, 650)
        assert frame_box(page)["height"] > 400  # fitted to the window, not a fixed size

        # Click from the keyboard: K focuses the frame, arrows move the cross from the centre (32, 32).
        keys.press("k")
        keys.press("1")  # label the next clicks "gripper"
        for key in ["ArrowLeft"] * 2 + ["Shift+ArrowUp"] * 2 + ["ArrowUp"] * 3:  # -> (30, 21), the gripper
            keys.press(key)
        keys.press("Enter")
        text_is(page, "click-count", "1")
        keys.press("2")  # "goal" from now on
        for key in ["Shift+ArrowRight"] * 4 + ["Shift+ArrowDown"] * 6 + ["ArrowDown"] * 3:  # -> (46, 48)
            keys.press(key)
        keys.press(" ")
        text_is(page, "click-count", "2")
        wait_saved(page)
        np.testing.assert_allclose(srv.store.clicks(0), [[30, 21], [46, 48]])
        assert [r["label"] for r in srv.store.click_records(0)] == ["gripper", "goal"]

        # Enter on a focused button does what the button says: Clear clears and stays on the frame.
        keys.press("Escape")
        shot(page, "annotate_1280x650.png")
        for _ in range(40):
            if page.evaluate("document.activeElement.id") == "btn-clear":
                break
            keys.press("Tab")
        assert page.evaluate("document.activeElement.id") == "btn-clear"
        keys.press("Enter")
        text_is(page, "click-count", "0")
        wait_saved(page)
        assert page.inner_text("#frame-no") == "1" and srv.store.counts()[0] == 0 and srv.store.current == 0
        keys.press("z")  # the clear is one undo away
        text_is(page, "click-count", "2")

        # -> then <- quickly, with the server slow to answer: it must end on the frame the page shows.
        goto = srv.store.goto
        srv.store.goto = lambda f, op_id=None: (time.sleep(0.3), goto(f, op_id=op_id))[1]
        keys.press("ArrowRight")
        keys.press("ArrowLeft")
        wait_saved(page)
        srv.store.goto = goto
        assert page.inner_text("#frame-no") == "1" and srv.store.current == 0
        page.reload()
        page.wait_for_selector("body.ready", timeout=15000)
        text_is(page, "frame-no", "1")  # resumes on the frame it showed

        # Frame 2: two clicks, then select the first one (E) and delete it (Delete).
        keys.press("ArrowRight")
        text_is(page, "frame-no", "2")
        keys.press("k")
        keys.press("Enter")
        for _ in range(5):
            keys.press("ArrowRight")
        keys.press("Enter")
        text_is(page, "click-count", "2")
        wait_saved(page)
        keys.press("Escape")
        keys.press("e")
        keys.press("Delete")
        text_is(page, "click-count", "1")
        wait_saved(page)
        np.testing.assert_allclose(srv.store.clicks(1), [[37, 32]])

        # The last frame holds nothing salient (X); U finds the one frame still to do; Home / End jump.
        keys.press("End")
        text_is(page, "frame-no", "4")
        keys.press("x")
        wait_saved(page)
        assert srv.store.empty_marks() == [False, False, False, True]
        keys.press("u")
        text_is(page, "frame-no", "3")
        keys.press("Home")
        text_is(page, "frame-no", "1")
        keys.press("End")
        text_is(page, "frame-no", "4")

        # Enter twice on the last frame: the review opens on "Back", so the second Enter goes back.
        keys.press("Enter")
        page.wait_for_selector("#review:not(.hidden)")
        assert page.evaluate("document.activeElement.id") == "btn-back"
        keys.press("Enter")
        page.wait_for_selector("#review", state="hidden")
        # Enter held down (key repeat): the review opens once and nothing is pressed again.
        keys.down("Enter")
        for _ in range(6):
            keys.down("Enter")  # repeat: true
        keys.up("Enter")
        page.wait_for_selector("#review:not(.hidden)")
        # Review: frame 3 is listed, with its number; Tab to Finish, Shift+Tab back to "Back", Enter goes back.
        assert page.locator("#review-missing .thumb .num").all_inner_texts() == ["3"]
        keys.press("Tab")
        assert page.evaluate("document.activeElement.id") == "btn-done"
        keys.press("Shift+Tab")
        assert page.evaluate("document.activeElement.id") == "btn-back"
        keys.press("Enter")
        page.wait_for_selector("#review", state="hidden")
        page.wait_for_timeout(300)
        assert done_posts == [] and not srv.store.done and srv.exported is None

        # The deliberate way: open the review, Tab to "Finish & export", Enter.
        keys.press("Enter")
        page.wait_for_selector("#review:not(.hidden)")
        keys.press("Tab")
        shot(page, "annotate_review.png")
        keys.press("Enter")
        page.wait_for_selector("#finished:not(.hidden)", timeout=10000)
        assert len(done_posts) == 1
        a = load_annotations(page.inner_text("#finished-path"))
        assert [len(c) for c in a.clicks] == [2, 1, 0, 0] and a.nothing_salient.tolist() == [0, 0, 0, 1]
        assert a.click_labels[0].tolist() == ["gripper", "goal"] and a.click_labels[1].tolist() == [""]
        assert a.attrs["guidance"] == REACH and a.annotators[0] == "tester" and a.refs[2] == ("reach-v3_000.h5", 34)
        np.testing.assert_array_equal(a.frames, frames)
        assert not errors, errors
    finally:
        page.close()
        srv.shutdown()


HELPER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from visarl.annotate.server import AnnotationServer
    frames = np.load(sys.argv[1])
    srv = AnnotationServer(frames, [("s.h5", i) for i in range(len(frames))], sys.argv[2], port=int(sys.argv[3]))
    print(srv.port, flush=True)
    srv.serve_forever()
    """
)


def _start_helper(script: Path, frames: Path, store: Path, port: int = 0) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(frames), str(store), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    line = proc.stdout.readline()  # blocks until the server is listening (or the helper died)
    if not line.strip():
        proc.kill()
        raise AssertionError(f"helper did not start: {proc.stderr.read()}")
    return proc, int(line)


def test_clicks_made_while_the_server_is_down_are_stored_once(browser, tmp_path):
    script, frames_file, store = tmp_path / "helper.py", tmp_path / "frames.npy", tmp_path / "ann.jsonl"
    script.write_text(HELPER)
    np.save(frames_file, frames_and_refs(2)[0])
    proc, port = _start_helper(script, frames_file, store)
    errors: list[str] = []
    page = None
    try:
        page = open_page(browser, f"http://127.0.0.1:{port}/", 1280, 650, errors)
        made = [(10.0 + 4 * k, 8.0 + 3 * k) for k in range(7)]
        for x, y in made[:2]:
            click_frame(page, x, y)
        wait_saved(page)
        click_frame(page, *made[2])
        os.kill(proc.pid, signal.SIGKILL)  # while that click may be in flight
        proc.wait()
        for x, y in made[3:]:
            click_frame(page, x, y)
        page.wait_for_function(
            "document.getElementById('saved-text').textContent.includes('unreachable')", timeout=10000
        )
        status = page.inner_text("#saved-text")
        waiting = int(status.split()[0])
        assert "waiting" in status and 4 <= waiting <= 5, status
        assert page.inner_text("#click-count") == "7"  # the page still shows every click, dashed
        # Closing the tab now would lose them: the page asks first.
        prevented = page.evaluate(
            "() => { const e = new Event('beforeunload', {cancelable: true}); window.dispatchEvent(e);"
            " return e.defaultPrevented; }"
        )
        assert prevented

        proc, port2 = _start_helper(script, frames_file, store, port)  # the same server again
        assert port2 == port
        wait_saved(page, timeout=20000)
        assert (
            page.evaluate(
                "() => { const e = new Event('beforeunload', {cancelable: true}); window.dispatchEvent(e);"
                " return e.defaultPrevented; }"
            )
            is False
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/annotation/0", timeout=10) as r:
            stored = json.loads(r.read())["clicks"]
        # Every click once, in the order made (the one in flight at the kill is not doubled).
        tol = 1.0 / (frame_box(page)["width"] / S)
        assert len(stored) == len(made), stored
        np.testing.assert_allclose(stored, made, atol=tol)
        assert not errors, errors
    finally:
        if page is not None:
            page.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_narrow_window_zoom_mouse_edits_context_overlay_and_two_tabs(browser, tmp_path):
    n = 3
    frames, refs = frames_and_refs(n)
    offsets = np.arange(-2, 3)
    neighbours = np.stack([np.stack([scene(k + d) for d in offsets]) for k in range(n)])
    available = np.ones((n, len(offsets)), bool)
    context = FrameContext(np.arange(n) + 7, np.arange(n) * 10 + 20, offsets, neighbours, available)
    srv = AnnotationServer(
        frames,
        refs,
        tmp_path / "ann.jsonl",
        task="reach-v3",
        guidance=REACH,
        parts=("gripper", "goal"),
        context=context,
    ).start()
    errors: list[str] = []
    page = open_page(browser, srv.url, 420, 900, errors)
    other = None
    try:
        # In a 420 px wide window the whole frame is on screen, and its left edge takes clicks.
        box = frame_box(page)
        assert inside_viewport(box, 420, 900) and box["width"] > 350, box
        click_frame(page, 0, 0)
        text_is(page, "click-count", "1")
        # A mouse button that bounces (two presses 1 ms apart) makes one click.
        page.evaluate(
            """() => { const st = document.getElementById('stage'); const r = st.getBoundingClientRect();
                   const opts = {clientX: r.left + 200, clientY: r.top + 200, button: 0, bubbles: true,
                                 pointerId: 1, isPrimary: true};
                   st.dispatchEvent(new PointerEvent('pointerdown', opts));
                   st.dispatchEvent(new PointerEvent('pointerup', opts));
                   st.dispatchEvent(new PointerEvent('pointerdown', opts)); }"""
        )
        text_is(page, "click-count", "2")
        wait_saved(page)
        shot(page, "annotate_420x900.png")
        assert srv.store.counts()[0] == 2
        np.testing.assert_allclose(srv.store.clicks(0)[0], [0, 0], atol=0.1)
        assert page.inner_text("#where") == "episode 7 · step 20"

        # Zoom with the wheel around the pointer; clicks still land on the frame pixel under the pointer.
        stage = page.locator("#stage").bounding_box()
        page.mouse.move(stage["x"] + stage["width"] * 0.6, stage["y"] + stage["height"] * 0.6)
        page.mouse.wheel(0, -500)
        page.wait_for_function("document.getElementById('zoom-text').textContent !== ''")
        zoomed = frame_box(page)
        assert zoomed["width"] > 1.8 * box["width"]
        click_frame(page, 38, 40)
        text_is(page, "click-count", "3")
        wait_saved(page)
        np.testing.assert_allclose(srv.store.clicks(0)[2], [38, 40], atol=0.05)
        # Shift+drag moves that click.
        scale = zoomed["width"] / S
        page.keyboard.down("Shift")
        page.mouse.move(zoomed["x"] + 38.5 * scale, zoomed["y"] + 40.5 * scale)
        page.mouse.down()
        page.mouse.move(zoomed["x"] + 40.5 * scale, zoomed["y"] + 43.5 * scale, steps=4)
        page.mouse.up()
        page.keyboard.up("Shift")
        page.wait_for_function("!document.getElementById('saved').classList.contains('busy')")
        wait_saved(page)
        np.testing.assert_allclose(srv.store.clicks(0)[2], [40, 43], atol=0.05)
        page.keyboard.press("f")
        page.wait_for_function("document.getElementById('zoom-text').textContent === ''")

        # Context: a later step of the same episode, read-only; Esc returns.
        page.keyboard.press(".")
        assert "/api/context/0/1.png" in page.get_attribute("#frame", "src")
        assert "later" in page.inner_text("#banner") and page.inner_text("#where") == "episode 7 · step 21"
        click_frame(page, 20, 20)
        page.wait_for_timeout(200)
        assert srv.store.counts()[0] == 3 and page.inner_text("#click-count") == "3"
        page.keyboard.press("Escape")
        assert "/api/frame/0.png" in page.get_attribute("#frame", "src")

        # Overlay opacity: the peak is drawn at the chosen opacity, and the choice survives a reload.
        page.keyboard.press("]")
        page.keyboard.press("]")
        text_is(page, "opacity-text", "75%")
        page.reload()
        page.wait_for_selector("body.ready", timeout=15000)
        text_is(page, "opacity-text", "75%")
        alpha_at_peak = """() => { const c = document.getElementById('overlay');
                   const img = document.getElementById('frame');
                   const r = img.getBoundingClientRect(), s = c.getBoundingClientRect(), d = c.width / s.width;
                   const px = (r.left - s.left + 0.5 * r.width / 64) * d;
                   const py = (r.top - s.top + 0.5 * r.height / 64) * d;
                   return c.getContext('2d').getImageData(px + 6 * d, py + 6 * d, 1, 1).data[3]; }"""
        peak = page.evaluate(alpha_at_peak)
        assert 150 < peak <= 0.75 * 255 + 2  # near click (0, 0), but off its marker ring
        page.keyboard.down("h")  # hold to peek: the overlay is gone while the key is down
        assert page.evaluate(alpha_at_peak) == 0
        page.keyboard.up("h")
        assert page.evaluate(alpha_at_peak) == peak

        # A second tab takes the store: the first one says so and saves nothing until it takes it back.
        other = open_page(browser, srv.url, 420, 900, errors)
        page.wait_for_selector("#superseded:not(.hidden)", timeout=10000)
        click_frame(page, 30, 30)
        page.wait_for_timeout(300)
        assert srv.store.counts()[0] == 3
        page.click("#btn-takeover")
        page.wait_for_selector("#superseded", state="hidden")
        click_frame(page, 30, 30)
        text_is(page, "click-count", "4")
        wait_saved(page)
        assert srv.store.counts()[0] == 4
        other.wait_for_selector("#superseded:not(.hidden)", timeout=10000)  # and no endless retrying there
        assert "unreachable" not in other.inner_text("#saved-text")
        assert not errors, errors
    finally:
        if other is not None:
            other.close()
        page.close()
        srv.shutdown()
