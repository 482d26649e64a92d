"""visarl.annotate.store and .server: the journal survives kills, bad requests change nothing, export round-trips."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from visarl.annotate.maps import clicks_to_map
from visarl.annotate.server import MAX_BODY, AnnotationServer, serve
from visarl.annotate.store import AnnotationStore, FrameRef, load_annotations

REPO = Path(__file__).resolve().parents[1]
# AnnotationStore / AnnotationServer defaults (sigma, reference_size, combine), not visarl.core.maps's.
STORE_DEFAULTS = (10.0, 400, "sum")  # the store follows visarl.core.maps
N, H, W = 4, 24, 32


def make_frames(n: int = N, h: int = H, w: int = W, seed: int = 0) -> tuple[np.ndarray, list[tuple[str, int]]]:
    frames = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    return frames, [(f"shard_{i // 2:03d}.h5", 10 + i) for i in range(n)]


# ---------------------------------------------------------------------------------------------- store


def test_store_resumes_clicks_and_current_frame(tmp_path):
    frames, refs = make_frames()
    path = tmp_path / "a.jsonl"
    with AnnotationStore(path, frames, refs) as s:
        ids = [s.click(1, 3.0, 4.5), s.click(1, 10.25, 7.0), s.click(2, 0.0, 0.0)]
        assert ids == [0, 1, 2]
        s.goto(3)
    with AnnotationStore(path, frames, refs) as s:
        np.testing.assert_array_equal(s.clicks(1), [[3.0, 4.5], [10.25, 7.0]])
        np.testing.assert_array_equal(s.clicks(2), [[0.0, 0.0]])
        assert s.counts() == [0, 2, 1, 0] and s.current == 3
        assert s.click(0, 1.0, 1.0) == 3  # ids keep counting after a restart
        np.testing.assert_array_equal(s.map(1), clicks_to_map([[3.0, 4.5], [10.25, 7.0]], H, W, *STORE_DEFAULTS))


def test_undo_reverts_clicks_and_clears(tmp_path):
    frames, refs = make_frames()
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs) as s:
        for k in range(3):
            s.click(0, float(k), 1.0)
        assert s.undo(0) and s.counts()[0] == 2
        assert s.clear(0) == 2 and s.counts()[0] == 0 and not s.map(0).any()
        assert s.undo(0)  # undo the clear: both clicks come back
        np.testing.assert_array_equal(s.clicks(0), [[0.0, 1.0], [1.0, 1.0]])
        assert s.undo(0) and s.undo(0) and not s.undo(0)
        assert s.clear(0) == 0
        size = s.path.stat().st_size
        assert not s.undo(0) and s.clear(0) == 0
        assert s.path.stat().st_size == size  # no-ops write nothing


def test_delete_move_label_and_empty_mark_are_undoable_and_exported(tmp_path):
    frames, refs = make_frames()
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs, parts=("gripper", "goal")) as s:
        a, b, c = s.click(0, 1.0, 1.0, "gripper"), s.click(0, 2.0, 2.0), s.click(0, 3.0, 3.0, "goal")
        assert s.delete(0, b)
        assert [r["id"] for r in s.click_records(0)] == [a, c]
        assert s.move(0, c, 10.0, 11.0) and s.clicks(0).tolist() == [[1.0, 1.0], [10.0, 11.0]]
        assert s.set_label(0, a, "goal") and not s.set_label(0, a, "goal")  # the same label again: no change
        assert [r["label"] for r in s.click_records(0)] == ["goal", "goal"]
        np.testing.assert_array_equal(s.map(0), clicks_to_map([[1.0, 1.0], [10.0, 11.0]], H, W))
        assert s.undo(0) and s.click_records(0)[0]["label"] == "gripper"  # label undone
        assert s.undo(0) and s.clicks(0).tolist() == [[1.0, 1.0], [3.0, 3.0]]  # move undone
        assert s.undo(0) and [r["id"] for r in s.click_records(0)] == [a, b, c]  # delete undone, in place
        for bad in (lambda: s.delete(0, 99), lambda: s.move(0, 99, 1.0, 1.0), lambda: s.set_label(0, a, "object")):
            with pytest.raises(ValueError):
                bad()  # unknown click, or a part reach's guidance does not name
        with pytest.raises(ValueError, match="clear them"):
            s.set_empty(0, True)  # a frame never holds clicks and the mark at once
        assert s.set_empty(1, True) and s.empty_marks() == [False, True, False, False]
        with pytest.raises(ValueError, match="nothing salient"):
            s.click(1, 1.0, 1.0)
        assert s.undo(1) and not s.empty_marks()[1]
        assert s.set_empty(3, True)
        out = s.export(tmp_path / "a.h5")
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs, parts=("gripper", "goal")) as s:  # replayed
        assert [r["label"] for r in s.click_records(0)] == ["gripper", "", "goal"] and s.empty_marks()[3]
    ann = load_annotations(out)
    assert ann.click_labels[0].tolist() == ["gripper", "", "goal"] and ann.click_labels[1].tolist() == []
    assert ann.nothing_salient.tolist() == [False, False, False, True]
    assert ann.reviewed.tolist() == [True, False, False, True] and ann.annotated.tolist() == [True, False, False, False]
    assert ann.attrs["parts"] == "gripper,goal"
    assert not ann.maps[3].any()
    # An export from before labels and the mark existed reads as unlabelled and unmarked.
    with h5py.File(out, "a") as f:
        del f["click_label"], f["nothing_salient"], f["click_id"]
    old = load_annotations(out)
    assert old.click_labels[0].tolist() == ["", "", ""] and not old.nothing_salient.any()


def test_a_resent_change_is_applied_once_also_after_a_restart(tmp_path):
    frames, refs = make_frames()
    path = tmp_path / "a.jsonl"
    with AnnotationStore(path, frames, refs) as s:
        first = s.click(0, 1.0, 2.0, op_id="tab-1")
        assert s.click(0, 1.0, 2.0, op_id="tab-1") == first and s.counts()[0] == 1
        s.click(0, 5.0, 5.0, op_id="tab-2")
        assert s.undo(0, op_id="tab-3") and s.undo(0, op_id="tab-3") and s.counts()[0] == 1  # one undo, not two
        assert s.clear(0, op_id="tab-4") == 1 and s.clear(0, op_id="tab-4") == 1
        size = path.stat().st_size
        s.clear(0, op_id="tab-4")
        assert path.stat().st_size == size  # the repeat wrote nothing
        with pytest.raises(ValueError, match="op_id"):
            s.click(0, 1.0, 1.0, op_id="no spaces please")
    with AnnotationStore(path, frames, refs) as s:  # the answer to a lost acknowledgement survives a restart
        assert s.click(0, 1.0, 2.0, op_id="tab-1") == first and s.undo(0, op_id="tab-3")
        assert s.counts()[0] == 0 and s.can_undo(0)


def test_store_rejects_bad_clicks_without_writing(tmp_path):
    frames, refs = make_frames()
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs) as s:
        before = s.path.read_bytes()
        bad = [(-0.6, 1.0), (W - 0.4, 1.0), (1.0, H), (float("nan"), 1.0), ("3", 1.0), (True, 1.0), (10**30, 1.0)]
        for x, y in bad + [(1.0, 10**400)]:
            with pytest.raises(ValueError):
                s.click(0, x, y)
        for f in (-1, N, 1.0, True):
            with pytest.raises(IndexError):
                s.click(f, 1.0, 1.0)
        assert s.path.read_bytes() == before
        s.click(0, -0.5, H - 0.5)  # the frame's outer edges are inside


def test_torn_tail_is_dropped_and_corruption_named(tmp_path):
    frames, refs = make_frames()
    path = tmp_path / "a.jsonl"
    with AnnotationStore(path, frames, refs) as s:
        s.click(0, 1.0, 2.0)
    good = path.read_bytes()
    path.write_bytes(good + b'{"op":"click","frame":0,"x":5')  # a kill mid-write
    with AnnotationStore(path, frames, refs) as s:
        assert s.counts() == [1, 0, 0, 0]
    assert path.read_bytes().startswith(good) and path.read_bytes().endswith(b"\n")

    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"a\.jsonl.*line 2"):
        AnnotationStore(path, frames, refs)
    assert path.read_bytes() == before  # left untouched

    foreign = tmp_path / "notes.txt"
    foreign.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="notes.txt.*not a visarl annotation journal"):
        AnnotationStore(foreign, frames, refs)


def test_store_refuses_other_frames(tmp_path):
    frames, refs = make_frames()
    path = tmp_path / "a.jsonl"
    AnnotationStore(path, frames, refs).close()
    other = frames.copy()
    other[0, 0, 0, 0] ^= 1
    with pytest.raises(ValueError, match="a.jsonl.*other frames"):
        AnnotationStore(path, other, refs)
    with pytest.raises(ValueError, match="other frames"):
        AnnotationStore(path, frames, [(s, r + 1) for s, r in refs])
    with pytest.raises(ValueError, match="uint8"):
        AnnotationStore(tmp_path / "b.jsonl", frames.astype(np.float32), refs)
    with pytest.raises(ValueError, match="references"):
        AnnotationStore(tmp_path / "b.jsonl", frames, refs[:-1])


@pytest.mark.parametrize("combine", ["max", "sum"])
def test_export_round_trip(tmp_path, combine):
    frames, refs = make_frames()
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs, combine=combine, task="reach-v3", annotator="ann") as s:
        s.click(2, 5.0, 6.0)
        s.click(0, 1.5, 2.5)
        s.click(2, 20.0, 3.0)
        s.click(2, 20.0, 3.0)
        out = s.export(tmp_path / "out" / "ann.h5")
        store_maps = [s.map(i) for i in range(N)]
    a = load_annotations(out)
    assert a.frames.dtype == np.uint8 and np.array_equal(a.frames, frames)
    assert a.maps.dtype == np.float32 and a.maps.shape == (N, H, W)
    for i in range(N):
        np.testing.assert_array_equal(a.maps[i], store_maps[i])
    np.testing.assert_array_equal(a.clicks[2], [[5.0, 6.0], [20.0, 3.0], [20.0, 3.0]])
    np.testing.assert_array_equal(a.clicks[0], [[1.5, 2.5]])
    assert [len(c) for c in a.clicks] == [1, 0, 3, 0] and a.annotated.tolist() == [True, False, True, False]
    assert a.refs == [FrameRef(*r) for r in refs]
    assert a.annotators == ["ann", "", "ann", ""]
    assert a.first_click[2] <= a.last_click[2] and np.isnan(a.first_click[1])
    assert [len(t) for t in a.click_times] == [1, 0, 3, 0]
    assert a.attrs["format"] == "visarl-annotations" and a.attrs["schema_version"] == 1
    assert a.attrs["combine"] == combine and a.attrs["sigma"] == 10.0 and a.attrs["reference_size"] == 400
    assert a.attrs["task"] == "reach-v3"
    np.testing.assert_array_equal(a.rebuild_maps(), a.maps)
    wide = a.rebuild_maps(sigma=30.0)
    np.testing.assert_array_equal(wide[0], clicks_to_map([[1.5, 2.5]], H, W, 30.0, 400, combine))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ann.h5"]  # no temp file left


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    text = tmp_path / "x.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="x.h5"):
        load_annotations(text)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("rgb", data=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="other.h5.*not a visarl annotation file"):
        load_annotations(other)
    frames, refs = make_frames()
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs) as s:
        s.click(1, 2.0, 2.0)
        good = s.export(tmp_path / "good.h5")
    with h5py.File(good, "a") as f:
        del f["click_offsets"]
        f["click_offsets"] = np.array([0, 0, 0, 1, 1])  # the click now claims to be frame 2's
    with pytest.raises(ValueError, match="good.h5.*corrupt"):
        load_annotations(good)


def test_store_is_thread_safe(tmp_path):
    frames, refs = make_frames()
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs, fsync=False) as s:

        def work(t):
            for k in range(50):
                s.click(t, float(k % W), float(t))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert s.counts() == [50] * 4
        ids = sorted(r["id"] for f in range(N) for r in s.click_records(f))
        assert ids == list(range(200))
    with AnnotationStore(tmp_path / "a.jsonl", frames, refs) as s:
        assert s.counts() == [50] * 4


# ---------------------------------------------------------------------------------------------- server


@pytest.fixture
def server(tmp_path):
    frames, refs = make_frames()
    srv = AnnotationServer(frames, refs, tmp_path / "a.jsonl", task="reach-v3").start()
    yield srv
    srv.shutdown()


def request(srv, method, path, body=None, headers=None, raw=False):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=hdrs)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    if raw:
        return r.status, data, r
    return r.status, (json.loads(data) if r.getheader("Content-Type") == "application/json" else data)


def test_binds_loopback_by_default(server):
    assert server.host == "127.0.0.1"
    assert server.httpd.socket.getsockname()[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/"


def test_happy_path(server):
    st, state = request(server, "GET", "/api/state")
    assert st == 200 and state["num_frames"] == N and state["height"] == H and state["width"] == W
    assert state["counts"] == [0] * N and state["refs"][3] == ["shard_001.h5", 13]
    st, res = request(server, "POST", "/api/click", {"frame": 2, "x": 7, "y": 11.5})
    assert st == 200 and res["click_id"] == 0 and res["state"]["counts"] == [0, 0, 1, 0]
    ann = res["annotation"]
    assert ann["clicks"] == [[7.0, 11.5]] and ann["can_undo"]
    q = np.frombuffer(base64.b64decode(ann["map"]), np.uint8).reshape(H, W)
    expect = clicks_to_map([[7.0, 11.5]], H, W, *STORE_DEFAULTS)
    np.testing.assert_array_equal(q, np.round(expect * 255).astype(np.uint8))
    st, png = request(server, "GET", "/api/frame/2.png?v=x")
    assert st == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), server.store.frames[2])
    st, png = request(server, "GET", "/api/map/2.png")
    m = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(m, np.round(expect * 255).astype(np.uint8))
    st, res = request(server, "POST", "/api/goto", {"frame": 3})
    assert st == 200 and res["state"]["current"] == 3
    st, res = request(server, "POST", "/api/undo", {"frame": 2})
    assert st == 200 and res["undone"] and res["annotation"]["clicks"] == []
    for path in ("/", "/index.html", "/static/app.js", "/static/style.css"):
        st, body = request(server, "GET", path)
        assert st == 200 and len(body) > 100
    st, res = request(server, "POST", "/api/click", {"frame": 0, "x": 1.0, "y": 2.0})
    st, res = request(server, "POST", "/api/done", {})
    assert st == 200 and res["state"]["done"] and Path(res["exported"]).exists()
    assert load_annotations(res["exported"]).clicks[0].tolist() == [[1.0, 2.0]]


def _snapshot(srv):
    return srv.store.path.read_bytes(), request(srv, "GET", "/api/state")[1]


BAD_POSTS = [
    # (path, body bytes or JSON, extra headers, expected status)
    ("/api/click", b"{not json", {}, 400),
    ("/api/click", b"", {}, 400),
    ("/api/click", b"\xff\xfe", {}, 400),
    ("/api/click", [1, 2, 3], {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0}, {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0, "y": 1.0, "extra": 1}, {}, 400),
    ("/api/click", {"frame": 99, "x": 1.0, "y": 1.0}, {}, 404),
    ("/api/click", {"frame": -1, "x": 1.0, "y": 1.0}, {}, 404),
    ("/api/click", {"frame": "0", "x": 1.0, "y": 1.0}, {}, 400),
    ("/api/click", {"frame": 0.0, "x": 1.0, "y": 1.0}, {}, 400),
    ("/api/click", {"frame": True, "x": 1.0, "y": 1.0}, {}, 400),
    ("/api/click", {"frame": 0, "x": "1", "y": 1.0}, {}, 400),
    ("/api/click", {"frame": 0, "x": None, "y": 1.0}, {}, 400),
    ("/api/click", {"frame": 0, "x": [1], "y": 1.0}, {}, 400),
    ("/api/click", b'{"frame": 0, "x": NaN, "y": 1.0}', {}, 400),
    ("/api/click", b'{"frame": 0, "x": Infinity, "y": 1.0}', {}, 400),
    ("/api/click", {"frame": 0, "x": W, "y": 1.0}, {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0, "y": -0.51}, {}, 400),
    ("/api/click", {"frame": 0, "x": 1e308, "y": 1.0}, {}, 400),
    ("/api/click", b'{"frame": 0, "x": 1000000000000000000000000000000, "y": 1.0}', {}, 400),  # an integer 1e30
    ("/api/click", b'{"frame": 0, "x": 1.0, "y": 1' + b"0" * 400 + b"}", {}, 400),  # beyond float range
    ("/api/click", b'{"frame": 0, "x": ' + b"[" * 5000 + b"]" * 5000 + b', "y": 1.0}', {}, 400),  # nested deep
    ("/api/click", b"[" * 5000 + b"]" * 5000, {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0, "y": 1.0, "label": "puck"}, {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0, "y": 1.0, "op_id": "two words"}, {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0, "y": 1.0, "session": "short"}, {}, 400),
    ("/api/delete", {"frame": 1, "id": 99}, {}, 400),
    ("/api/delete", {"frame": 1, "id": "0"}, {}, 400),
    ("/api/move", {"frame": 1, "id": 0, "x": 1e9, "y": 1.0}, {}, 400),
    ("/api/label", {"frame": 1, "id": 0, "label": 3}, {}, 400),
    ("/api/empty", {"frame": 1, "value": True}, {}, 400),  # frame 1 has a click
    ("/api/empty", {"frame": 0, "value": 1}, {}, 400),
    ("/api/session", {}, {}, 400),
    ("/api/click", {"frame": 0, "x": 1.0, "y": 1.0}, {"Content-Type": "text/plain"}, 415),
    ("/api/click", b'{"frame": 0, "x": 1.0, "y": 1.0, "pad": "' + b"a" * MAX_BODY + b'"}', {}, 413),
    ("/api/undo", {}, {}, 400),
    ("/api/undo", {"frame": 4}, {}, 404),
    ("/api/clear", {"frame": None}, {}, 400),
    ("/api/goto", {"frame": 1, "x": 2}, {}, 400),
    ("/api/done", {"now": True}, {}, 400),
    ("/api/done", b"null", {}, 400),
    ("/api/nope", {"frame": 0}, {}, 404),
    ("/api/state", {"frame": 0}, {}, 405),
    ("/api/click", {"frame": 0, "x": 1.0, "y": 1.0}, {"Host": "evil.example:80"}, 403),
]


@pytest.mark.parametrize("path,body,headers,status", BAD_POSTS, ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD_POSTS)])
def test_bad_posts_are_refused_and_change_nothing(server, path, body, headers, status):
    request(server, "POST", "/api/click", {"frame": 1, "x": 2.0, "y": 3.0})
    before = _snapshot(server)
    st, res = request(server, "POST", path, body, headers)
    assert st == status, res
    assert "error" in res
    assert _snapshot(server) == before


@pytest.mark.parametrize("length", ["\u00b2", "\u00b9\u00b3", "1\u00b2", "+12", "1_2"])
def test_a_content_length_of_anything_but_ascii_digits_is_a_400(server, length):
    # '²' passes str.isdigit() but not int(): it must be refused, not answered with a 500.
    before = _snapshot(server)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.putrequest("POST", "/api/click")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", length.encode("latin-1"))
    conn.endheaders()
    conn.send(b'{"frame": 0, "x": 1.0, "y": 1.0}')
    r = conn.getresponse()
    assert r.status == 400 and "Content-Length" in json.loads(r.read())["error"]
    conn.close()
    assert _snapshot(server) == before


def test_bad_framing_and_methods(server):
    before = _snapshot(server)
    # No Content-Length, a chunked body, a non-numeric length: refused without reading a body.
    for hdrs in ({}, {"Transfer-Encoding": "chunked"}, {"Content-Length": "ten"}):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        conn.putrequest("POST", "/api/click")
        conn.putheader("Content-Type", "application/json")
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        assert 400 <= r.status < 500, hdrs
        conn.close()
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        st, _, _ = request(server, method, "/api/click", {"frame": 0, "x": 1.0, "y": 1.0}, raw=True)
        assert st == 405, method
    st, res = request(server, "GET", "/api/click")
    assert st == 405
    for path in ("/api/frame/4.png", "/api/map/9.png", "/api/annotation/4", "/api/frame/-1.png", "/api/frame/x.png"):
        assert request(server, "GET", path)[0] == 404, path
    assert _snapshot(server) == before


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/static/..%2f..%2fsetup.py",
        "/static/../server.py",
        "/static/%2e%2e/store.py",
        "/static/../../../setup.py",
        "/static/",
        "/static/index.html/../app.js/..",
        "//etc/passwd",
        "/static/app.js%00.png",
        "/server.py",
        "/setup.py",
    ],
)
def test_path_traversal_is_refused(server, path):
    st, body, _ = request(server, "GET", path, raw=True)
    assert 400 <= st < 500
    assert b"import" not in body and b"root:" not in body


def test_host_header_checked(server):
    assert request(server, "GET", "/api/state", headers={"Host": f"localhost:{server.port}"})[0] == 200
    st, _ = request(server, "GET", "/api/state", headers={"Host": "attacker.example"})
    assert st == 403


def test_keep_alive_survives_a_refusal(server):
    # A refused request that was read in full leaves the connection usable for the next one.
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    hdrs = {"Content-Type": "application/json"}
    conn.request("POST", "/api/click", body=b'{"frame": 0}', headers=hdrs)
    r = conn.getresponse()
    assert r.status == 400
    r.read()
    conn.request("POST", "/api/click", body=json.dumps({"frame": 0, "x": 1.0, "y": 1.0}), headers=hdrs)
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["state"]["counts"][0] == 1
    conn.close()


def test_a_second_tab_takes_the_store_and_the_first_is_refused(server):
    tab_a, tab_b = "a" * 16, "b" * 16
    click = {"frame": 0, "x": 1.0, "y": 1.0}
    assert request(server, "POST", "/api/session", {"session": tab_a})[1]["state"]["session"] == tab_a
    assert request(server, "POST", "/api/click", {**click, "session": tab_a})[0] == 200
    assert request(server, "POST", "/api/session", {"session": tab_b})[0] == 200
    before = _snapshot(server)
    for path, body in [("/api/click", click), ("/api/undo", {"frame": 0}), ("/api/done", {})]:
        st, res = request(server, "POST", path, {**body, "session": tab_a})
        assert st == 409 and res["superseded"] and "another tab" in res["error"], path
    assert _snapshot(server) == before  # the old tab changed nothing: no undo of the other tab's work
    assert request(server, "POST", "/api/click", {**click, "session": tab_b})[0] == 200
    assert request(server, "POST", "/api/click", click)[0] == 200  # a script without a session is not a tab
    st, res = request(server, "GET", "/api/state")
    assert res["session"] == tab_b and res["counts"][0] == 3


def test_the_first_session_after_a_restart_holds_the_store(tmp_path):
    frames, refs = make_frames()
    with AnnotationServer(frames, refs, tmp_path / "a.jsonl") as srv:
        assert request(srv, "POST", "/api/session", {"session": "a" * 16})[0] == 200
    with AnnotationServer(frames, refs, tmp_path / "a.jsonl") as srv:  # restarted: no session yet
        assert request(srv, "POST", "/api/click", {"frame": 0, "x": 1.0, "y": 1.0, "session": "b" * 16})[0] == 200
        st, res = request(srv, "POST", "/api/click", {"frame": 0, "x": 1.0, "y": 1.0, "session": "a" * 16})
        assert st == 409 and srv.store.counts()[0] == 1


def test_a_resent_post_is_stored_once(server):
    body = {"frame": 2, "x": 3.0, "y": 4.0, "op_id": "tab-7", "label": "goal"}
    first = request(server, "POST", "/api/click", body)[1]
    again = request(server, "POST", "/api/click", body)[1]
    assert first["click_id"] == again["click_id"] and again["state"]["counts"][2] == 1
    assert again["annotation"]["labels"] == ["goal"] and again["annotation"]["ids"] == [first["click_id"]]
    st, res = request(server, "POST", "/api/move", {"frame": 2, "id": first["click_id"], "x": 5.0, "y": 6.0})
    assert st == 200 and res["annotation"]["clicks"] == [[5.0, 6.0]]
    st, res = request(server, "POST", "/api/delete", {"frame": 2, "id": first["click_id"]})
    assert st == 200 and res["annotation"]["clicks"] == []
    st, res = request(server, "POST", "/api/empty", {"frame": 2, "value": True})
    assert st == 200 and res["state"]["empty"] == [False, False, True, False] and res["annotation"]["empty"]


def test_context_frames_and_where_each_frame_sits(tmp_path):
    from visarl.annotate.select import FrameContext

    frames, refs = make_frames()
    offsets = np.arange(-1, 2)
    neighbours = np.random.default_rng(1).integers(0, 256, (N, 3, H, W, 3), dtype=np.uint8)
    available = np.ones((N, 3), bool)
    available[0, 0] = False  # frame 0 is its episode's first step
    ctx = FrameContext(np.arange(N) + 40, np.arange(N) * 5, offsets, neighbours, available)
    with AnnotationServer(frames, refs, tmp_path / "a.jsonl", context=ctx) as srv:
        state = request(srv, "GET", "/api/state")[1]
        assert state["episode"] == [40, 41, 42, 43] and state["step"] == [0, 5, 10, 15]
        assert state["context"][0] == [0, 1] and state["context"][1] == [-1, 0, 1]
        st, png = request(srv, "GET", "/api/context/1/-1.png")
        assert st == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), neighbours[1, 0])
        assert request(srv, "GET", "/api/context/0/-1.png")[0] == 404
        assert request(srv, "GET", "/api/context/1/2.png")[0] == 404
    with pytest.raises(ValueError, match="context"):
        AnnotationServer(frames[:3], refs[:3], tmp_path / "b.jsonl", context=ctx)
    with AnnotationServer(frames, refs, tmp_path / "c.jsonl") as srv:
        assert request(srv, "GET", "/api/state")[1]["episode"] is None
        assert request(srv, "GET", "/api/context/1/1.png")[0] == 404


def test_a_client_that_goes_away_mid_answer_leaves_no_traceback(tmp_path, capfd, caplog):
    # A noise frame makes a PNG of ~3 MB: far more than the socket buffers hold, so the server is still
    # writing when the client resets the connection.
    frames = np.random.default_rng(0).integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
    caplog.set_level(logging.DEBUG, logger="visarl.annotate.server")
    srv = AnnotationServer(frames, [("s.h5", 0)], tmp_path / "a.jsonl", fsync=False).start()
    try:
        srv.frame_png(0)  # encoded before the request, so the answer starts at once
        for _ in range(3):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((srv.host, srv.port))
            s.sendall(f"GET /api/frame/0.png HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            s.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("went away" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        assert request(srv, "GET", "/api/state")[0] == 200  # still serving
    finally:
        srv.shutdown()
    out = capfd.readouterr()
    assert "Traceback" not in out.err + out.out and "BrokenPipe" not in out.err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any("went away" in r.getMessage() for r in caplog.records)  # the reset did happen mid-answer


def test_serve_stops_when_done_and_exports(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="visarl.annotate.server")
    frames, refs = make_frames()
    started: queue.Queue = queue.Queue()
    result: list[Path] = []
    t = threading.Thread(
        target=lambda: result.append(
            serve(frames, refs, tmp_path / "s.jsonl", port=0, ready=started.put, task="door-open-v3")
        )
    )
    t.start()
    srv = started.get(timeout=10)
    assert request(srv, "POST", "/api/click", {"frame": 3, "x": 4.0, "y": 5.0})[0] == 200
    assert request(srv, "POST", "/api/done", {})[0] == 200
    t.join(timeout=10)
    assert not t.is_alive() and result == [tmp_path / "s.h5"]
    a = load_annotations(result[0])
    assert a.clicks[3].tolist() == [[4.0, 5.0]] and a.attrs["task"] == "door-open-v3"
    assert any(srv.url in r.getMessage() for r in caplog.records)  # where to point the browser is said


# ---------------------------------------------------------------------------------------------- kill -9

HELPER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from visarl.annotate.server import AnnotationServer
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    refs = [("shard_000.h5", i) for i in range(8)]
    srv = AnnotationServer(frames, refs, sys.argv[1], port=0)
    print(srv.port, flush=True)
    srv.serve_forever()
    """
)


def _start_helper(script, store):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )
    line = proc.stdout.readline()  # blocks until the server is listening (or the helper died)
    if not line.strip():
        proc.kill()
        raise AssertionError(f"helper did not start: {proc.stderr.read()}")
    return proc, int(line)


def test_acknowledged_clicks_survive_sigkill(tmp_path):
    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    store = tmp_path / "kill.jsonl"
    proc, port = _start_helper(script, store)
    acked: list[tuple[int, int, float, float]] = []
    lock = threading.Lock()
    enough = threading.Event()

    def clicker(t):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for k in range(125):
            frame, x, y = (t * 125 + k) % 8, t * 15 + k * 0.1, k * 0.5
            try:
                conn.request(
                    "POST",
                    "/api/click",
                    body=json.dumps({"frame": frame, "x": x, "y": y}),
                    headers={"Content-Type": "application/json"},
                )
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException):
                return  # the server was killed under us
            if r.status == 200:
                with lock:
                    acked.append((json.loads(body)["click_id"], frame, x, y))
                    if len(acked) >= 300:
                        enough.set()

    threads = [threading.Thread(target=clicker, args=(t,)) for t in range(4)]
    try:
        [t.start() for t in threads]
        enough.wait(timeout=40)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: some posts are in flight
        [t.join(timeout=20) for t in threads]
    finally:
        proc.kill()
        proc.wait()
    assert len(acked) >= 300

    proc, port = _start_helper(script, store)  # restart on the same store
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stored = {}
        for f in range(8):
            conn.request("GET", f"/api/annotation/{f}")
            ann = json.loads(conn.getresponse().read())
            for cid, (x, y) in zip(ann["ids"], ann["clicks"], strict=True):
                stored[cid] = (f, x, y)
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    missing = [a for a in acked if stored.get(a[0]) != a[1:]]
    assert not missing, f"{len(missing)} acknowledged clicks lost, e.g. {missing[:3]}"
    assert len(acked) <= len(stored) <= len(acked) + 4  # at most the posts in flight landed unacknowledged
