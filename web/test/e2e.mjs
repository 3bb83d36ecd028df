// End-to-end: the demo page in headless Chromium (WebGPU on SwiftShader) with the real default
// model, served by scripts/serve.sh. Checks the message a browser without WebGPU gets; loads the
// model; shrinks the cache to 4 sinks + a ring of 28; chats until at least 20 tokens have
// streamed (well past the 32 slots); checks the cache picture (sinks, ring, write head, hover),
// that memory stayed flat and nothing failed; saves a screenshot; stops the reply; and reloads
// the page to check the model then comes from Cache Storage without a download.
//
//   node web/test/e2e.mjs            (after scripts/build-web.sh; the model in models/)
//   SCREENSHOT=docs/demo.png E2E_TOKENS=60 node web/test/e2e.mjs   also writes the README's screenshot
import { mkdirSync, copyFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { ROOT, MODEL, launch, startServer, freePort, log, watchConsole, check } from "./lib.mjs";

const SINKS = 4;
const WINDOW = 28;
const WANT_TOKENS = Number(process.env.E2E_TOKENS || 20);

if (!existsSync(join(ROOT, "models", MODEL))) throw new Error(`models/${MODEL} is missing: run scripts/fetch-model.sh`);
if (!existsSync(join(ROOT, "web/pkg/sinkstream_bg.wasm"))) throw new Error("web/pkg is missing: run scripts/build-web.sh");

const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = await startServer(join(ROOT, "scripts/serve.sh"), [String(port)], `${base}/demo/`);
const browser = await launch();
const t0 = Date.now();
try {
  const page = await browser.context.newPage();
  const errors = [];
  watchConsole(page, errors);
  let modelRequests = 0;
  page.on("request", (r) => {
    if (r.url().endsWith(".gguf")) modelRequests++;
  });
  const demo = (expr) => page.evaluate(`(() => { const d = window.sinkstreamDemo; return ${expr}; })()`);

  // A browser without WebGPU gets a message saying what to enable, and nothing to click.
  const bare = await browser.context.newPage();
  await bare.addInitScript(() => Object.defineProperty(Navigator.prototype, "gpu", { get: () => undefined }));
  await bare.goto(`${base}/demo/`);
  await bare.waitForFunction(() => window.sinkstreamDemo && window.sinkstreamDemo.state === "no-webgpu", null, { timeout: 60000 });
  const why = await bare.locator("#nogpu").textContent();
  check(
    (await bare.locator("#nogpu").isVisible()) && why.includes("enable-unsafe-webgpu") && why.includes("Safari") && (await bare.locator("#load-default").isDisabled()),
    "without WebGPU the page says what to enable and which browsers work",
  );
  await bare.close();

  await page.goto(`${base}/demo/`);
  await page.waitForFunction(() => window.sinkstreamDemo && window.sinkstreamDemo.state !== "starting", null, { timeout: 60000 });
  check(await page.locator("#nogpu").isHidden(), "WebGPU is available (no 'no WebGPU' message)");
  check((await demo("d.state")) === "idle", "the demo waits for a click when the model is not cached");

  // Load the default model from the page's own origin.
  await page.click("#load-default");
  await page.waitForFunction(() => window.sinkstreamDemo.state !== "loading", null, { timeout: 300000, polling: 250 });
  check((await demo("d.state")) === "ready", `the model loaded (${await page.locator("#model-line").textContent()})`);
  check(modelRequests === 1 && (await demo("d.loadedFrom")) === "network", "it came from the network once");
  log(`loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // A small cache, so the chat streams far past it.
  await page.fill("#sinks", String(SINKS));
  await page.fill("#window", String(WINDOW));
  await page.fill("#temperature", "0.3");
  await page.click("#apply");
  await page.waitForFunction((w) => document.getElementById("cache").dataset.window === String(w), WINDOW, { timeout: 10000 });
  const before = await demo("d.llm.stats()");
  check(before.cacheSlots === SINKS + WINDOW && before.tokensStreamed === 0, `cache rebuilt with ${SINKS}+${WINDOW} slots`);

  // Chat until at least WANT_TOKENS tokens have streamed (a reply may end early: send another).
  const messages = [
    "Tell me a long story about a lighthouse keeper and a cat.",
    "Go on, what happened next?",
    "Tell me more about the cat.",
  ];
  let sent = 0;
  const tChat = Date.now();
  while ((await demo("d.pieces")) < WANT_TOKENS) {
    if (!(await demo("d.llm.busy"))) {
      if (sent === messages.length) throw new Error(`only ${await demo("d.pieces")} pieces after ${sent} messages`);
      await page.fill("#input", messages[sent++]);
      await page.press("#input", "Enter");
      log(`sent message ${sent}`);
    }
    await page.waitForFunction(
      (n) => window.sinkstreamDemo.pieces >= n || !window.sinkstreamDemo.llm.busy,
      WANT_TOKENS,
      { timeout: 300000, polling: 500 },
    );
    if ((await demo("d.errors.length")) > 0) break;
  }
  const pieces = await demo("d.pieces");
  const st = await demo("d.llm.stats()");
  log(`${pieces} pieces in ${((Date.now() - tChat) / 1000).toFixed(1)} s; ${JSON.stringify(st)}`);
  check((await demo("d.errors")).length === 0, "no errors in the demo");
  check(pieces >= WANT_TOKENS, `at least ${WANT_TOKENS} tokens streamed into the chat (${pieces})`);
  check(st.tokensStreamed > st.cacheSlots, `the stream (${st.tokensStreamed} tokens) went past the ${st.cacheSlots}-slot cache`);
  check(st.cacheFill === st.cacheSlots, "the cache is full");
  check(st.gpuBytes === before.gpuBytes, `GPU memory stayed at ${before.gpuBytes} bytes`);

  // The cache picture: every sink and ring slot drawn filled, the write head on the ring.
  const ds = await page.evaluate(() => ({ ...document.getElementById("cache").dataset }));
  check(Number(ds.sinks) === SINKS && Number(ds.sinksFilled) === SINKS, `the picture shows ${SINKS} filled sink slots`);
  check(Number(ds.window) === WINDOW && Number(ds.ringFilled) === WINDOW, `the picture shows a full ring of ${WINDOW} slots`);
  check(Number(ds.writeHead) >= SINKS && Number(ds.writeHead) < SINKS + WINDOW, `the write head (slot ${ds.writeHead}) is on the ring`);
  const text = await page.locator("#cache-line").textContent();
  check(/tokens streamed through a 32-slot cache/.test(text), `the caption says so: "${text}"`);
  // Hovering a sink slot and a ring slot shows the token each holds.
  await page.locator("#cache").scrollIntoViewIfNeeded();
  for (const slot of [0, SINKS + 3]) {
    const at = await demo(`d.slotCenter(${slot})`);
    const box = await page.locator("#cache").boundingBox();
    await page.mouse.move(box.x + at.x, box.y + at.y);
    await page.waitForSelector("#tip:not([hidden])", { timeout: 5000 });
    const tip = await page.locator("#tip").textContent();
    check(tip.includes(`slot ${slot}`) && /token #[\d,]+ \(id \d+\)/.test(tip), `hovering slot ${slot} shows its token: ${JSON.stringify(tip)}`);
  }
  await page.mouse.move(5, 5);

  // The screenshot, mid-conversation (the reply may still be streaming).
  const outDir = join(ROOT, "target/web-test");
  mkdirSync(outDir, { recursive: true });
  const shot = join(outDir, "demo-e2e.png");
  await page.screenshot({ path: shot, fullPage: true });
  log(`screenshot: ${shot}`);
  if (process.env.SCREENSHOT) {
    copyFileSync(shot, join(ROOT, process.env.SCREENSHOT));
    log(`copied to ${process.env.SCREENSHOT}`);
  }

  // Stop works (if the reply is still going), and the page settles with no error.
  if (await demo("d.llm.busy")) {
    await page.click("#stop");
    await page.waitForFunction(() => !window.sinkstreamDemo.llm.busy, null, { timeout: 120000 });
    const last = await demo("d.replies[d.replies.length - 1]");
    check(last.stopReason === "stopped", "the stop button ended the reply");
  }
  check(errors.length === 0, `no console errors (${errors.length})`);

  // A reload takes the model from Cache Storage: no second download.
  await page.reload();
  await page.waitForFunction(() => window.sinkstreamDemo && window.sinkstreamDemo.state === "ready", null, { timeout: 300000, polling: 250 });
  check((await demo("d.loadedFrom")) === "cache" && modelRequests === 1, "after a reload the model came from Cache Storage, not the network");
  check(errors.length === 0, "no console errors after the reload");
  log(`e2e passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
} finally {
  await browser.close();
  server.stop();
}
