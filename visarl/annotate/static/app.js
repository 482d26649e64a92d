// visarl saliency annotation page. Plain JS, no build step, no network beyond this server.
//
// The server is the truth: every change goes into a queue and is POSTed from there, one at a time, in the
// order it was made; the page draws what the server acknowledged plus the changes still waiting (dashed).
// When the server is unreachable the changes wait in the queue (the status says how many) and are resent,
// with the same op_id, when it is back: the server applies a change it already has only once. Each page
// holds a session; if another tab takes the store, this one stops sending and offers to take it back.
"use strict";

const $ = (id) => document.getElementById(id);

const DOUBLE_MS = 40; // two presses closer than this (a bouncing mouse button) are one click
const DOUBLE_PX = 4; // ... when they are also this close, in screen pixels
const PICK_PX = 12; // Shift+click picks the nearest click within this many screen pixels
const MAX_ZOOM = 24;
const HEARTBEAT_MS = 2000; // how often the page checks the server and its session when idle
const RETRY_MAX_MS = 1000;
const PART_COLORS = { gripper: "#5ad1ff", object: "#ff6bd6", goal: "#74f08f" };
const REPEATABLE = new Set([
  "ArrowRight", "ArrowLeft", "ArrowUp", "ArrowDown", "PageUp", "PageDown", "+", "=", "-", "[", "]", ",", ".",
]);

const saved = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem(`visarl-annotate.${key}`);
      return v === null ? fallback : JSON.parse(v);
    } catch (e) {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(`visarl-annotate.${key}`, JSON.stringify(value));
    } catch (e) {
      /* private mode: settings last for this page only */
    }
  },
};

function randomId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b); // unlike randomUUID, available on plain http from another machine too
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

const S = {
  state: null, // GET /api/state (or the latest answer's)
  frame: 0, // frame being annotated
  ann: new Map(), // frame -> acknowledged annotation {clicks, ids, labels, empty, map, revision, ...}
  queue: [], // changes not acknowledged yet, oldest first: {path, body, kind, frame, tried, onDone}
  sending: false,
  offline: false,
  retryTimer: null,
  retryMs: 250,
  session: randomId(),
  seq: 0,
  lastGoto: null, // frame of the last goto queued: where the server's current frame ends up
  view: "loading", // "work" | "review" | "finished" | "superseded"
  selected: null, // id of the selected click on this frame
  label: "", // part label given to new clicks
  overlay: saved.get("overlay", true),
  opacity: saved.get("opacity", 0.55),
  peek: false,
  zoom: 1, // 1 = the frame fits the stage
  panX: 0,
  panY: 0, // stage px of the frame's top-left corner
  fit: 1, // stage px per frame px at zoom 1
  ctx: 0, // context offset on screen (0: the frame being annotated)
  cross: null, // keyboard cross {x, y} in frame px
  lastPress: null, // {t, sx, sy} of the last pointer press that clicked
  drag: null, // {kind: "move" | "pan", ...} while a pointer is down
  spaceHeld: false,
  keyboardFrame: false, // the frame has the focus from the keyboard (K or Tab): arrows move the cross
  lastInput: "pointer",
  returnFocus: null,
  toastTimer: null,
};

// ---------------------------------------------------------------------------------------------- colours

// Inferno-like colormap (warm = salient), as a 256-entry lookup table of [r, g, b, a] at the chosen opacity.
const INFERNO = [
  [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103], [188, 55, 84],
  [221, 81, 58], [243, 118, 27], [252, 165, 10], [246, 215, 70], [252, 255, 164],
];
let LUT = null;
function buildLut() {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    const t = 0.3 + 0.7 * v; // skip the near-black start: low saliency reads as a faint red, not a dark stain
    const p = t * (INFERNO.length - 1);
    const k = Math.min(Math.floor(p), INFERNO.length - 2);
    const f = p - k;
    for (let c = 0; c < 3; c++) lut[i * 4 + c] = INFERNO[k][c] * (1 - f) + INFERNO[k + 1][c] * f;
    // Opacity rises from 0 with the saliency, so a Gaussian's tail fades out instead of ending in a rim;
    // at the peak it is the slider's value, so the clicked object stays visible underneath.
    lut[i * 4 + 3] = 255 * S.opacity * Math.min(1, 1.05 * Math.pow(v, 0.55));
  }
  LUT = lut;
}

// ---------------------------------------------------------------------------------------------- server

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const r = await fetch(path, { cache: "no-store", ...opts });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(data.error || `HTTP ${r.status}`), { status: r.status, data });
  return data;
}

// Answers can arrive out of order (a heartbeat and a change); keep the newer one. Revisions only compare
// within one server instance: a restarted server counts again from its journal.
function newer(a, old) {
  return !old || a.instance !== old.instance || a.revision >= old.revision;
}

function keepAnnotation(a) {
  if (newer(a, S.ann.get(a.frame))) S.ann.set(a.frame, a);
}

function keepState(st) {
  if (newer(st, S.state)) S.state = st;
}

function accept(res) {
  if (res.state) keepState(res.state);
  if (res.annotation) keepAnnotation(res.annotation);
}

// Queue a change; the server gets it after every change queued before it.
function enqueue(path, body, kind, onDone) {
  const op = {
    path,
    kind,
    frame: body.frame,
    body: { ...body, session: S.session, op_id: `${S.session}-${++S.seq}` },
    tried: false,
    onDone,
  };
  S.queue.push(op);
  pump();
  render();
  return op;
}

async function pump() {
  if (S.sending || !S.queue.length || S.view === "superseded" || S.retryTimer) return;
  const op = S.queue[0];
  S.sending = true;
  op.tried = true; // from now on the server may hold it: it is resent (same op_id), never dropped here
  let res = null;
  let err = null;
  try {
    res = await api(op.path, op.body);
  } catch (e) {
    err = e;
  }
  S.sending = false;
  if (!err) {
    S.queue.shift();
    S.offline = false;
    S.retryMs = 250;
    accept(res);
    if (op.onDone) op.onDone(res);
  } else if (err.status === 409 && err.data && err.data.superseded) {
    superseded();
    return;
  } else if (err.status && err.status < 500) {
    S.queue.shift(); // refused: it changed nothing on the server
    toast(`not saved: ${err.message}`);
    refresh(op.frame);
  } else {
    // Unreachable (or shutting down): keep it at the head and try again soon.
    S.offline = true;
    S.retryTimer = setTimeout(() => {
      S.retryTimer = null;
      pump();
    }, S.retryMs);
    S.retryMs = Math.min(RETRY_MAX_MS, S.retryMs * 2);
  }
  render();
  pump();
}

async function refresh(frame) {
  try {
    if (frame !== undefined) keepAnnotation(await api(`/api/annotation/${frame}`));
    keepState(await api("/api/state"));
  } catch (e) {
    if (!e.status) S.offline = true;
  }
  render();
}

async function heartbeat() {
  if (S.view === "finished" || S.view === "superseded" || S.view === "loading") return;
  try {
    const st = await api("/api/state");
    if (st.session && st.session !== S.session) {
      superseded();
      return;
    }
    keepState(st);
    if (!S.queue.length) S.offline = false;
    const a = S.ann.get(S.frame);
    const stale = a && (a.instance !== st.instance || a.revision < st.revision);
    if (!a || (stale && !S.queue.length)) keepAnnotation(await api(`/api/annotation/${S.frame}`));
  } catch (e) {
    if (!e.status) S.offline = true;
  }
  render();
}

function superseded() {
  S.view = "superseded";
  const n = S.queue.length;
  $("superseded-text").textContent = n
    ? `${n} ${n === 1 ? "change" : "changes"} made here ${n === 1 ? "is" : "are"} not saved yet; ` +
      "taking the session back sends them."
    : "";
  hideScreens();
  $("superseded").classList.remove("hidden");
  $("btn-takeover").focus();
  render();
}

async function takeOver() {
  try {
    accept(await api("/api/session", { session: S.session }));
  } catch (e) {
    $("superseded-text").textContent = `The server did not answer (${e.message}); try again.`;
    return;
  }
  S.view = "work";
  hideScreens();
  S.ann.clear();
  S.lastGoto = null; // the other tab may have moved the server's current frame: resume on this one
  show(S.frame);
  pump();
}

// ---------------------------------------------------------------------------------------------- what to draw

// The frame as it will be once the queue is through: acknowledged clicks plus the waiting changes.
function view(frame) {
  const a = S.ann.get(frame);
  let clicks = a ? a.clicks.map(([x, y], k) => ({ x, y, id: a.ids[k], label: a.labels[k], pending: false })) : [];
  let empty = a ? a.empty : false;
  for (const op of S.queue) {
    if (op.frame !== frame) continue;
    const b = op.body;
    if (op.kind === "click") clicks.push({ x: b.x, y: b.y, id: null, label: b.label || "", pending: true });
    else if (op.kind === "delete") clicks = clicks.filter((c) => c.id !== b.id);
    else if (op.kind === "move") clicks = clicks.map((c) => (c.id === b.id ? { ...c, x: b.x, y: b.y, pending: true } : c));
    else if (op.kind === "label") clicks = clicks.map((c) => (c.id === b.id ? { ...c, label: b.label } : c));
    else if (op.kind === "clear") clicks = [];
    else if (op.kind === "empty") empty = b.value;
    // An undo cannot be foreseen exactly (it may bring back a cleared frame): the answer shows it.
  }
  return { clicks, empty, known: !!a };
}

function reviewed(i) {
  return S.state.counts[i] > 0 || S.state.empty[i];
}

// ---------------------------------------------------------------------------------------------- actions

function show(i) {
  const n = S.state.num_frames;
  i = Math.max(0, Math.min(n - 1, i));
  if (i !== S.frame) {
    S.selected = null;
    S.ctx = 0;
  }
  S.frame = i;
  if (S.lastGoto !== i) goto(i);
  setImage();
  if (!S.ann.has(i)) refresh(i);
  // Warm the browser cache so the next frame appears at once.
  for (const j of [i + 1, i + 2, i - 1]) if (j >= 0 && j < n) new Image().src = frameUrl(j);
  render();
  scrollStrip();
}

// Where the server resumes: one goto per frame change, in order with the clicks, and consecutive ones not
// yet sent collapse into one.
function goto(i) {
  S.lastGoto = i;
  const last = S.queue[S.queue.length - 1];
  if (last && last.kind === "goto" && !last.tried) {
    last.frame = last.body.frame = i;
    return;
  }
  enqueue("/api/goto", { frame: i }, "goto");
}

function frameUrl(i) {
  return `/api/frame/${i}.png?v=${S.state.frames_id}`;
}

function setImage() {
  const src = S.ctx === 0 ? frameUrl(S.frame) : `/api/context/${S.frame}/${S.ctx}.png?v=${S.state.frames_id}`;
  if (!$("frame").src.endsWith(src)) $("frame").src = src;
}

function next({ repeat = false } = {}) {
  if (S.frame < S.state.num_frames - 1) show(S.frame + 1);
  else if (!repeat) openReview(); // a held key runs through the frames but never on into finishing
}
function prev() {
  if (S.frame > 0) show(S.frame - 1);
}
function nextTodo() {
  const n = S.state.num_frames;
  for (let d = 1; d <= n; d++) {
    const j = (S.frame + d) % n;
    if (!reviewed(j) && !(j === S.frame && view(j).clicks.length)) return show(j);
  }
  toast("every frame has clicks or a mark");
}

function addClick(x, y) {
  if (S.ctx !== 0) return toast("a neighbouring step, read-only: Esc goes back to the frame");
  const f = S.frame;
  if (view(f).empty) enqueue("/api/empty", { frame: f, value: false }, "empty");
  const body = { frame: f, x, y };
  if (S.label) body.label = S.label;
  enqueue("/api/click", body, "click");
}

function undo() {
  const f = S.frame;
  // The frame's last change, if it has not been sent, is simply taken back out of the queue.
  for (let k = S.queue.length - 1; k >= 0; k--) {
    const op = S.queue[k];
    if (op.frame !== f || op.kind === "goto") continue;
    if (!op.tried) {
      S.queue.splice(k, 1);
      S.selected = null;
      render();
      return;
    }
    break;
  }
  const a = S.ann.get(f);
  const waiting = S.queue.some((op) => op.frame === f && op.kind !== "goto");
  if ((a && a.can_undo) || waiting) enqueue("/api/undo", { frame: f }, "undo");
  S.selected = null;
}

function clearFrame() {
  if (view(S.frame).clicks.length) enqueue("/api/clear", { frame: S.frame }, "clear");
  S.selected = null;
}

function toggleEmpty() {
  const v = view(S.frame);
  if (!v.empty && v.clicks.length) enqueue("/api/clear", { frame: S.frame }, "clear");
  enqueue("/api/empty", { frame: S.frame, value: !v.empty }, "empty");
  S.selected = null;
}

function selectedClick() {
  return view(S.frame).clicks.find((c) => c.id !== null && c.id === S.selected) || null;
}

function selectStep(d) {
  const cs = view(S.frame).clicks.filter((c) => c.id !== null);
  if (!cs.length) return toast("no saved click to select on this frame");
  let k = cs.findIndex((c) => c.id === S.selected);
  k = k < 0 ? (d > 0 ? 0 : cs.length - 1) : (k + d + cs.length) % cs.length;
  S.selected = cs[k].id;
  S.cross = { x: cs[k].x, y: cs[k].y };
  render();
}

function deleteSelected() {
  const c = selectedClick();
  if (!c) return toast("select a click first (Shift+click, or Q / E)");
  enqueue("/api/delete", { frame: S.frame, id: c.id }, "delete");
  S.selected = null;
}

function moveSelected(x, y) {
  const c = selectedClick();
  if (!c) return toast("select a click first (Shift+click, or Q / E)");
  enqueue("/api/move", { frame: S.frame, id: c.id, x, y }, "move");
}

function pressLabel(k) {
  const parts = S.state.parts;
  const label = k === 0 ? "" : parts[k - 1];
  if (label === undefined) return;
  const c = selectedClick();
  if (c) {
    if (c.label !== label) enqueue("/api/label", { frame: S.frame, id: c.id, label }, "label");
    return;
  }
  S.label = S.label === label ? "" : label;
  render();
}

function setOverlay(on) {
  S.overlay = on;
  saved.set("overlay", on);
  render();
}

function setOpacity(v) {
  S.opacity = Math.max(0, Math.min(1, Math.round(v * 20) / 20));
  saved.set("opacity", S.opacity);
  buildLut();
  render();
}

function scrubContext(d) {
  const offsets = S.state.context ? S.state.context[S.frame] : [];
  const candidates = offsets.filter((o) => (d > 0 ? o > S.ctx : o < S.ctx));
  if (!candidates.length) return toast(offsets.length ? "no further step of this episode" : "no context frames");
  S.ctx = d > 0 ? Math.min(...candidates) : Math.max(...candidates);
  setImage();
  render();
}

function leaveContext() {
  S.ctx = 0;
  setImage();
  render();
}

// ---------------------------------------------------------------------------------------------- zoom and pan

function fitView() {
  const st = S.state;
  const el = $("stage");
  const sw = el.clientWidth;
  const sh = el.clientHeight;
  S.fit = Math.max(0.01, Math.min(sw / st.width, sh / st.height, st.display_size / Math.max(st.width, st.height)));
  const img = $("frame");
  img.style.width = `${st.width}px`;
  img.style.height = `${st.height}px`;
  const dpr = window.devicePixelRatio || 1;
  const cv = $("overlay");
  cv.width = Math.round(sw * dpr);
  cv.height = Math.round(sh * dpr);
  clampPan();
  render();
}

function scale() {
  return S.fit * S.zoom;
}

function clampPan() {
  const el = $("stage");
  const sw = el.clientWidth;
  const sh = el.clientHeight;
  const iw = S.state.width * scale();
  const ih = S.state.height * scale();
  S.panX = iw <= sw ? (sw - iw) / 2 : Math.min(0, Math.max(sw - iw, S.panX));
  S.panY = ih <= sh ? (sh - ih) / 2 : Math.min(0, Math.max(sh - ih, S.panY));
}

function zoomAt(factor, sx, sy) {
  const z = Math.max(1, Math.min(MAX_ZOOM, S.zoom * factor));
  const ux = (sx - S.panX) / scale();
  const uy = (sy - S.panY) / scale();
  S.zoom = z;
  S.panX = sx - ux * scale();
  S.panY = sy - uy * scale();
  clampPan();
  render();
}

function zoomCentre(factor) {
  const el = $("stage");
  zoomAt(factor, el.clientWidth / 2, el.clientHeight / 2);
}

function pan(dx, dy) {
  S.panX += dx;
  S.panY += dy;
  clampPan();
  render();
}

// Stage pixels <-> frame pixels (x = column, y = row, pixel centres at integers; see visarl/annotate/maps.py).
function toFrame(sx, sy) {
  return { x: (sx - S.panX) / scale() - 0.5, y: (sy - S.panY) / scale() - 0.5 };
}
function toStage(x, y) {
  return { sx: S.panX + (x + 0.5) * scale(), sy: S.panY + (y + 0.5) * scale() };
}
function inFrame(p) {
  const { width: W, height: H } = S.state;
  return p.x >= -0.5 && p.x <= W - 0.5 && p.y >= -0.5 && p.y <= H - 0.5;
}
function stagePoint(e) {
  const r = $("stage").getBoundingClientRect();
  return { sx: e.clientX - r.left, sy: e.clientY - r.top };
}

// ---------------------------------------------------------------------------------------------- pointer

function nearestClick(sx, sy) {
  let best = null;
  let bestD = PICK_PX;
  for (const c of view(S.frame).clicks) {
    if (c.id === null) continue;
    const p = toStage(c.x, c.y);
    const d = Math.hypot(p.sx - sx, p.sy - sy);
    if (d <= bestD) {
      best = c;
      bestD = d;
    }
  }
  return best;
}

function onPointerDown(e) {
  if (S.view !== "work") return;
  const { sx, sy } = stagePoint(e);
  const stage = $("stage");
  if (e.button === 1 || e.button === 2 || (e.button === 0 && S.spaceHeld)) {
    e.preventDefault();
    S.drag = { kind: "pan", sx, sy, panX: S.panX, panY: S.panY };
    stage.setPointerCapture(e.pointerId);
    stage.classList.add("panning");
    return;
  }
  if (e.button !== 0) return;
  e.preventDefault();
  if (e.shiftKey) {
    const c = nearestClick(sx, sy);
    S.selected = c ? c.id : null;
    if (c) {
      S.drag = { kind: "move", id: c.id, sx, sy, moved: false };
      stage.setPointerCapture(e.pointerId);
    }
    render();
    return;
  }
  const last = S.lastPress;
  if (last && e.timeStamp - last.t < DOUBLE_MS && Math.hypot(sx - last.sx, sy - last.sy) < DOUBLE_PX) return;
  S.lastPress = { t: e.timeStamp, sx, sy };
  const p = toFrame(sx, sy);
  if (!inFrame(p)) return;
  S.selected = null;
  addClick(p.x, p.y);
}

function onPointerMove(e) {
  const { sx, sy } = stagePoint(e);
  const cur = $("cursor");
  cur.style.left = `${sx}px`;
  cur.style.top = `${sy}px`;
  const d = S.drag;
  if (!d) return;
  if (d.kind === "pan") {
    S.panX = d.panX + (sx - d.sx);
    S.panY = d.panY + (sy - d.sy);
    clampPan();
  } else {
    d.moved = d.moved || Math.hypot(sx - d.sx, sy - d.sy) > 2;
    d.at = toFrame(sx, sy);
  }
  render();
}

function onPointerUp() {
  const d = S.drag;
  S.drag = null;
  $("stage").classList.remove("panning");
  if (d && d.kind === "move" && d.moved && d.at) {
    const { width: W, height: H } = S.state;
    moveSelected(clamp(d.at.x, -0.5, W - 0.5), clamp(d.at.y, -0.5, H - 0.5));
  }
  render();
}

function onWheel(e) {
  e.preventDefault();
  const { sx, sy } = stagePoint(e);
  zoomAt(Math.exp(-e.deltaY * 0.0015), sx, sy);
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

// ---------------------------------------------------------------------------------------------- review / done

function openReview() {
  if (S.view !== "work") return;
  const n = S.state.num_frames;
  const missing = [];
  for (let i = 0; i < n; i++) if (!reviewed(i)) missing.push(i);
  const total = S.state.counts.reduce((a, b) => a + b, 0);
  const marked = S.state.empty.filter((e) => e).length;
  $("review-text").textContent = missing.length
    ? `${n - missing.length} of ${n} frames are done (${total} clicks` +
      `${marked ? `, ${marked} marked "nothing salient"` : ""}). ` +
      `${missing.length === 1 ? "This frame has" : "These frames have"} neither clicks nor a mark:`
    : `Every frame is done: ${total} clicks on ${n} frames${marked ? `, ${marked} marked "nothing salient"` : ""}.`;
  const box = $("review-missing");
  box.replaceChildren(...missing.map((i) => thumb(i, () => {
    closeReview();
    show(i);
  })));
  S.view = "review";
  S.returnFocus = document.activeElement;
  $("btn-done").disabled = false;
  $("review").classList.remove("hidden");
  $("btn-back").focus(); // the safe default: a second Enter goes back, it never exports
  render();
}

function closeReview() {
  const waiting = S.queue.findIndex((op) => op.kind === "done" && !op.tried);
  if (waiting >= 0) S.queue.splice(waiting, 1);
  $("review").classList.add("hidden");
  S.view = "work";
  const back = S.returnFocus;
  if (back && back !== document.body && document.contains(back)) back.focus();
  else document.activeElement.blur();
  render();
}

// Export only from the review screen's own button, pressed on purpose (a click, or Enter / Space on it).
function confirmFinish() {
  if (S.view !== "review") return;
  $("btn-done").disabled = true;
  const n = S.queue.length;
  $("review-text").textContent = n ? `Sending ${n} waiting changes, then exporting…` : "Exporting…";
  enqueue("/api/done", {}, "done", finished);
}

function finished(res) {
  const st = res.state;
  $("finished-text").textContent =
    `${st.counts.filter((c) => c > 0).length} frames and ${st.counts.reduce((a, b) => a + b, 0)} clicks exported to`;
  $("finished-path").textContent = res.exported;
  const stops = st.stop_when_done;
  $("finished-next").textContent = stops ? "The annotation server has stopped; this tab can be closed." : "";
  $("btn-reopen").classList.toggle("hidden", stops);
  hideScreens();
  $("finished").classList.remove("hidden");
  S.view = "finished";
  render();
}

function hideScreens() {
  for (const id of ["review", "finished", "superseded"]) $(id).classList.add("hidden");
}

// ---------------------------------------------------------------------------------------------- drawing

function render() {
  if (!S.state) return;
  const st = S.state;
  const n = st.num_frames;
  let done = 0;
  for (let i = 0; i < n; i++) if (reviewed(i)) done++;
  $("n-done").textContent = done;
  $("n-total").textContent = n;
  $("progress-fill").style.width = `${(100 * done) / n}%`;
  $("frame-no").textContent = S.frame + 1;
  $("frame-total").textContent = n;
  const [shard, row] = st.refs[S.frame];
  $("where").textContent = st.episode
    ? `episode ${st.episode[S.frame]} · step ${st.step[S.frame] + S.ctx}`
    : `${shard} · row ${row}`;
  $("where").title = `replay shard ${shard}, row ${row}`;
  const v = view(S.frame);
  const c = v.clicks.length;
  $("click-count").textContent = c;
  $("click-word").textContent = c === 1 ? "click" : "clicks";
  $("zoom-text").textContent = S.zoom > 1.001 ? `${Math.round(S.zoom * 100)}%` : "";
  $("btn-prev").disabled = S.frame === 0;
  $("btn-next").textContent = S.frame === n - 1 ? "Review →" : "Next →";
  const a = S.ann.get(S.frame);
  $("btn-undo").disabled = !((a && a.can_undo) || S.queue.some((op) => op.frame === S.frame && op.kind !== "goto"));
  $("btn-clear").disabled = !c;
  $("btn-empty").classList.toggle("on", v.empty);
  $("btn-overlay").classList.toggle("on", S.overlay);
  $("opacity").value = Math.round(S.opacity * 100);
  $("opacity-text").textContent = `${Math.round(S.opacity * 100)}%`;
  const offsets = st.context ? st.context[S.frame] : [];
  $("btn-ctx-prev").disabled = !offsets.some((o) => o < S.ctx);
  $("btn-ctx-next").disabled = !offsets.some((o) => o > S.ctx);
  for (const b of $("parts").children) b.classList.toggle("on", b.dataset.part === S.label);
  renderBanner(v);
  renderStrip();
  renderOverlay(v);
  setSaved();
  const img = $("frame");
  img.style.transform = `translate(${S.panX}px, ${S.panY}px) scale(${scale()})`;
  const r = Math.max(3, st.frame_sigma * scale());
  const cur = $("cursor");
  cur.style.width = cur.style.height = `${2 * r}px`;
  cur.style.margin = `${-r}px 0 0 ${-r}px`;
  $("stage").classList.toggle("context", S.ctx !== 0);
}

function renderBanner(v) {
  const el = $("banner");
  let text = "";
  let kind = "";
  if (S.ctx !== 0) {
    const n = Math.abs(S.ctx);
    text = `${n} ${n === 1 ? "step" : "steps"} ${S.ctx > 0 ? "later" : "earlier"} in this episode · read-only · Esc returns`;
    kind = "context";
  } else if (S.keyboardFrame && S.view === "work") {
    text = "Keyboard: arrows move the cross (Shift: faster), Enter or Space clicks, Esc leaves";
    kind = "kbd";
  } else if (v.empty) {
    text = "Marked: nothing salient here (X removes the mark)";
    kind = "empty";
  }
  el.textContent = text;
  el.className = `banner ${kind}${text ? "" : " hidden"}`;
}

function setSaved() {
  const el = $("saved");
  const n = S.queue.length;
  const waiting = `${n} ${n === 1 ? "change" : "changes"} waiting`;
  let cls = "ok";
  let text = "saved";
  if (S.offline) {
    cls = "err";
    text = n ? `${waiting} · server unreachable, retrying` : "server unreachable, retrying";
  } else if (n) {
    cls = "busy";
    text = n > 1 ? `saving… (${waiting})` : "saving…";
  }
  el.className = `saved ${cls}`;
  $("saved-text").textContent = text;
}

function renderOverlay(v) {
  const cv = $("overlay");
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  const dpr = cv.width / Math.max(1, cv.clientWidth);
  const a = S.ann.get(S.frame);
  if (S.ctx !== 0) return; // the map belongs to the annotated frame, not to its neighbours
  const showHeat = S.overlay && !S.peek;
  if (showHeat && a) {
    // Heat: the server's map at frame resolution, coloured, then scaled up smoothly.
    const { width: W, height: H } = a;
    const bytes = Uint8Array.from(atob(a.map), (ch) => ch.charCodeAt(0));
    const img = new ImageData(W, H);
    for (let i = 0; i < bytes.length; i++) img.data.set(LUT.subarray(bytes[i] * 4, bytes[i] * 4 + 4), i * 4);
    const off = new OffscreenCanvas(W, H);
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(off, S.panX * dpr, S.panY * dpr, W * scale() * dpr, H * scale() * dpr);
  }
  if (!S.peek) {
    const drag = S.drag && S.drag.kind === "move" && S.drag.moved ? S.drag : null;
    v.clicks.forEach((c, k) => {
      const at = drag && c.id === drag.id && drag.at ? drag.at : c;
      const p = toStage(at.x, at.y);
      marker(ctx, p.sx * dpr, p.sy * dpr, dpr, c, k === v.clicks.length - 1, c.id !== null && c.id === S.selected);
    });
  }
  if (S.cross && S.keyboardFrame) {
    const p = toStage(S.cross.x, S.cross.y);
    const x = p.sx * dpr;
    const y = p.sy * dpr;
    const r = 9 * dpr;
    ctx.setLineDash([]);
    for (const [w, col] of [[3.5, "rgba(0,0,0,0.6)"], [1.5, "#ffae34"]]) {
      ctx.lineWidth = w * dpr;
      ctx.strokeStyle = col;
      ctx.beginPath();
      ctx.moveTo(x - r, y);
      ctx.lineTo(x - 3 * dpr, y);
      ctx.moveTo(x + 3 * dpr, y);
      ctx.lineTo(x + r, y);
      ctx.moveTo(x, y - r);
      ctx.lineTo(x, y - 3 * dpr);
      ctx.moveTo(x, y + 3 * dpr);
      ctx.lineTo(x, y + r);
      ctx.stroke();
    }
  }
}

// Markers: saved clicks solid, waiting ones dashed; the colour is the part label, the selected one is larger.
function marker(ctx, cx, cy, dpr, c, last, selected) {
  const r = (selected ? 7.5 : 5) * dpr;
  ctx.setLineDash(c.pending ? [3 * dpr, 3 * dpr] : []);
  ctx.lineWidth = 3.5 * dpr;
  ctx.strokeStyle = "rgba(0,0,0,0.55)";
  ctx.beginPath();
  ctx.arc(cx, cy, r, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.lineWidth = (selected ? 2.4 : 1.6) * dpr;
  ctx.strokeStyle = selected ? "#ffae34" : PART_COLORS[c.label] || (last ? "#ffffff" : "rgba(255,255,255,0.85)");
  ctx.beginPath();
  ctx.arc(cx, cy, r, 0, 2 * Math.PI);
  ctx.stroke();
  ctx.setLineDash([]);
}

function thumb(i, onclick) {
  const b = document.createElement("button");
  b.className = "thumb";
  b.title = `frame ${i + 1}`;
  const im = document.createElement("img");
  im.src = frameUrl(i);
  im.alt = `frame ${i + 1}`;
  im.draggable = false;
  const num = document.createElement("span");
  num.className = "num";
  num.textContent = i + 1;
  const badge = document.createElement("span");
  badge.className = "badge";
  b.append(im, num, badge);
  b.addEventListener("click", onclick);
  return b;
}

let stripBuilt = false;
function renderStrip() {
  const strip = $("strip");
  if (!stripBuilt) {
    strip.replaceChildren(...S.state.counts.map((_, i) => thumb(i, () => show(i))));
    stripBuilt = true;
  }
  S.state.counts.forEach((c, i) => {
    const b = strip.children[i];
    const empty = S.state.empty[i];
    b.classList.toggle("has", c > 0);
    b.classList.toggle("empty", empty);
    b.classList.toggle("current", i === S.frame);
    b.lastChild.textContent = c > 0 ? c : empty ? "∅" : "";
    b.title = `frame ${i + 1}: ${empty ? "nothing salient" : `${c} ${c === 1 ? "click" : "clicks"}`}`;
  });
}

function scrollStrip() {
  const b = $("strip").children[S.frame];
  if (b) b.scrollIntoView({ block: "nearest", inline: "center" });
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.classList.remove("hidden");
  clearTimeout(S.toastTimer);
  S.toastTimer = setTimeout(() => el.classList.add("hidden"), 2500);
}

// ---------------------------------------------------------------------------------------------- keys

function focusables(root) {
  return [...root.querySelectorAll("button:not(:disabled)")].filter((b) => b.offsetParent !== null);
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const control = e.target instanceof Element ? e.target.closest("button, input, select, textarea, a[href]") : null;
  if (control && (k === "Enter" || k === " ")) {
    // A focused control does what it says on Enter and Space; a held key never presses it again.
    if (e.repeat) e.preventDefault();
    return;
  }
  if (control && control.type === "range" && /^(Arrow|Page|Home|End)/.test(k)) return;
  if (e.repeat && !REPEATABLE.has(k)) {
    if (k === "Enter" || k === " " || k === "Tab") e.preventDefault();
    return;
  }
  if (S.view === "review") {
    if (k === "Escape") closeReview();
    else if (k === "Tab") {
      // Keep the focus inside the dialog.
      const f = focusables($("review"));
      const at = f.indexOf(document.activeElement);
      const to = e.shiftKey ? (at <= 0 ? f.length - 1 : at - 1) : (at + 1) % f.length;
      f[to].focus();
    } else if (k !== "Enter" && k !== " ") return;
    e.preventDefault();
    return;
  }
  if (S.view !== "work") return;
  if (S.keyboardFrame && stageKey(e, k)) {
    e.preventDefault();
    return;
  }
  if (globalKey(e, k)) e.preventDefault();
}

// Keys of the focused frame: a keyboard cross to click with. Returns whether the key was used.
function stageKey(e, k) {
  const step = e.shiftKey ? 4 : 1;
  const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[k];
  const { width: W, height: H } = S.state;
  if (!S.cross) S.cross = { x: Math.floor(W / 2), y: Math.floor(H / 2) };
  if (d) {
    S.cross = { x: clamp(S.cross.x + d[0], -0.5, W - 0.5), y: clamp(S.cross.y + d[1], -0.5, H - 0.5) };
    keepCrossInView();
    render();
    return true;
  }
  if (k === "Enter" || k === " ") {
    addClick(S.cross.x, S.cross.y);
    return true;
  }
  if (k === "m") {
    moveSelected(S.cross.x, S.cross.y);
    return true;
  }
  if (k === "Escape" && S.ctx === 0 && S.selected === null) {
    $("stage").blur();
    render();
    return true;
  }
  return false;
}

function keepCrossInView() {
  const el = $("stage");
  const p = toStage(S.cross.x, S.cross.y);
  const m = 20;
  if (p.sx < m) S.panX += m - p.sx;
  if (p.sx > el.clientWidth - m) S.panX -= p.sx - (el.clientWidth - m);
  if (p.sy < m) S.panY += m - p.sy;
  if (p.sy > el.clientHeight - m) S.panY -= p.sy - (el.clientHeight - m);
  clampPan();
}

function globalKey(e, k) {
  if (e.shiftKey && k.startsWith("Arrow")) {
    const el = $("stage");
    const dx = { ArrowLeft: 1, ArrowRight: -1 }[k] || 0;
    const dy = { ArrowUp: 1, ArrowDown: -1 }[k] || 0;
    pan(dx * el.clientWidth * 0.15, dy * el.clientHeight * 0.15);
    return true;
  }
  switch (k) {
    case "ArrowRight": case "d": case "n": case "PageDown": case "Enter":
      next({ repeat: e.repeat });
      return true;
    case "ArrowLeft": case "a": case "p": case "PageUp":
      prev();
      return true;
    case "Home":
      show(0);
      return true;
    case "End":
      show(S.state.num_frames - 1);
      return true;
    case "u": nextTodo(); return true;
    case "z": case "Backspace": undo(); render(); return true;
    case "c": clearFrame(); render(); return true;
    case "x": toggleEmpty(); render(); return true;
    case "Delete": deleteSelected(); render(); return true;
    case "q": selectStep(-1); return true;
    case "e": selectStep(1); return true;
    case "k":
      S.lastInput = "key";
      $("stage").focus();
      S.keyboardFrame = true;
      render();
      return true;
    case "o": setOverlay(!S.overlay); return true;
    case "h":
      S.peek = true;
      render();
      return true;
    case "[": setOpacity(S.opacity - 0.1); return true;
    case "]": setOpacity(S.opacity + 0.1); return true;
    case "+": case "=": zoomCentre(1.25); return true;
    case "-": zoomCentre(1 / 1.25); return true;
    case "f":
      S.zoom = 1;
      clampPan();
      render();
      return true;
    case ",": scrubContext(-1); return true;
    case ".": scrubContext(1); return true;
    case " ":
      S.spaceHeld = true; // Space + drag pans
      return true;
    case "Escape":
      if (S.ctx !== 0) leaveContext();
      else if (S.selected !== null) {
        S.selected = null;
        render();
      } else return false;
      return true;
    default:
      if (/^[0-9]$/.test(k)) {
        pressLabel(Number(k));
        return true;
      }
      return false;
  }
}

function onKeyUp(e) {
  if (e.key === "h" || e.key === "H") {
    S.peek = false;
    render();
  }
  if (e.key === " ") S.spaceHeld = false;
}

// ---------------------------------------------------------------------------------------------- start

function buildParts() {
  const parts = S.state.parts;
  $("parts").replaceChildren(...parts.map((p, k) => {
    const b = document.createElement("button");
    b.className = "part";
    b.dataset.part = p;
    b.title = `label the next clicks (or the selected one) "${p}" (${k + 1}); again to stop`;
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = PART_COLORS[p] || "#fff";
    b.append(sw, `${k + 1} ${p}`);
    b.addEventListener("click", () => pressLabel(k + 1));
    return b;
  }));
}

function wire() {
  const stage = $("stage");
  stage.addEventListener("pointerdown", onPointerDown);
  stage.addEventListener("pointermove", onPointerMove);
  stage.addEventListener("pointerup", onPointerUp);
  stage.addEventListener("pointercancel", onPointerUp);
  stage.addEventListener("wheel", onWheel, { passive: false });
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  // A frame focused from the keyboard gets the cross; one focused by a mouse click keeps arrows for frames.
  document.addEventListener("keydown", () => { S.lastInput = "key"; }, true);
  document.addEventListener("pointerdown", () => { S.lastInput = "pointer"; }, true);
  stage.addEventListener("focus", () => {
    S.keyboardFrame = S.lastInput === "key";
    const { width: W, height: H } = S.state;
    if (!S.cross) S.cross = { x: Math.floor(W / 2), y: Math.floor(H / 2) };
    render();
  });
  stage.addEventListener("blur", () => {
    S.keyboardFrame = false;
    render();
  });
  stage.addEventListener("pointerdown", () => {
    S.keyboardFrame = false;
  });
  const on = (id, fn) => $(id).addEventListener("click", fn);
  on("btn-prev", prev);
  on("btn-next", () => next());
  on("btn-undo", () => { undo(); render(); });
  on("btn-clear", () => { clearFrame(); render(); });
  on("btn-empty", () => { toggleEmpty(); render(); });
  on("btn-unannotated", nextTodo);
  on("btn-overlay", () => setOverlay(!S.overlay));
  on("btn-zoom-in", () => zoomCentre(1.25));
  on("btn-zoom-out", () => zoomCentre(1 / 1.25));
  on("btn-fit", () => { S.zoom = 1; clampPan(); render(); });
  on("btn-ctx-prev", () => scrubContext(-1));
  on("btn-ctx-next", () => scrubContext(1));
  on("btn-finish", openReview);
  on("btn-back", closeReview);
  on("btn-done", confirmFinish);
  on("btn-reopen", () => { hideScreens(); S.view = "work"; render(); });
  on("btn-takeover", takeOver);
  const peek = $("btn-peek");
  peek.addEventListener("pointerdown", () => { S.peek = true; render(); });
  for (const ev of ["pointerup", "pointerleave", "pointercancel"]) {
    peek.addEventListener(ev, () => { S.peek = false; render(); });
  }
  $("opacity").addEventListener("input", (e) => setOpacity(Number(e.target.value) / 100));
  document.addEventListener("keydown", onKey);
  document.addEventListener("keyup", onKeyUp);
  window.addEventListener("blur", () => { S.peek = false; S.spaceHeld = false; render(); });
  // Buttons pressed with the mouse keep no focus, so a later Enter or Space never re-presses them by accident.
  document.querySelectorAll("button").forEach((b) => b.addEventListener("mouseup", () => b.blur()));
  window.addEventListener("beforeunload", (e) => {
    if (S.queue.length) {
      e.preventDefault(); // the browser asks before closing: these changes would be lost
      e.returnValue = "";
    }
  });
  new ResizeObserver(() => fitView()).observe(stage);
  setInterval(heartbeat, HEARTBEAT_MS);
}

async function main() {
  buildLut();
  let first = null;
  while (!first) {
    try {
      first = await api("/api/session", { session: S.session });
    } catch (e) {
      $("saved").className = "saved err";
      $("saved-text").textContent = "cannot reach the annotation server, retrying";
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  S.state = first.state;
  const st = S.state;
  $("task").textContent = st.task || "";
  $("guidance").textContent = st.guidance || "Click what matters for the task.";
  $("sigma-text").textContent =
    `σ = ${st.frame_sigma.toFixed(1)} px on this ${st.width}×${st.height} frame, ` +
    (st.reference_size ? `${st.sigma} px at ${st.reference_size} px` : "as configured");
  document.title = `visarl · ${st.task || "saliency annotation"}`;
  buildParts();
  S.view = "work";
  S.frame = st.current;
  S.lastGoto = st.current;
  keepAnnotation(first.annotation);
  wire();
  fitView();
  show(st.current);
  document.body.classList.add("ready");
}

main();
