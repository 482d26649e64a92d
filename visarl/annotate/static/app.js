// visarl saliency annotation page. Plain JS, no build step, no network beyond this server.
// The server is the truth: every change is POSTed at once, in order, and the page draws what it acknowledged.
"use strict";

const $ = (id) => document.getElementById(id);

const S = {
  state: null, // GET /api/state
  frame: 0, // frame on screen
  ann: new Map(), // frame -> acknowledged annotation {clicks, map, can_undo, ...}
  pending: [], // clicks sent but not yet acknowledged: [{frame, x, y}]
  overlay: true,
  inflight: 0,
  failed: false,
  view: "work", // "work" | "review" | "finished"
  queue: Promise.resolve(),
  scale: 8,
};

// Inferno-like colormap (warm = salient), as a 256-entry lookup table of [r, g, b].
const INFERNO = [
  [0, 0, 4], [22, 11, 57], [66, 10, 104], [106, 23, 110], [147, 38, 103], [188, 55, 84],
  [221, 81, 58], [243, 118, 27], [252, 165, 10], [246, 215, 70], [252, 255, 164],
];
const LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    const v = i / 255;
    const t = 0.3 + 0.7 * v; // skip the near-black start: low saliency reads as a faint red, not a dark stain
    const p = t * (INFERNO.length - 1);
    const k = Math.min(Math.floor(p), INFERNO.length - 2);
    const f = p - k;
    for (let c = 0; c < 3; c++) lut[i * 4 + c] = INFERNO[k][c] * (1 - f) + INFERNO[k + 1][c] * f;
    // Opacity rises from 0 with the saliency, so a Gaussian's tail fades out instead of ending in a rim.
    lut[i * 4 + 3] = 255 * 0.88 * Math.min(1, 1.05 * Math.pow(v, 0.55));
  }
  return lut;
})();

// ---------------------------------------------------------------------------------------------- server

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const r = await fetch(path, { cache: "no-store", ...opts });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(data.error || `HTTP ${r.status}`), { status: r.status });
  return data;
}

// Changes go one after another so the server applies them in the order they were made.
// `settle` runs when the answer (or failure) arrives, before the page redraws.
function send(path, body, settle) {
  S.inflight++;
  setSaved();
  const p = S.queue.then(() => api(path, body));
  S.queue = p.then(
    (res) => {
      S.inflight--;
      S.failed = false;
      if (settle) settle();
      accept(res);
    },
    (err) => {
      S.inflight--;
      if (settle) settle();
      if (err.status && err.status < 500) {
        console.warn("refused:", err.message); // a 4xx changed nothing; the page just resyncs
        S.failed = false;
      } else {
        S.failed = true;
        retryLater();
      }
      resync();
    },
  );
  return p;
}

function accept(res) {
  if (res.state) S.state = res.state;
  if (res.annotation) S.ann.set(res.annotation.frame, res.annotation);
  renderAll();
}

let retryTimer = null;
function retryLater() {
  if (retryTimer || S.view === "finished") return;
  retryTimer = setTimeout(async () => {
    retryTimer = null;
    try {
      S.state = await api("/api/state");
      S.failed = false;
      await resync();
    } catch (e) {
      retryLater();
    }
  }, 2000);
}

async function resync() {
  S.pending = [];
  try {
    S.ann.set(S.frame, await api(`/api/annotation/${S.frame}`));
    S.state = await api("/api/state");
  } catch (e) {
    S.failed = true;
    retryLater();
  }
  renderAll();
}

// ---------------------------------------------------------------------------------------------- actions

async function show(i, { post = true } = {}) {
  const n = S.state.num_frames;
  i = Math.max(0, Math.min(n - 1, i));
  S.frame = i;
  $("frame").src = frameUrl(i);
  if (post && i !== S.state.current) send("/api/goto", { frame: i });
  if (!S.ann.has(i)) {
    try {
      S.ann.set(i, await api(`/api/annotation/${i}`));
    } catch (e) {
      S.failed = true;
      retryLater();
    }
  }
  // Warm the browser cache so the next frame appears at once.
  for (const j of [i + 1, i + 2, i - 1]) if (j >= 0 && j < n) new Image().src = frameUrl(j);
  renderAll();
  scrollStrip();
}

function frameUrl(i) {
  return `/api/frame/${i}.png?v=${S.state.frames_id}`;
}

function next() {
  if (S.frame < S.state.num_frames - 1) show(S.frame + 1);
  else openReview();
}
function prev() {
  if (S.frame > 0) show(S.frame - 1);
}
function undo() {
  const a = S.ann.get(S.frame);
  if (a && (a.can_undo || S.pending.length)) send("/api/undo", { frame: S.frame });
}
function clearFrame() {
  const a = S.ann.get(S.frame);
  if (a && a.clicks.length) send("/api/clear", { frame: S.frame });
}
function toggleOverlay() {
  S.overlay = !S.overlay;
  renderAll();
}

function onPointerDown(e) {
  if (e.button !== 0 || S.view !== "work") return;
  e.preventDefault();
  const r = $("stage").getBoundingClientRect();
  const { width: W, height: H } = S.state;
  // Display position -> frame pixels, pixel centres at integers (see visarl/annotate/maps.py).
  const x = clamp(((e.clientX - r.left) / r.width) * W - 0.5, -0.5, W - 0.5);
  const y = clamp(((e.clientY - r.top) / r.height) * H - 0.5, -0.5, H - 0.5);
  const frame = S.frame;
  const pend = { frame, x, y };
  S.pending.push(pend);
  renderAll();
  send("/api/click", { frame, x, y }, () => {
    S.pending = S.pending.filter((p) => p !== pend);
  });
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

// ---------------------------------------------------------------------------------------------- review / done

function openReview() {
  const counts = S.state.counts;
  const missing = counts.map((c, i) => [c, i]).filter(([c]) => c === 0).map(([, i]) => i);
  const total = counts.reduce((a, b) => a + b, 0);
  $("review-text").textContent = missing.length
    ? `${counts.length - missing.length} of ${counts.length} frames have clicks (${total} in all). ` +
      `${missing.length === 1 ? "This frame has" : "These frames have"} none yet:`
    : `Every frame has clicks: ${total} clicks on ${counts.length} frames.`;
  const box = $("review-missing");
  box.replaceChildren(...missing.map((i) => thumb(i, () => { closeScreens(); show(i); })));
  S.view = "review";
  $("review").classList.remove("hidden");
  $("btn-done").focus();
}

async function finish() {
  try {
    const res = await send("/api/done", {});
    const counts = S.state.counts;
    $("finished-text").textContent =
      `${counts.filter((c) => c > 0).length} frames and ${counts.reduce((a, b) => a + b, 0)} clicks exported to`;
    $("finished-path").textContent = res.exported;
    const stops = S.state.stop_when_done;
    $("finished-next").textContent = stops ? "The annotation server has stopped; this tab can be closed." : "";
    $("btn-reopen").classList.toggle("hidden", stops);
    $("review").classList.add("hidden");
    $("finished").classList.remove("hidden");
    S.view = "finished";
  } catch (e) {
    $("review-text").textContent = `Export failed: ${e.message}`;
  }
}

function closeScreens() {
  $("review").classList.add("hidden");
  $("finished").classList.add("hidden");
  S.view = "work";
}

// ---------------------------------------------------------------------------------------------- drawing

function renderAll() {
  if (!S.state) return;
  const st = S.state;
  const counts = st.counts;
  const done = counts.filter((c) => c > 0).length;
  $("n-done").textContent = done;
  $("n-total").textContent = st.num_frames;
  $("progress-fill").style.width = `${(100 * done) / st.num_frames}%`;
  $("frame-no").textContent = S.frame + 1;
  $("frame-total").textContent = st.num_frames;
  const [shard, row] = st.refs[S.frame];
  $("ref").textContent = `${shard} · row ${row}`;
  $("ref").title = `replay shard ${shard}, row ${row}`;
  const a = S.ann.get(S.frame);
  const n = (a ? a.clicks.length : 0) + S.pending.filter((p) => p.frame === S.frame).length;
  $("click-count").textContent = n;
  $("click-word").textContent = n === 1 ? "click" : "clicks";
  $("btn-prev").disabled = S.frame === 0;
  $("btn-next").textContent = S.frame === st.num_frames - 1 ? "Finish →" : "Next →";
  $("btn-undo").disabled = !(a && a.can_undo);
  $("btn-clear").disabled = !(a && a.clicks.length);
  $("btn-overlay").classList.toggle("on", S.overlay);
  renderStrip();
  renderOverlay();
  setSaved();
}

function setSaved() {
  const el = $("saved");
  const [cls, text] = S.failed
    ? ["err", "not saved: server unreachable, retrying"]
    : S.inflight > 0 ? ["busy", "saving…"] : ["ok", "saved"];
  el.className = `saved ${cls}`;
  $("saved-text").textContent = text;
}

function renderOverlay() {
  const cv = $("overlay");
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  const a = S.ann.get(S.frame);
  if (!S.overlay || !a) return;
  const dpr = cv.width / cv.clientWidth;
  // Heat: the server's map at frame resolution, coloured, then scaled up smoothly.
  const { width: W, height: H } = a;
  const bytes = Uint8Array.from(atob(a.map), (ch) => ch.charCodeAt(0));
  const img = new ImageData(W, H);
  for (let i = 0; i < bytes.length; i++) img.data.set(LUT.subarray(bytes[i] * 4, bytes[i] * 4 + 4), i * 4);
  const off = new OffscreenCanvas(W, H);
  off.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(off, 0, 0, cv.width, cv.height);
  // Markers: acknowledged clicks solid, pending ones dashed.
  const s = (cv.width / W);
  const mark = (x, y, pending, last) => {
    const cx = (x + 0.5) * s;
    const cy = (y + 0.5) * (cv.height / H);
    ctx.setLineDash(pending ? [3 * dpr, 3 * dpr] : []);
    ctx.lineWidth = 3.5 * dpr;
    ctx.strokeStyle = "rgba(0,0,0,0.55)";
    ctx.beginPath(); ctx.arc(cx, cy, 5 * dpr, 0, 2 * Math.PI); ctx.stroke();
    ctx.lineWidth = 1.6 * dpr;
    ctx.strokeStyle = last ? "#7fe3ff" : "rgba(255,255,255,0.95)";
    ctx.beginPath(); ctx.arc(cx, cy, 5 * dpr, 0, 2 * Math.PI); ctx.stroke();
  };
  a.clicks.forEach(([x, y], k) => mark(x, y, false, k === a.clicks.length - 1));
  for (const p of S.pending) if (p.frame === S.frame) mark(p.x, p.y, true, false);
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
  const badge = document.createElement("span");
  badge.className = "badge";
  b.append(im, badge);
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
    b.classList.toggle("has", c > 0);
    b.classList.toggle("current", i === S.frame);
    b.lastChild.textContent = c > 0 ? c : "";
    b.title = `frame ${i + 1}: ${c} ${c === 1 ? "click" : "clicks"}`;
  });
}

function scrollStrip() {
  const b = $("strip").children[S.frame];
  if (b) b.scrollIntoView({ block: "nearest", inline: "center", behavior: "smooth" });
}

function layout() {
  const { width: W, height: H, display_size: D } = S.state;
  S.scale = Math.max(1, Math.floor(D / Math.max(W, H)));
  const w = W * S.scale;
  const h = H * S.scale;
  const stage = $("stage");
  stage.style.width = `${w}px`;
  stage.style.height = `${h}px`;
  const dpr = window.devicePixelRatio || 1;
  const cv = $("overlay");
  cv.width = Math.round(w * dpr);
  cv.height = Math.round(h * dpr);
  // Cursor ring: one sigma around the pointer, the footprint a click will have.
  const r = Math.max(3, S.state.frame_sigma * S.scale);
  const cur = $("cursor");
  cur.style.width = cur.style.height = `${2 * r}px`;
  cur.style.margin = `${-r}px 0 0 ${-r}px`;
}

// ---------------------------------------------------------------------------------------------- wiring

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (S.view === "review") {
    if (k === "Escape") closeScreens();
    else if (k === "Enter") finish();
    else return;
  } else if (S.view === "finished") {
    return;
  } else if (k === "ArrowRight" || k === "d" || k === "n" || k === "Enter") next();
  else if (k === "ArrowLeft" || k === "a") prev();
  else if (k === "z" || k === "Backspace") undo();
  else if (k === "c") clearFrame();
  else if (k === "o") toggleOverlay();
  else return;
  e.preventDefault();
}

async function main() {
  try {
    S.state = await api("/api/state");
  } catch (e) {
    $("saved").className = "saved err";
    $("saved-text").textContent = "cannot reach the annotation server";
    return;
  }
  const st = S.state;
  $("task").textContent = st.task ? st.task : "";
  $("sigma-text").textContent =
    `σ = ${st.frame_sigma.toFixed(1)} px on this ${st.width}×${st.height} frame, ` +
    (st.reference_size ? `${st.sigma} px at ${st.reference_size} px` : "as configured");
  document.title = `visarl · ${st.task || "saliency annotation"}`;
  layout();
  const stage = $("stage");
  stage.addEventListener("pointerdown", onPointerDown);
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  stage.addEventListener("pointermove", (e) => {
    const r = stage.getBoundingClientRect();
    const cur = $("cursor");
    cur.style.left = `${e.clientX - r.left}px`;
    cur.style.top = `${e.clientY - r.top}px`;
  });
  $("btn-prev").onclick = prev;
  $("btn-next").onclick = next;
  $("btn-undo").onclick = undo;
  $("btn-clear").onclick = clearFrame;
  $("btn-overlay").onclick = toggleOverlay;
  $("btn-finish").onclick = openReview;
  $("btn-back").onclick = closeScreens;
  $("btn-done").onclick = finish;
  $("btn-reopen").onclick = closeScreens;
  document.addEventListener("keydown", onKey);
  // Buttons keep no focus, so Enter and Space never re-press the last button by accident.
  document.querySelectorAll("button").forEach((b) => b.addEventListener("mouseup", () => b.blur()));
  await show(st.current, { post: false });
  document.body.classList.add("ready");
}

main();
