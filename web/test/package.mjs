// The npm package as a user gets it: `npm pack` in web/, install the tarball into a scratch
// project, import "sinkstream" from a page in headless Chromium through an import map, generate 10
// tokens greedily, and check they equal the native binary's greedy tokens for the same prompt
// (target/release/sinkstream generate --temperature 0). Then the same for a Hugging Face
// checkpoint directory (the default model converted to f16 by `sinkstream convert`), loaded from
// its URL: load("./smollm2-hf/").
//
//   node web/test/package.mjs        (after scripts/build-web.sh and cargo build --release)
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, symlinkSync, existsSync, rmSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, MODEL, launch, startServer, freePort, log, watchConsole, check } from "./lib.mjs";

const PROMPT = "The capital of France is Paris. The capital of Germany is";
const TOKENS = 10;
const HF_TOKENS = 5;
const t0 = Date.now();

// The native reference.
const bin = join(ROOT, "target/release/sinkstream");
if (!existsSync(bin)) {
  log("building the native binary (cargo build --release)");
  execFileSync("cargo", ["build", "--release", "--locked"], { cwd: ROOT, stdio: "inherit" });
}
const xdg = mkdtempSync(join(tmpdir(), "sinkstream-xdg-"));
const native = execFileSync(
  bin,
  ["generate", "--temperature", "0", "--max-tokens", String(TOKENS), "--prompt", PROMPT,
   "--model", join(ROOT, "models", MODEL)],
  { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, XDG_RUNTIME_DIR: xdg } },
);
log(`native greedy: ${JSON.stringify(native)}`);

// npm pack, then install the tarball into a scratch project.
const scratch = mkdtempSync(join(tmpdir(), "sinkstream-package-"));
const web = join(ROOT, "web");
const packed = JSON.parse(execFileSync("npm", ["pack", "--json", "--pack-destination", scratch], { cwd: web, encoding: "utf8" }));
const tarball = join(scratch, packed[0].filename);
const files = packed[0].files.map((f) => f.path).sort();
log(`packed ${packed[0].filename}: ${files.join(", ")} (${(packed[0].size / 1048576).toFixed(1)} MB)`);
for (const f of ["index.js", "index.d.ts", "README.md", "package.json", "pkg/sinkstream.js", "pkg/sinkstream_bg.wasm"]) {
  check(files.includes(f), `the tarball has ${f}`);
}
check(!files.some((f) => f.startsWith("test/") || f.startsWith("demo/") || f.includes("node_modules")), "the tarball has no tests, demo or node_modules");
const app = join(scratch, "app");
execFileSync("mkdir", ["-p", app]);
writeFileSync(join(app, "package.json"), JSON.stringify({ name: "scratch-app", private: true, type: "module" }));
execFileSync("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", tarball], { cwd: app, stdio: "inherit" });
const installed = JSON.parse(readFileSync(join(app, "node_modules/sinkstream/package.json"), "utf8"));
check(installed.name === "sinkstream" && installed.types === "./index.d.ts", "installed sinkstream with its types");
symlinkSync(join(ROOT, "models", MODEL), join(app, MODEL));
// The Hugging Face checkpoint, and the native binary's greedy tokens on it.
const hfDir = join(app, "smollm2-hf");
execFileSync(bin, ["convert", join(ROOT, "models", MODEL), "--out", hfDir, "--dtype", "f16"], { stdio: ["ignore", "ignore", "inherit"] });
const nativeHf = execFileSync(
  bin,
  ["generate", "--temperature", "0", "--max-tokens", String(HF_TOKENS), "--prompt", PROMPT, "--model", hfDir],
  { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, XDG_RUNTIME_DIR: xdg } },
);
rmSync(xdg, { recursive: true, force: true });
log(`native greedy on the f16 checkpoint: ${JSON.stringify(nativeHf)}`);
writeFileSync(
  join(app, "index.html"),
  `<!doctype html><meta charset="utf-8"><title>package test</title>
<link rel="icon" href="data:,">
<script type="importmap">{"imports": {"sinkstream": "./node_modules/sinkstream/index.js"}}</script>
<script type="module">
import { load } from "sinkstream";
try {
  const llm = await load("./${MODEL}", { temperature: 0, cacheName: null });
  const pieces = [];
  for await (const piece of llm.generate(${JSON.stringify(PROMPT)}, { maxTokens: ${TOKENS} })) pieces.push(piece);
  const stats = llm.stats();
  llm.free();
  const files = [];
  const hf = await load("./smollm2-hf/", { temperature: 0, cacheName: null, onProgress: (p) => p.file && !files.includes(p.file) && files.push(p.file) });
  const hfText = await hf.generate(${JSON.stringify(PROMPT)}, { maxTokens: ${HF_TOKENS} }).text();
  window.result = { text: pieces.join(""), stats, hfText, hfInfo: hf.info(), files };
} catch (e) {
  window.result = { error: String(e && e.message || e) };
}
</script>`,
);

// Serve the scratch project and open its page.
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const server = await startServer("python3", ["-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", app], `${base}/index.html`);
const browser = await launch();
try {
  const page = await browser.context.newPage();
  const errors = [];
  watchConsole(page, errors);
  await page.goto(`${base}/index.html`);
  await page.waitForFunction(() => window.result, null, { timeout: 300000, polling: 250 });
  const r = await page.evaluate(() => window.result);
  if (r.error) throw new Error(`the page failed: ${r.error}`);
  log(`browser greedy: ${JSON.stringify(r.text)}`);
  check(r.stats.generatedTokens === TOKENS, `the page generated ${TOKENS} tokens`);
  check(r.text === native, "the browser's greedy tokens equal the native binary's");
  log(`browser greedy on the f16 checkpoint: ${JSON.stringify(r.hfText)} (files ${r.files.join(", ")})`);
  check(r.hfInfo.layers === 30 && r.hfInfo.vocab === 49152, "the checkpoint directory loaded");
  check(r.hfText === nativeHf, "the checkpoint's greedy tokens in the browser equal the native binary's");
  check(errors.length === 0, "no console errors");
  log(`package test passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
} finally {
  await browser.close();
  server.stop();
  rmSync(scratch, { recursive: true, force: true });
}
