// Page side of media end-to-end encryption: one worker runs every frame transform.

/** Frame encryption for one call, keyed by a shared passphrase. */
export class MediaE2ee {
  constructor(passphrase) {
    if (typeof RTCRtpScriptTransform === "undefined") {
      throw new Error("this browser has no RTCRtpScriptTransform: media end-to-end encryption is unavailable");
    }
    this.worker = new Worker(new URL("./e2ee-worker.js", import.meta.url), { type: "module" });
    this.worker.postMessage({ type: "key", passphrase });
    /** Latest counters from the worker: frames encrypted, decrypted, and failed to decrypt. */
    this.counters = { encrypted: 0, decrypted: 0, failed: 0 };
    this.worker.onmessage = (e) => {
      if (e.data?.type === "counters") this.counters = e.data.counters;
    };
  }

  /** Encrypts what `sender` sends. */
  attachSender(sender, kind) {
    sender.transform = new RTCRtpScriptTransform(this.worker, { operation: "encrypt", kind });
  }

  /** Decrypts what `receiver` receives. */
  attachReceiver(receiver, kind) {
    receiver.transform = new RTCRtpScriptTransform(this.worker, { operation: "decrypt", kind });
  }

  close() {
    this.worker.terminate();
  }
}
