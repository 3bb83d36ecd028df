// The sinkstream demo: chat with a model on WebGPU and watch its attention-sink KV cache.
import { load, checkWebGPU, isModelCached, forgetCachedModel } from "../index.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
// The default model sits next to the demo (scripts/serve.sh links models/ there); ?model=URL overrides.
const MODEL_URL = new URL(params.get("model") || "../models/SmolLM2-135M-Instruct.Q4_1.gguf", location.href).href;
const REPETITION_PENALTY = 1.1; // as the CLI's chat: keeps a small model out of loops

// State the end-to-end test reads (web/test/e2e.mjs).
const demo = {
  state: "starting",
  llm: null,
  loadedFrom: null,
  pieces: 0,
  replies: [],
  errors: [],
};
window.sinkstreamDemo = demo;

let current = null; // the TextStream of the reply in flight
let drawQueued = false;
const samples = []; // {rate, mem} once a second

// ---------------------------------------------------------------- messages and errors

function showError(e) {
  const msg = e && e.message ? e.message : String(e);
  demo.errors.push(msg);
  const el = $("error");
  el.textContent = msg;
  el.hidden = false;
  console.error("sinkstream demo:", msg);
}

function clearError() {
  $("error").hidden = true;
}

function addMessage(role, text) {
  const empty = $("messages").querySelector(".empty");
  if (empty) empty.remove();
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.append(body);
  $("messages").append(div);
  scrollDown();
  return div;
}

function scrollDown() {
  const m = $("messages");
  m.scrollTop = m.scrollHeight;
}

const mb = (b) => (b / 1048576).toFixed(1) + " MB";
const fmt = (n) => Math.round(n).toLocaleString("en-US");

// ---------------------------------------------------------------- loading

function cacheSettingsFromForm() {
  return {
    policy: $("policy").value,
    sinks: Number($("sinks").value),
    window: Number($("window").value),
  };
}

function samplingFromForm() {
  return {
    temperature: Number($("temperature").value),
    topP: Number($("top-p").value),
    repetitionPenalty: REPETITION_PENALTY,
  };
}

const PHASES = {
  download: "Downloading",
  cache: "Reading from the browser's cache",
  read: "Reading the file",
  parse: "Parsing the GGUF file and building the tokenizer",
  gpu: "Uploading the weights to the GPU and compiling the shaders",
  ready: "Ready",
};

function setBusyUi() {
  const loaded = !!demo.llm;
  const busy = loaded && demo.llm.busy;
  const loading = demo.state === "loading";
  $("input").disabled = !loaded;
  $("send").disabled = !loaded || busy;
  $("stop").disabled = !busy;
  $("new-chat").disabled = !loaded || busy;
  $("apply").disabled = !loaded || busy;
  $("load-default").disabled = loading || demo.state === "no-webgpu";
  $("file").disabled = loading || demo.state === "no-webgpu";
}

async function loadModel(source, label) {
  if (demo.state === "loading") return;
  clearError();
  if (demo.llm) {
    if (demo.llm.busy) {
      demo.llm.stop();
      await current?.result.catch(() => {});
    }
    demo.llm.free();
    demo.llm = null;
  }
  demo.state = "loading";
  setBusyUi();
  $("progress").hidden = false;
  $("progress-fill").style.width = "0%";
  let fromCache = false;
  const t0 = performance.now();
  try {
    const llm = await load(source, {
      ...cacheSettingsFromForm(),
      ...samplingFromForm(),
      onProgress: ({ phase, loaded, total }) => {
        if (phase === "cache") fromCache = true;
        const what = PHASES[phase] || phase;
        let pct = null;
        if (["download", "cache", "read"].includes(phase)) {
          pct = total > 0 ? Math.min(1, loaded / total) * 85 : null;
          $("progress-text").textContent = `${what}: ${mb(loaded)}${total ? " of " + mb(total) : ""}`;
        } else {
          pct = { parse: 88, gpu: 93, ready: 100 }[phase] ?? null;
          $("progress-text").textContent = `${what}…`;
        }
        if (pct !== null) $("progress-fill").style.width = pct.toFixed(1) + "%";
      },
    });
    demo.llm = llm;
    demo.loadedFrom = typeof source === "string" ? (fromCache ? "cache" : "network") : "file";
    demo.state = "ready";
    const i = llm.info();
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    const where = { cache: "from the browser's cache", network: "downloaded", file: "from your file" }[demo.loadedFrom];
    $("model-line").textContent =
      `${label}: ${i.layers} layers, dim ${i.dim}, vocab ${fmt(i.vocab)} · ${where} in ${secs} s · GPU: ${demo.adapter || i.adapter}`;
    $("progress").hidden = true;
    $("load-default").textContent = "Reload the model";
    $("input").focus();
    queueDraw();
  } catch (e) {
    demo.state = "error";
    $("progress").hidden = true;
    showError(e);
  } finally {
    if (demo.state === "loading") demo.state = "error";
    setBusyUi();
  }
}

// ---------------------------------------------------------------- chat

async function send() {
  const text = $("input").value.trim();
  const llm = demo.llm;
  if (!text || !llm || llm.busy) return;
  clearError();
  $("input").value = "";
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  const body = bubble.querySelector(".body");
  current = llm.chat(text, { maxTokens: Number($("max-tokens").value) || 400 });
  setBusyUi();
  try {
    for await (const piece of current) {
      body.textContent += piece;
      demo.pieces += 1;
      scrollDown();
      queueDraw();
    }
    const r = await current.result;
    demo.replies.push({ text: r.text, tokens: r.tokens, stopReason: r.stopReason });
    const why = { stopToken: "end of reply", maxTokens: "max tokens reached", stopped: "stopped" }[r.stopReason];
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${r.tokens} tokens · ${r.tokensPerSecond.toFixed(2)} tokens/s · prompt ${r.promptTokens} tokens · ${why}`;
    bubble.append(meta);
  } catch (e) {
    showError(e);
  } finally {
    bubble.classList.remove("streaming");
    current = null;
    setBusyUi();
    queueDraw();
  }
}

function note(text) {
  addMessage("note", text);
}

// ---------------------------------------------------------------- the cache picture

const cv = $("cache");
const ctx = cv.getContext("2d");
let geometry = null; // for hit-testing the hover

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function setupCanvas(c) {
  const dpr = window.devicePixelRatio || 1;
  const w = c.width / (c._dpr || 1);
  const h = c.height / (c._dpr || 1);
  if (c._dpr !== dpr) {
    c.width = w * dpr;
    c.height = h * dpr;
    c._dpr = dpr;
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { g, w, h };
}

function drawCache(map, stats) {
  const { g, w, h } = setupCanvas(cv);
  g.clearRect(0, 0, w, h);
  const S = map.sinks;
  const W = map.window;
  const slots = map.slots;
  const newest = map.tokensStreamed - 1;
  const sinkColor = css("--sink");
  const ringColor = css("--ring");
  const emptyColor = css("--empty");
  const headColor = css("--head");

  // the sinks: a row of squares above the ring
  const sq = Math.max(6, Math.min(18, Math.floor((w - 40) / Math.max(S, 1)) - 3));
  const sinkRects = [];
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = css("--dim");
  g.fillText(S ? `${S} sink slot${S > 1 ? "s" : ""}: the first tokens, kept forever` : "no sink slots (window policy)", 10, 14);
  for (let i = 0; i < S; i++) {
    const x = 10 + i * (sq + 3);
    const y = 22;
    g.fillStyle = slots[i] ? sinkColor : emptyColor;
    g.fillRect(x, y, sq, sq);
    sinkRects.push([x, y, sq, sq]);
  }

  // the ring: W segments clockwise from the top
  const cx = w / 2;
  const cy = 34 + sq + (h - 34 - sq) / 2;
  const R = Math.min(w / 2 - 12, (h - 34 - sq) / 2 - 6);
  const r = R * 0.74;
  const step = (2 * Math.PI) / W;
  const gap = W > 400 ? 0 : Math.min(step * 0.18, 0.02);
  let ringFilled = 0;
  for (let k = 0; k < W; k++) {
    const s = slots[S + k];
    const a0 = -Math.PI / 2 + k * step + gap / 2;
    const a1 = a0 + step - gap;
    g.beginPath();
    g.arc(cx, cy, R, a0, a1);
    g.arc(cx, cy, r, a1, a0, true);
    g.closePath();
    if (s) {
      ringFilled++;
      const age = Math.min(1, (newest - s.n) / W);
      g.globalAlpha = 1 - 0.72 * age;
      g.fillStyle = ringColor;
    } else {
      g.globalAlpha = 1;
      g.fillStyle = emptyColor;
    }
    g.fill();
  }
  g.globalAlpha = 1;

  // the write head: the ring slot the next token goes to
  const fill = stats.cacheFill;
  const headActive = map.tokensStreamed >= S;
  const k = map.writeHead - S;
  if (headActive && k >= 0 && k < W) {
    const a = -Math.PI / 2 + (k + 0.5) * step;
    g.strokeStyle = headColor;
    g.lineWidth = 3;
    g.beginPath();
    g.moveTo(cx + Math.cos(a) * (r - 14), cy + Math.sin(a) * (r - 14));
    g.lineTo(cx + Math.cos(a) * (R + 8), cy + Math.sin(a) * (R + 8));
    g.stroke();
    g.fillStyle = headColor;
    g.beginPath();
    g.arc(cx + Math.cos(a) * (R + 8), cy + Math.sin(a) * (R + 8), 4, 0, 2 * Math.PI);
    g.fill();
  }

  // the centre: how much has streamed through how little
  g.textAlign = "center";
  g.fillStyle = css("--text");
  g.font = "bold 26px system-ui, sans-serif";
  g.fillText(fmt(map.tokensStreamed), cx, cy - 4);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = css("--dim");
  g.fillText("tokens streamed", cx, cy + 14);
  g.fillText(`through ${fmt(S + W)} slots`, cx, cy + 30);
  g.textAlign = "start";

  geometry = { S, W, sinkRects, cx, cy, R, r, step, slots };
  Object.assign(cv.dataset, {
    sinks: S,
    window: W,
    sinksFilled: slots.slice(0, S).filter(Boolean).length,
    ringFilled,
    writeHead: map.writeHead,
    streamed: map.tokensStreamed,
    fill,
  });
}

// Where slot i is drawn, in CSS pixels from the canvas's top left (for tests and tooling).
demo.slotCenter = (i) => {
  const G = geometry;
  if (!G) return null;
  const scale = cv.getBoundingClientRect().width / (cv.width / (cv._dpr || 1));
  if (i < G.S) {
    const [x, y, w, h] = G.sinkRects[i];
    return { x: (x + w / 2) * scale, y: (y + h / 2) * scale };
  }
  const a = -Math.PI / 2 + (i - G.S + 0.5) * G.step;
  const d = (G.R + G.r) / 2;
  return { x: (G.cx + Math.cos(a) * d) * scale, y: (G.cy + Math.sin(a) * d) * scale };
};

function slotAt(x, y) {
  const G = geometry;
  if (!G) return -1;
  for (let i = 0; i < G.sinkRects.length; i++) {
    const [rx, ry, rw, rh] = G.sinkRects[i];
    if (x >= rx && x <= rx + rw && y >= ry && y <= ry + rh) return i;
  }
  const dx = x - G.cx;
  const dy = y - G.cy;
  const d = Math.hypot(dx, dy);
  if (d < G.r || d > G.R) return -1;
  let a = Math.atan2(dy, dx) + Math.PI / 2;
  if (a < 0) a += 2 * Math.PI;
  return G.S + (Math.floor(a / G.step) % G.W);
}

cv.addEventListener("mousemove", (ev) => {
  const rect = cv.getBoundingClientRect();
  const scale = (cv.width / (cv._dpr || 1)) / rect.width;
  const x = (ev.clientX - rect.left) * scale;
  const y = (ev.clientY - rect.top) * scale;
  const i = slotAt(x, y);
  const tip = $("tip");
  if (i < 0 || !geometry) {
    tip.hidden = true;
    return;
  }
  const s = geometry.slots[i];
  const kind = i < geometry.S ? "sink" : "ring";
  tip.textContent = s
    ? `${kind} slot ${i}\ntoken #${fmt(s.n)} (id ${s.id})\n${JSON.stringify(s.text)}`
    : `${kind} slot ${i}\nempty`;
  tip.hidden = false;
  tip.style.left = Math.min(ev.clientX - rect.left + 14, rect.width - 150) + "px";
  tip.style.top = ev.clientY - rect.top + 14 + "px";
});
cv.addEventListener("mouseleave", () => ($("tip").hidden = true));

// ---------------------------------------------------------------- speed and memory

const chart = $("chart");

function drawChart() {
  const { g, w, h } = setupCanvas(chart);
  g.clearRect(0, 0, w, h);
  const pad = { l: 30, r: 50, t: 8, b: 16 };
  const pw = w - pad.l - pad.r;
  const ph = h - pad.t - pad.b;
  g.strokeStyle = css("--line");
  g.lineWidth = 1;
  g.strokeRect(pad.l, pad.t, pw, ph);
  if (samples.length < 2) {
    g.fillStyle = css("--dim");
    g.font = "12px system-ui, sans-serif";
    g.fillText("waiting for data…", pad.l + 8, pad.t + 18);
    return;
  }
  const maxRate = Math.max(1, ...samples.map((s) => s.rate)) * 1.15;
  const maxMem = Math.max(1, ...samples.map((s) => s.mem)) * 1.25;
  const n = samples.length;
  const X = (i) => pad.l + (i / (SAMPLE_KEEP - 1)) * pw + (SAMPLE_KEEP - n) * (pw / (SAMPLE_KEEP - 1));
  const line = (key, max, color) => {
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    samples.forEach((s, i) => {
      const y = pad.t + ph - (s[key] / max) * ph;
      if (i === 0) g.moveTo(X(i), y);
      else g.lineTo(X(i), y);
    });
    g.stroke();
  };
  line("mem", maxMem, css("--mem"));
  line("rate", maxRate, css("--rate"));
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = css("--rate");
  g.fillText(maxRate.toFixed(1), 4, pad.t + 10);
  g.fillText("0", 4, pad.t + ph);
  g.fillStyle = css("--mem");
  g.fillText(Math.round(maxMem / 1048576) + " MB", w - pad.r + 4, pad.t + 10);
  g.fillText("0", w - pad.r + 4, pad.t + ph);
  g.fillStyle = css("--dim");
  g.fillText(`last ${SAMPLE_KEEP} s`, pad.l + 4, h - 3);
}

const SAMPLE_KEEP = 120;
setInterval(() => {
  if (!demo.llm) return;
  const st = demo.llm.stats();
  samples.push({ rate: st.busy ? st.tokensPerSecond : 0, mem: st.gpuBytes + st.wasmBytes });
  if (samples.length > SAMPLE_KEEP) samples.shift();
  drawChart();
}, 1000);

function drawStats(st) {
  const rows = [
    ["tokens streamed", fmt(st.tokensStreamed)],
    ["cache fill", `${fmt(st.cacheFill)} / ${fmt(st.cacheSlots)} slots (${st.policy})`],
    ["write head", st.tokensStreamed >= st.sinks ? `slot ${st.writeHead}` : "filling the sinks"],
    ["tokens/s (this reply)", st.tokensPerSecond.toFixed(2)],
    ["prompt tokens/s", st.promptTokensPerSecond.toFixed(1)],
    ["GPU memory", `${mb(st.gpuBytes)} in ${fmt(st.gpuBuffers)} buffers`],
    ["wasm memory", mb(st.wasmBytes)],
  ];
  $("stats").innerHTML = "";
  for (const [k, v] of rows) {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    const b = document.createElement("td");
    a.textContent = k;
    b.textContent = v;
    tr.append(a, b);
    $("stats").append(tr);
  }
  const over = st.tokensStreamed > st.cacheSlots;
  $("cache-line").textContent = over
    ? `${fmt(st.tokensStreamed)} tokens streamed through a ${fmt(st.cacheSlots)}-slot cache: ${(st.tokensStreamed / st.cacheSlots).toFixed(1)}× its size, and GPU memory is still ${mb(st.gpuBytes)}.`
    : `${fmt(st.tokensStreamed)} of ${fmt(st.cacheSlots)} slots used. Keep going: past ${fmt(st.cacheSlots)} the ring wraps and memory stays at ${mb(st.gpuBytes)}.`;
}

function queueDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    if (!demo.llm) return;
    const st = demo.llm.stats();
    drawCache(demo.llm.cacheMap(), st);
    drawStats(st);
  });
}

// ---------------------------------------------------------------- settings

$("settings").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const llm = demo.llm;
  if (!llm) return;
  clearError();
  try {
    const want = cacheSettingsFromForm();
    const have = llm.settings();
    llm.setSampling(samplingFromForm());
    if (want.policy !== have.policy || want.sinks !== have.sinks || want.window !== have.window) {
      llm.setCache(want);
      $("messages").innerHTML = "";
      const S = want.policy === "window" ? 0 : want.sinks;
      note(`New cache: ${S} sink${S === 1 ? "" : "s"} + a ring of ${want.window} (${want.policy} policy). New chat.`);
    }
  } catch (e) {
    showError(e);
  }
  queueDraw();
});

for (const id of ["temperature", "top-p"]) {
  $(id).addEventListener("change", () => {
    if (!demo.llm) return;
    try {
      demo.llm.setSampling(samplingFromForm());
    } catch (e) {
      showError(e);
    }
  });
}

$("forget").addEventListener("click", async () => {
  await forgetCachedModel(MODEL_URL);
  note("The model was removed from the browser's cache; the next load downloads it again.");
});

// ---------------------------------------------------------------- wiring

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  send();
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    send();
  }
});
$("stop").addEventListener("click", () => demo.llm?.stop());
$("new-chat").addEventListener("click", () => {
  try {
    demo.llm.reset();
    $("messages").innerHTML = "";
    note("New chat: the cache is empty again.");
  } catch (e) {
    showError(e);
  }
  queueDraw();
});
$("load-default").addEventListener("click", () => loadModel(MODEL_URL, MODEL_URL.split("/").pop()));
/** One .gguf, or the files of a Hugging Face checkpoint (those with a config.json). */
function pickedModel(files) {
  const list = [...(files || [])];
  if (list.some((f) => f.name === "config.json")) return [list, "Hugging Face checkpoint"];
  const f = list.find((f) => f.name.endsWith(".gguf")) || list[0];
  return f ? [f, f.name] : [null, null];
}

$("file").addEventListener("change", (ev) => {
  const [source, label] = pickedModel(ev.target.files);
  if (source) loadModel(source, label);
});
document.addEventListener("dragover", (ev) => {
  ev.preventDefault();
  document.body.classList.add("dragging");
});
document.addEventListener("dragleave", (ev) => {
  if (!ev.relatedTarget) document.body.classList.remove("dragging");
});
document.addEventListener("drop", (ev) => {
  ev.preventDefault();
  document.body.classList.remove("dragging");
  const [source, label] = pickedModel(ev.dataTransfer?.files);
  if (source && demo.state !== "no-webgpu") loadModel(source, label);
});
window.addEventListener("unhandledrejection", (ev) => showError(ev.reason));

async function start() {
  setBusyUi();
  const gpu = await checkWebGPU();
  if (!gpu.ok) {
    demo.state = "no-webgpu";
    $("nogpu-reason").textContent = gpu.reason;
    $("nogpu").hidden = false;
    setBusyUi();
    return;
  }
  demo.adapter = gpu.adapter;
  demo.state = "idle";
  $("model-line").textContent = `WebGPU adapter: ${gpu.adapter}. Model: ${MODEL_URL}`;
  setBusyUi();
  drawChart();
  // A model already in Cache Storage loads at once (no download); otherwise wait for a click.
  if (params.get("autoload") !== "0" && (params.get("autoload") === "1" || (await isModelCached(MODEL_URL)))) {
    loadModel(MODEL_URL, MODEL_URL.split("/").pop());
  }
}

start();
