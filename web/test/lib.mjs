// Helpers shared by the browser tests: Debian's Chromium with WebGPU (SwiftShader) through
// playwright-core, and the demo server (scripts/serve.sh).
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf";

export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--enable-unsafe-webgpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const started = Date.now();
export function log(...a) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(6)} s]`, ...a);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

async function waitFor(url, ms) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(url, { method: "HEAD" });
      if (r.ok) return;
    } catch {}
    if (Date.now() > end) throw new Error(`${url} did not come up in ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs `command args` (a static file server) and waits until `probe` answers. */
export async function startServer(command, args, probe, opts = {}) {
  const child = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"], ...opts });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const exited = new Promise((_, reject) =>
    child.on("exit", (code) => reject(new Error(`${command} exited (${code}): ${err}`))),
  );
  exited.catch(() => {});
  await Promise.race([waitFor(probe, 20000), exited]);
  return {
    stop() {
      child.kill("SIGTERM");
    },
  };
}

/** Headless Chromium with WebGPU; `logTo` collects the page's console. */
export async function launch() {
  const userDataDir = mkdtempSync(join(tmpdir(), "sinkstream-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless=new", ...CHROMIUM_ARGS],
    viewport: { width: 1280, height: 860 },
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

export function watchConsole(page, errors) {
  page.on("console", (m) => {
    const t = m.text();
    if (m.type() === "error") errors.push(t);
    if (process.env.VERBOSE || m.type() === "error" || m.type() === "warning") log(`page ${m.type()}: ${t}`);
  });
  page.on("pageerror", (e) => {
    errors.push(String(e));
    log(`page error: ${e}`);
  });
}

export function check(cond, msg) {
  if (!cond) throw new Error(`check failed: ${msg}`);
  log(`ok: ${msg}`);
}
