// Matrix side of a Sluice call: login, room, MatrixRTC membership, and the to-device
// transport (plain or Olm-encrypted) of docs/protocol.md §2–3.
import { ClientEvent, createClient } from "matrix-js-sdk";

/** The membership state event type (docs/protocol.md §2). */
export const MEMBER_EVENT = "org.matrix.msc3401.call.member";
/** How long one membership write is valid; refreshed well before it runs out. */
export const MEMBERSHIP_LIFETIME_MS = 60 * 60 * 1000;
const REFRESH_EVERY_MS = 45 * 60 * 1000;

/** An error the page shows to the user as is. */
export class UserError extends Error {}

/** Logs in with a password and starts syncing. Resolves once the first sync is done. */
export async function login(homeserver, user, password) {
  const baseUrl = homeserver.replace(/\/+$/, "");
  const bare = createClient({ baseUrl });
  let res;
  try {
    res = await bare.loginRequest({
      type: "m.login.password",
      identifier: { type: "m.id.user", user },
      password,
      initial_device_display_name: "Sluice web client",
    });
  } catch (e) {
    if (e?.errcode === "M_FORBIDDEN") throw new UserError("login failed: wrong user name or password");
    if (e?.httpStatus) throw new UserError(`login failed: ${e.errcode ?? e.httpStatus} ${e.message ?? ""}`);
    throw new UserError(`homeserver unreachable at ${baseUrl}: ${e?.message ?? e}`);
  }
  const client = createClient({
    baseUrl,
    accessToken: res.access_token,
    userId: res.user_id,
    deviceId: res.device_id,
  });
  let crypto = false;
  try {
    // In-memory store: every login is a fresh device, nothing is left in the browser.
    await client.initRustCrypto({ useIndexedDB: false });
    crypto = true;
  } catch (e) {
    console.warn("end-to-end encryption unavailable; signaling stays in the clear", e);
  }
  const prepared = new Promise((resolve, reject) => {
    const onSync = (state, _prev, data) => {
      if (state === "PREPARED" || state === "SYNCING") {
        client.off(ClientEvent.Sync, onSync);
        resolve();
      } else if (state === "ERROR" && !data?.error?.httpStatus) {
        client.off(ClientEvent.Sync, onSync);
        reject(new UserError(`homeserver unreachable at ${baseUrl}`));
      }
    };
    client.on(ClientEvent.Sync, onSync);
  });
  await client.startClient({ initialSyncLimit: 1, lazyLoadMembers: false });
  await prepared;
  return { client, crypto };
}

/** Logs out (best effort) and stops the client. */
export async function logout(client) {
  client.stopClient();
  try {
    await client.logout(true);
  } catch {
    // The session is gone either way.
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Joins a room by id or alias; an alias that does not exist yet is created (public, anyone may
 * write call memberships) and Sluice is invited. Resolves to the room id once Sluice is joined.
 */
export async function joinCallRoom(client, roomIdOrAlias, sfuUserId) {
  const target = roomIdOrAlias.trim();
  if (!target) throw new UserError("enter a room alias (#name:server) or room id (!id:server)");
  let roomId;
  try {
    roomId = await joinRetrying(client, target);
  } catch (e) {
    if (!target.startsWith("#") || (e?.errcode !== "M_NOT_FOUND" && e?.httpStatus !== 404)) {
      throw new UserError(`cannot join ${target}: ${e?.errcode ?? ""} ${e?.message ?? e}`);
    }
    const localpart = target.slice(1).split(":")[0];
    try {
      roomId = (
        await client.createRoom({
          room_alias_name: localpart,
          name: localpart,
          preset: "public_chat",
          invite: [sfuUserId],
          // Encrypted like any call room; it also lets Olm-encrypted signaling find
          // Sluice's device (the crypto layer tracks the devices of encrypted rooms' members).
          initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
          power_level_content_override: { events: { [MEMBER_EVENT]: 0 } },
        })
      ).room_id;
    } catch (e2) {
      if (e2?.errcode !== "M_ROOM_IN_USE") throw new UserError(`cannot create ${target}: ${e2?.message ?? e2}`);
      // Someone else created it a moment ago.
      roomId = await joinRetrying(client, target);
    }
  }
  await waitForSluice(client, roomId, sfuUserId);
  return roomId;
}

/**
 * Joins `target`, retrying a refusal (403) for 5 s: a room someone created a moment ago
 * refuses joins until its creator's client has set its join rules (two people pressing
 * "Join call" on a new room at once).
 */
async function joinRetrying(client, target) {
  const deadline = Date.now() + 5_000;
  for (;;) {
    try {
      return (await client.joinRoom(target)).roomId;
    } catch (e) {
      if (e?.errcode !== "M_FORBIDDEN" || Date.now() >= deadline) throw e;
      await sleep(250);
    }
  }
}

async function waitForSluice(client, roomId, sfuUserId) {
  const deadline = Date.now() + 30_000;
  let invited = false;
  while (Date.now() < deadline) {
    const room = client.getRoom(roomId);
    if (room) await room.loadMembersIfNeeded();
    const m = room?.getMember(sfuUserId)?.membership;
    if (m === "join") return;
    if (room && m !== "invite" && !invited) {
      invited = true;
      try {
        await client.invite(roomId, sfuUserId);
      } catch (e) {
        // The member list this client has may lag behind the room's.
        if (!/already in the room|is already joined/i.test(e?.data?.error ?? e?.message ?? "")) {
          throw new UserError(`cannot invite Sluice (${sfuUserId}) to the room: ${e?.message ?? e}`);
        }
      }
    }
    await sleep(200);
  }
  throw new UserError(`Sluice (${sfuUserId}) did not join the room within 30 s: is it running and allowed to join?`);
}

/** The membership of this device in `roomId`'s main call, naming `transport` (docs/protocol.md §2). */
export class Membership {
  constructor(client, roomId, transport) {
    this.client = client;
    this.roomId = roomId;
    this.transport = transport;
    this.stateKey = `_${client.getUserId()}_${client.getDeviceId()}_m.call`;
    this.createdTs = Date.now();
    this.timer = null;
  }

  content() {
    return {
      application: "m.call",
      call_id: "",
      scope: "m.room",
      device_id: this.client.getDeviceId(),
      created_ts: this.createdTs,
      // Grows on each refresh, so the membership keeps its age (focus selection goes by
      // the oldest membership) and stays valid.
      expires: Date.now() - this.createdTs + MEMBERSHIP_LIFETIME_MS,
      focus_active: { type: "sluice", focus_selection: "oldest_membership" },
      foci_preferred: [this.transport],
    };
  }

  async write() {
    await this.client.sendStateEvent(this.roomId, MEMBER_EVENT, this.content(), this.stateKey);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.write().catch((e) => console.error("membership refresh failed", e)), REFRESH_EVERY_MS);
  }

  async remove() {
    clearTimeout(this.timer);
    this.timer = null;
    await this.client.sendStateEvent(this.roomId, MEMBER_EVENT, {}, this.stateKey);
  }

  /** Removes the membership from `pagehide`: a plain keepalive request that survives the page. */
  removeOnUnload() {
    clearTimeout(this.timer);
    const url =
      `${this.client.baseUrl}/_matrix/client/v3/rooms/${encodeURIComponent(this.roomId)}` +
      `/state/${encodeURIComponent(MEMBER_EVENT)}/${encodeURIComponent(this.stateKey)}`;
    fetch(url, {
      method: "PUT",
      keepalive: true,
      headers: { Authorization: `Bearer ${this.client.getAccessToken()}`, "Content-Type": "application/json" },
      body: "{}",
    }).catch(() => {});
  }
}

/**
 * To-device messages to and from one Sluice device. With `encrypt`, messages are
 * Olm-encrypted when Sluice's device keys can be found, in the clear otherwise.
 */
export class ToDevice {
  constructor(client, transport, { encrypt, onMessage }) {
    this.client = client;
    this.sfu = { userId: transport.user_id, deviceId: transport.device_id };
    this.wantEncrypt = encrypt;
    this.encrypted = false;
    this.onMessage = onMessage;
    this.listener = ({ message, encryptionInfo }) => {
      if (message.sender !== this.sfu.userId) return;
      if (!message.type?.startsWith("m.call.")) return;
      this.onMessage(message.type, message.content, encryptionInfo != null);
    };
    client.on(ClientEvent.ReceivedToDeviceMessage, this.listener);
  }

  /**
   * Decides plain or Olm. Olm needs Sluice's device keys in the crypto store, which
   * tracks the members of encrypted rooms: in an unencrypted room signaling stays plain.
   */
  async prepare(roomId) {
    const crypto = this.client.getCrypto();
    if (!this.wantEncrypt || !crypto) return;
    if (!(await crypto.isEncryptionEnabledInRoom(roomId))) {
      this.plainBecause = "the room is not encrypted";
      return;
    }
    crypto.prepareToEncrypt(this.client.getRoom(roomId));
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline) {
      const devices = await crypto.getUserDeviceInfo([this.sfu.userId], false);
      if (devices.get(this.sfu.userId)?.has(this.sfu.deviceId)) {
        this.encrypted = true;
        return;
      }
      await sleep(250);
    }
    this.plainBecause = "Sluice's device keys were not found";
  }

  async send(type, content) {
    if (this.encrypted) {
      const batch = await this.client.getCrypto().encryptToDeviceMessages(type, [this.sfu], content);
      if (batch.batch.length === 0) throw new Error(`could not encrypt ${type} for Sluice`);
      await this.client.queueToDevice(batch);
    } else {
      await this.client.queueToDevice({
        eventType: type,
        batch: [{ userId: this.sfu.userId, deviceId: this.sfu.deviceId, payload: content }],
      });
    }
  }

  close() {
    this.client.off(ClientEvent.ReceivedToDeviceMessage, this.listener);
  }
}
