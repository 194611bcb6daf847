// End-to-end encryption of encoded media frames (insertable streams): AES-GCM with a key
// derived from a shared passphrase. Sluice forwards these frames untouched; it only reads
// the codec header bytes left in the clear (what it needs to spot VP8 keyframes and their
// size), and those are authenticated as additional data, so any change to a frame on the
// way makes decryption fail and is counted.
//
// Frame layout: clear header | ciphertext+tag | 12-byte IV | 1 byte: clear header length.

const SALT = new TextEncoder().encode("sluice-insertable-streams-v1");
const IV_LEN = 12;

/** Derives the AES-GCM key from a passphrase shared by everyone in the call. */
export async function deriveKey(passphrase) {
  const base = await crypto.subtle.importKey("raw", new TextEncoder().encode(passphrase), "PBKDF2", false, [
    "deriveKey",
  ]);
  return crypto.subtle.deriveKey(
    { name: "PBKDF2", salt: SALT, iterations: 100_000, hash: "SHA-256" },
    base,
    { name: "AES-GCM", length: 128 },
    false,
    ["encrypt", "decrypt"],
  );
}

/** Bytes left in the clear: VP8's frame tag (and keyframe size) and Opus's TOC byte. */
function clearBytes(frame, kind) {
  if (kind === "audio") return 1;
  return frame.type === "key" ? 10 : 3;
}

/** Counters, reported to the page. */
export function newCounters() {
  return { encrypted: 0, decrypted: 0, failed: 0 };
}

/** A TransformStream transform that encrypts frames with `key`. */
export function encryptor(key, kind, counters) {
  return async (frame, controller) => {
    const data = new Uint8Array(frame.data);
    const n = Math.min(clearBytes(frame, kind), data.length);
    const iv = crypto.getRandomValues(new Uint8Array(IV_LEN));
    const header = data.subarray(0, n);
    const sealed = new Uint8Array(
      await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: header }, key, data.subarray(n)),
    );
    const out = new Uint8Array(n + sealed.length + IV_LEN + 1);
    out.set(header, 0);
    out.set(sealed, n);
    out.set(iv, n + sealed.length);
    out[out.length - 1] = n;
    frame.data = out.buffer;
    counters.encrypted++;
    controller.enqueue(frame);
  };
}

/** A TransformStream transform that decrypts frames with `key`; frames that fail are dropped. */
export function decryptor(key, counters) {
  return async (frame, controller) => {
    const data = new Uint8Array(frame.data);
    if (data.length < IV_LEN + 17) {
      counters.failed++;
      return;
    }
    const n = data[data.length - 1];
    const ivAt = data.length - 1 - IV_LEN;
    if (n > ivAt - 16) {
      counters.failed++;
      return;
    }
    try {
      const header = data.subarray(0, n);
      const plain = new Uint8Array(
        await crypto.subtle.decrypt(
          { name: "AES-GCM", iv: data.subarray(ivAt, ivAt + IV_LEN), additionalData: header },
          key,
          data.subarray(n, ivAt),
        ),
      );
      const out = new Uint8Array(n + plain.length);
      out.set(header, 0);
      out.set(plain, n);
      frame.data = out.buffer;
      counters.decrypted++;
      controller.enqueue(frame);
    } catch {
      counters.failed++;
    }
  };
}
