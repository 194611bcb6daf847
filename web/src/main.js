// The page: login, lobby, call grid. State lives in `app`; `window.sluice` exposes it for
// the browser tests and for debugging from the console.
import "./style.css";
import { SluiceCall } from "./call.js";
import { MediaE2ee } from "./e2ee.js";
import { joinCallRoom, login, logout, UserError } from "./signaling.js";

const $ = (id) => document.getElementById(id);

const app = {
  config: null,
  client: null,
  crypto: false,
  call: null,
  e2ee: null,
  localStream: null,
  speaking: new Set(),
};
window.sluice = app;

function showError(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

function show(section) {
  for (const id of ["login", "lobby", "call"]) $(id).hidden = id !== section;
}

async function loadConfig() {
  try {
    const res = await fetch("web-client.json", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    app.config = await res.json();
  } catch (e) {
    showError(`cannot read this Sluice's web-client.json (${e.message}): is the web client enabled?`);
    app.config = { homeserver: "", transport: null, demo_users: [] };
  }
  const params = new URLSearchParams(location.search);
  $("homeserver").value = params.get("homeserver") ?? app.config.homeserver ?? "";
  $("room").value = params.get("room") ?? app.config.room ?? "";
  const demo = $("demo-users");
  for (const u of app.config.demo_users ?? []) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.textContent = `Log in as ${u.user}`;
    btn.onclick = () => {
      $("user").value = u.user;
      $("password").value = u.password;
      $("login").requestSubmit();
    };
    demo.append(btn);
  }
}

async function onLogin(e) {
  e.preventDefault();
  showError("");
  const btn = $("login-button");
  btn.disabled = true;
  setStatus("logging in…");
  try {
    const { client, crypto } = await login($("homeserver").value, $("user").value, $("password").value);
    app.client = client;
    app.crypto = crypto;
    $("olm").disabled = !crypto;
    $("olm").checked = crypto;
    $("whoami").textContent = `${client.getUserId()} (${client.getDeviceId()})`;
    setStatus("logged in");
    show("lobby");
  } catch (err) {
    showError(err instanceof UserError ? err.message : `login failed: ${err.message ?? err}`);
    setStatus("");
  } finally {
    btn.disabled = false;
  }
}

async function onJoin(e) {
  e.preventDefault();
  showError("");
  const transport = app.config.transport;
  if (!transport) return showError("this page does not know which Sluice to call (no transport in web-client.json)");
  const btn = $("join-button");
  btn.disabled = true;
  try {
    setStatus("joining the room…");
    const roomId = await joinCallRoom(app.client, $("room").value, transport.user_id);
    setStatus("starting camera and microphone…");
    app.localStream = await getMedia();
    const passphrase = $("e2ee-key").value;
    app.e2ee = passphrase ? new MediaE2ee(passphrase) : null;
    const call = new SluiceCall({
      client: app.client,
      roomId,
      transport,
      localStream: app.localStream,
      simulcast: $("simulcast").checked,
      red: $("red").checked,
      svc: $("svc").checked,
      encryptSignaling: $("olm").checked,
      e2ee: app.e2ee,
    });
    app.call = call;
    call.addEventListener("state", (ev) => {
      $("connection").textContent = ev.detail;
      setStatus(`in call (${ev.detail})`);
    });
    call.addEventListener("streams", renderTiles);
    call.addEventListener("speakers", (ev) => {
      app.speaking = new Set(ev.detail.map((s) => s.stream_id));
      renderSpeaking();
    });
    call.addEventListener("error", (ev) => showError(ev.detail));
    call.addEventListener("ended", (ev) => onEnded(ev.detail));
    show("call");
    renderLocal();
    setStatus("calling Sluice…");
    await call.start();
    $("signaling-mode").textContent = call.toDevice.encrypted
      ? "signaling: Olm-encrypted"
      : `signaling: plain${call.toDevice.plainBecause ? ` (${call.toDevice.plainBecause})` : ""}`;
    $("e2ee-mode").textContent = app.e2ee ? "media: end-to-end encrypted" : "media: not end-to-end encrypted";
  } catch (err) {
    showError(err instanceof UserError ? err.message : `could not join: ${err.message ?? err}`);
    await cleanupCall();
    show("lobby");
    setStatus("logged in");
  } finally {
    btn.disabled = false;
  }
}

async function getMedia() {
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 960 }, height: { ideal: 540 }, frameRate: { ideal: 30 } },
    });
  } catch (e) {
    throw new UserError(`no camera or microphone: ${e.message ?? e}`);
  }
}

function onEnded({ reason, text }) {
  if (reason !== "user_hangup" || !app.leaving) showError(text);
  cleanupCall();
  show("lobby");
  setStatus("logged in");
}

async function cleanupCall() {
  for (const t of app.localStream?.getTracks() ?? []) t.stop();
  app.localStream = null;
  app.e2ee?.close();
  app.e2ee = null;
  app.call = null;
  $("tiles").replaceChildren();
}

function renderLocal() {
  const tile = makeTile("local", `${app.client.getUserId()} (you)`);
  tile.video.srcObject = app.localStream;
  tile.video.muted = true;
  $("tiles").prepend(tile.el);
}

const resize = new ResizeObserver((entries) => {
  for (const e of entries) {
    const id = e.target.closest(".tile")?.dataset.streamId;
    if (!id || id === "local" || !app.call) continue;
    const dpr = window.devicePixelRatio || 1;
    app.call.setTileSize(id, e.contentRect.width * dpr, e.contentRect.height * dpr);
  }
});

function makeTile(streamId, label) {
  const el = document.createElement("div");
  el.className = "tile";
  el.dataset.streamId = streamId;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = label;
  el.append(video, name);
  return { el, video, name };
}

/** One tile per remote stream that Sluice lists and the peer connection carries. */
function renderTiles() {
  const call = app.call;
  if (!call) return;
  const grid = $("tiles");
  const present = new Set();
  for (const [id, meta] of Object.entries(call.remoteMeta)) {
    const stream = call.remoteStreams.get(id);
    if (!stream || stream.getTracks().length === 0) continue;
    present.add(id);
    let el = grid.querySelector(`.tile[data-stream-id="${CSS.escape(id)}"]`);
    if (!el) {
      const label = `${meta.user_id}${meta.purpose === "m.screenshare" ? " (screen)" : ""}`;
      const tile = makeTile(id, label);
      tile.video.srcObject = stream;
      el = tile.el;
      el.dataset.user = meta.user_id;
      grid.append(el);
      resize.observe(tile.video);
    }
    el.classList.toggle("muted-audio", !!meta.audio_muted);
    el.classList.toggle("muted-video", !!meta.video_muted);
  }
  for (const el of grid.querySelectorAll(".tile")) {
    const id = el.dataset.streamId;
    if (id !== "local" && !present.has(id)) {
      resize.unobserve(el.querySelector("video"));
      el.remove();
    }
  }
  renderSpeaking();
}

function renderSpeaking() {
  for (const el of $("tiles").querySelectorAll(".tile")) {
    el.classList.toggle("speaking", app.speaking.has(el.dataset.streamId));
  }
}

async function onLeave() {
  app.leaving = true;
  await app.call?.leave();
  app.leaving = false;
}

function wire() {
  $("login").addEventListener("submit", onLogin);
  $("lobby").addEventListener("submit", onJoin);
  $("logout").onclick = async () => {
    await logout(app.client);
    app.client = null;
    show("login");
    setStatus("");
  };
  $("leave").onclick = onLeave;
  $("mute-audio").onclick = () => {
    app.call.setAudioMuted(!app.call.audioMuted);
    $("mute-audio").textContent = app.call.audioMuted ? "Unmute microphone" : "Mute microphone";
  };
  $("mute-video").onclick = () => {
    app.call.setVideoMuted(!app.call.videoMuted);
    $("mute-video").textContent = app.call.videoMuted ? "Start camera" : "Stop camera";
  };
  $("screen").onclick = async () => {
    try {
      if (app.call.screen) {
        await app.call.stopScreenShare();
        $("screen").textContent = "Share screen";
      } else {
        const stream = await navigator.mediaDevices.getDisplayMedia({ video: true });
        await app.call.startScreenShare(stream);
        $("screen").textContent = "Stop sharing";
      }
    } catch (e) {
      showError(`screen share failed: ${e.message ?? e}`);
    }
  };
  $("compact").onchange = () => $("tiles").classList.toggle("compact", $("compact").checked);
  window.addEventListener("pagehide", () => app.call?.leaveOnUnload());
}

wire();
loadConfig();
show("login");
