// worldserve play page: a live world over one WebSocket (see worldserve/web/gateway.py).
"use strict";

const $ = (id) => document.getElementById(id);
const KEYMAP = { ArrowLeft: "left", a: "left", ArrowRight: "right", d: "right", ArrowUp: "up", w: "up",
                 ArrowDown: "down", s: "down", " ": "jump", f: "fire" };
const state = {
  key: sessionStorage.getItem("worldserve-key") || "", token: null, ws: null, session: null, hello: null,
  held: new Set(), seq: 0, sent: new Map(), acked: 0, frameTimes: [], frames: 0, k2f: null,
  branches: [], current: null, step: -1, tick: 0, closed: null,
  recent: [],  // the last frames: {tick, step, sum} (a checksum of the image bytes)
};
window.worldserve = state; // for the browser test and for the curious

function log(msg) {
  $("log").textContent = `${new Date().toLocaleTimeString()} ${msg}\n` + $("log").textContent.slice(0, 4000);
}
function status(msg) { $("status").textContent = msg; }

async function api(method, path, body) {
  const r = await fetch(path, { method, body: body === undefined ? undefined : JSON.stringify(body),
    headers: { authorization: `Bearer ${state.token}`, "content-type": "application/json" } });
  const j = await r.json();
  if (!r.ok) throw new Error(`${j.code}: ${j.message}`);
  return j;
}

async function mintToken() {
  const r = await fetch("/v1/tokens", { method: "POST", headers: { authorization: `Bearer ${state.key}` } });
  const j = await r.json();
  if (!r.ok) throw new Error(`${j.code}: ${j.message}`);
  state.token = j.token;
  setTimeout(() => mintToken().catch((e) => log(`token refresh failed: ${e.message}`)),
             Math.max(10, j.expires_in - 30) * 1000);
  return j;
}

async function connect() {
  state.key = $("key").value.trim();
  sessionStorage.setItem("worldserve-key", state.key);
  try {
    const t = await mintToken();
    status(`connected as ${t.tenant}`);
    const m = await api("GET", "/v1/models");
    $("model").innerHTML = "";
    for (const info of m.models) {
      const o = document.createElement("option");
      o.value = info.name;
      o.textContent = `${info.name} (${info.tier}, ${info.frame_width}x${info.frame_height})`;
      o.selected = info.name === m.default_model;
      $("model").appendChild(o);
    }
  } catch (e) { status("not connected"); log(`connect failed: ${e.message}`); }
}

function addBranch(rec, parent) {
  if (state.branches.some((b) => b.session_id === rec.session_id)) return;
  state.branches.push({ session_id: rec.session_id, parent, step: rec.fork_step });
  renderBranches();
}
function renderBranches() {
  const ul = $("branches");
  ul.innerHTML = "";
  for (const b of state.branches) {
    const li = document.createElement("li");
    const btn = document.createElement("button");
    btn.textContent = b.parent ? `${b.session_id} (fork of ${b.parent} at step ${b.step})` : b.session_id;
    btn.dataset.session = b.session_id;
    if (b.session_id === state.current) btn.className = "current";
    btn.onclick = () => play(b.session_id);
    li.appendChild(btn);
    ul.appendChild(li);
  }
}

async function createWorld(fromImage) {
  try {
    const body = { seed: Number($("seed").value) || 0, model: $("model").value };
    if (fromImage) {
      const f = $("image").files[0];
      if (!f) { log("choose an image first"); return; }
      const buf = new Uint8Array(await f.arrayBuffer());
      let bin = "";
      for (let i = 0; i < buf.length; i += 0x8000) bin += String.fromCharCode(...buf.subarray(i, i + 0x8000));
      body.image = btoa(bin);
    } else {
      body.prompt = $("prompt").value;
    }
    status("making the first frame...");
    const rec = await api("POST", "/v1/sessions", body);
    showUnderstood(rec.understood);
    addBranch(rec, null);
    play(rec.session_id);
  } catch (e) { log(`create failed: ${e.message}`); status("error"); }
}

function play(sessionId) {
  if (state.ws) { state.ws.onclose = null; state.ws.close(1000, "switching"); }
  Object.assign(state, { session: sessionId, current: sessionId, hello: null, acked: 0, frameTimes: [],
                         closed: null, held: new Set(), recent: [], step: -1 });
  renderBranches();
  const role = $("role").value, fps = Number($("fps").value) || 10;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const url = `${proto}://${location.host}/v1/sessions/${encodeURIComponent(sessionId)}/play` +
              `?role=${role}&fps=${fps}&format=jpeg`;
  const ws = new WebSocket(url, ["worldserve", `worldserve.token.${state.token}`]);  // the token, never the key
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  $("sid").textContent = sessionId;
  status(`joining ${sessionId}...`);
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onText(JSON.parse(ev.data)) : onFrame(ev.data));
  ws.onclose = (ev) => {
    state.closed = { code: ev.code, reason: ev.reason };
    status(`closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`);
    if (ev.code !== 1000) log(`connection closed ${ev.code} ${ev.reason}`);
  };
  $("screen").focus();
}

function onText(m) {
  if (m.type === "hello") {
    state.hello = m;
    $("hud-role").textContent = m.role;
    $("fps-target").textContent = m.fps.toFixed(1);
    status(`playing ${m.session_id} (${m.model})`);
    buildPad(m.keys);
  } else if (m.type === "players") {
    $("players").textContent = `${m.controllers} + ${m.spectators} watching`;
  } else if (m.type === "notice") {
    log(m.reason);
  } else if (m.type === "event") {  // an event took effect: free text shows what it was mapped to
    $("event-now").textContent = m.event || "none";
    log(m.text && m.text !== m.event ? `event "${m.text}" -> ${m.event || "none"}` : `event: ${m.event || "none"}`);
  }
}

function showUnderstood(u) {
  $("understood").textContent = u ? `understood (${u.source}): ${u.caption}` : "";
}

async function onFrame(buf) {
  const n = new DataView(buf).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const now = performance.now();
  state.frames += 1;
  state.step = header.step;
  state.tick = header.tick;
  state.frameTimes.push(now);
  while (state.frameTimes.length > 2 && now - state.frameTimes[0] > 2000) state.frameTimes.shift();
  const span = (now - state.frameTimes[0]) / 1000;
  $("fps-now").textContent = span > 0 ? ((state.frameTimes.length - 1) / span).toFixed(1) : "0.0";
  $("step").textContent = header.step;
  $("dropped").textContent = header.dropped;
  if (header.ack > state.acked) {
    const sentAt = state.sent.get(header.ack);
    state.acked = header.ack;
    if (sentAt !== undefined) {
      const ms = now - sentAt;
      state.k2f = state.k2f === null ? ms : 0.8 * state.k2f + 0.2 * ms;
      $("k2f").textContent = state.k2f.toFixed(0);
      for (const s of state.sent.keys()) if (s <= header.ack) state.sent.delete(s);
    }
  }
  const bytes = new Uint8Array(buf, 4 + n);
  let sum = 0;
  for (let i = 0; i < bytes.length; i++) sum = (sum * 31 + bytes[i]) >>> 0;
  state.recent.push({ tick: header.tick, step: header.step, sum });
  if (state.recent.length > 64) state.recent.shift();
  const type = { jpeg: "image/jpeg", png: "image/png" }[header.format];
  if (!type) return;
  const bmp = await createImageBitmap(new Blob([bytes], { type }));
  const ctx = $("screen").getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bmp, 0, 0, $("screen").width, $("screen").height);
}

function send(msg) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  msg.seq = ++state.seq;
  state.sent.set(msg.seq, performance.now());
  state.ws.send(JSON.stringify(msg));
}
function sendHeld() { send({ type: "action", keys: [...state.held] }); }

function press(k, down) {
  if (!state.hello || !state.hello.keys.includes(k)) return;
  if (down === state.held.has(k)) return;
  if (down) state.held.add(k); else state.held.delete(k);
  for (const b of document.querySelectorAll(`#pad button[data-key="${k}"]`)) b.classList.toggle("held", down);
  sendHeld();
}

function buildPad(keys) {
  const pad = $("pad");
  pad.innerHTML = "";
  for (const k of keys) {
    const b = document.createElement("button");
    b.textContent = k;
    b.dataset.key = k;
    b.onpointerdown = () => press(k, true);
    b.onpointerup = b.onpointerleave = () => press(k, false);
    pad.appendChild(b);
  }
}

for (const [type, down] of [["keydown", true], ["keyup", false]]) {
  $("screen").addEventListener(type, (e) => {
    const k = KEYMAP[e.key];
    if (k === undefined) return;
    e.preventDefault();
    if (!e.repeat) press(k, down);
  });
}
$("screen").addEventListener("blur", () => { for (const k of [...state.held]) press(k, false); });

$("connect").onclick = connect;
$("create").onclick = () => createWorld(false);
$("create-image").onclick = () => createWorld(true);
$("join").onclick = () => { const id = $("join-id").value.trim(); if (id) { addBranch({ session_id: id }, null); play(id); } };
$("send-event").onclick = () => send({ type: "event", event: $("event").value });
$("fork").onclick = async () => {
  if (!state.session) return;
  try {
    const rec = await api("POST", `/v1/sessions/${encodeURIComponent(state.session)}/fork`,
                          state.step >= 0 ? { step: state.step } : {});
    addBranch(rec, state.session);
    log(`forked ${state.session} at step ${rec.fork_step} -> ${rec.session_id}`);
    play(rec.session_id);
  } catch (e) { log(`fork failed: ${e.message}`); }
};
if (state.key) $("key").value = state.key;
