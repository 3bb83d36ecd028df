// sinkstream in the browser: a small wrapper over the wasm-bindgen API (pkg/sinkstream.js) that
// loads the WebAssembly once and turns the per-piece callbacks into async iterators.
import initWasm, { Engine, version as wasmVersion } from "./pkg/sinkstream.js";

let ready = null;

/** Loads the WebAssembly module (once). Called by `load`; call it yourself to preload. */
export function init(wasmUrl) {
  if (!ready) {
    ready = initWasm(wasmUrl ? { module_or_path: wasmUrl } : undefined).catch((e) => {
      ready = null;
      throw e;
    });
  }
  return ready;
}

/** The library's version. */
export async function version() {
  await init();
  return wasmVersion();
}

export const DEFAULT_CACHE_NAME = "sinkstream-models";

export const NO_WEBGPU_HELP =
  "This browser has no WebGPU. sinkstream needs it: use a recent Chrome or Edge (113+, on by " +
  "default on Windows, macOS and ChromeOS; on Linux enable chrome://flags/#enable-unsafe-webgpu " +
  "and chrome://flags/#enable-vulkan), Safari 26+, or Firefox 141+ on Windows (elsewhere set " +
  "dom.webgpu.enabled in about:config). Pages must be served over https or from localhost.";

/**
 * Whether WebGPU works here: `{ok: true, adapter}` or `{ok: false, reason}` (a message saying
 * what to enable and which browsers support it).
 */
export async function checkWebGPU() {
  const nav = globalThis.navigator;
  if (!globalThis.isSecureContext) {
    return { ok: false, reason: "WebGPU needs a secure context: serve the page over https or from http://127.0.0.1 / http://localhost. " + NO_WEBGPU_HELP };
  }
  if (!nav || !nav.gpu) {
    return { ok: false, reason: NO_WEBGPU_HELP };
  }
  let adapter = null;
  try {
    adapter = await nav.gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return { ok: false, reason: `requestAdapter failed: ${e && e.message ? e.message : e}. ` + NO_WEBGPU_HELP };
  }
  if (!adapter) {
    return { ok: false, reason: "WebGPU is present but offers no adapter (GPU blocklisted or disabled). " + NO_WEBGPU_HELP };
  }
  const info = adapter.info || {};
  return { ok: true, adapter: [info.vendor, info.architecture, info.description].filter(Boolean).join(" ") || "unknown" };
}

/**
 * Loads a model and returns a `Sinkstream`. `source` is one of:
 * - a URL (string or URL) of a .gguf file, or of a Hugging Face checkpoint directory when it ends
 *   with "/" (config.json, tokenizer.json, tokenizer_config.json, model.safetensors or the index
 *   and its shards are fetched from it);
 * - a `File` or `Blob` (a .gguf), a `Response`, an `ArrayBuffer` or a `Uint8Array` (a .gguf);
 * - the files of a Hugging Face checkpoint: a `FileList` or an array of `File`s (a picked
 *   folder or several picked files), or a `Map`/plain object from file name to `Uint8Array`,
 *   `ArrayBuffer`, `Blob` or URL.
 * Options: `onProgress({phase, loaded, total, file})`, `cacheName` (Cache Storage name for URLs;
 * default "sinkstream-models", `null` to not cache), `system`, cache settings (`policy`, `sinks`,
 * `window`, `maxContext`, `batch`), sampling settings (`temperature`, `topK`, `topP`,
 * `repetitionPenalty`, `seed`), `wasmUrl`.
 */
export async function load(source, options = {}) {
  const { wasmUrl, ...opts } = options;
  await init(wasmUrl);
  let engine;
  if (typeof source === "string" || source instanceof URL) {
    const url = String(source);
    if (!("cacheName" in opts)) opts.cacheName = DEFAULT_CACHE_NAME;
    if (opts.cacheName === null) delete opts.cacheName;
    engine = await Engine.fromUrl(url, opts);
  } else if (isFileSet(source)) {
    delete opts.cacheName;
    engine = await Engine.fromFiles(await readFileSet(source, opts.onProgress), opts);
  } else {
    delete opts.cacheName;
    let bytes = source;
    if (typeof Blob !== "undefined" && source instanceof Blob) {
      if (!opts.name && source.name) opts.name = source.name;
      bytes = await readWithProgress(source.stream(), source.size, opts.onProgress);
    } else if (typeof Response !== "undefined" && source instanceof Response) {
      const total = Number(source.headers.get("content-length")) || 0;
      bytes = await readWithProgress(source.body, total, opts.onProgress);
    }
    engine = await Engine.fromBytes(bytes, opts);
  }
  return new Sinkstream(engine);
}

/** Several files (a checkpoint) rather than one model file. */
function isFileSet(source) {
  if (typeof FileList !== "undefined" && source instanceof FileList) return true;
  if (Array.isArray(source) || source instanceof Map) return true;
  if (source === null || typeof source !== "object") return false;
  if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) return false;
  if (typeof Blob !== "undefined" && source instanceof Blob) return false;
  if (typeof Response !== "undefined" && source instanceof Response) return false;
  return true;
}

/** A Map from file name to bytes, reading Files/Blobs and fetching URLs (with progress). */
async function readFileSet(source, onProgress) {
  let entries;
  if (source instanceof Map) entries = [...source.entries()];
  else if (Array.isArray(source) || (typeof FileList !== "undefined" && source instanceof FileList)) {
    // A picked folder's files carry their path in webkitRelativePath; the name is enough.
    entries = [...source].map((f) => [f.webkitRelativePath || f.name, f]);
  } else entries = Object.entries(source);
  const out = new Map();
  for (const [name, value] of entries) {
    const file = name.split(/[\\/]/).pop();
    const report = onProgress ? (p) => onProgress({ ...p, file }) : undefined;
    let bytes = value;
    if (typeof Blob !== "undefined" && value instanceof Blob) {
      bytes = await readWithProgress(value.stream(), value.size, report);
    } else if (typeof value === "string" || value instanceof URL) {
      const r = await fetch(String(value));
      if (!r.ok) throw new Error(`cannot fetch ${value}: HTTP ${r.status} ${r.statusText}`);
      const total = Number(r.headers.get("content-length")) || 0;
      bytes = await readWithProgress(r.body, total, report, "download");
    }
    out.set(name, bytes);
  }
  return out;
}

async function readWithProgress(stream, total, onProgress, phase = "read") {
  const chunks = [];
  let loaded = 0;
  const reader = stream.getReader();
  onProgress?.({ phase, loaded, total });
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    onProgress?.({ phase, loaded, total: Math.max(total, loaded) });
  }
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** Removes a model cached by `load` (or every cached model when `url` is omitted). */
export async function forgetCachedModel(url, cacheName = DEFAULT_CACHE_NAME) {
  if (!globalThis.caches) return false;
  if (url === undefined) return caches.delete(cacheName);
  const c = await caches.open(cacheName);
  return c.delete(String(url));
}

/** Whether `url` is in Cache Storage (so `load` will not download it). */
export async function isModelCached(url, cacheName = DEFAULT_CACHE_NAME) {
  if (!globalThis.caches) return false;
  const c = await caches.open(cacheName);
  return (await c.match(String(url))) !== undefined;
}

/**
 * A running generation: an async iterator of text pieces (`for await (const piece of ...)`)
 * and a promise of the final result (`.result`). Leaving the loop early stops the generation.
 */
class TextStream {
  constructor(engine, start) {
    this._engine = engine;
    this._queue = [];
    this._wake = null;
    this._done = false;
    this._error = null;
    this.result = start((piece) => {
      this._queue.push(piece);
      this._notify();
    }).then(
      (r) => {
        this._done = true;
        this._notify();
        return r;
      },
      (e) => {
        this._error = e;
        this._done = true;
        this._notify();
        throw e;
      },
    );
    // The error is delivered through the iterator; an unread `result` must not be "unhandled".
    this.result.catch(() => {});
  }

  _notify() {
    const w = this._wake;
    this._wake = null;
    if (w) w();
  }

  async next() {
    for (;;) {
      if (this._queue.length) return { value: this._queue.shift(), done: false };
      if (this._error) {
        const e = this._error;
        this._error = null;
        throw e;
      }
      if (this._done) return { value: undefined, done: true };
      await new Promise((r) => (this._wake = r));
    }
  }

  async return() {
    this._engine.stop();
    await this.result.catch(() => {});
    this._queue.length = 0;
    return { value: undefined, done: true };
  }

  /** The whole text, once the generation ends. */
  async text() {
    return (await this.result).text;
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

/** A model on the GPU with one stream (its KV cache) through it. */
export class Sinkstream {
  constructor(engine) {
    this.engine = engine;
  }

  /** Continues the stream with plain text; yields the generated pieces. */
  generate(prompt, options = {}) {
    const { onPiece, ...opts } = options;
    return new TextStream(this.engine, (push) =>
      this.engine.generate(prompt, (p) => {
        push(p);
        onPiece?.(p);
      }, opts),
    );
  }

  /** Sends a chat message (multi-round: earlier turns stay in the cache); yields the reply. */
  chat(message, options = {}) {
    const { onPiece, ...opts } = options;
    return new TextStream(this.engine, (push) =>
      this.engine.chat(message, (p) => {
        push(p);
        onPiece?.(p);
      }, opts),
    );
  }

  /** Stops the generation in flight (its stream ends with stopReason "stopped"). */
  stop() {
    this.engine.stop();
  }

  get busy() {
    return this.engine.busy;
  }

  reset() {
    this.engine.reset();
  }

  setCache(options) {
    this.engine.setCache(options);
  }

  setSampling(options) {
    this.engine.setSampling(options);
  }

  setSystem(system) {
    this.engine.setSystem(system ?? null);
  }

  settings() {
    return this.engine.settings();
  }

  stats() {
    return this.engine.stats();
  }

  cacheMap() {
    return this.engine.cacheMap();
  }

  info() {
    return this.engine.info();
  }

  encode(text) {
    return this.engine.encode(text);
  }

  decode(ids) {
    return this.engine.decode(Uint32Array.from(ids));
  }

  tokenText(id) {
    return this.engine.tokenText(id);
  }

  /** Frees the GPU buffers and the WebAssembly memory held by this model. */
  free() {
    this.engine.free();
  }
}

export { Engine };
