/** Finding the yool executable: setting, then workspace venvs, then PATH; the message when none. */

import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

import { pathCandidates, resolveYool, venvCandidates } from "../src/resolve";

const only = (...files: string[]) => (f: string) => files.includes(f);

test("the yool.path setting wins over a venv and PATH", () => {
  const r = resolveYool({
    setting: "/opt/yool/bin/yool",
    workspaceFolders: ["/ws"],
    env: { PATH: "/usr/bin" },
    platform: "linux",
    isExecutable: only("/opt/yool/bin/yool", "/ws/.venv/bin/yool", "/usr/bin/yool"),
  });
  assert.deepEqual(r, { found: true, path: "/opt/yool/bin/yool", source: "setting" });
});

test("a relative setting is taken from the first workspace folder, ~ from HOME", () => {
  const rel = resolveYool({
    setting: "tools/yool",
    workspaceFolders: ["/ws", "/other"],
    env: {},
    platform: "linux",
    isExecutable: only("/ws/tools/yool"),
  });
  assert.deepEqual(rel, { found: true, path: "/ws/tools/yool", source: "setting" });
  const home = resolveYool({
    setting: "~/bin/yool",
    workspaceFolders: [],
    env: { HOME: "/home/me" },
    platform: "linux",
    isExecutable: only("/home/me/bin/yool"),
  });
  assert.deepEqual(home, { found: true, path: "/home/me/bin/yool", source: "setting" });
});

test("a setting that names no executable is reported, not silently replaced by PATH", () => {
  const r = resolveYool({
    setting: "/nope/yool",
    workspaceFolders: ["/ws"],
    env: { PATH: "/usr/bin" },
    platform: "linux",
    isExecutable: only("/usr/bin/yool"),
  });
  assert.equal(r.found, false);
  if (r.found) return;
  assert.deepEqual(r.tried, ["/nope/yool"]);
  assert.match(r.problem, /yool\.path/);
  assert.match(r.problem, /not an executable/);
});

test("without a setting, .venv in a workspace folder comes before PATH", () => {
  const r = resolveYool({
    workspaceFolders: ["/a", "/b"],
    env: { PATH: "/usr/local/bin:/usr/bin" },
    platform: "linux",
    isExecutable: only("/b/.venv/bin/yool", "/usr/bin/yool"),
  });
  assert.deepEqual(r, { found: true, path: "/b/.venv/bin/yool", source: "venv" });
});

test("venv/ and env/ are looked at too, and Windows uses Scripts\\yool.exe", () => {
  assert.deepEqual(venvCandidates("/ws", "linux"), ["/ws/.venv/bin/yool", "/ws/venv/bin/yool", "/ws/env/bin/yool"]);
  assert.deepEqual(venvCandidates("C:\\ws", "win32"), [
    "C:\\ws\\.venv\\Scripts\\yool.exe",
    "C:\\ws\\venv\\Scripts\\yool.exe",
    "C:\\ws\\env\\Scripts\\yool.exe",
  ]);
  const r = resolveYool({
    workspaceFolders: ["C:\\ws"],
    env: { Path: "C:\\Python\\Scripts" },
    platform: "win32",
    isExecutable: only("C:\\ws\\venv\\Scripts\\yool.exe"),
  });
  assert.deepEqual(r, { found: true, path: "C:\\ws\\venv\\Scripts\\yool.exe", source: "venv" });
});

test("PATH is searched in order, with PATHEXT on Windows", () => {
  assert.deepEqual(pathCandidates({ PATH: "/x::/y" }, "linux"), ["/x/yool", "/y/yool"]);
  assert.deepEqual(pathCandidates({ PATH: "C:\\bin", PATHEXT: ".EXE;.CMD" }, "win32"), ["C:\\bin\\yool.exe", "C:\\bin\\yool.cmd"]);
  const r = resolveYool({
    workspaceFolders: [],
    env: { PATH: "/x:/y" },
    platform: "linux",
    isExecutable: only("/y/yool"),
  });
  assert.deepEqual(r, { found: true, path: "/y/yool", source: "PATH" });
});

test("when yool is nowhere, every place looked at is listed and the fix is given", () => {
  const r = resolveYool({ workspaceFolders: ["/ws"], env: { PATH: "/usr/bin" }, platform: "linux", isExecutable: () => false });
  assert.equal(r.found, false);
  if (r.found) return;
  assert.deepEqual(r.tried, ["/ws/.venv/bin/yool", "/ws/venv/bin/yool", "/ws/env/bin/yool", "/usr/bin/yool"]);
  assert.match(r.problem, /python3 -m venv \.venv && \.venv\/bin\/pip install/);
  assert.match(r.problem, /set yool\.path/);
});

test("the default check finds a real executable file and refuses a plain file and a directory", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "yool-resolve-"));
  try {
    const bin = path.join(dir, ".venv", "bin");
    fs.mkdirSync(bin, { recursive: true });
    const plain = path.join(dir, "plain", "bin");
    fs.mkdirSync(plain, { recursive: true });
    fs.writeFileSync(path.join(plain, "yool"), "not executable", { mode: 0o644 });
    fs.mkdirSync(path.join(dir, "venv", "bin", "yool"), { recursive: true }); // a directory
    fs.writeFileSync(path.join(bin, "yool"), "#!/bin/sh\n", { mode: 0o755 });
    const found = resolveYool({ workspaceFolders: [dir], env: { PATH: plain }, platform: process.platform });
    assert.deepEqual(found, { found: true, path: path.join(bin, "yool"), source: "venv" });
    fs.rmSync(path.join(bin, "yool"));
    const missing = resolveYool({ workspaceFolders: [dir], env: { PATH: plain }, platform: process.platform });
    assert.equal(missing.found, false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
