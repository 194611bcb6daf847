// One participant's call through Sluice: the peer connection, the to-device handshake
// (docs/protocol.md §3) and the data-channel protocol (§4) after it.
import { Membership, ToDevice } from "./signaling.js";

const randomId = () => Array.from(crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");

/** Default size asked for a tile before the page has laid it out. */
const DEFAULT_TILE = { width: 640, height: 360 };
/** How long an invite stays valid, and how long the page waits for Sluice to answer it. */
const INVITE_LIFETIME_MS = 30_000;

/**
 * Human text for Sluice's hangup reasons (docs/protocol.md §7). `connected`: the call had
 * connected, so a refusal reason means Sluice ended it rather than refused it.
 */
export function describeHangup(reason, error, connected = false) {
  const midCall = {
    "sluice.unauthorized": "Sluice ended the call: no longer authorized",
    "sluice.draining": "the call ended: the server is shutting down",
  };
  const text =
    (connected ? midCall[reason] : undefined) ??
    {
      user_hangup: "the call was ended",
      keep_alive_timeout: "Sluice lost contact with this page (keep-alive timeout)",
      ice_failed: "the media connection failed (ICE failed)",
      invite_timeout: "the media connection did not come up in time (ICE did not connect)",
      unknown_error: "Sluice hit an internal error",
      no_answer: `Sluice did not answer within ${INVITE_LIFETIME_MS / 1000} s: it may not be running, or it is not this room's call focus`,
      "sluice.unauthorized": "Sluice refused the call: not authorized",
      "sluice.conference_full": "Sluice refused the call: the conference is full",
      "sluice.server_full": "Sluice refused the call: the server is full",
      "sluice.draining": "Sluice refused the call: the server is draining for maintenance",
      "sluice.bad_request": "Sluice refused the call: bad request",
    }[reason] ??
    `the call ended (${reason})`;
  return error ? `${text}: ${error}` : text;
}

/**
 * A call through Sluice. Events (EventTarget): `state` (detail: connection state), `streams`
 * (the remote streams changed), `speakers` (detail: list), `ended` (detail: {reason, text}),
 * `error` (detail: text, the call goes on).
 */
export class SluiceCall extends EventTarget {
  /**
   * @param {object} o
   * @param o.client a started matrix-js-sdk client
   * @param o.roomId the call's room
   * @param o.transport Sluice's transport object (docs/protocol.md §1)
   * @param o.localStream camera/microphone stream to publish (may be null: receive only)
   * @param o.simulcast publish video as three layers q/h/f
   * @param o.red prefer RED (RFC 2198 redundant audio) for the microphone
   * @param o.svc publish video as one VP9 stream with three spatial layers (L3T3_KEY)
   *   instead of simulcast, when the browser can
   * @param o.encryptSignaling Olm-encrypt to-device signaling when possible
   * @param o.e2ee a MediaE2ee, or null
   */
  constructor({ client, roomId, transport, localStream, simulcast, red, svc, encryptSignaling, e2ee }) {
    super();
    this.client = client;
    this.roomId = roomId;
    this.transport = transport;
    this.localStream = localStream;
    this.simulcast = simulcast;
    this.red = red;
    this.svc = svc;
    this.e2ee = e2ee;
    this.deviceId = client.getDeviceId();
    this.callId = randomId();
    this.sessionId = randomId();
    this.membership = new Membership(client, roomId, transport);
    this.toDevice = new ToDevice(client, transport, {
      encrypt: encryptSignaling,
      onMessage: (type, content) => this.onToDevice(type, content),
    });
    this.pc = null;
    this.dc = null;
    this.features = [];
    /** Remote streams' metadata from Sluice, by stream id. */
    this.remoteMeta = {};
    /** Remote MediaStreams by stream id (from `track` events). */
    this.remoteStreams = new Map();
    /** Subscribed tracks: "stream|track" → {stream_id, track_id, width?, height?} as last sent. */
    this.subscribed = new Map();
    /** Wanted tile sizes by stream id. */
    this.tileSizes = new Map();
    this.audioMuted = false;
    this.videoMuted = false;
    this.screen = null;
    this.makingOffer = false;
    this.negotiation = Promise.resolve();
    this.ended = false;
    this.pendingCandidates = [];
    this.subscriptionTimer = null;
    /** The last data-channel messages both ways, for `debug()`. */
    this.dcLog = [];
  }

  logDc(dir, type, content) {
    this.dcLog.push({ dir, type, content, t: Date.now() });
    if (this.dcLog.length > 60) this.dcLog.shift();
  }

  /** A snapshot of the call's state for troubleshooting (and the browser tests' failures). */
  debug() {
    return {
      signalingState: this.pc?.signalingState,
      connectionState: this.pc?.connectionState,
      remoteMeta: this.remoteMeta,
      remoteStreams: [...this.remoteStreams.keys()],
      subscribed: [...this.subscribed.values()],
      transceivers: this.pc?.getTransceivers().map((t) => ({
        mid: t.mid,
        direction: t.direction,
        currentDirection: t.currentDirection,
        track: t.receiver.track?.id,
      })),
      dcLog: this.dcLog.map((m) => ({ ...m, content: JSON.stringify(m.content).slice(0, 300) })),
    };
  }

  base(extra = {}) {
    return {
      call_id: this.callId,
      conf_id: "",
      room_id: this.roomId,
      party_id: this.deviceId,
      device_id: this.deviceId,
      version: "1",
      sender_session_id: this.sessionId,
      dest_session_id: "sfu",
      ...extra,
    };
  }

  /** This participant's published streams (docs/protocol.md §5). */
  ownMetadata() {
    const meta = {};
    const describe = (stream, purpose, audioMuted, videoMuted) => {
      const tracks = {};
      for (const t of stream.getTracks()) {
        const s = t.kind === "video" ? t.getSettings() : {};
        tracks[t.id] = { kind: t.kind, ...(s.width ? { width: s.width, height: s.height } : {}) };
      }
      meta[stream.id] = {
        user_id: this.client.getUserId(),
        device_id: this.deviceId,
        purpose,
        audio_muted: audioMuted,
        video_muted: videoMuted,
        tracks,
      };
    };
    if (this.localStream) describe(this.localStream, "m.usermedia", this.audioMuted, this.videoMuted);
    if (this.screen) describe(this.screen.stream, "m.screenshare", true, false);
    return meta;
  }

  /** Joins: writes the membership, connects, and sends the invite. */
  async start() {
    await this.toDevice.prepare(this.roomId);
    await this.membership.write();
    const pc = new RTCPeerConnection({ iceServers: [], bundlePolicy: "max-bundle" });
    this.pc = pc;
    this.dc = pc.createDataChannel("datachannel");
    this.dc.onmessage = (e) => this.onDataChannel(e.data);
    this.dc.onopen = () => this.dispatchEvent(new CustomEvent("state", { detail: "datachannel open" }));
    pc.onconnectionstatechange = () => {
      this.dispatchEvent(new CustomEvent("state", { detail: pc.connectionState }));
      if (pc.connectionState === "connected") this.wasConnected = true;
      if (pc.connectionState === "failed") this.end("ice_failed", null, true);
    };
    pc.ontrack = (e) => this.onTrack(e);
    pc.onicecandidate = (e) => {
      // Candidates gathered after the invite went out trickle (docs/protocol.md §3.3).
      if (!this.inviteSent) return;
      this.pendingCandidates.push(
        e.candidate
          ? { candidate: e.candidate.candidate, sdpMid: e.candidate.sdpMid, sdpMLineIndex: e.candidate.sdpMLineIndex }
          : { candidate: "" },
      );
      if (this.pendingCandidates.length === 1) setTimeout(() => this.flushCandidates(), 50);
    };
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) {
        const init = { direction: "sendonly", streams: [this.localStream] };
        const svc = track.kind === "video" && this.svc && hasVp9();
        if (svc) {
          init.sendEncodings = [{ scalabilityMode: "L3T3_KEY" }];
        } else if (track.kind === "video" && this.simulcast) {
          init.sendEncodings = [
            { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150_000 },
            { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500_000 },
            { rid: "f", maxBitrate: 1_700_000 },
          ];
        }
        const tr = pc.addTransceiver(track, init);
        if (track.kind === "audio" && this.red) preferRed(tr);
        if (svc) preferVp9(tr);
        this.e2ee?.attachSender(tr.sender, track.kind);
      }
    }
    await pc.setLocalDescription(await pc.createOffer());
    await this.gathered(2000);
    this.inviteSent = true;
    await this.toDevice.send(
      "m.call.invite",
      this.base({
        offer: { type: "offer", sdp: pc.localDescription.sdp },
        lifetime: INVITE_LIFETIME_MS,
        sluice_version: 1,
        "org.matrix.msc3077.sdp_stream_metadata": this.ownMetadata(),
      }),
    );
    // The invite's lifetime is as long as Sluice may take to answer it.
    this.answerTimer = setTimeout(() => {
      if (!this.answered) this.end("invite_timeout", null, true, "no_answer");
    }, INVITE_LIFETIME_MS);
  }

  gathered(timeoutMs) {
    if (this.pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      this.pc.addEventListener("icegatheringstatechange", () => {
        if (this.pc.iceGatheringState === "complete") {
          clearTimeout(t);
          resolve();
        }
      });
    });
  }

  async flushCandidates() {
    const candidates = this.pendingCandidates.splice(0);
    if (candidates.length && !this.ended) await this.toDevice.send("m.call.candidates", this.base({ candidates }));
  }

  async onToDevice(type, c) {
    if (c.call_id !== this.callId || this.ended) return;
    try {
      switch (type) {
        case "m.call.answer":
          this.answered = true;
          clearTimeout(this.answerTimer);
          await this.pc.setRemoteDescription(c.answer);
          await this.toDevice.send("m.call.select_answer", this.base({ selected_party_id: c.party_id }));
          this.mergeMeta(c["org.matrix.msc3077.sdp_stream_metadata"]);
          break;
        case "m.call.candidates":
          for (const cand of c.candidates ?? []) {
            if (!cand.candidate) continue;
            await this.pc.addIceCandidate(cand).catch((e) => console.warn("bad candidate from Sluice", e));
          }
          break;
        case "m.call.hangup":
        case "m.call.reject":
          this.end(c.reason ?? "user_hangup", c.error, false);
          break;
      }
    } catch (e) {
      this.fail(`signaling (${type}) failed: ${e.message ?? e}`);
    }
  }

  sendDc(type, content) {
    if (this.dc?.readyState !== "open") return;
    this.logDc("out", type, content);
    this.dc.send(JSON.stringify({ type, content }));
  }

  async onDataChannel(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    const c = msg.content ?? {};
    this.logDc("in", msg.type, c);
    switch (msg.type) {
      case "sluice.hello":
        this.features = c.features ?? [];
        break;
      case "m.call.sdp_stream_metadata_changed":
        this.remoteMeta = {};
        this.mergeMeta(c.sdp_stream_metadata);
        break;
      case "m.call.negotiate":
        this.onNegotiate(c);
        break;
      case "m.call.ping":
        this.sendDc("m.call.pong", {});
        break;
      case "sluice.active_speakers":
        this.dispatchEvent(new CustomEvent("speakers", { detail: c.speakers ?? [] }));
        break;
      case "sluice.error":
        this.dispatchEvent(new CustomEvent("error", { detail: `Sluice: ${c.code}: ${c.message}` }));
        break;
    }
  }

  /** Takes Sluice's view of the other participants' streams and subscribes to all of them. */
  mergeMeta(meta) {
    if (!meta) return;
    Object.assign(this.remoteMeta, meta);
    // Forget subscriptions to tracks that are gone; Sluice already dropped them.
    for (const [key, s] of this.subscribed) {
      if (!this.remoteMeta[s.stream_id]?.tracks?.[s.track_id]) this.subscribed.delete(key);
    }
    for (const id of this.remoteStreams.keys()) {
      if (!this.remoteMeta[id]) this.remoteStreams.delete(id);
    }
    this.scheduleSubscriptions();
    this.dispatchEvent(new Event("streams"));
  }

  /** Sets the rendered size of a stream's tile: its video is subscribed at that size. */
  setTileSize(streamId, width, height) {
    const prev = this.tileSizes.get(streamId);
    if (prev && prev.width === width && prev.height === height) return;
    this.tileSizes.set(streamId, { width, height });
    this.scheduleSubscriptions();
  }

  scheduleSubscriptions() {
    clearTimeout(this.subscriptionTimer);
    this.subscriptionTimer = setTimeout(() => this.sendSubscriptions(), 100);
  }

  sendSubscriptions() {
    if (this.dc?.readyState !== "open") {
      this.subscriptionTimer = setTimeout(() => this.sendSubscriptions(), 200);
      return;
    }
    const subscribe = [];
    for (const [streamId, m] of Object.entries(this.remoteMeta)) {
      const size = this.tileSizes.get(streamId) ?? DEFAULT_TILE;
      for (const [trackId, t] of Object.entries(m.tracks ?? {})) {
        const want = { stream_id: streamId, track_id: trackId };
        if (t.kind === "video") Object.assign(want, { width: Math.round(size.width), height: Math.round(size.height) });
        const key = `${streamId}|${trackId}`;
        const had = this.subscribed.get(key);
        if (!had || had.width !== want.width || had.height !== want.height) {
          subscribe.push(want);
          this.subscribed.set(key, want);
        }
      }
    }
    if (subscribe.length) this.sendDc("m.call.track_subscription", { subscribe, unsubscribe: [] });
  }

  onTrack(e) {
    const stream = e.streams[0];
    if (!stream) return;
    this.e2ee?.attachReceiver(e.receiver, e.track.kind);
    this.remoteStreams.set(stream.id, stream);
    stream.onremovetrack = () => this.dispatchEvent(new Event("streams"));
    this.dispatchEvent(new Event("streams"));
  }

  async onNegotiate(c) {
    const d = c.description;
    if (!d) return;
    if (c.sdp_stream_metadata) this.mergeMeta(c.sdp_stream_metadata);
    try {
      if (d.type === "offer") {
        // Sluice is the polite side (docs/protocol.md §4): on a collision ours wins and Sluice
        // offers its change again after.
        if (this.makingOffer || this.pc.signalingState !== "stable") return;
        await this.pc.setRemoteDescription(d);
        await this.pc.setLocalDescription(await this.pc.createAnswer());
        this.sendDc("m.call.negotiate", {
          description: { type: "answer", sdp: this.pc.localDescription.sdp },
          sdp_stream_metadata: this.ownMetadata(),
        });
      } else if (d.type === "answer" && this.pc.signalingState === "have-local-offer") {
        await this.pc.setRemoteDescription(d);
        this.negotiated?.();
      }
    } catch (e) {
      this.fail(`renegotiation failed: ${e.message ?? e}`);
    }
  }

  /** Offers a change of what this page publishes, one negotiation at a time. */
  renegotiate() {
    this.negotiation = this.negotiation.then(async () => {
      this.makingOffer = true;
      try {
        const done = new Promise((resolve) => {
          this.negotiated = resolve;
          setTimeout(resolve, 10_000);
        });
        await this.pc.setLocalDescription(await this.pc.createOffer());
        this.sendDc("m.call.negotiate", {
          description: { type: "offer", sdp: this.pc.localDescription.sdp },
          sdp_stream_metadata: this.ownMetadata(),
        });
        this.makingOffer = false;
        await done;
      } catch (e) {
        this.fail(`renegotiation failed: ${e.message ?? e}`);
      } finally {
        this.makingOffer = false;
      }
    });
    return this.negotiation;
  }

  setAudioMuted(muted) {
    this.audioMuted = muted;
    for (const t of this.localStream?.getAudioTracks() ?? []) t.enabled = !muted;
    this.sendDc("m.call.sdp_stream_metadata_changed", { sdp_stream_metadata: this.ownMetadata() });
  }

  setVideoMuted(muted) {
    this.videoMuted = muted;
    for (const t of this.localStream?.getVideoTracks() ?? []) t.enabled = !muted;
    this.sendDc("m.call.sdp_stream_metadata_changed", { sdp_stream_metadata: this.ownMetadata() });
  }

  /** Publishes `stream` (from getDisplayMedia) as a screen share. */
  async startScreenShare(stream) {
    const track = stream.getVideoTracks()[0];
    const transceiver = this.pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
    this.e2ee?.attachSender(transceiver.sender, "video");
    this.screen = { stream, transceiver };
    track.onended = () => this.stopScreenShare();
    await this.renegotiate();
  }

  async stopScreenShare() {
    if (!this.screen) return;
    const { stream, transceiver } = this.screen;
    this.screen = null;
    for (const t of stream.getTracks()) t.stop();
    await transceiver.sender.replaceTrack(null);
    transceiver.direction = "inactive";
    await this.renegotiate();
  }

  /** Video and audio reception figures from getStats(), one entry per inbound stream. */
  async inboundStats() {
    const out = [];
    if (!this.pc) return out;
    const report = await this.pc.getStats();
    report.forEach((r) => {
      if (r.type !== "inbound-rtp") return;
      out.push({
        codec: report.get(r.codecId)?.mimeType ?? "",
        kind: r.kind,
        trackIdentifier: r.trackIdentifier,
        mid: r.mid,
        packetsReceived: r.packetsReceived ?? 0,
        packetsLost: r.packetsLost ?? 0,
        framesDecoded: r.framesDecoded ?? 0,
        frameWidth: r.frameWidth ?? 0,
        frameHeight: r.frameHeight ?? 0,
        bytesReceived: r.bytesReceived ?? 0,
      });
    });
    return out;
  }

  fail(text) {
    console.error(text);
    this.dispatchEvent(new CustomEvent("error", { detail: text }));
  }

  /** Leaves the call: hangup to Sluice, membership removed. */
  async leave() {
    if (this.ended) return;
    await this.toDevice.send("m.call.hangup", this.base({ reason: "user_hangup" })).catch(() => {});
    await this.end("user_hangup", null, false);
  }

  /** Leaves from `pagehide`: only requests that outlive the page. */
  leaveOnUnload() {
    if (this.ended) return;
    this.ended = true;
    this.membership.removeOnUnload();
    this.pc?.close();
  }

  /** Ends the call; `shown` is the reason the page explains (by default the one sent). */
  async end(reason, error, notifySluice, shown = reason) {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.subscriptionTimer);
    clearTimeout(this.answerTimer);
    if (notifySluice) await this.toDevice.send("m.call.hangup", this.base({ reason })).catch(() => {});
    this.pc?.close();
    this.toDevice.close();
    await this.membership.remove().catch((e) => console.warn("could not remove the membership", e));
    this.remoteStreams.clear();
    this.remoteMeta = {};
    this.dispatchEvent(new CustomEvent("ended", { detail: { reason, text: describeHangup(shown, error, this.wasConnected) } }));
  }
}

/**
 * Puts RED first in the transceiver's codec list, so that the browser sends its audio in
 * RED (it does only when RED is preferred) and Sluice answers in that order. Sluice passes
 * RED through untouched (end-to-end encrypted frames included) and unwraps it for
 * subscribers without RED. A browser without RED keeps its order.
 */
function preferRed(transceiver) {
  const codecs = RTCRtpReceiver.getCapabilities?.("audio")?.codecs ?? [];
  const isRed = (c) => c.mimeType.toLowerCase() === "audio/red";
  if (!transceiver.setCodecPreferences || !codecs.some(isRed)) return;
  transceiver.setCodecPreferences([...codecs.filter(isRed), ...codecs.filter((c) => !isRed(c))]);
}

/** Whether the browser can send VP9. */
function hasVp9() {
  return (RTCRtpSender.getCapabilities?.("video")?.codecs ?? []).some((c) => c.mimeType.toLowerCase() === "video/vp9");
}

/**
 * Puts VP9 first in the transceiver's codec list: an L3T3 stream is VP9 SVC only when
 * VP9 is the codec sent, and Sluice answers in the offer's order.
 */
function preferVp9(transceiver) {
  const codecs = RTCRtpReceiver.getCapabilities?.("video")?.codecs ?? [];
  const isVp9 = (c) => c.mimeType.toLowerCase() === "video/vp9";
  if (!transceiver.setCodecPreferences || !codecs.some(isVp9)) return;
  transceiver.setCodecPreferences([...codecs.filter(isVp9), ...codecs.filter((c) => !isVp9(c))]);
}
