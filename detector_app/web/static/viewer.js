// detector-app live viewer: plain JS, no build step.
// Frames are pulled over one WebSocket per stream: send "next", get a JSON line and a JPEG, show it,
// ask again. A slow browser therefore gets fewer frames, never older ones. Health and the sightings'
// version are polled once a second; the sightings list is fetched only when that version changes.
"use strict";

const POLL_MS = 1000;
const streams = new Map(); // stream id -> {card, img, ws, frames, lastSrc, closed}
let sightingsVersion = null;

const $ = (sel, el = document) => el.querySelector(sel);
const fmt = (v, digits, unit) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(digits)}${unit}`);
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");

function setStatus(text, cls) {
  const el = $("#status");
  el.textContent = text;
  el.className = `status ${cls}`;
}

// ---------------------------------------------------------------- streams
function wsUrl(path) {
  const u = new URL(path, location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

function openFrames(entry) {
  const ws = new WebSocket(wsUrl(`api/streams/${entry.id}/ws`));
  ws.binaryType = "blob";
  entry.ws = ws;
  let meta = null;
  ws.onopen = () => ws.send("next");
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") { meta = JSON.parse(ev.data); return; }
    const src = URL.createObjectURL(ev.data);
    entry.img.onload = () => {
      if (entry.lastSrc) URL.revokeObjectURL(entry.lastSrc);
      entry.lastSrc = src;
      entry.frames += 1;
      entry.card.dataset.frames = String(entry.frames);
      entry.card.dataset.seq = String(meta ? meta.seq : 0);
      $(".frame", entry.card).classList.add("has-frame");
      $('[data-k="shown"]', entry.card).textContent = `${entry.frames} frames`;
      if (ws.readyState === WebSocket.OPEN) ws.send("next");
    };
    entry.img.onerror = () => {
      URL.revokeObjectURL(src);
      if (ws.readyState === WebSocket.OPEN) ws.send("next");
    };
    entry.img.src = src;
  };
  ws.onclose = () => {
    if (!entry.closed) setTimeout(() => { if (!entry.closed) openFrames(entry); }, POLL_MS);
  };
}

function addStream(s) {
  const card = $("#stream-card").content.firstElementChild.cloneNode(true);
  card.dataset.id = String(s.id);
  $("h3", card).textContent = `Stream ${s.id}`;
  $(".name", card).textContent = s.name;
  const entry = { id: s.id, card, img: $("img", card), ws: null, frames: 0, lastSrc: null, closed: false };
  streams.set(s.id, entry);
  $("#streams").appendChild(card);
  openFrames(entry);
  return entry;
}

function updateStream(entry, s) {
  const h = s.health;
  const set = (k, v) => { $(`[data-k="${k}"]`, entry.card).textContent = v; };
  set("stream", h.connected ? `${h.width}×${h.height} ${h.codec}` : "waiting for publisher…");
  set("fps", fmt(h.fps, 1, ""));
  set("bitrate", fmt(h.bitrate_kbps / 1000, 2, " Mb/s"));
  set("age", fmt(h.frame_age_ms, 0, " ms"));
  set("rate", fmt(s.detections_per_s, 1, ""));
  set("infer", s.inference_ms === null ? "–" : `${fmt(s.inference_ms, 0, " ms")} (latency ${fmt(s.latency_ms, 0, " ms")})`);
  set("model", s.model);
  set("seen", s.seen.length ? s.seen.map((d) => `${d.label}${d.track_id != null ? " #" + d.track_id : ""} ${d.confidence.toFixed(2)}`).join(", ") : "nothing");
  entry.card.dataset.fps = String(h.fps);
}

function renderStreams(list) {
  const open = new Set(list.map((s) => s.id));
  for (const [id, entry] of streams) {
    if (!open.has(id)) {
      entry.closed = true;
      if (entry.ws) entry.ws.close();
      if (entry.lastSrc) URL.revokeObjectURL(entry.lastSrc);
      entry.card.remove();
      streams.delete(id);
    }
  }
  for (const s of list) updateStream(streams.get(s.id) || addStream(s), s);
  $("#no-streams").hidden = list.length > 0;
}

// ---------------------------------------------------------------- sightings
function describe(item, s) {
  const open = s.status === "open";
  item.classList.toggle("open", open);
  $(".label", item).textContent = s.label;
  $(".track", item).textContent = `#${s.track_id}`;
  $(".conf", item).textContent = `best ${Number(s.best_confidence).toFixed(2)}`;
  $(".times", item).textContent = `${clock(s.first_seen)} → ${open ? "in view now" : clock(s.last_seen)} (${s.duration.toFixed(1)} s)`;
  $(".where", item).textContent = s.stream;
  const thumb = $(".thumb", item);
  if (s.thumbnail_url && thumb.dataset.src !== `${s.thumbnail_url}@${s.updated_at}`) {
    thumb.dataset.src = `${s.thumbnail_url}@${s.updated_at}`; // the best frame may be replaced while in view
    thumb.src = `${s.thumbnail_url}?v=${s.updated_at}`;
  }
  const clip = $(".clip", item);
  if (s.clip_url && !$("video", clip)) {
    const video = document.createElement("video");
    video.controls = true;
    video.muted = true;
    video.preload = "metadata";
    video.playsInline = true;
    video.src = s.clip_url;
    clip.replaceChildren(video);
  } else if (!s.clip_url) {
    $(".pending", clip).textContent = open || !s.clip_note ? "clip being recorded…" : s.clip_note;
  }
}

async function loadSightings() {
  const r = await fetch("api/sightings?limit=50", { cache: "no-store" });
  if (!r.ok) throw new Error(`sightings: HTTP ${r.status}`);
  const data = await r.json();
  const list = $("#sightings");
  const keep = new Map([...list.children].map((el) => [el.dataset.id, el]));
  const first = sightingsVersion === null;
  data.sightings.forEach((s, i) => {
    let item = keep.get(String(s.id));
    if (!item) {
      item = $("#sighting-item").content.firstElementChild.cloneNode(true);
      item.dataset.id = String(s.id);
      if (!first) item.classList.add("new");
    }
    keep.delete(String(s.id));
    describe(item, s);
    if (list.children[i] !== item) list.insertBefore(item, list.children[i] || null);
  });
  for (const gone of keep.values()) gone.remove();
  $("#no-sightings").hidden = data.sightings.length > 0;
  return data.version;
}

// ---------------------------------------------------------------- polling
async function poll() {
  try {
    const r = await fetch("api/state", { cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const state = await r.json();
    renderStreams(state.streams);
    $("#sightings-section").hidden = !state.sightings;
    if (state.sightings && state.sightings_version !== sightingsVersion) {
      await loadSightings();
      sightingsVersion = state.sightings_version;
    }
    setStatus(`live · ${state.streams.length} stream${state.streams.length === 1 ? "" : "s"}`, "live");
  } catch (err) {
    setStatus(`disconnected (${err.message}); retrying…`, "down");
  }
  setTimeout(poll, POLL_MS);
}

poll();
