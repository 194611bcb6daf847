// Worker side of RTCRtpScriptTransform: encrypts outgoing and decrypts incoming frames.
import { decryptor, deriveKey, encryptor, newCounters } from "./frame-crypto.js";

let setKey;
const keyPromise = new Promise((resolve) => (setKey = resolve));
const counters = newCounters();

self.onmessage = (e) => {
  if (e.data?.type === "key") setKey(deriveKey(e.data.passphrase));
};

setInterval(() => self.postMessage({ type: "counters", counters }), 500);

self.onrtctransform = async (event) => {
  const t = event.transformer;
  const { operation, kind } = t.options;
  const key = await keyPromise;
  const transform = operation === "encrypt" ? encryptor(key, kind, counters) : decryptor(key, counters);
  t.readable.pipeThrough(new TransformStream({ transform })).pipeTo(t.writable);
};
