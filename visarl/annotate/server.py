"""The annotation web app: a stdlib threaded HTTP server, a small JSON API and the page in ``static/``.

The server is given frames in memory (uint8 ``[N, H, W, 3]``), one ``(shard file name, row)`` reference per
frame and a journal path (:class:`~visarl.annotate.store.AnnotationStore`); the store's maps are the truth,
the page only draws what the server acknowledged. It binds 127.0.0.1 by default and, when bound to a
loopback address, answers only requests addressed to it by that name (a DNS-rebinding page cannot reach it);
POSTs must be ``application/json`` so a foreign web page cannot send them as a "simple" cross-site request.

API (JSON in and out; a rejected request gets a 4xx with ``{"error": ...}`` and changes nothing):

- ``GET /`` the page; ``GET /static/app.js``, ``/static/style.css`` (a fixed whitelist, nothing else).
- ``GET /api/state``: frame count and size, current frame, clicks and "nothing salient" marks per frame, done
  flag, map settings, the task's guidance and part labels, each frame's episode and step (when known) and
  the page session that holds the store.
- ``GET /api/annotation/<i>``: clicks of frame ``i`` (with ids and labels) and its map (uint8, base64,
  row-major ``[H, W]``).
- ``GET /api/frame/<i>.png``: frame ``i`` at its own resolution; ``GET /api/map/<i>.png``: its map, 8-bit grey;
  ``GET /api/context/<i>/<d>.png``: the frame ``d`` steps away in frame ``i``'s episode (read-only context).
- ``POST /api/click {"frame", "x", "y"[, "label"]}`` (x = column, y = row, float frame pixels, pixel centres at
  integers), ``/api/delete {"frame", "id"}``, ``/api/move {"frame", "id", "x", "y"}``,
  ``/api/label {"frame", "id", "label"}``, ``/api/empty {"frame", "value"}`` (the "nothing salient" mark),
  ``/api/undo {"frame"}``, ``/api/clear {"frame"}``, ``/api/goto {"frame"}``, ``/api/done {}`` (marks the
  session done and exports the HDF5 file). Each answers ``{"state", "annotation"}`` once the change is on disk.

Every change may also carry ``"op_id"`` (a change resent with the same id is applied once, see
:mod:`~visarl.annotate.store`) and ``"session"``. Sessions keep two tabs from editing one store at once: the
page takes the store with ``POST /api/session {"session"}`` when it opens, and a change from any other session
is refused with 409 (``"superseded": true``) and changes nothing. The tab that lost the store says so and
offers to take it back. A change without ``session`` (a script) is always accepted; after a restart the
first session that writes holds the store.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import os
import re
import sys
import threading
import webbrowser
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from visarl.annotate.guidance import PARTS
from visarl.annotate.maps import frame_sigma
from visarl.annotate.select import FrameContext
from visarl.annotate.store import AnnotationStore, StoreClosed
from visarl.core.log import get_logger
from visarl.core.maps import COMBINE, REFERENCE_SIZE, SIGMA

log = get_logger(__name__)

MAX_BODY = 16 * 1024
"""Largest accepted POST body in bytes; the biggest valid one is under 200."""

STATIC_DIR = Path(__file__).with_name("static")
# The only files served: URL path -> (file name in static/, content type). Never built from the request.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# POST endpoint -> (fields its JSON object must have, fields it may have besides "session" and "op_id").
POST_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "/api/click": ({"frame", "x", "y"}, {"label"}),
    "/api/delete": ({"frame", "id"}, set()),
    "/api/move": ({"frame", "id", "x", "y"}, set()),
    "/api/label": ({"frame", "id", "label"}, set()),
    "/api/empty": ({"frame", "value"}, set()),
    "/api/undo": ({"frame"}, set()),
    "/api/clear": ({"frame"}, set()),
    "/api/goto": ({"frame"}, set()),
    "/api/done": (set(), set()),
    "/api/session": ({"session"}, set()),
}
COMMON_FIELDS = {"session", "op_id"}
"""Fields any POST may carry (see the module docstring)."""
_FRAME_PNG = re.compile(r"/api/frame/(\d{1,9})\.png")
_MAP_PNG = re.compile(r"/api/map/(\d{1,9})\.png")
_CONTEXT_PNG = re.compile(r"/api/context/(\d{1,9})/(-?\d{1,4})\.png")
_ANNOTATION = re.compile(r"/api/annotation/(\d{1,9})")
_SESSION = re.compile(r"[A-Za-z0-9_-]{8,64}")
_LENGTH = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also takes '²' or '٣', which int() refuses
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""The client went away mid-request: nothing to answer, and nothing for the annotator's terminal."""


class HTTPError(Exception):
    """A request the server refuses; ``status`` is the 4xx code sent back, ``extra`` more JSON fields."""

    def __init__(self, status: int, message: str, close: bool = False, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.close, self.extra = status, message, close, extra or {}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closes a connection mid-request is routine; anything else is a bug worth one traceback.
        if isinstance(sys.exc_info()[1], _GONE):
            log.debug("annotate: %s went away", client_address)
            return
        log.exception("annotate: error serving %s", client_address)


class AnnotationServer:
    """The app over one store; ``start()`` serves from a thread (tests), ``serve_forever()`` blocks.

    ``export_path`` defaults to the store path with the suffix ``.h5``. With ``stop_when_done`` the server
    stops once the annotator presses Done (after answering). ``context`` (optional) gives each frame's
    episode, step and neighbours for the page's read-only context view.
    """

    def __init__(
        self,
        frames: np.ndarray,
        refs: Sequence[Any],
        store_path: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sigma: float = SIGMA,
        reference_size: float | None = REFERENCE_SIZE,
        combine: str = COMBINE,
        task: str = "",
        annotator: str = "",
        guidance: str = "",
        parts: Sequence[str] = PARTS,
        context: FrameContext | None = None,
        export_path: str | os.PathLike | None = None,
        display_size: int = 512,
        fsync: bool = True,
        stop_when_done: bool = False,
        export_attrs: dict[str, Any] | None = None,
    ) -> None:
        self.store = AnnotationStore(
            store_path,
            frames,
            refs,
            sigma=sigma,
            reference_size=reference_size,
            combine=combine,
            task=task,
            annotator=annotator,
            guidance=guidance,
            parts=parts,
            fsync=fsync,
            export_attrs=export_attrs,
        )
        try:
            self.context = self._check_context(context)
            self.export_path = Path(export_path) if export_path is not None else self.store.path.with_suffix(".h5")
            self.display_size = int(display_size)
            self.stop_when_done = stop_when_done
            self.exported: Path | None = None
            self.done_event = threading.Event()
            self.session: str | None = None  # the page session that holds the store (None: the next one to write)
            self._session_lock = threading.Lock()
            self._png_cache: dict[tuple[int, int], bytes] = {}
            self._frames_id = self.store._header["frames_sha256"][:16]
            # Revisions count from the journal's replay, so after a restart the page compares them only
            # within one server instance.
            self.instance = os.urandom(6).hex()
            handler = type("Handler", (_Handler,), {"app": self})
            self.httpd = _HTTPServer((host, port), handler)
        except (OSError, ValueError):
            self.store.close()
            raise
        self.host, self.port = self.httpd.server_address[:2]
        self.allowed_hosts = self._allowed_hosts(host, self.port)
        self._thread: threading.Thread | None = None

    def _check_context(self, ctx: FrameContext | None) -> FrameContext | None:
        if ctx is None:
            return None
        n, k = len(self.store.frames), len(ctx.offsets)
        ok = (
            ctx.episode.shape == (n,)
            and ctx.step.shape == (n,)
            and ctx.available.shape == (n, k)
            and ctx.frames.shape == (n, k, *self.store.frames.shape[1:])
            and ctx.frames.dtype == np.uint8
        )
        if not ok:
            raise ValueError(f"context does not match the {n} frames of {self.store.frames.shape[1:3]}")
        return ctx

    @staticmethod
    def _allowed_hosts(host: str, port: int) -> set[str] | None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            return None  # served on purpose to other machines: any Host header goes
        return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host)}

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> AnnotationServer:
        """Serve from a daemon thread and return at once."""
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="annotate-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        """Stop serving, close the socket and the store (idempotent)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.httpd.server_close()
        self.store.close()

    def __enter__(self) -> AnnotationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- sessions --------------------------------------------------------------------------------------
    def take_session(self, session: str) -> None:
        """Give the store to page session ``session`` (a tab opening, or taking the store back)."""
        with self._session_lock:
            if self.session not in (None, session):
                log.info("annotate: a new page session took over the annotation store")
            self.session = session

    def check_session(self, session: str) -> None:
        """Refuse a change from a session that does not hold the store (409); the first one after a start takes it."""
        with self._session_lock:
            if self.session is None:
                self.session = session
            elif self.session != session:
                raise HTTPError(
                    HTTPStatus.CONFLICT,
                    "this annotation session was opened in another tab or window; changes here are not saved",
                    extra={"superseded": True},
                )

    # -- payloads --------------------------------------------------------------------------------------
    def state(self) -> dict:
        s, c = self.store, self.context
        with s._lock:
            return {
                "num_frames": s.num_frames,
                "height": s.height,
                "width": s.width,
                "current": s.current,
                "done": s.done,
                "revision": s.revision,
                "counts": s.counts(),
                "empty": s.empty_marks(),
                "refs": [[r.shard, r.row] for r in s.refs],
                "episode": None if c is None else c.episode.tolist(),
                "step": None if c is None else c.step.tolist(),
                "context": None if c is None else [c.offsets[a].tolist() for a in c.available],
                "task": s.task,
                "guidance": s.guidance,
                "parts": list(s.parts),
                "annotator": s.annotator,
                "sigma": s.sigma,
                "reference_size": s.reference_size,
                "frame_sigma": frame_sigma(s.sigma, s.height, s.width, s.reference_size),
                "combine": s.combine,
                "frames_id": self._frames_id,
                "display_size": self.display_size,
                "export_path": str(self.export_path),
                "exported": self.exported is not None,
                "stop_when_done": self.stop_when_done,
                "session": self.session,
                "instance": self.instance,
            }

    def annotation(self, frame: int) -> dict:
        s = self.store
        with s._lock:
            recs = s.click_records(frame)
            m = s.map(frame)
            can_undo = s.can_undo(frame)
            empty = s.empty_marks()[frame]
            revision = s.revision
        q = np.round(m * 255.0).astype(np.uint8)  # [H, W], display only: the float map stays in the store
        return {
            "frame": frame,
            "clicks": [[r["x"], r["y"]] for r in recs],
            "ids": [r["id"] for r in recs],
            "labels": [r["label"] for r in recs],
            "empty": empty,
            "can_undo": can_undo,
            "revision": revision,
            "instance": self.instance,
            "map": base64.b64encode(q.tobytes()).decode("ascii"),
            "height": s.height,
            "width": s.width,
        }

    def _png(self, key: tuple[int, int], image: np.ndarray) -> bytes:
        png = self._png_cache.get(key)
        if png is None:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            png = self._png_cache[key] = buf.getvalue()
        return png

    def frame_png(self, frame: int) -> bytes:
        return self._png((frame, 0), self.store.frames[frame])

    def context_png(self, frame: int, offset: int) -> bytes:
        c = self.context
        if c is None:
            raise HTTPError(HTTPStatus.NOT_FOUND, "no context frames were given to this server")
        k = np.flatnonzero(c.offsets == offset)
        if len(k) == 0 or not c.available[frame, k[0]]:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"frame {frame}'s episode has no step {offset:+d} from it")
        return self._png((frame, offset), c.frames[frame, k[0]])

    def map_png(self, frame: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.round(self.store.map(frame) * 255.0).astype(np.uint8), mode="L").save(buf, format="PNG")
        return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    app: AnnotationServer
    protocol_version = "HTTP/1.1"  # keep-alive: one connection carries a session's clicks
    timeout = 60  # idle keep-alive connections end, so shutdown never waits on a browser tab
    server_version = "visarl-annotate"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing ------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, cache: str = "no-store", close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, close: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", close=close)

    def _dispatch(self, fn: Any) -> None:
        self._body_read = False
        try:
            try:
                self._check_host()
                fn(urlsplit(self.path).path)
            except HTTPError as e:
                if e.close:
                    self._drain()
                self._json(e.status, {"error": e.message, **e.extra}, close=e.close)
            except StoreClosed as e:  # the server is shutting down
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)}, close=True)
            except _GONE:
                raise
            except Exception:
                log.exception("annotate: error on %s %s", self.command, self.path)
                msg = {"error": "internal error (see the server log)"}
                self._json(HTTPStatus.INTERNAL_SERVER_ERROR, msg, close=True)
        except _GONE:
            # The client closed the connection while we answered: no one is left to tell.
            log.debug("annotate: %s went away during %s %s", self.client_address, self.command, self.path)
            self.close_connection = True

    def _check_host(self) -> None:
        allowed = self.app.allowed_hosts
        if allowed is not None and self.headers.get("Host", "") not in allowed:
            raise HTTPError(HTTPStatus.FORBIDDEN, "unexpected Host header", close=True)

    def _frame_index(self, text: str) -> int:
        i = int(text)
        if not 0 <= i < self.app.store.num_frames:
            raise HTTPError(HTTPStatus.NOT_FOUND, f"no frame {i} (there are {self.app.store.num_frames})")
        return i

    def _read_json(self, required: set[str], optional: set[str]) -> dict:
        """The request body as a JSON object with ``required`` fields and some of ``optional``; else a 4xx."""
        if self.headers.get("Transfer-Encoding"):
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted", close=True)
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required", close=True)
        if not _LENGTH.fullmatch(raw):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "bad Content-Length", close=True)
        n = int(raw)
        if n > MAX_BODY:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes", close=True)
        body = self.rfile.read(n)
        self._body_read = True
        if len(body) != n:
            raise HTTPError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length", close=True)
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json")
        try:
            obj = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"bad JSON: {e}") from None
        except RecursionError:  # nesting deeper than the parser's stack: a bad body, not a server fault
            raise HTTPError(HTTPStatus.BAD_REQUEST, "bad JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
        allowed = required | optional | COMMON_FIELDS
        if not required <= set(obj) <= allowed:
            missing, extra = sorted(required - set(obj)), sorted(set(obj) - allowed)
            raise HTTPError(HTTPStatus.BAD_REQUEST, f"fields: missing {missing}, unexpected {extra}")
        if "frame" in obj:
            f = obj["frame"]
            if isinstance(f, bool) or not isinstance(f, int):
                raise HTTPError(HTTPStatus.BAD_REQUEST, f"frame must be an integer, got {f!r}")
            if not 0 <= f < self.app.store.num_frames:
                raise HTTPError(HTTPStatus.NOT_FOUND, f"no frame {f} (there are {self.app.store.num_frames})")
        if "session" in obj and not (isinstance(obj["session"], str) and _SESSION.fullmatch(obj["session"])):
            raise HTTPError(HTTPStatus.BAD_REQUEST, "session must be 8 to 64 letters, digits, '_' or '-'")
        return obj

    def _drain(self, limit: int = 1 << 20) -> None:
        """Read and drop an unread request body (up to ``limit``, briefly) before a refusal that closes the
        connection: closing with unread data would reset it before the client reads the answer."""
        raw = self.headers.get("Content-Length", "") if self.headers else ""
        if getattr(self, "_body_read", False) or not _LENGTH.fullmatch(raw) or int(raw) > limit:
            return
        n = int(raw)
        self._body_read = True
        try:
            self.connection.settimeout(2.0)
            while n > 0:
                chunk = self.rfile.read(min(n, 65536))
                if not chunk:
                    break
                n -= len(chunk)
        except OSError:
            pass

    def _method_not_allowed(self) -> None:
        def refuse(path: str) -> None:
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed here", close=True)

        self._dispatch(refuse)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _method_not_allowed

    # -- GET -----------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch(self._get)

    def _get(self, path: str) -> None:
        app = self.app
        if path in STATIC_FILES:
            name, ctype = STATIC_FILES[path]
            self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), ctype, cache="no-cache")
        elif path == "/api/state":
            self._json(HTTPStatus.OK, app.state())
        elif m := _ANNOTATION.fullmatch(path):
            self._json(HTTPStatus.OK, app.annotation(self._frame_index(m[1])))
        elif m := _FRAME_PNG.fullmatch(path):
            # The page asks with ?v=<frames id>, so a cached frame is never one from another frame set.
            self._send(HTTPStatus.OK, app.frame_png(self._frame_index(m[1])), "image/png", cache="max-age=86400")
        elif m := _CONTEXT_PNG.fullmatch(path):
            png = app.context_png(self._frame_index(m[1]), int(m[2]))
            self._send(HTTPStatus.OK, png, "image/png", cache="max-age=86400")
        elif m := _MAP_PNG.fullmatch(path):
            self._send(HTTPStatus.OK, app.map_png(self._frame_index(m[1])), "image/png")
        elif path in POST_FIELDS:
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, f"use POST for {path}")
        else:
            raise HTTPError(HTTPStatus.NOT_FOUND, "not found")

    # -- POST ----------------------------------------------------------------------------------------
    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _post(self, path: str) -> None:
        if path not in POST_FIELDS:
            known_get = path in STATIC_FILES or path == "/api/state" or _ANNOTATION.fullmatch(path)
            status = HTTPStatus.METHOD_NOT_ALLOWED if known_get else HTTPStatus.NOT_FOUND
            # The body is not read: close so it is not taken for the next request.
            raise HTTPError(status, f"no POST endpoint {path}", close=True)
        req = self._read_json(*POST_FIELDS[path])
        app, store = self.app, self.app.store
        if path == "/api/session":
            app.take_session(req["session"])
            self._json(HTTPStatus.OK, {"state": app.state(), "annotation": app.annotation(store.current)})
            return
        if "session" in req:
            app.check_session(req["session"])
        frame, op_id = req.get("frame"), req.get("op_id")
        out: dict[str, Any] = {}
        try:
            if path == "/api/click":
                out["click_id"] = store.click(frame, req["x"], req["y"], req.get("label", ""), op_id=op_id)
            elif path == "/api/delete":
                out["deleted"] = store.delete(frame, req["id"], op_id=op_id)
            elif path == "/api/move":
                out["moved"] = store.move(frame, req["id"], req["x"], req["y"], op_id=op_id)
            elif path == "/api/label":
                out["labelled"] = store.set_label(frame, req["id"], req["label"], op_id=op_id)
            elif path == "/api/empty":
                out["changed"] = store.set_empty(frame, req["value"], op_id=op_id)
            elif path == "/api/undo":
                out["undone"] = store.undo(frame, op_id=op_id)
            elif path == "/api/clear":
                out["cleared"] = store.clear(frame, op_id=op_id)
            elif path == "/api/goto":
                store.goto(frame, op_id=op_id)
            else:
                store.mark_done(op_id=op_id)
                app.exported = store.export(app.export_path)
                out["exported"] = str(app.exported)
        except ValueError as e:  # a bad value (position, label, click id, op id): nothing was stored
            raise HTTPError(HTTPStatus.BAD_REQUEST, str(e)) from None
        out.update(state=app.state(), annotation=app.annotation(store.current if frame is None else frame))
        self._json(HTTPStatus.OK, out)
        if path == "/api/done":
            app.done_event.set()


def serve(
    frames: np.ndarray,
    refs: Sequence[Any],
    store_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    export_path: str | os.PathLike | None = None,
    stop_when_done: bool = True,
    open_browser: bool = False,
    ready: Callable[[AnnotationServer], None] | None = None,
    **kwargs: Any,
) -> Path:
    """Serve the annotation page until the annotator presses Done (or Ctrl-C); returns the exported HDF5 path.

    The export is written on the way out in any case (it is cheap and the journal keeps everything); the
    caller can tell unfinished work from ``load_annotations(path).annotated``. ``ready`` is called with the
    running server (its ``url``, ``port``) before waiting. ``kwargs`` go to :class:`AnnotationServer`
    (sigma, reference_size, combine, task, annotator, guidance, parts, context, display_size, fsync,
    export_attrs).
    """
    app = AnnotationServer(
        frames, refs, store_path, host, port, export_path=export_path, stop_when_done=stop_when_done, **kwargs
    )
    app.start()
    counts = app.store.counts()
    log.info(
        f"annotate: open {app.url} in a browser ({sum(c > 0 for c in counts)}/{len(counts)} frames annotated); "
        "Ctrl-C stops, nothing is lost",
    )
    try:
        if ready is not None:
            ready(app)
        if open_browser:
            webbrowser.open(app.url)
        while not (stop_when_done and app.done_event.is_set()):
            app.done_event.wait(0.5)
            if not stop_when_done:
                app.done_event.clear()
    except KeyboardInterrupt:
        log.info("annotate: interrupted; the clicks so far are saved")
    finally:
        app.shutdown()
    return app.store.export(app.export_path)  # again: changes after an earlier Done are included
